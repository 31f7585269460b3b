"""Measure what the evaluation head's training set does to an episodic run's accuracy.

    python benchmarks/refit_head.py RUN_DIR [RUN_DIR ...] [--n_fit 2000 all] [--head own|probe] [--device cpu]

For each finished run (its ``checkpoint.pt`` and ``results.jsonl``), rebuild the dataset and the
(in, out) splits exactly as ``harness.train`` did, load the model, and fit the evaluation head with
``harness.evaluation.eval_predictor`` on ``n_fit`` points of the training domains' 'in' splits (2000 is the
trainer's default; ``all`` = every 'in' point of every training domain), then print the accuracy of
every split. Fitting on more points changes only the head: the features are the checkpoint's.
``--head probe`` replaces the algorithm's own ``adapt`` (SparseShared: its sparse solver) by a
multinomial logistic-regression probe on the frozen features (``harness.evaluation.probe_head``, the base
class's ``adapt``): what the hparam ``eval_head: "probe"`` does in a run.
Prints one JSON line per (run, n_fit): algorithm, test_envs, n_fit, fit seconds, training-domain
'out' accuracy (the model-selection number) and the held-out environments' accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from harness.checkpoints import finished_run, rebuild  # noqa: E402
from harness.evaluation import eval_predictor, split_metrics  # noqa: E402
from harness.loop import run_splits  # noqa: E402


def refit(run: Path, n_fits: list[str], device: str, head: str = "own") -> list[dict]:
    finished = finished_run(run)  # the verified checkpoint of a finished run, rebuilt as training built it
    rec = finished.last
    args = argparse.Namespace(**rec["args"])
    algorithm, dataset = rebuild(finished, os.environ.get("HARNESS_DATA", "data"), device)
    splits, train_envs, _ = run_splits(dataset, args)
    state = {"step": rec["step"]}
    rows = []
    n_in = sum(len(e) for e in train_envs)
    for n_fit in n_fits:
        n = n_in if n_fit == "all" else int(n_fit)
        t0 = time.perf_counter()
        with torch.no_grad():
            predict = eval_predictor(algorithm, train_envs, args, n_fit=n, head=head)
        fit_s = time.perf_counter() - t0
        acc = {}
        with torch.no_grad():
            for i, (env_in, env_out) in enumerate(splits):
                for name, split in (("in", env_in), ("out", env_out)):
                    acc.update(split_metrics(predict, split, f"env{i}_{name}", 512, algorithm.device()))
        train_out = [acc[f"env{i}_out_acc"] for i in range(len(splits)) if i not in args.test_envs]
        rows.append({"run": run.name, "algorithm": args.algorithm, "test_envs": args.test_envs,
                     "trial_seed": args.trial_seed, "step": state["step"], "head": head, "n_fit": n, "fit_s": round(fit_s, 2),
                     "train_domains_out_acc": round(sum(train_out) / len(train_out), 4),
                     **{f"env{i}_{s}_acc": round(acc[f"env{i}_{s}_acc"], 4) for i in args.test_envs for s in ("in", "out")},
                     "recorded_heldout_in_acc": [rec[f"env{i}_in_acc"] for i in args.test_envs]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--n_fit", nargs="+", default=["2000", "all"])
    p.add_argument("--head", choices=("own", "probe"), default="own")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    for run in a.runs:
        refit(run, a.n_fit, a.device, a.head)


if __name__ == "__main__":
    main()
