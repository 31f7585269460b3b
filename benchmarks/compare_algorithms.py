"""Every algorithm against one (default ERM) per held-out environment, with standard errors over trials.

    python benchmarks/compare_algorithms.py --input_dir docs/measured/rotated_fmnist/runs [--vs ERM]
    python benchmarks/compare_algorithms.py --input_dir docs/measured/colored_fmnist_plateau \
        --input_dir probe=docs/measured/colored_fmnist_plateau_probe --selection oracle --metric wg_acc --draws 0
    python benchmarks/compare_algorithms.py --input_dir DIR --selection training_domain oracle --metric acc wg_acc --summary

A selection method of ``harness.selection`` (default training-domain validation, DomainBed's) picks, per
(algorithm, held-out env, trial), the hparams draw and checkpoint; the script prints the held-out 'in'
``--metric`` (``acc``, or ``wg_acc``: worst-group accuracy) per trial with the selected draw and step, the
mean +- standard error over trials (population std / sqrt(n), as collect_results), and each algorithm minus
``--vs`` with the standard error of the difference of two independent means. ``LABEL=DIR`` reads a folder
whose algorithms are shown as ``NAME (LABEL)``: runs of one algorithm under another protocol (SparseShared
with the probe head) are compared, never selected among. Several ``--selection``/``--metric`` print a table
for each pair; ``--summary`` prints instead one row per algorithm and held-out env with a column pair (mean,
minus ``--vs``) for each, the form of docs/real_images.md's tables.
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


def selected(df: pd.DataFrame, selection: str, metric: str, vs: str) -> dict[tuple[str, int], list[tuple[float, str]]]:
    """Per (algorithm, held-out env), ``vs`` first: each trial's held-out 'in' ``metric`` at the checkpoint
    ``selection`` picks, with the picked draw and step (``h1@300``)."""
    method = METHODS[selection]
    test_envs = sorted({t[0] for t in df["test_envs"] if len(t) == 1})
    out: dict[tuple[str, int], list[tuple[float, str]]] = {}
    for alg in sorted(df["algorithm"].unique(), key=lambda alg: (alg != vs, alg)):
        for te in test_envs:
            picks = []
            for _, g in df[df["algorithm"] == alg].groupby("trial_seed"):
                c = method.select(g, te)
                if c.record is not None:
                    picks.append((float(c.record[f"env{te}_in_{metric}"]),
                                  f"h{int(c.record['hparams_seed'])}@{int(c.record['step'])}"))
            if picks:
                out[(alg, te)] = picks
    return out


def cells(res: dict, key: tuple[str, int], vs: str) -> tuple[str, str]:
    """'mean ± SE' and 'minus vs ± SE' (blank for vs itself or where vs has no runs), in %."""
    m, se = mean_se([acc for acc, _ in res[key]])
    diff = ""
    if (vs, key[1]) in res and key[0] != vs:
        m0, se0 = mean_se([acc for acc, _ in res[(vs, key[1])]])
        diff = f"{100 * (m - m0):+.1f} ± {100 * math.hypot(se, se0):.1f}"
    return f"{100 * m:.1f} ± {100 * se:.1f}".replace("nan", "-"), diff.replace("nan", "-")


METRIC_NAMES = {"acc": "acc", "wg_acc": "worst group"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input_dir", action="append", required=True, help="DIR or LABEL=DIR (repeatable)")
    p.add_argument("--vs", default="ERM")
    p.add_argument("--selection", nargs="+", default=["training_domain"], choices=sorted(METHODS))
    p.add_argument("--metric", nargs="+", default=["acc"], choices=list(METRIC_NAMES))
    p.add_argument("--summary", action="store_true",
                   help="one row per algorithm and held-out env, a column pair per selection and metric "
                        "(the tables of docs/real_images.md); else a per-trial table for each")
    p.add_argument("--trials", type=int, nargs="+", help="only these trial seeds (default: every trial)")
    p.add_argument("--draws", type=int, nargs="+", help="only these hparam draws (0: defaults; default: every draw)")
    a = p.parse_args()
    df = keep_runs(read(a.input_dir), a.trials, a.draws)
    names = env_names(df)
    combos = [(s, m) for s in a.selection for m in a.metric]
    res = {combo: selected(df, *combo, a.vs) for combo in combos}
    if a.summary:
        head = [f"{s.replace('_', '-')}: {METRIC_NAMES[m]}" if i == 0 else METRIC_NAMES[m]
                for s in a.selection for i, m in enumerate(a.metric)]
        print("| algorithm | held out | trials | " + " | ".join(f"{h} | - {a.vs}" for h in head) + " |")
        print("|---|---|---|" + "---|---|" * len(head))
        for key in res[combos[0]]:
            row = [c for combo in combos for c in (cells(res[combo], key, a.vs) if key in res[combo] else ("", ""))]
            print(f"| {key[0]} | {names.get(key[1], key[1])} | {len(res[combos[0]][key])} | " + " | ".join(row) + " |")
        return
    for n, (selection, metric) in enumerate(combos):
        print(("\n" if n else "") + f"{METHODS[selection].title}, held-out env"
              f"{' worst-group' if metric == 'wg_acc' else ''} accuracy (%)\n")
        print("| algorithm | held-out env | per trial (selected draw@step) | mean ± SE | minus " + a.vs + " ± SE |")
        print("|---|---|---|---|---|")
        for key, picks in res[(selection, metric)].items():
            notes = ", ".join(f"{100 * acc:.1f} ({where})" for acc, where in picks)
            print(f"| {key[0]} | {names.get(key[1], key[1])} | {notes} | " + " | ".join(cells(res[(selection, metric)], key, a.vs)) + " |")


if __name__ == "__main__":
    cli(main)()
