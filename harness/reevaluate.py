"""Score a finished run's checkpoints again with another evaluation head, without training again:
``python -m harness.reevaluate --run RUN_DIR --hparams '{"eval_head": "probe"}' --output_dir NEW_DIR``.

An episodic algorithm's accuracy depends on the head fitted at evaluation (hparams ``eval_head``,
``eval_n_fit``; harness/evaluation.py), which never changes training: a run with ``eval_head`` "probe"
trains exactly the model its "own" twin trains. So a run trained with ``--keep_checkpoints`` (every
checkpoint kept as ``checkpoints/step_NNNNNN.pt``) can be scored with the other head at every checkpoint,
and NEW_DIR is the run that training with the new hparams would have written: the same records (training
loss, step times and memory are the source's), the new hparams in ``args``/``hparams``, ``checkpoint.pt``
and ``done``, so collect_results, predict and transfer read it as any run. Each record also says where it
came from: ``reevaluated_from`` (the source run and the code that trained it); ``commit`` is the code that
scored it. tests/test_reevaluate.py checks the records equal those of the twin trained from scratch.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from harness.cli import OneLineParser, device_name, int_at_least
from harness.errors import UserError, cli

PROVENANCE = ("version", "commit", "torch", "device")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m harness.reevaluate",
                      description="Score every checkpoint of a finished run (trained with --keep_checkpoints) "
                                  "again with other evaluation hparams (eval_head, eval_n_fit) and write the run "
                                  "that training with them would have written.")
    p.add_argument("--run", required=True, help="a finished run's directory, trained with --keep_checkpoints")
    p.add_argument("--hparams", required=True, help='JSON object of evaluation hparams, e.g. \'{"eval_head": "probe"}\'')
    p.add_argument("--output_dir", required=True, help="directory of the new run")
    p.add_argument("--data_dir", default=os.environ.get("HARNESS_DATA", "data"),
                   help="root of real datasets (env HARNESS_DATA)")
    p.add_argument("--device", type=device_name, default="cpu", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--eval_batch_size", type=int_at_least(1), default=512, help="examples per batch (memory only)")
    return p


def reevaluate(run_dir: str | os.PathLike, overrides: str | dict, output_dir: str | os.PathLike,
               data_dir: str | None = None, device: str = "cpu", eval_batch_size: int = 512) -> Path:
    """Write into ``output_dir`` the run ``run_dir`` would have been with the evaluation hparams ``overrides``."""
    import torch

    from harness import hparams as hp
    from harness.checkpoints import (CHECKPOINT, DONE, RESULTS, checkpoint_bytes, finished_run, kept_name,
                                     load_checkpoint, load_model, read_records, rebuild)
    from harness.evaluation import evaluate
    from harness.lock import RunLock
    from harness.loop import batch_source, factors_due, run_splits, summary_line
    from harness.provenance import provenance
    from harness.train import write_done
    from harness.utils import atomic_write_bytes, atomic_write_text, refuse_links, resolve_device

    src = finished_run(run_dir)
    args = src.args
    overrides = hp.parse_overrides(overrides, args["algorithm"], args["dataset"])
    changed = sorted(set(overrides) - set(hp.EVALUATION_ONLY))
    if not overrides:
        raise UserError(f"--hparams names no hparam; give the evaluation hparams to change ({', '.join(hp.EVALUATION_ONLY)})")
    if changed:
        raise UserError(f"--hparams: {', '.join(changed)} would change training; reevaluate changes only "
                        f"{', '.join(hp.EVALUATION_ONLY)} (train a new run for the others)")
    missing = [r["step"] for r in src.records if not (src.path / kept_name(r["step"])).is_file()]
    if missing:
        raise UserError(f"--run {src.path} kept no checkpoint of step(s) {missing[:5]}{'...' if len(missing) > 5 else ''}; "
                        "train it with --keep_checkpoints (harness.train, or harness.sweep launch) to reevaluate it")
    identity = reevaluated_identity(args, overrides)
    out = Path(output_dir)
    if out.resolve() == src.path.resolve():
        raise UserError("--output_dir is the source run's directory; name a new one")
    refuse_links(out)
    theirs = [r.get("args") for r in read_records(out / RESULTS)] if (out / RESULTS).is_file() else []
    if any(a != identity for a in theirs):
        raise UserError(f"--output_dir {out} holds another run; use another --output_dir or delete that one")
    if theirs and (out / DONE).exists():
        print(f"{out} is already done (remove {out / DONE} to run again)")
        return out

    threads = src.last.get("threads") or torch.get_num_threads()
    torch.set_num_threads(threads)
    device = resolve_device(device)
    hparams = {**src.hparams, **overrides}
    algorithm, dataset = rebuild(src, data_dir, device, hparams=hparams)
    ns = argparse.Namespace(**identity, eval_batch_size=eval_batch_size)
    splits, train_envs, eval_splits = run_splits(dataset, ns)
    probe_batch = batch_source(algorithm, dataset, train_envs, hparams, ns.seed)(0)
    steps, freq = ns.steps or dataset.N_STEPS, ns.checkpoint_freq or dataset.CHECKPOINT_FREQ
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        records, lines = [], [f"reevaluating {src.path} with {json.dumps(overrides)} | threads {threads}"]
        print(lines[0], flush=True)
        for old in src.records:
            step = old["step"]
            path = src.path / kept_name(step)
            state = load_checkpoint(src.path, args, kept_name(step))
            if state["step"] != step:
                raise UserError(f"{path} is at step {state['step']}, not {step}; the run's files disagree")
            load_model(algorithm, state, path)
            metrics = evaluate(algorithm, dataset, splits, train_envs, ns, factors_due(step, steps, freq, ns.dci_freq),
                               probe_batch, eval_splits)
            record = {**old, **metrics, "args": identity, "hparams": hparams, **provenance(device),
                      "reevaluated_from": {"run": str(src.path.resolve()), **{k: old.get(k) for k in PROVENANCE}}}
            records.append(record)
            lines.append(summary_line({k: v for k, v in record.items() if k != "reevaluated_from"}))
            print(lines[-1], flush=True)
        atomic_write_text(out / RESULTS, "".join(json.dumps(r) + "\n" for r in records))
        atomic_write_text(out / "out.txt", "".join(line + "\n" for line in lines))
        atomic_write_bytes(out / CHECKPOINT, checkpoint_bytes(records[-1]["step"], identity, algorithm, threads,
                                                              [r["step"] for r in records]))
        write_done(out)
    return out


def given_hparams(args: dict) -> dict:
    """The ``--hparams`` overrides a run's identity records (a JSON string, or None)."""
    return json.loads(args["hparams"]) if args.get("hparams") else {}


def reevaluated_identity(args: dict, overrides: dict) -> dict:
    """The identity (``args``) of the run with identity ``args`` evaluated with the hparams ``overrides``."""
    return {**args, "hparams": json.dumps({**given_hparams(args), **overrides}, sort_keys=True)}


def training_key(args: dict) -> str:
    """What decides the model a run trains: its identity without the evaluation-only hparams."""
    from harness.hparams import EVALUATION_ONLY

    trained = {k: v for k, v in given_hparams(args).items() if k not in EVALUATION_ONLY}
    return json.dumps({**args, "hparams": trained}, sort_keys=True)


def reevaluate_sweep(jobs: list, opts: dict) -> int:
    """``python -m harness.sweep reevaluate ... --from_dir SRC``: make every job that is not done from the run in
    SRC that trains the same model (the job's training arguments without its evaluation-only hparams), when that
    run is finished with kept checkpoints. Prints how many it made and how many still wait for their source."""
    from harness import hparams as hp
    from harness.checkpoints import DONE, KEPT, RESULTS, read_records
    from harness.sweep import has_records
    from harness.train import build_parser as train_parser, run_identity

    src_dir = opts.get("from_dir")
    if not src_dir:
        raise UserError("reevaluate needs --from_dir, the sweep folder of the runs to score again")
    if not Path(src_dir).is_dir():
        raise UserError(f"--from_dir {src_dir}: no such folder")
    sources = {}  # training key -> (run directory, its identity)
    for run in sorted(Path(src_dir).iterdir()):
        if run.is_dir() and not run.is_symlink() and (run / DONE).exists() and has_records(run):
            args = read_records(run / RESULTS)[0]["args"]
            sources[training_key(args)] = (run, args)
    made = done = waiting = running = 0
    for job in jobs:
        if job.state in ("done", "running"):
            done, running = done + (job.state == "done"), running + (job.state == "running")
            continue
        identity = run_identity(train_parser().parse_args(job.command[3:]))  # [3:]: past "python -m harness.train"
        overrides = {k: v for k, v in (job.train_args.get("hparams") or {}).items() if k in hp.EVALUATION_ONLY}
        if not overrides:
            raise UserError("reevaluate: --hparams sets no evaluation hparam "
                            f"({', '.join(hp.EVALUATION_ONLY)}); the jobs would be the source runs themselves")
        src, src_args = sources.get(training_key(identity), (None, None))
        if src is None or not (src / KEPT).is_dir() or reevaluated_identity(src_args, overrides) != identity:
            waiting += 1
            continue
        reevaluate(src, overrides, job.output_dir, opts.get("data_dir") or os.environ.get("HARNESS_DATA", "data"),
                   opts.get("device") or "auto")
        made += 1
    print(f"reevaluated {made}, {done} done already, {waiting} waiting for a finished source run with kept "
          f"checkpoints in {src_dir}" + (f", {running} running elsewhere (skipped)" if running else ""))
    return 0


def main(argv: list[str] | None = None) -> None:
    def run() -> None:
        a = build_parser().parse_args(argv)
        out = reevaluate(a.run, a.hparams, a.output_dir, a.data_dir, a.device, a.eval_batch_size)
        print(f"wrote {out}")

    cli(run)()


if __name__ == "__main__":
    main()
