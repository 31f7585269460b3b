"""Correlation of two recorded quantities over a sweep's runs:
``python -m harness.correlate --input_dir results/sharing_vs_dci``.

By default it asks the question of Fumero et al. (arXiv 2304.07939, Sec. 4.1), who report a
Pearson correlation of 0.947 between feature sharing and DCI disentanglement: over the final
checkpoints of the runs, per dataset, how does the realised sharing ``probe_sharing`` relate
to ``dci_disentanglement``? SparseShared records ``probe_sharing = 1 - H(p) / log d``, with
``p`` the distribution of head importance over the d features on a fixed probe batch of tasks
(1: every task uses the same feature; 0: importance spread evenly over all features).

Prints, per dataset, the number of runs, Pearson's r with its two-sided p-value, and Spearman's
rho; writes a scatter plot with one panel per dataset, by default to
``results/plots/<input dir name>_<x>_vs_<y>.png`` under the current directory (never into the input
directory, which may be records kept in the repository).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.errors import UserError, cli


def correlations(df, x: str, y: str):
    """One row per dataset: n, Pearson r and p, Spearman rho over the runs' final checkpoints."""
    import pandas as pd
    from scipy import stats

    from harness.selection import final_checkpoints

    for col in (x, y):
        if col not in df.columns:
            raise UserError(f"no run records {col!r}; recorded columns include: "
                            f"{', '.join(sorted(c for c in df.columns if not c.startswith(('env', 'hparams.'))))}")
    final = final_checkpoints(df).dropna(subset=[x, y])
    rows = []
    for dataset, ddf in final.groupby("dataset"):
        n = len(ddf)
        constant = ddf[x].nunique() < 2 or ddf[y].nunique() < 2
        r, p = (float("nan"), float("nan")) if n < 3 or constant else stats.pearsonr(ddf[x], ddf[y])
        rho = float("nan") if n < 3 or constant else stats.spearmanr(ddf[x], ddf[y]).statistic
        rows.append(dict(dataset=dataset, runs=n, pearson_r=float(r), p_value=float(p), spearman_rho=float(rho)))
    if not rows:
        raise UserError(f"no finished run records both {x!r} and {y!r}")
    return pd.DataFrame(rows), final


def scatter(final, x: str, y: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import SymLogNorm

    groups = list(final.groupby("dataset"))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.8), squeeze=False)
    for ax, (dataset, ddf) in zip(axes[0], groups):
        color = ddf["hparams.beta"] if "hparams.beta" in ddf.columns and ddf["hparams.beta"].notna().all() else None
        norm = SymLogNorm(linthresh=1e-3, vmin=0, vmax=max(float(color.max()), 1e-3)) if color is not None else None
        points = ax.scatter(ddf[x], ddf[y], c=color, cmap="viridis", norm=norm)  # beta spans decades, 0 included
        if color is not None:
            fig.colorbar(points, ax=ax, label="beta")
        ax.set(xlabel=x, ylabel=y, title=f"{dataset} ({len(ddf)} runs)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def default_plot(input_dir: Path, x: str, y: str) -> Path:
    from harness.plots import slug

    return Path("results") / "plots" / f"{slug(input_dir.resolve().name)}_{slug(x)}_vs_{slug(y)}.png"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.correlate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_dir", default="results/sharing_vs_dci", help="directory searched for */results.jsonl")
    p.add_argument("--x", default="probe_sharing", help="a recorded value (final checkpoint of each run)")
    p.add_argument("--y", default="dci_disentanglement", help="a recorded value (final checkpoint of each run)")
    p.add_argument("--algorithm", default=None, help="only runs of this algorithm")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="scatter plot path (default: results/plots/<INPUT_DIR name>_X_vs_Y.png)")
    return p


def main(argv: list[str] | None = None) -> None:
    def run() -> None:
        from tabulate import tabulate

        from harness.records import keep_runs, load_records, records_frame

        args = build_parser().parse_args(argv)
        records, stats = load_records(Path(args.input_dir))
        print(stats.summary(), file=sys.stderr)
        df = keep_runs(records_frame(records))
        if args.algorithm:
            df = df[df["algorithm"] == args.algorithm]
            if df.empty:
                raise UserError(f"no finished runs of {args.algorithm} below {args.input_dir}")
        table, final = correlations(df, args.x, args.y)
        print(f"{args.x} vs {args.y}, final checkpoint of each run:")
        print(tabulate(table.values.tolist(), headers=list(table.columns), floatfmt=".3f"))
        plot = Path(args.plot) if args.plot else default_plot(Path(args.input_dir), args.x, args.y)
        try:
            scatter(final, args.x, args.y, plot)
        except OSError as e:  # a folder that cannot be made (a file in the way, read-only, ...)
            raise UserError(f"cannot write --plot {plot}: {e.strerror or e} ({e.filename or plot})") from None
        print(f"wrote {plot}", file=sys.stderr)

    cli(run)()


if __name__ == "__main__":
    main()
