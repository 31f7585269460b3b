"""SparseShared against ERM (and every other algorithm) per held-out environment, with intervals.

    python benchmarks/compare_rotated_fmnist.py --input_dir docs/measured/rotated_fmnist/runs [--vs ERM]

Training-domain validation selection (``harness.selection``, DomainBed's): per (algorithm, held-out env,
trial) the hparams draw and checkpoint with the best mean 'out' accuracy on the training domains; prints
the held-out 'in' accuracy per trial, mean +- standard error over trials (population std / sqrt(n), as
collect_results), the selected draw and step, and each algorithm minus --vs with the standard error of
the difference of two independent means.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from harness.records import load_records, records_frame
from harness.selection import TrainingDomainValidation


def mean_se(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))
    return m, sd / math.sqrt(len(xs))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--input_dir", type=Path, default=Path("docs/measured/rotated_fmnist/runs"))
    p.add_argument("--vs", default="ERM")
    a = p.parse_args()
    recs, _ = load_records(a.input_dir)
    df = records_frame(recs)
    test_envs = sorted({t[0] for t in df["test_envs"] if len(t) == 1})
    res: dict[tuple[str, int], list[float]] = {}
    print("| algorithm | held-out env | per trial (selected draw@step) | mean ± SE | minus " + a.vs + " ± SE |")
    print("|---|---|---|---|---|")
    rows = []
    for alg in sorted(df["algorithm"].unique()):
        for te in test_envs:
            accs, notes = [], []
            for trial, g in df[df["algorithm"] == alg].groupby("trial_seed"):
                c = TrainingDomainValidation.select(g, te)
                if c.record is None:
                    continue
                acc = float(c.record[f"env{te}_in_acc"])
                accs.append(acc)
                notes.append(f"{100 * acc:.1f} (h{int(c.record['hparams_seed'])}@{int(c.record['step'])})")
            if accs:
                res[(alg, te)] = accs
                rows.append((alg, te, notes))
    for alg, te, notes in rows:
        m, se = mean_se(res[(alg, te)])
        diff = ""
        if (a.vs, te) in res and alg != a.vs:
            m0, se0 = mean_se(res[(a.vs, te)])
            diff = f"{100 * (m - m0):+.1f} ± {100 * math.hypot(se, se0):.1f}"
        print(f"| {alg} | {te} | {', '.join(notes)} | {100 * m:.1f} ± {100 * se:.1f} | {diff} |")


if __name__ == "__main__":
    main()
