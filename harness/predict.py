"""Predictions of a finished run: ``python -m harness.predict --run RUN_DIR --split test --out FILE.csv``.

Writes the predicted label of every example of one split, one integer per line and no header, in the
split's official order: the form WILDS' leaderboard takes and ``wilds``' ``examples/evaluate.py`` reads
(one ``literal_eval`` per line), so a WILDS user can evaluate or submit the numbers with WILDS' own
tools. WILDS' file names are ``<dataset>_split:<split>_seed:<seed>_epoch:best_pred.csv``.

- Datasets with official splits (WILDS' protocol): ``--split`` is an evaluation split (``val``,
  ``test``, ``id_val`` where it exists), in WILDS' row order (the rows of ``metadata.csv`` in that
  split). The checkpoint is ``best.pt`` (``--checkpoint best``, the default there): the one the run's
  own validation score selected, the record ``collect_results`` tables for this run. The official
  metrics of the predictions are printed beside the record's, which they equal.
- Other datasets (DomainBed's protocol): ``--split`` is an environment, by name or index; every
  example of it, in the dataset's order; the checkpoint is the last (``checkpoint.pt``), the only
  one such a run keeps.

The algorithm predicts as evaluation does (``harness.evaluation.eval_predictor``: its own head, or for
episodic algorithms a head fitted on the training environments), on the run's recorded thread count.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from harness.errors import UserError, cli
from harness.cli import OneLineParser, device_name, int_at_least


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m harness.predict",
                      description="Write a finished run's predictions for one split as a CSV WILDS' tools read "
                                  "(one predicted label per line, the split's official order).")
    p.add_argument("--run", required=True, help="a finished run's directory (harness.train --output_dir)")
    p.add_argument("--split", required=True,
                   help="an official evaluation split (WILDS: val, test, id_val) or, for other datasets, an "
                        "environment name or index")
    p.add_argument("--out", required=True, help="the CSV file to write")
    p.add_argument("--checkpoint", choices=("best", "last"), default=None,
                   help="best.pt (the checkpoint the run's validation score selected; default on official "
                        "splits) or checkpoint.pt (the last; default otherwise)")
    p.add_argument("--data_dir", default=os.environ.get("HARNESS_DATA", "data"),
                   help="root of real datasets (env HARNESS_DATA)")
    p.add_argument("--device", type=device_name, default="cpu", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--eval_batch_size", type=int_at_least(1), default=512, help="examples per batch (memory only)")
    return p


def predict_split(run_dir: str | os.PathLike, split: str, data_dir: str | None, checkpoint: str | None = None,
                  device: str = "cpu", eval_batch_size: int = 512):
    """(predicted labels of ``split`` in its official order, its official metrics or None, the record of the
    checkpoint used)."""
    import torch

    from harness.checkpoints import BEST, CHECKPOINT, finished_run, rebuild
    from harness.evaluation import eval_predictor, predictions
    from harness.loop import run_splits
    from harness.utils import resolve_device

    run = finished_run(run_dir)
    official = run.last.get("select_on") is not None
    which = checkpoint or ("best" if official else "last")
    torch.set_num_threads(run.last.get("threads") or torch.get_num_threads())
    algorithm, dataset = rebuild(run, data_dir, resolve_device(device), BEST if which == "best" else CHECKPOINT)
    record = run.best() if which == "best" else run.last
    args = argparse.Namespace(**run.args, eval_batch_size=eval_batch_size)
    _, train_envs, eval_splits = run_splits(dataset, args)
    env = split_env(dataset, eval_splits, split)
    with torch.no_grad():
        predict = eval_predictor(algorithm, train_envs, args)
        y_pred, _ = predictions(predict, env, eval_batch_size, algorithm.device())
    metrics = dataset.split_metrics(split, y_pred, env) if eval_splits else None
    return y_pred, metrics, record


def split_env(dataset, eval_splits: dict | None, split: str):
    """The evaluation split or environment named ``split``; a one-line error listing the valid names."""
    if eval_splits is not None:
        if split not in eval_splits:
            raise UserError(f"--split {split!r}: {type(dataset).__name__}'s official evaluation splits are "
                            f"{', '.join(eval_splits)}")
        return eval_splits[split]
    names = list(dataset.ENVIRONMENTS)
    if split in names:
        return dataset[names.index(split)]
    if split.isdigit() and int(split) < len(dataset):
        return dataset[int(split)]
    raise UserError(f"--split {split!r}: {type(dataset).__name__}'s environments are "
                    + ", ".join(f"{i}={n}" for i, n in enumerate(names)))


def write_predictions(path: Path, y_pred) -> None:
    """One integer label per line, no header (WILDS' prediction CSV)."""
    from harness.utils import atomic_write_text

    atomic_write_text(path, "".join(f"{int(v)}\n" for v in y_pred.tolist()))


def main(argv: list[str] | None = None) -> None:
    def run() -> None:
        args = build_parser().parse_args(argv)
        out = Path(args.out)
        if out.is_dir() or not out.parent.is_dir():
            raise UserError(f"--out {out}: give a file in an existing folder")
        y_pred, metrics, record = predict_split(args.run, args.split, args.data_dir, args.checkpoint, args.device,
                                                args.eval_batch_size)
        write_predictions(out, y_pred)
        print(f"wrote {len(y_pred)} predictions of split {args.split} (step {record['step']}) to {out}")
        for name, value in (metrics or {}).items():
            key = f"{args.split}/{name}"
            recorded = record.get(key)
            same = "" if recorded is None else f" (record: {recorded:.6f}{'' if recorded == value else ', DIFFERS'})"
            print(f"{key} {value:.6f}{same}")

    cli(run)()


if __name__ == "__main__":
    main()
