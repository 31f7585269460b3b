"""Every algorithm against one (default ERM) per held-out environment, with standard errors over trials.

    python benchmarks/compare_algorithms.py --input_dir docs/measured/rotated_fmnist/runs [--vs ERM]
    python benchmarks/compare_algorithms.py --input_dir docs/measured/colored_fmnist_plateau \
        --input_dir probe=docs/measured/colored_fmnist_plateau_probe --selection oracle --metric wg_acc --draws 0

A selection method of ``harness.selection`` (default training-domain validation, DomainBed's) picks, per
(algorithm, held-out env, trial), the hparams draw and checkpoint; the script prints the held-out 'in'
``--metric`` (``acc``, or ``wg_acc``: worst-group accuracy) per trial with the selected draw and step, the
mean +- standard error over trials (population std / sqrt(n), as collect_results), and each algorithm minus
``--vs`` with the standard error of the difference of two independent means. ``LABEL=DIR`` reads a folder
whose algorithms are shown as ``NAME (LABEL)``: runs of one algorithm under another protocol (SparseShared
with the probe head) are compared, never selected among.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from harness.collect_results import env_names
from harness.errors import cli
from harness.records import keep_runs, load_records, records_frame
from harness.selection import METHODS


def mean_se(xs: list[float]) -> tuple[float, float]:
    """Mean and standard error (NaN for one trial: collect_results leaves it blank)."""
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))
    return m, sd / math.sqrt(len(xs)) if len(xs) > 1 else math.nan


def read(specs: list[str]) -> pd.DataFrame:
    """The records of every ``DIR`` or ``LABEL=DIR``, algorithms of a labelled folder renamed."""
    frames = []
    for spec in specs:
        label, _, folder = spec.rpartition("=")
        df = records_frame(load_records(Path(folder))[0])
        if label:
            df["algorithm"] = df["algorithm"] + f" ({label})"
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input_dir", action="append", required=True, help="DIR or LABEL=DIR (repeatable)")
    p.add_argument("--vs", default="ERM")
    p.add_argument("--selection", default="training_domain", choices=sorted(METHODS))
    p.add_argument("--metric", default="acc", choices=["acc", "wg_acc"])
    p.add_argument("--trials", type=int, nargs="+", help="only these trial seeds (default: every trial)")
    p.add_argument("--draws", type=int, nargs="+", help="only these hparam draws (0: defaults; default: every draw)")
    a = p.parse_args()
    df = keep_runs(read(a.input_dir), a.trials, a.draws)
    method = METHODS[a.selection]
    test_envs = sorted({t[0] for t in df["test_envs"] if len(t) == 1})
    names = env_names(df)
    res: dict[tuple[str, int], list[float]] = {}
    rows = []
    for alg in sorted(df["algorithm"].unique()):
        for te in test_envs:
            accs, notes = [], []
            for trial, g in df[df["algorithm"] == alg].groupby("trial_seed"):
                c = method.select(g, te)
                if c.record is None:
                    continue
                acc = float(c.record[f"env{te}_in_{a.metric}"])
                accs.append(acc)
                notes.append(f"{100 * acc:.1f} (h{int(c.record['hparams_seed'])}@{int(c.record['step'])})")
            if accs:
                res[(alg, te)] = accs
                rows.append((alg, te, notes))
    print(f"{method.title}, held-out env{' worst-group' if a.metric == 'wg_acc' else ''} accuracy (%)\n")
    print("| algorithm | held-out env | per trial (selected draw@step) | mean ± SE | minus " + a.vs + " ± SE |")
    print("|---|---|---|---|---|")
    for alg, te, notes in rows:
        m, se = mean_se(res[(alg, te)])
        diff = ""
        if (a.vs, te) in res and alg != a.vs:
            m0, se0 = mean_se(res[(a.vs, te)])
            diff = f"{100 * (m - m0):+.1f} ± {100 * math.hypot(se, se0):.1f}"
        row = f"| {alg} | {names.get(te, te)} | {', '.join(notes)} | {100 * m:.1f} ± {100 * se:.1f} | {diff} |"
        print(row.replace("nan", "-"))


if __name__ == "__main__":
    cli(main)()
