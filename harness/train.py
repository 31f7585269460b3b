"""One run: ``python -m harness.train --dataset D --algorithm A --output_dir DIR``.

Writes ``results.jsonl`` (one record per checkpoint), ``checkpoint.pt`` (atomic, resume
state), ``out.txt``/``err.txt`` and ``done`` last. Re-running with the same arguments resumes
from the last checkpoint and yields the same records as an uninterrupted run: every random
draw is a pure function of (seed, step), so nothing but the model and optimizer state needs
saving.

The CPU thread count is part of what a run pins: floating-point reductions split over a
different number of threads round differently, so a 1-thread and a 2-thread run differ
after a few dozen steps. A fresh run uses ``--threads`` (default: $OMP_NUM_THREADS, else
PyTorch's default), records it in every record and in its checkpoint, and a resumed run
takes it from the checkpoint whatever launcher or environment it now runs under.

Faults a run cannot survive (a corrupt checkpoint, records that disagree with it, a full
disk) stop it with one line naming the file and what to do, exit status 2; nothing
finished is deleted.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from pathlib import Path

from harness.checkpoints import DONE
from harness.cli import SEED_MAX, OneLineParser, device_name, int_at_least, open_fraction

# Arguments excluded from a run's identity (its job id and the args its checkpoint is checked against): paths,
# device, batch size of evaluation and --keep_checkpoints, which change no number, and threads, which does (float
# reductions round differently) but is pinned per run instead: recorded in every record and the checkpoint.
NON_IDENTITY_ARGS = ("output_dir", "data_dir", "device", "eval_batch_size", "threads", "keep_checkpoints")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m harness.train",
        description="Train one algorithm on one dataset and write results.jsonl, checkpoint.pt and done "
                    "into --output_dir. Re-run the same command to resume after a crash.")
    seed = int_at_least(0, SEED_MAX)
    p.add_argument("--dataset", default="SyntheticLinear", help="dataset name (python -m harness.list)")
    p.add_argument("--algorithm", default="ERM", help="algorithm name (python -m harness.list)")
    p.add_argument("--output_dir", required=True, help="directory of this run")
    p.add_argument("--data_dir", default=os.environ.get("HARNESS_DATA", "data"),
                   help="root of real datasets (env HARNESS_DATA)")
    p.add_argument("--hparams", default=None, help='JSON object of hparam overrides, e.g. \'{"lr": 1e-4}\'; '
                   '\'{"precision": "bf16"}\' runs the backbone under bfloat16 autocast')
    p.add_argument("--hparams_seed", type=seed, default=0, help="0: default hparams; N: random-search draw N")
    p.add_argument("--trial_seed", type=seed, default=0, help="seed of the data splits (a 'trial')")
    p.add_argument("--seed", type=seed, default=0, help=f"seed of everything else (init, batches, tasks); 0..{SEED_MAX}")
    p.add_argument("--steps", type=int_at_least(1), default=None, help="training steps (default: the dataset's)")
    p.add_argument("--checkpoint_freq", type=int_at_least(1), default=None,
                   help="evaluate and checkpoint every N steps (default: the dataset's)")
    p.add_argument("--test_envs", type=int_at_least(0), nargs="*", default=[],
                   help="indices of held-out environments (datasets with official splits, e.g. WILDS': theirs)")
    p.add_argument("--holdout_fraction", type=open_fraction, default=0.2,
                   help="fraction of each environment held out ('out' split), in (0, 1)")
    p.add_argument("--dci_freq", type=int_at_least(1), default=5,
                   help="compute the costly metrics (DCI/MCC, task and few-shot accuracy) every N checkpoints "
                        "(and always at the end); a full DCI fit on a few thousand points takes seconds")
    p.add_argument("--dci", choices=("full", "fast"), default="full",
                   help="DCI on datasets with factors: full = disentanglement_lib's (GBT of 100 trees, up to "
                        "10,000 train / 5,000 test held-out points); fast = 30 trees on at most 2,000 / 1,000 "
                        "(about 3x cheaper; scores within ~0.1 of full)")
    p.add_argument("--eval_batch_size", type=int_at_least(1), default=512,
                   help="examples per evaluation batch (memory only: results do not depend on it)")
    p.add_argument("--device", type=device_name, default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int_at_least(1), default=None,
                   help="CPU threads of a fresh run (default: $OMP_NUM_THREADS, else PyTorch's); results depend "
                        "on it, so a resumed run reuses the count recorded in its checkpoint")
    p.add_argument("--keep_checkpoints", action="store_true",
                   help="keep every checkpoint (checkpoints/step_NNNNNN.pt, hard links) so that "
                        "python -m harness.reevaluate can score them again with another evaluation head")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Range checks argparse cannot express: one line (UserError) each, before anything is written."""
    from harness.errors import UserError

    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out} is a file, not a directory; choose another path")
    if args.device.startswith("cuda:"):
        import torch

        n = torch.cuda.device_count()
        if int(args.device.split(":")[1]) >= max(n, 1):
            raise UserError(f"--device {args.device}: this machine has {n} CUDA device(s)")


def main(argv: list[str] | None = None) -> None:
    from harness.errors import cli

    cli(lambda: run_or_leave_nothing(build_parser().parse_args(argv)))()


def run_or_leave_nothing(args: argparse.Namespace) -> Path:
    """:func:`run`; a run that fails before it starts training (missing data, a bad argument found while
    building it) in a folder this call created leaves no folder behind."""
    out = Path(args.output_dir)
    try:
        created = [d for d in (out, *out.parents) if not d.exists()]  # what mkdir(parents=True) will create
    except OSError:  # e.g. a name too long: run() reports it in one line
        created = []
    try:
        return run(args)
    except BaseException:
        if created and remove_unstarted(out):
            for parent in created[1:]:  # empty parents this call created, innermost first
                try:
                    parent.rmdir()
                except OSError:
                    break
        raise


def remove_unstarted(out: Path) -> bool:
    """Delete ``out`` if the run never started: nothing printed to out.txt (its first line is printed just
    before the first step), no records, no checkpoint."""
    from harness.checkpoints import CHECKPOINT, RESULTS

    started = any((out / name).exists() for name in (RESULTS, CHECKPOINT, DONE))
    log = out / "out.txt"
    try:
        if started or not out.is_dir() or (log.exists() and log.stat().st_size > 0):
            return False
        from harness.errors import UserError
        from harness.lock import LOCK, RunLock

        with RunLock(out, wait_s=0.5):  # silent: the run's own error is the one line to show
            entries = [e for e in out.iterdir() if e.name != LOCK]
            if any(e.is_dir() and not e.is_symlink() for e in entries):
                return False
            for entry in entries:
                entry.unlink()
            (out / LOCK).unlink(missing_ok=True)
            out.rmdir()
        return True
    except (OSError, UserError):
        return False


def os_error(e: OSError):
    """The one-line error for a file the run cannot write or read (full disk, read-only folder, ...)."""
    from harness.errors import UserError

    where = e.filename or "the output directory"
    hint = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space",
            errno.EROFS: "make it writable or choose another --output_dir",
            errno.EACCES: "fix its permissions or choose another --output_dir",
            errno.EPERM: "fix its permissions or choose another --output_dir",
            errno.ENAMETOOLONG: "choose a shorter --output_dir"}.get(e.errno)
    if hint is None:
        return UserError(f"cannot access {where}: {e.strerror or e}")
    return UserError(f"cannot write {where}: {e.strerror or e}; {hint}, then re-run the same command "
                     "(it resumes from the last checkpoint)")


def run(args: argparse.Namespace) -> Path:
    """Train (or resume) the run described by ``args``; returns its output directory."""
    try:
        return _run(args)
    except OSError as e:
        raise os_error(e) from None


def _run(args: argparse.Namespace) -> Path:
    from harness import hparams as hp
    from harness.cli import check_test_envs
    from harness.errors import UserError
    from harness.lock import RunLock
    from harness.registry import ALGORITHMS, DATASETS

    from harness.utils import refuse_links

    if not args.output_dir.strip():
        raise UserError("--output_dir is empty; name the run's directory")
    out = Path(args.output_dir)
    refuse_links(out)
    if finished(out, args):
        print(f"{out} is already done (remove {out / DONE} to run again)")
        return out
    check_args(args)
    dataset_cls, algorithm_cls = DATASETS.get(args.dataset), ALGORITHMS.get(args.algorithm)
    if getattr(dataset_cls, "SELECT_ON", None) and not args.test_envs:  # official splits: their held-out envs
        args.test_envs = list(dataset_cls.TEST_ENV_SETS[0])
    check_test_envs(args.test_envs, dataset_cls.ENVIRONMENTS, args.dataset)
    hparams = hp.resolve(args.algorithm, args.dataset, args.hparams_seed, args.hparams)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        refuse_links(out)
        if finished(out, args, under_lock=True):  # another process finished it while we waited for the lock
            print(f"{out} is already done (remove {out / DONE} to run again)")
            return out
        with Tee(out / "out.txt", "stdout"), Tee(out / "err.txt", "stderr", fresh=True):
            try:
                train_run(args, hparams, dataset_cls, algorithm_cls, out)
            except OSError as e:
                raise os_error(e) from None
    return out


def train_run(args: argparse.Namespace, hparams: dict, dataset_cls, algorithm_cls, out: Path) -> None:
    import torch

    from harness.checkpoints import load_checkpoint, remove_stale_temporaries, resume
    from harness.errors import UserError
    from harness.loop import RunContext, batch_source, run_splits, train_loop
    from harness.precision import check_precision
    from harness.utils import resolve_device, seed_hash

    remove_stale_temporaries(out)
    identity = run_identity(args)
    state = load_checkpoint(out, identity)
    threads = pinned_threads(args, state)
    torch.set_num_threads(threads)
    device = resolve_device(args.device)
    check_precision(device, hparams["precision"])
    torch.manual_seed(seed_hash(args.seed, "init"))
    dataset = dataset_cls(args.data_dir, args.test_envs, hparams)
    if len(dataset) != len(dataset.ENVIRONMENTS):
        raise UserError(f"{args.dataset} built {len(dataset)} environments but declares {len(dataset.ENVIRONMENTS)} "
                        "in ENVIRONMENTS; a dataset names each environment it builds, in order")
    steps = args.steps if args.steps is not None else dataset.N_STEPS
    freq = args.checkpoint_freq if args.checkpoint_freq is not None else dataset.CHECKPOINT_FREQ
    splits, train_envs, eval_splits = run_splits(dataset, args)
    check_sizes(hparams, dataset.input_shape, len(train_envs), getattr(algorithm_cls, "EPISODIC", False), device)
    algorithm = algorithm_cls(dataset.input_shape, dataset.num_classes, len(train_envs), hparams).to(device)

    start, record_steps = resume(out, state, algorithm)
    next_batch = batch_source(algorithm, dataset, train_envs, hparams, args.seed)
    print(f"{args.algorithm} on {args.dataset} | test envs {args.test_envs} | device {device} | "
          f"precision {hparams['precision']} | "
          f"threads {threads} | steps {start}->{steps} | hparams {json.dumps(hparams)}")
    train_loop(RunContext(args, identity, hparams, algorithm, dataset, splits, train_envs, next_batch,
                          steps, freq, device, out, threads, eval_splits), start, record_steps)
    write_done(out)


def check_sizes(hparams: dict, input_shape, n_envs: int, episodic: bool, device) -> None:
    """A UserError when a step's batch and an MLP backbone (weights, gradients, Adam's moments and
    activations, float32) would not fit in the device's memory: fail before allocating, not after."""
    import math

    from harness.errors import UserError

    n_in = math.prod(input_shape)
    if episodic:
        per_step = hparams.get("tasks_per_batch", 1) * (hparams.get("support", 1) + hparams.get("query", 1))
    else:
        per_step = hparams.get("batch_size", 1) * n_envs
    need, what = per_step * n_in * 4, f"{per_step} examples per step"
    if hparams.get("backbone") == "MLP":
        w, depth, d = hparams.get("mlp_width", 256), hparams.get("mlp_depth", 3), hparams.get("feature_dim", 64)
        params = (n_in * w + (depth - 1) * w * w + w * d) if depth else n_in * d
        need += 16 * params + per_step * 4 * (w * depth + d)
        what += f", an MLP of {params:,} weights"
    total = device_memory(device)
    if total and need > total:
        raise UserError(f"these hparams need about {need / 2**30:.3g} GiB ({what}) but {device} has "
                        f"{total / 2**30:.3g} GiB; use a smaller batch_size, mlp_width, mlp_depth or feature_dim")


def device_memory(device) -> int | None:
    """Bytes of memory of ``device`` (a CUDA device's, else the machine's RAM); None when unknown."""
    try:
        if getattr(device, "type", "cpu") == "cuda":
            import torch

            return torch.cuda.get_device_properties(device).total_memory
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, RuntimeError, AttributeError):
        return None


def run_identity(args: argparse.Namespace) -> dict:
    """The arguments that define what a run computes (``args`` of its records and checkpoint)."""
    return {k: v for k, v in vars(args).items() if k not in NON_IDENTITY_ARGS}


def finished(out: Path, args: argparse.Namespace, under_lock: bool = False) -> bool:
    """Whether ``out`` holds this run, finished: ``done`` and records. A ``done`` beside records of other
    arguments is a UserError (checked before anything else); a ``done`` without records is not finished
    (``under_lock``: it is removed so that the run is made again)."""
    from harness.checkpoints import RESULTS, read_records
    from harness.errors import UserError

    if not (out / DONE).exists():
        return False
    records = read_records(out / RESULTS) if (out / RESULTS).is_file() else []
    identity = json.loads(json.dumps(run_identity(args)))
    for r in records:
        theirs = r.get("args") if isinstance(r.get("args"), dict) else {}
        if theirs != identity:
            diff = sorted(k for k in set(theirs) | set(identity) if theirs.get(k) != identity.get(k))
            shown = ", ".join(f"{k}={json.dumps(theirs.get(k))} there, {json.dumps(identity.get(k))} here"
                              for k in diff[:3])
            raise UserError(f"{out} holds a finished run with other arguments ({shown}); use another "
                            "--output_dir or delete that one")
    if not records:
        if under_lock:
            print(f"note: {out} has '{DONE}' but no records: it is not finished, running it again",
                  file=sys.stderr)
            (out / DONE).unlink()
        return False
    return True


def write_done(out: Path) -> None:
    """``done``, written last, never through a link."""
    from harness.utils import open_nofollow

    with os.fdopen(open_nofollow(out / DONE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as f:
        f.write(time.strftime("%Y-%m-%d %H:%M:%S\n"))


def pinned_threads(args: argparse.Namespace, state: dict | None) -> int:
    """The run's CPU thread count: its checkpoint's when resuming, else --threads, $OMP_NUM_THREADS or torch's."""
    import torch

    if state is not None and isinstance(state.get("threads"), int):
        if args.threads is not None and args.threads != state["threads"]:
            print(f"note: this run was started with {state['threads']} threads and resumes with them "
                  f"(--threads {args.threads} ignored: the thread count changes the numbers)")
        return state["threads"]
    if args.threads is not None:
        return args.threads
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else torch.get_num_threads()


class Tee:
    """Copy sys.stdout or sys.stderr into a file for the duration of a ``with``.

    ``fresh``: the previous attempt's file moves to ``<name>.prev`` so the file holds this attempt only
    (err.txt then says why the *last* attempt failed, not an earlier interruption)."""

    def __init__(self, path: Path, stream: str, fresh: bool = False):
        self.path, self.stream, self.fresh = path, stream, fresh

    def __enter__(self):
        if self.fresh and self.path.exists() and self.path.stat().st_size > 0:
            os.replace(self.path, self.path.with_name(self.path.name + ".prev"))
        from harness.utils import open_nofollow

        self.file = os.fdopen(open_nofollow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a")
        self.orig = getattr(sys, self.stream)
        setattr(sys, self.stream, self)
        return self

    def write(self, s: str) -> int:
        self.orig.write(s)
        try:
            self.file.write(s)
            self.file.flush()
        except (OSError, ValueError):  # a full disk must not turn every print into a second error
            pass
        return len(s)

    def flush(self) -> None:
        self.orig.flush()
        try:
            self.file.flush()
        except (OSError, ValueError):
            pass

    def isatty(self) -> bool:
        return self.orig.isatty()

    def __exit__(self, exc_type, exc, tb):
        setattr(sys, self.stream, self.orig)
        try:
            if exc is not None and self.stream == "stderr":  # the error goes to err.txt too
                from harness.errors import UserError

                if isinstance(exc, UserError):
                    self.file.write(f"error: {exc}\n")
                elif isinstance(exc, KeyboardInterrupt):
                    self.file.write(f"interrupted at {time.strftime('%Y-%m-%d %H:%M:%S')}; re-run the same "
                                    "command to resume\n")
                else:
                    import traceback

                    self.file.write("".join(traceback.format_exception(exc_type, exc, tb)))
            self.file.close()
        except OSError:
            pass


if __name__ == "__main__":
    main()
