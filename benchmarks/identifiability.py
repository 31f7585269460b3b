"""Identifiability at SyntheticLinear's defaults: SparseShared against MultiTask, per seed and thread count.

    python benchmarks/identifiability.py [--seeds 0 1 2] [--threads 1 2] [--workers 2] [--out results/identifiability]

Each run is the command a user types, ``python -m harness.train --dataset SyntheticLinear
--algorithm A --seed S --threads N --output_dir ...`` (default steps and hparams); finished runs
are reused and interrupted ones resume. Prints MCC and DCI disentanglement per run and
SparseShared's margin over MultiTask at the same seed and thread count.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.checkpoints import DONE, RESULTS, read_records

ALGORITHMS = ("SparseShared", "MultiTask")


def run(algorithm: str, seed: int, threads: int, out: Path) -> dict:
    run_dir = out / f"{algorithm}-seed{seed}-threads{threads}"
    if not (run_dir / DONE).exists():
        cmd = [sys.executable, "-m", "harness.train", "--dataset", "SyntheticLinear", "--algorithm", algorithm,
               "--seed", str(seed), "--threads", str(threads), "--output_dir", str(run_dir)]
        subprocess.run(cmd, check=True, capture_output=True)
    return read_records(run_dir / RESULTS)[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--multitask_seeds", type=int, nargs="*", default=None,
                    help="MultiTask only at these seeds (default: every seed); the margin needs it at the same seed")
    ap.add_argument("--out", type=Path, default=Path("results/identifiability"))
    args = ap.parse_args()
    mt_seeds = args.seeds if args.multitask_seeds is None else args.multitask_seeds
    jobs = [(a, s, t) for s in args.seeds for t in args.threads for a in ALGORITHMS
            if a == "SparseShared" or s in mt_seeds]
    with ThreadPoolExecutor(args.workers) as pool:
        finals = dict(zip(jobs, pool.map(lambda j: run(*j, args.out), jobs)))
    print(f"{'seed':>4} {'threads':>7} | {'SparseShared MCC':>16} {'DCI D':>6} | {'MultiTask MCC':>13} {'DCI D':>6} | "
          f"{'margin MCC':>10} {'D':>6}")
    for s in args.seeds:
        for t in args.threads:
            sp, mt = finals[("SparseShared", s, t)], finals.get(("MultiTask", s, t))
            dense = f"{mt['mcc']:>13.3f} {mt['dci_disentanglement']:>6.3f}" if mt else f"{'-':>13} {'-':>6}"
            margin = (f"{sp['mcc'] - mt['mcc']:>10.3f} {sp['dci_disentanglement'] - mt['dci_disentanglement']:>6.3f}"
                      if mt else f"{'-':>10} {'-':>6}")
            print(f"{s:>4} {t:>7} | {sp['mcc']:>16.3f} {sp['dci_disentanglement']:>6.3f} | {dense} | {margin}")


if __name__ == "__main__":
    main()
