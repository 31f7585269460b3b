"""Regenerate the golden outputs of ``harness.collect_results``.

    python tests/golden/regenerate.py            # expected.{txt,md,tex,csv} from sweep/
    python tests/golden/regenerate.py --sweep    # first rewrite sweep/ itself (hand-made records)

The sweep is hand-made (deterministic pseudo-random metrics in the exact record format of
``harness.train``) so that it covers, in a few kilobytes:
- SyntheticLinear (3 envs, DCI/MCC): ERM and SparseShared, trial seeds 0 and 1, test envs 0
  and 1, hparams seeds 0 and 1, 3 checkpoints each; SparseShared/test env 1/trial 1 is missing
  (cells marked ``*``); ERM/test env 0/trial 0 also has the leave-one-out runs (test envs
  [0, 1] and [0, 2]), every other leave-one-out cell is ``X``; one file has a corrupt line.
- Waterbirds (worst-group metrics, named environments): test env 2, SparseShared/trial 1 is
  unfinished (no ``done``).
- Shapes3D (no test env): DCI/MCC, few-shot accuracy, SparseShared ``usage`` matrices.
Review the diff of the expected files before committing them.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SWEEP = HERE / "sweep"
FORMATS = {"text": "expected.txt", "markdown": "expected.md", "latex": "expected.tex", "csv": "expected.csv"}
ALGORITHMS = ("ERM", "SparseShared")
STEPS = (100, 200, 300)


def rng(*key) -> random.Random:
    return random.Random("/".join(map(str, key)))


def record(dataset, algorithm, test_envs, trial, hseed, step, n_envs, extra) -> dict:
    r = rng(dataset, algorithm, test_envs, trial, hseed, step)
    hparams = {"lr": [1e-3, 3e-4][hseed], "batch_size": 64}
    if algorithm == "SparseShared":
        hparams.update(alpha=[0.1, 0.03][hseed], beta=[0.05, 0.2][hseed])
    args = {"dataset": dataset, "algorithm": algorithm, "hparams": None, "hparams_seed": hseed,
            "trial_seed": trial, "seed": 0, "steps": STEPS[-1], "checkpoint_freq": 100,
            "test_envs": list(test_envs), "holdout_fraction": 0.2, "dci_freq": 1}
    rec = {"step": step, "epoch": step * 64 / 3200, "args": args, "hparams": hparams,
           "step_time": 0.01, "loss": round(1 / (1 + step / 100) + r.random() / 10, 4), "mem_gb": 0.5}
    base = 0.55 + 0.1 * (algorithm == "SparseShared") + step / 3000
    for i in range(n_envs):
        shift = 0.15 if i in test_envs else 0.0
        for split in ("in", "out"):
            rec[f"env{i}_{split}_acc"] = round(base - shift + 0.1 * r.random(), 4)
    return {**rec, **{k: f(r) for k, f in extra.items()}}


def dci_metrics(algorithm):
    good = 0.3 if algorithm == "SparseShared" else 0.0
    return {"dci_disentanglement": lambda r: round(0.2 + good + 0.2 * r.random(), 4),
            "dci_completeness": lambda r: round(0.2 + good + 0.2 * r.random(), 4),
            "dci_informativeness": lambda r: round(0.6 + 0.3 * r.random(), 4),
            "mcc": lambda r: round(0.4 + good + 0.2 * r.random(), 4)}


def wg_metrics(n_envs):
    return {f"env{i}_{s}_wg_acc": (lambda r: round(0.3 + 0.4 * r.random(), 4))
            for i in range(n_envs) for s in ("in", "out")}


def write_run(name, records, done=True, corrupt_after=None) -> None:
    run = SWEEP / name
    run.mkdir(parents=True)
    lines = [json.dumps(r) for r in records]
    if corrupt_after is not None:
        lines.insert(corrupt_after, '{"step": 150, "env0_in_acc": 0.7')  # a torn write
    (run / "results.jsonl").write_text("\n".join(lines) + "\n")
    if done:
        (run / "done").write_text("2024-01-01 00:00:00\n")


def synthetic_runs() -> None:
    for alg in ALGORITHMS:
        for trial in (0, 1):
            envs_list = [(0,), (1,)] + ([(0, 1), (0, 2)] if (alg, trial) == ("ERM", 0) else [])
            for test_envs in envs_list:
                if (alg, test_envs, trial) == ("SparseShared", (1,), 1):
                    continue  # the missing run
                for hseed in (0, 1):
                    recs = [record("SyntheticLinear", alg, test_envs, trial, hseed, s, 3, dci_metrics(alg))
                            for s in STEPS]
                    corrupt = 2 if (alg, test_envs, trial, hseed) == ("ERM", (1,), 1, 0) else None
                    name = f"SyntheticLinear/{alg}_te{''.join(map(str, test_envs))}_t{trial}_h{hseed}"
                    write_run(name, recs, corrupt_after=corrupt)


def waterbirds_runs() -> None:
    extra = wg_metrics(3)
    for alg in ALGORITHMS:
        for trial in (0, 1):
            recs = [record("Waterbirds", alg, (2,), trial, 0, s, 3, extra) for s in STEPS]
            for r in recs:
                r["environments"] = ["train", "val", "test"]
            write_run(f"Waterbirds/{alg}_t{trial}", recs, done=(alg, trial) != ("SparseShared", 1))


def shapes_runs() -> None:
    for alg in ALGORITHMS:
        for trial in (0, 1):
            for hseed in (0, 1):
                extra = dci_metrics(alg)
                recs = [record("Shapes3D", alg, (), trial, hseed, s, 3, extra) for s in STEPS]
                last = recs[-1]
                r = rng("fewshot", alg, trial, hseed)
                last.update(fewshot_acc=round(0.6 + 0.2 * r.random(), 4), fewshot_ci95=round(0.01 + 0.01 * r.random(), 4))
                if alg == "SparseShared":
                    for rec in recs:
                        u = rng("usage", trial, hseed, rec["step"])
                        rec["usage"] = [[round(u.random(), 3) if u.random() < 0.4 else 0.0 for _ in range(6)]
                                        for _ in range(4)]
                        rec["probe_sharing"] = round(u.random(), 4)
                write_run(f"Shapes3D/{alg}_t{trial}_h{hseed}", recs)


def write_sweep() -> None:
    shutil.rmtree(SWEEP, ignore_errors=True)
    synthetic_runs()
    waterbirds_runs()
    shapes_runs()


def write_expected() -> None:
    sys.path.insert(0, str(HERE.parents[1]))
    from harness.collect_results import build_parser, collect

    for fmt, name in FORMATS.items():
        text = collect(build_parser().parse_args(["--input_dir", str(SWEEP), "--format", fmt, "--no_plots"]))
        (HERE / name).write_text(text)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", action="store_true", help="rewrite sweep/ before the expected outputs")
    if p.parse_args().sweep:
        write_sweep()
    write_expected()
