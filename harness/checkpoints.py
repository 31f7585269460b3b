"""What a run keeps on disk: ``checkpoint.pt`` (checksummed, atomic) and ``results.jsonl`` (appended,
fsynced), and how a run resumes from them (docs/design.md, section 4).

Faults a run cannot survive (a corrupt checkpoint, records that disagree with it) are one-line
UserErrors naming the file and what to do; nothing finished is deleted. Imports no torch at module
import (``harness.train --help`` reads the file names from here).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS, CHECKPOINT, DONE = "results.jsonl", "checkpoint.pt", "done"
BEST = "best.pt"  # the checkpoint a run's own selection score picks (datasets with official splits)
KEPT = "checkpoints"  # --keep_checkpoints: every checkpoint, as KEPT/step_NNNNNN.pt (harness.reevaluate reads them)
CHECKSUM_TAG = b"\n#harness-sha256:"  # checkpoint.pt = torch.save bytes + tag + 64 hex digits


def checkpoint_bytes(step: int, identity: dict, algorithm, threads: int = 1,
                     record_steps: list[int] | None = None) -> bytes:
    """torch.save's bytes followed by their SHA-256, which ``load_checkpoint`` verifies."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"step": step, "args": json.dumps(identity, sort_keys=True), "threads": threads,
                "record_steps": list(record_steps or []), "model": algorithm.state_dict()}, buf)
    data = buf.getvalue()
    return data + CHECKSUM_TAG + hashlib.sha256(data).hexdigest().encode()


def kept_name(step: int) -> str:
    """Where ``--keep_checkpoints`` keeps the checkpoint of ``step``, relative to the run's directory."""
    return f"{KEPT}/step_{step:06d}.pt"


def keep_checkpoint(out: Path, step: int) -> None:
    """Keep ``checkpoint.pt`` (just written for ``step``) as :func:`kept_name`: a hard link, so no second
    copy of the bytes; replaced atomically when a resumed run writes that step again."""
    kept = out / kept_name(step)
    kept.parent.mkdir(exist_ok=True)
    tmp = kept.with_name(kept.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(out / CHECKPOINT, tmp)
    except OSError:  # a file system without hard links: a copy
        import shutil

        shutil.copyfile(out / CHECKPOINT, tmp)
    os.replace(tmp, kept)


def corrupt(path: Path, why: str):
    from harness.errors import UserError

    return UserError(f"{path} is corrupt ({why}); delete it to restart the run from scratch "
                     f"(or restore it from a backup to resume)")


def load_checkpoint(out: Path, identity: dict, name: str = CHECKPOINT) -> dict | None:
    """The verified checkpoint ``name`` of ``out`` (None when there is none); a corrupt one is a UserError."""
    import io

    import torch

    from harness.errors import UserError

    path = out / name
    if not path.exists():
        return None
    data = path.read_bytes()
    cut = data.rfind(CHECKSUM_TAG)
    if cut < 0:  # written before checksums (or truncated: then torch cannot read it either)
        payload = data
    else:
        payload, digest = data[:cut], data[cut + len(CHECKSUM_TAG):]
        if hashlib.sha256(payload).hexdigest().encode() != digest:
            raise corrupt(path, "checksum mismatch")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, garbage, or written by an incompatible version
        raise corrupt(path, f"unreadable{'' if cut >= 0 else ', no checksum'}: {type(e).__name__}") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or "model" not in state:
        raise corrupt(path, "not a harness checkpoint")
    if state.get("args") != json.dumps(identity, sort_keys=True):
        raise UserError(f"{out} holds a run with other arguments ({state.get('args')}); "
                        "use another --output_dir or delete that one")
    return state


def load_model(algorithm, state: dict, path: Path) -> None:
    """The checkpoint's weights into ``algorithm``; a one-line error naming ``path`` when they do not fit."""
    try:
        algorithm.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as e:
        raise corrupt(path, f"its model does not fit: {str(e).splitlines()[0][:120]}") from None


def resume(out: Path, state: dict | None, algorithm) -> tuple[int, list[int]]:
    """Load the checkpoint's state; drop records written after it. Returns (step to start at, record steps).

    Records that disagree with the checkpoint (missing, or other steps than it wrote) stop the run:
    resuming would end with a results.jsonl that is not what an uninterrupted run writes."""
    from harness.errors import UserError
    from harness.utils import atomic_write_text

    results = out / RESULTS
    if state is None:
        if results.exists():
            results.unlink()  # records without a checkpoint are from a run that died before its first one
        return 0, []
    step = state["step"]
    if not results.exists():
        raise UserError(f"{results} is missing but {out / CHECKPOINT} is at step {step}; restore it, or delete "
                        f"{out / CHECKPOINT} to restart the run from scratch")
    found = read_records(results)
    check_record_args(results, found, json.loads(state["args"]))
    keep = [r for r in found if r["step"] <= step]
    expected = state.get("record_steps")
    got = [r["step"] for r in keep]
    if (expected is not None and got != list(expected)) or (expected is None and step not in got):
        raise UserError(f"{results} (records at steps {got[:6]}{'...' if len(got) > 6 else ''}) disagrees with "
                        f"{out / CHECKPOINT} (step {step}); restore it, or delete both to restart the run from scratch")
    load_model(algorithm, state, out / CHECKPOINT)
    atomic_write_text(results, "".join(json.dumps(r) + "\n" for r in keep))
    print(f"resuming from step {step} ({len(keep)} records kept)")
    return step, got


def check_record_args(path: Path, records: list[dict], identity: dict) -> None:
    """A UserError naming the first record of ``path`` whose ``args`` are not this run's: resuming would
    leave a results.jsonl that mixes runs."""
    from harness.errors import UserError

    for i, r in enumerate(records, 1):
        if r.get("args") != identity:
            theirs = r.get("args") if isinstance(r.get("args"), dict) else {}
            diff = sorted(k for k in set(theirs) | set(identity) if theirs.get(k) != identity.get(k))
            raise UserError(f"{path} record {i} (step {r['step']}) belongs to another run (args differ in "
                            f"{', '.join(diff[:4]) or 'args'}); restore the run's own records, or delete it and "
                            f"{path.parent / CHECKPOINT} to restart the run from scratch")


def is_record(record: object) -> bool:
    """A checkpoint record: a JSON object with an integer ``step``, an ``args`` object and, where it has
    them, ``test_envs`` as a list of integers."""
    if not isinstance(record, dict) or type(record.get("step")) is not int or not isinstance(record.get("args"), dict):
        return False
    envs = record["args"].get("test_envs", [])
    return isinstance(envs, list) and all(type(i) is int for i in envs)


@dataclass
class RecordFile:
    """What :func:`scan_records` read: the records, and the lines (1-based) that are not one."""

    records: list[dict]
    bad_lines: list[int]
    torn: bool  # the last line is not a record and has no newline: the write a kill interrupted


def scan_records(path: Path) -> RecordFile:
    """The one reader of a results.jsonl (runs resuming, tables, plots). Every line that is not a record
    (:func:`is_record`; not UTF-8, not JSON) is named in ``bad_lines``; what to do about them is the
    reader's: a run resuming drops only a torn last line (:func:`read_records`), tables skip and count them."""
    lines = path.read_bytes().split(b"\n")
    records, bad = [], []
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if is_record(record):
            records.append(record)
        else:
            bad.append(i)
    return RecordFile(records, bad, torn=bool(bad) and bad[-1] == len(lines))


def read_records(path: Path) -> list[dict]:
    """A run's own records (resume, ``best.pt``, a finished run): a torn last line (a kill mid-write) is
    dropped, any other line that is not a record is a UserError naming it. No file: no records."""
    from harness.errors import UserError

    if not path.exists():
        return []
    found = scan_records(path)
    corrupt = found.bad_lines[:-1] if found.torn else found.bad_lines
    if corrupt:
        raise UserError(f"{path} line {corrupt[0]} is not a record (a UTF-8 JSON object with an integer step and args); "
                        f"restore it, or delete it and {path.parent / CHECKPOINT} to restart the run from scratch")
    return found.records


def append_record(path: Path, record: dict) -> None:
    from harness.utils import open_nofollow

    with os.fdopen(open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def remove_stale_temporaries(out: Path) -> None:
    """Temporary files of atomic writes a kill interrupted (the lock is held: nobody is writing them)."""
    for pattern in (f".{CHECKPOINT}.*.tmp", f".{RESULTS}.*.tmp", f".{BEST}.*.tmp", f"{KEPT}/*.tmp"):
        for tmp in out.glob(pattern):
            tmp.unlink(missing_ok=True)


# --- finished runs ----------------------------------------------------------------------------
@dataclass
class FinishedRun:
    """A finished run of ``harness.train``: its directory and checkpoint records."""

    path: Path
    records: list[dict]

    @property
    def last(self) -> dict[str, Any]:
        return self.records[-1]

    @property
    def args(self) -> dict[str, Any]:
        """The run's identity (its training arguments but paths and device)."""
        return self.last["args"]

    @property
    def hparams(self) -> dict[str, Any]:
        return self.last["hparams"]

    def best(self) -> dict[str, Any] | None:
        """The record with the highest ``select_on`` score (the first on ties), the step ``best.pt`` holds;
        None for runs without a ``select_on`` (DomainBed's protocol keeps only the last checkpoint)."""
        key = self.last.get("select_on")
        scored = [r for r in self.records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        return max(scored, key=lambda r: r[key]) if key and scored else None


def finished_run(run_dir: str | os.PathLike) -> FinishedRun:
    """The run in ``run_dir``; a UserError unless it is a finished run with a checkpoint. Imports no torch."""
    from harness.errors import UserError

    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"--run {path}: no such run directory")
    if not (path / DONE).exists():
        raise UserError(f"--run {path} is not a finished run (no {DONE} file); finish it by re-running its "
                        "harness.train command, or pick a finished one")
    if not (path / CHECKPOINT).exists():
        raise UserError(f"--run {path} has no {CHECKPOINT}; the trained weights are needed (restore it or "
                        "train the run again)")
    records = read_records(path / RESULTS)
    if not records or not isinstance(records[-1].get("args"), dict) or not isinstance(records[-1].get("hparams"), dict):
        raise UserError(f"--run {path}: {RESULTS} has no checkpoint record with args and hparams")
    return FinishedRun(path, records)


def rebuild(run: FinishedRun, data_dir: str | None, device: Any = "cpu", name: str = CHECKPOINT,
            hparams: dict | None = None):
    """(the run's algorithm with the weights of its checkpoint ``name``, in eval mode and without gradients,
    on ``device``; the run's dataset), both built as training built them: the run's dataset arguments and
    hparams (or ``hparams``), its init seed; the checkpoint verified (checksum, the run's arguments, the step
    its records say)."""
    import torch

    from harness.errors import UserError
    from harness.precision import check_precision
    from harness.registry import ALGORITHMS, DATASETS
    from harness.utils import seed_hash

    args, hparams = run.args, hparams or run.hparams
    expected = run.last if name == CHECKPOINT else run.best()
    state = load_checkpoint(run.path, args, name)  # verifies the checksum and that it is this run's
    if state is None or expected is None:
        raise UserError(f"--run {run.path} has no {name}" + ("" if name == CHECKPOINT else
                        " (only runs on official splits keep the checkpoint their validation score selects)"))
    if state["step"] != expected["step"]:
        raise UserError(f"{run.path / name} is at step {state['step']} but {run.path / RESULTS} says step "
                        f"{expected['step']}; the run's files disagree")
    device = torch.device(device)
    check_precision(device, hparams.get("precision", "fp32"))
    torch.manual_seed(seed_hash(args["seed"], "init"))
    dataset = DATASETS.get(args["dataset"])(data_dir, args["test_envs"], hparams)
    n_train_envs = len(dataset) - len(set(args["test_envs"]))
    algorithm = ALGORITHMS.get(args["algorithm"])(dataset.input_shape, dataset.num_classes, n_train_envs, hparams)
    load_model(algorithm, state, run.path / name)
    algorithm.to(device).eval()
    algorithm.requires_grad_(False)
    return algorithm, dataset
