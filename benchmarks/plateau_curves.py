"""Training-domain validation curves, and whether each run has plateaued (docs/real_images.md,
docs/rotated_fmnist.md).

    python benchmarks/plateau_curves.py --input_dir docs/measured/colored_fmnist_plateau --output curve.png

For every finished run below --input_dir (its results.jsonl; unfinished runs are left out), the mean over
training environments of the 'out' (validation) accuracy at each checkpoint: what DomainBed's
training-domain selection reads (``harness.selection.mean_out``). The PNG has one
line per (algorithm, held-out environment), averaged over trials of the default hparams (hparams_seed 0),
with the held-out 'in' accuracy dashed; the same numbers are printed as a table. Then one line per run with
the plateau rule of docs/real_images.md: the mean of the last ``--window`` checkpoints is within
``--tolerance`` of the mean of the ``--window`` before; also the step from which the run stays within ``--band``
of that last mean, and the minutes its training steps took (``update min``: the records' ``step_time``, the mean
time of one ``update`` since the last checkpoint, times the steps; data loading and evaluation not counted).
The last lines count the runs that pass and sum the update time.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from harness.collect_results import env_names
from harness.errors import cli
from harness.records import keep_runs, load_records, records_frame
from harness.selection import env_indices, mean_out

if TYPE_CHECKING:
    import pandas as pd

Curve = list[tuple[int, float, float]]  # (step, training-domain validation accuracy, held-out 'in' accuracy)


def run_curve(run: "pd.DataFrame") -> Curve:
    """One run's curve in step order: training-domain validation as DomainBed's selection reads it
    (``harness.selection.mean_out`` over the training environments) and the held-out 'in' accuracy."""
    run = run.sort_values("step")
    test = list(run["test_envs"].iloc[0])
    val = mean_out(run, [i for i in env_indices(run) if i not in test])
    held = run[[f"env{i}_in_acc" for i in test]].mean(axis=1)
    return list(zip(run["step"].astype(int), val, held))


def update_seconds(run: "pd.DataFrame") -> float:
    """Seconds the run's training steps took: each record's mean ``step_time`` times the steps since the last."""
    run = run.sort_values("step")
    return float((run["step_time"] * run["step"].diff().fillna(run["step"])).sum())


def plateau(curve: Curve, window: int, tolerance: float) -> tuple[float, float, bool] | None:
    """(mean of the last ``window`` validation accuracies, mean of the ``window`` before, within ``tolerance``);
    None when the run has fewer than 2 * window checkpoints."""
    if len(curve) < 2 * window:
        return None
    last = sum(v for _, v, _ in curve[-window:]) / window
    before = sum(v for _, v, _ in curve[-2 * window:-window]) / window
    return last, before, abs(last - before) <= tolerance


def settled_from(curve: Curve, window: int, band: float) -> int:
    """The first step from which every validation accuracy stays within ``band`` of the last-``window`` mean."""
    last = sum(v for _, v, _ in curve[-window:]) / window
    step = curve[-1][0]
    for s, v, _ in reversed(curve):
        if abs(v - last) > band:
            break
        step = s
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input_dir", type=Path, required=True)
    p.add_argument("--output", type=Path, help="the PNG (default: none, tables only)")
    p.add_argument("--window", type=int, default=5, help="checkpoints per mean (default 5)")
    p.add_argument("--tolerance", type=float, default=0.01, help="largest change of the mean (default 0.01)")
    p.add_argument("--band", type=float, default=0.02,
                   help="a run has settled from the first step after which it stays within this of its last mean")
    p.add_argument("--draws", type=int, nargs="+", help="judge only runs of these hparam draws (default: all)")
    a = p.parse_args()

    df = keep_runs(records_frame(load_records(a.input_dir)[0]), draws=a.draws)
    names = env_names(df)
    runs = {run: (g.iloc[-1], run_curve(g), update_seconds(g)) for run, g in df.groupby("run")}
    mean: dict[tuple[str, int], dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for args, curve, _ in runs.values():
        if args["hparams_seed"] == 0:
            for step, val, held in curve:
                mean[(args["algorithm"], args["test_envs"][0])][step].append((val, held))

    print("| algorithm | held-out env | step | training-domain val acc | held-out acc | trials |")
    print("|---|---|---|---|---|---|")
    for (alg, te), by_step in sorted(mean.items()):
        for s in sorted(by_step):
            vals = by_step[s]
            print(f"| {alg} | {names.get(te, te)} | {s} | {sum(v for v, _ in vals) / len(vals):.3f} | "
                  f"{sum(h for _, h in vals) / len(vals):.3f} | {len(vals)} |")

    print(f"\n| run | last {a.window} | {a.window} before | within {a.band} of the last from step | update min | "
          f"plateau (within {a.tolerance}) |")
    print("|---|---|---|---|---|---|")
    passed = judged = 0
    for run, (_, curve, seconds) in runs.items():
        verdict = plateau(curve, a.window, a.tolerance)
        if verdict is None:
            print(f"| {Path(run).name} | - | - | - | {seconds / 60:.1f} | too few checkpoints ({len(curve)}) |")
            continue
        judged += 1
        passed += verdict[2]
        print(f"| {Path(run).name} | {verdict[0]:.3f} | {verdict[1]:.3f} | {settled_from(curve, a.window, a.band)} | "
              f"{seconds / 60:.1f} | {'yes' if verdict[2] else 'no'} |")
    print(f"\n{passed} of {judged} runs plateaued ({len(runs) - judged} with too few checkpoints)")
    print(f"training steps of the {len(runs)} runs: {sum(s for *_, s in runs.values()) / 3600:.2f} h of update time")

    if a.output:
        plot(mean, a.output, names)


def plot(mean: dict, output: Path, names: dict[int, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test_envs = sorted({t for _, t in mean})
    fig, axes = plt.subplots(1, len(test_envs), figsize=(5.5 * len(test_envs), 4), squeeze=False)
    for ax, t in zip(axes[0], test_envs):
        for (alg, te), by_step in sorted(mean.items()):
            if te != t:
                continue
            steps = sorted(by_step)
            line, = ax.plot(steps, [sum(v for v, _ in by_step[s]) / len(by_step[s]) for s in steps], label=alg)
            ax.plot(steps, [sum(h for _, h in by_step[s]) / len(by_step[s]) for s in steps], ls="--",
                    color=line.get_color(), alpha=0.6)
        held_out = f"'{names[t]}' (env {t})" if t in names else f"env {t}"
        ax.set_title(f"held out {held_out}\nsolid: training-domain validation, dashed: held-out", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    print(f"wrote {output}", file=sys.stderr)  # stdout is the tables


if __name__ == "__main__":
    cli(main)()
