"""Plots of a sweep's records (``python -m harness.collect_results`` draws them; ``--no_plots`` skips them).

- ``curves_<dataset>.png``: per algorithm, the mean over runs of the out-split accuracy, the loss, DCI,
  MCC and few-shot accuracy at each checkpoint, plus the values algorithms declare as curves;
- ``hparam_<dataset>_<name>.png``: the final DCI disentanglement (or mean out accuracy) against every
  numeric hparam that varies;
- ``<key>_<run>.png``: each matrix-valued log an algorithm declares as a heatmap, at the run's last
  checkpoint.

An algorithm declares what is worth plotting among its logged values with a class attribute
``PLOT_LOGS = {"record_key": "curve" | "heatmap"}``; the engine names no algorithm's logs.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

from harness import selection as sel

PLOT_KINDS = ("curve", "heatmap")
# the engine's own metrics drawn as curves when a dataset records them
CURVES = ("loss", "dci_disentanglement", "mcc", "fewshot_acc")


def slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in s).strip("_")


@functools.lru_cache(maxsize=None)
def plot_logs(algorithm: str) -> dict[str, str]:
    """The algorithm class's ``PLOT_LOGS`` ({} for an algorithm that cannot be loaded here)."""
    from harness.registry import ALGORITHMS

    try:
        declared = getattr(ALGORITHMS.get(algorithm), "PLOT_LOGS", None)
    except Exception as e:  # records of an algorithm not installed here, or one that fails to import
        print(f"warning: no plots declared by {algorithm} ({type(e).__name__}: {e})", file=sys.stderr)
        return {}
    declared = declared or {}
    unknown = {k: v for k, v in declared.items() if v not in PLOT_KINDS}
    if unknown:
        print(f"warning: {algorithm}.PLOT_LOGS kinds must be one of {PLOT_KINDS}; ignored {unknown}", file=sys.stderr)
    return {k: v for k, v in declared.items() if v in PLOT_KINDS}


def declared(df, kind: str) -> list[str]:
    """Record keys that the algorithms of ``df`` declare as ``kind`` and that ``df`` holds."""
    keys: list[str] = []
    for algorithm in sorted(df["algorithm"].unique()):
        keys += [k for k, v in plot_logs(algorithm).items() if v == kind and k in df.columns and k not in keys]
    return keys


def write_plots(df, out_dir: Path) -> list[Path]:
    """Every plot of the records in ``df`` (a ``collect_results.records_frame``) into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for dataset, ddf in df.groupby("dataset"):
        written += plot_curves(plt, dataset, ddf, out_dir)
        written += plot_hparam_scatter(plt, dataset, ddf, out_dir)
    for key in declared(df, "heatmap"):
        written += plot_heatmaps(plt, df, key, out_dir)
    return written


def curve_metrics(ddf) -> dict[str, Any]:
    """What the curves show: mean out-split accuracy over all envs, then the other logged metrics."""
    metrics = {"mean out acc": sel.mean_out(ddf, sel.env_indices(ddf))}
    for col in (*CURVES, *declared(ddf, "curve")):
        if col in ddf.columns and ddf[col].notna().any():
            metrics[col] = ddf[col]
    return metrics


def plot_curves(plt, dataset: str, ddf, out_dir: Path) -> list[Path]:
    metrics = curve_metrics(ddf)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2), squeeze=False)
    for ax, (name, values) in zip(axes[0], metrics.items()):
        per_step = ddf.assign(value=values).groupby(["algorithm", "step"])["value"].mean()
        for algorithm, curve in per_step.groupby(level="algorithm"):
            ax.plot(curve.index.get_level_values("step"), curve.values, marker=".", label=algorithm)
        ax.set(xlabel="step", title=name)
    axes[0][0].legend()
    fig.suptitle(f"{dataset}: mean over runs")
    return [save(fig, plt, out_dir / f"curves_{slug(dataset)}.png")]


def plot_heatmaps(plt, df, key: str, out_dir: Path) -> list[Path]:
    """One heatmap per run of the matrix logged as ``key``, at the run's last checkpoint that has it."""
    written = []
    for run, rdf in df[df[key].map(lambda u: isinstance(u, list) and len(u) > 0)].groupby("run"):
        last = rdf.sort_values("step").iloc[-1]
        fig, ax = plt.subplots(figsize=(6, 4))
        im = ax.imshow(last[key], aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(im, ax=ax, label=key)
        ax.set(xlabel="column", ylabel="row", title=f"{run} (step {last['step']})")
        written.append(save(fig, plt, out_dir / f"{slug(key)}_{slug(run)}.png"))
    return written


def plot_hparam_scatter(plt, dataset: str, ddf, out_dir: Path) -> list[Path]:
    """Final-checkpoint metric (DCI D where recorded, else mean out acc) vs every numeric hparam that varies."""
    final = sel.final_checkpoints(ddf)
    name = "dci_disentanglement" if "dci_disentanglement" in final.columns else "mean out acc"
    y = final[name] if name in final.columns else sel.mean_out(final, sel.env_indices(final))
    written = []
    for col in [c for c in final.columns if c.startswith("hparams.")]:
        x = final[col]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x) or x.nunique() < 2:
            continue
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        for algorithm, idx in final.groupby("algorithm").groups.items():
            ax.scatter(x[idx], y[idx], label=algorithm)
        ax.set(xlabel=col.removeprefix("hparams."), ylabel=name, title=dataset)
        if x.min() > 0 and x.max() / x.min() > 20:
            ax.set_xscale("log")
        ax.legend()
        written.append(save(fig, plt, out_dir / f"hparam_{slug(dataset)}_{slug(col.removeprefix('hparams.'))}.png"))
    return written


def save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
