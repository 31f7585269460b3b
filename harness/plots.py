"""Plots of a sweep's records (``python -m harness.collect_results`` draws them; ``--no_plots`` skips them).

- ``curves_<dataset>.png``: per algorithm, the mean over runs of the out-split accuracy, the loss, DCI,
  MCC and few-shot accuracy at each checkpoint, plus the values algorithms declare as curves;
- ``hparam_<dataset>_<name>.png``: the final DCI disentanglement (or mean out accuracy) against every
  numeric hparam that varies;
- ``<key>_<run>.png``: each matrix-valued log an algorithm declares as a heatmap, at the run's last
  checkpoint.

An algorithm declares what is worth plotting among its logged values with a class attribute
``PLOT_LOGS = {"record_key": "curve" | "heatmap"}``, and what a heatmap's rows and columns are with
``PLOT_AXES = {"record_key": ("rows", "columns")}`` (e.g. ``("task", "feature")``); the engine names no
algorithm's logs. A curve panel with fewer than two points (e.g. DCI computed at the last checkpoint only)
is left out: one point on a step axis shows nothing; titles are wrapped to stay inside the figure.
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


@functools.lru_cache(maxsize=None)
def plot_axes(algorithm: str) -> dict[str, tuple[str, str]]:
    """The algorithm class's ``PLOT_AXES``: what a declared heatmap's rows and columns are ({} if none)."""
    from harness.registry import ALGORITHMS

    try:
        axes = getattr(ALGORITHMS.get(algorithm), "PLOT_AXES", None) or {}
    except Exception:  # plot_logs has warned already
        return {}
    return {k: (str(v[0]), str(v[1])) for k, v in axes.items() if isinstance(v, (tuple, list)) and len(v) == 2}


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
    fig = curves_figure(plt, dataset, ddf)
    return [] if fig is None else [save(fig, plt, out_dir / f"curves_{slug(dataset)}.png")]


def curve_panels(ddf) -> dict[str, Any]:
    """metric -> mean per (algorithm, step), for the metrics with at least two points to draw."""
    panels = {}
    for name, values in curve_metrics(ddf).items():
        per_step = ddf.assign(value=values).groupby(["algorithm", "step"])["value"].mean().dropna()
        if per_step.index.get_level_values("step").nunique() >= 2:
            panels[name] = per_step
    return panels


def curves_figure(plt, dataset: str, ddf):
    """One panel per metric with two or more checkpoints (None when no metric has two)."""
    panels = curve_panels(ddf)
    if not panels:
        return None
    colors = {a: f"C{i}" for i, a in enumerate(sorted(ddf["algorithm"].unique()))}  # one colour per algorithm
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False, layout="constrained")
    for ax, (name, per_step) in zip(axes[0], panels.items()):
        for algorithm, curve in per_step.groupby(level="algorithm"):
            ax.plot(curve.index.get_level_values("step"), curve.values, marker=".", label=algorithm,
                    color=colors[algorithm])
        ax.set(xlabel="step", ylabel=name, title=name)
    axes[0][0].legend()
    fig.suptitle(f"{dataset}: mean over runs at each checkpoint")
    return fig


def plot_heatmaps(plt, df, key: str, out_dir: Path) -> list[Path]:
    """One heatmap per run of the matrix logged as ``key``, at the run's last checkpoint that has it."""
    written = []
    for run, rdf in df[df[key].map(lambda u: isinstance(u, list) and len(u) > 0)].groupby("run"):
        fig = heatmap_figure(plt, rdf, key, run)
        written.append(save(fig, plt, out_dir / f"{slug(key)}_{slug(run)}.png"))
    return written


def heatmap_figure(plt, rdf, key: str, run: str):
    """The matrix ``key`` of one run's last checkpoint that has it; axes named by the algorithm's ``PLOT_AXES``."""
    import textwrap

    last = rdf.sort_values("step").iloc[-1]
    matrix = last[key]
    rows, columns = plot_axes(str(last["algorithm"])).get(key, ("row", "column"))
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    im = ax.imshow(matrix, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label=key)
    ax.set(xlabel=f"{columns} ({len(matrix[0])})", ylabel=f"{rows} ({len(matrix)})")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    title = f"{key}: {last['algorithm']} on {last['dataset']}, step {last['step']} ({run})"
    ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=10)
    return fig


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
            if (x[idx].notna() & y[idx].notna()).any():  # an algorithm without this hparam: not in the legend
                ax.scatter(x[idx], y[idx], label=algorithm)
        ax.set(xlabel=col.removeprefix("hparams."), ylabel=name, title=f"{dataset}: final checkpoint of each run")
        if x.min() > 0 and x.max() / x.min() > 20:
            ax.set_xscale("log")
        ax.legend()
        written.append(save(fig, plt, out_dir / f"hparam_{slug(dataset)}_{slug(col.removeprefix('hparams.'))}.png"))
    return written


def save(fig, plt, path: Path) -> Path:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
