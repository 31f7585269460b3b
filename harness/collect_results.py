"""Tables and plots from a sweep: ``python -m harness.collect_results [--input_dir results/]``.

Reads every ``*/results.jsonl`` below the input directory, applies the model-selection
methods of ``harness.selection`` per (dataset, algorithm, test env, trial seed), and prints
one table per dataset, selection method and metric: rows are algorithms, columns the test
environments and their average, cells ``mean ± stderr`` over trial seeds. As in DomainBed's
``collect_results.py`` (Gulrajani & Lopez-Paz, arXiv 2007.01434) the standard error is
``std / sqrt(n)`` with the population std (so a single trial shows ± 0.0), and ``Avg`` is the
mean of the column means; its error is over the trials that have every test environment.
Runs without test environments get one table per dataset and selection, one column per metric.

Cells that cannot be computed show ``X``; cells averaged over fewer trial seeds than the
dataset has show ``*``. The footer of each table says why.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import selection as sel
from harness.errors import UserError, cli

RESULTS, DONE = "results.jsonl", "done"
# metric -> title; all are fractions in [0, 1] and are shown x100 with one decimal
METRICS = {
    "acc": "accuracy (%)",
    "wg_acc": "worst-group accuracy (%)",
    "dci_disentanglement": "DCI disentanglement (x100)",
    "dci_completeness": "DCI completeness (x100)",
    "dci_informativeness": "DCI informativeness (x100)",
    "mcc": "MCC (x100)",
    "fewshot_acc": "few-shot accuracy (%)",
    "fewshot_ci95": "few-shot 95% CI half-width (%)",
    "task_acc": "accuracy on new tasks, held-out images (%)",
    "ood_task_acc": "accuracy on new tasks of held-out factor combinations (%)",
}
SHORT = {"acc": "Acc", "wg_acc": "WG acc", "dci_disentanglement": "DCI D", "dci_completeness": "DCI C",
         "dci_informativeness": "DCI I", "mcc": "MCC", "fewshot_acc": "Few-shot", "fewshot_ci95": "Few-shot CI95",
         "task_acc": "Task acc", "ood_task_acc": "OOD task acc"}
NO_TEST_ENV = "none"  # the column/test_env label of runs without test environments


# --- reading ------------------------------------------------------------------------------
@dataclass
class LoadStats:
    """What was read and what was skipped, for the summary line."""

    runs: int = 0
    records: int = 0
    corrupt_lines: int = 0
    corrupt_files: int = 0
    unfinished: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"read {plural(self.records, 'record')} from {plural(self.runs, 'run')}; skipped "
                f"{plural(self.corrupt_lines, 'corrupt line')} in {plural(self.corrupt_files, 'file')}, "
                f"{plural(len(self.unfinished), 'unfinished run')}")


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """Checkpoint records of one file and the number of lines that are not one (truncated, corrupt)."""
    records, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict) and "step" in record and isinstance(record.get("args"), dict):
            records.append(record)
        else:
            bad += 1
    return records, bad


def load_records(input_dir: Path) -> tuple[list[dict], LoadStats]:
    """Records of every finished run below ``input_dir``; each gets ``run`` (its directory)."""
    if not input_dir.is_dir():
        raise UserError(f"input directory {input_dir} does not exist")
    files = sorted(input_dir.rglob(RESULTS))
    if not files:
        raise UserError(f"no {RESULTS} below {input_dir}")
    stats, records = LoadStats(), []
    for path in files:
        run = path.parent.relative_to(input_dir).as_posix()
        if not (path.parent / DONE).exists():
            stats.unfinished.append(run)
            continue
        found, bad = read_jsonl(path)
        stats.corrupt_lines += bad
        stats.corrupt_files += bad > 0
        stats.runs += bool(found)
        stats.records += len(found)
        records += [{**r, "run": run} for r in found]
    if not records:
        raise UserError(f"no finished runs with records below {input_dir} ({stats.summary()})")
    return records, stats


def records_frame(records: list[dict]):
    """One row per checkpoint: the record's top-level values, ``args`` flattened (``test_envs`` as
    a tuple; an arg whose name is taken, like ``hparams``, becomes ``args.NAME``) and ``hparams.NAME``."""
    import pandas as pd

    rows = []
    for r in records:
        row = {k: v for k, v in r.items() if k not in ("args", "hparams")}
        for k, v in r["args"].items():
            row[f"args.{k}" if k in r else k] = v
        row.update({f"hparams.{k}": v for k, v in (r.get("hparams") or {}).items()})
        row["test_envs"] = tuple(sorted(row.get("test_envs") or ()))
        row.setdefault("trial_seed", 0)
        row.setdefault("hparams_seed", 0)
        rows.append(row)
    df = pd.DataFrame(rows)
    missing = [c for c in ("dataset", "algorithm") if c not in df.columns]
    if missing:
        raise UserError(f"records lack args {missing}; are these harness results?")
    return df


# --- selection and aggregation -------------------------------------------------------------
def dataset_metrics(df) -> list[str]:
    """The metrics a dataset's records declare (accuracy always)."""
    has = lambda col: col in df.columns and df[col].notna().any()  # noqa: E731
    wg = any(c.endswith("_wg_acc") and has(c) for c in df.columns)
    return [m for m in METRICS if m == "acc" or (m == "wg_acc" and wg) or has(m)]


def metric_value(record, metric: str, test_env: int | None) -> float | None:
    """A metric of one checkpoint: the test env's ``in`` split for accuracies, or without test env
    the mean ``out`` accuracy over environments; other metrics are read as they are."""
    if metric in ("acc", "wg_acc"):
        if test_env is not None:
            return finite(record.get(f"env{test_env}_in_{metric}"))
        envs = sel.env_indices(record.to_frame().T)
        values = [finite(record.get(f"env{i}_out_{metric}")) for i in envs]
        return None if not values or None in values else sum(values) / len(values)
    return finite(record.get(metric))


def finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def test_env_columns(df) -> list[int | None]:
    """Test environments of a dataset's runs (single test env), then ``None`` for runs without."""
    single = sorted({t[0] for t in df["test_envs"] if len(t) == 1})
    return single + ([None] if any(len(t) == 0 for t in df["test_envs"]) else [])


def methods_for(df, names: list[str] | None) -> list[type[sel.SelectionMethod]]:
    if names:
        return [sel.get_method(n) for n in names]
    wg = "wg_acc" in dataset_metrics(df)
    return [m for m in sel.METHODS.values() if wg or not m.needs_wg]


def trial_values(df, selections: list[str] | None = None):
    """One row per (dataset, selection, metric, algorithm, test_env, trial_seed): value or reason."""
    import pandas as pd

    rows = []
    for dataset, ddf in df.groupby("dataset"):
        metrics, trials = dataset_metrics(ddf), sorted(ddf["trial_seed"].unique())
        for method in methods_for(ddf, selections):
            for test_env in test_env_columns(ddf):
                if test_env is None and method.needs_test_env:
                    continue
                for algorithm in sorted(ddf["algorithm"].unique()):
                    for trial in trials:
                        group = runs_for(ddf, algorithm, trial, test_env)
                        choice = method.select(group, test_env)
                        for metric in metrics:
                            value, reason = chosen_value(choice, metric, test_env)
                            rows.append(dict(dataset=dataset, selection=method.name, metric=metric,
                                             algorithm=algorithm, test_env=test_env, trial_seed=trial,
                                             value=value, reason=reason))
    return pd.DataFrame(rows)


def runs_for(ddf, algorithm: str, trial: int, test_env: int | None):
    """DomainBed's grouping: the records of every run that holds ``test_env`` out."""
    held_out = ddf["test_envs"].map(lambda t: len(t) == 0 if test_env is None else test_env in t)
    return ddf[(ddf["algorithm"] == algorithm) & (ddf["trial_seed"] == trial) & held_out]


def chosen_value(choice: sel.Choice, metric: str, test_env: int | None) -> tuple[float | None, str]:
    if choice.record is None:
        return None, choice.reason
    value = metric_value(choice.record, metric, test_env)
    if value is None:
        return None, f"{metric} not recorded at the selected checkpoint (step {choice.record['step']})"
    return value, ""


@dataclass
class Cell:
    """mean ± stderr over trial seeds (already x100), ``n`` trials; ``note`` says what is missing."""

    mean: float | None
    stderr: float | None
    n: int
    mark: str = ""  # "X": cannot be computed, "*": fewer trials than the dataset has
    note: str = ""


def aggregate(values: list[float], scale: float = 100.0) -> tuple[float | None, float | None]:
    """DomainBed's ``format_mean``: mean and std/sqrt(n) (population std), times ``scale``."""
    if not values:
        return None, None
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    return scale * mean, scale * std / math.sqrt(n)


def make_cell(trials, n_trials: int) -> Cell:
    """A cell from the per-trial rows of one (algorithm, test env)."""
    ok = trials[trials["value"].notna()]
    mean, stderr = aggregate(list(ok["value"]))
    failed = trials[trials["value"].isna()]
    notes = [f"{reason} (trial_seed {', '.join(map(str, g['trial_seed']))})"
             for reason, g in failed.groupby("reason", sort=True)]
    mark = "X" if ok.empty else ("*" if len(ok) < n_trials else "")
    return Cell(mean, stderr, len(ok), mark, "; ".join(notes))


def average_cell(trials, cells: list[Cell]) -> Cell:
    """``Avg`` over test envs: mean of the column means; error over trials complete in every column."""
    if not cells or any(c.mark == "X" for c in cells):
        return Cell(None, None, 0, "X", "a test environment is X")
    per_trial = trials.groupby("trial_seed")["value"].agg(lambda v: v.mean() if v.notna().all() else None)
    complete = [v for v in per_trial if v is not None and not math.isnan(v)]
    _, stderr = aggregate(complete)
    mark = "*" if any(c.mark for c in cells) else ""
    return Cell(sum(c.mean for c in cells) / len(cells), stderr, len(complete), mark)


# --- tables -----------------------------------------------------------------------------
@dataclass
class Table:
    """A rendered-to-strings table plus its long-form cells (for CSV)."""

    dataset: str
    selection: str
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    footer: list[str] = field(default_factory=list)
    cells: list[dict] = field(default_factory=list)

    def add_row(self, algorithm: str, cells: list[Cell], columns: list[str], metrics: list[str], pm: str) -> None:
        self.rows.append([algorithm] + [format_cell(c, pm) for c in cells])
        for cell, column, metric in zip(cells, columns, metrics):
            self.cells.append(dict(dataset=self.dataset, selection=self.selection, metric=metric,
                                   algorithm=algorithm, column=column, mean=cell.mean, stderr=cell.stderr,
                                   n=cell.n, note=cell.note))
            if cell.note and column != "Avg":
                self.footer.append(f"{cell.mark} {algorithm}, {column}: {cell.note}")


def format_cell(cell: Cell, pm: str = "±") -> str:
    if cell.mean is None:
        return "X"
    err = "" if cell.stderr is None else f" {pm} {cell.stderr:.1f}"
    return f"{cell.mean:.1f}{err}{cell.mark}"


def env_names(ddf) -> dict[int, str]:
    """Names of environments if the records carry them (``environments``), else ``env{i}``."""
    for col in ("environments", "args.environments", "env_names"):
        if col in ddf.columns:
            names = next((v for v in ddf[col] if isinstance(v, list)), None)
            if names:
                return dict(enumerate(map(str, names)))
    return {}


def build_tables(df, selections: list[str] | None = None, pm: str = "±") -> list[Table]:
    """Every table: per dataset and selection, one per metric over test envs, one over metrics without."""
    trials = trial_values(df, selections)
    tables = []
    for (dataset, selection), tdf in trials.groupby(["dataset", "selection"], sort=False):
        ddf = df[df["dataset"] == dataset]
        n_trials, title = ddf["trial_seed"].nunique(), sel.METHODS[selection].title
        names = env_names(ddf)
        with_env = tdf[tdf["test_env"].notna()]
        for metric in METRICS:
            mdf = with_env[with_env["metric"] == metric]
            if not mdf.empty:
                tables.append(env_table(dataset, selection, f"{dataset} | {title} | {METRICS[metric]}",
                                        mdf, names, n_trials, pm))
        without = tdf[tdf["test_env"].isna()]
        if not without.empty:
            tables.append(metric_table(dataset, selection, f"{dataset} | {title} | no test environment "
                                       "(final checkpoint; accuracy = mean out-split accuracy, x100)",
                                       without, n_trials, pm))
    return tables


def env_table(dataset, selection, title, mdf, names, n_trials, pm) -> Table:
    envs = sorted(int(t) for t in mdf["test_env"].unique())
    columns = [names.get(t, f"env{t}") for t in envs] + ["Avg"]
    table, metric = Table(dataset, selection, title, ["Algorithm"] + columns), mdf["metric"].iloc[0]
    for algorithm, adf in mdf.groupby("algorithm"):
        cells = [make_cell(adf[adf["test_env"] == t], n_trials) for t in envs]
        cells.append(average_cell(adf, cells))
        table.add_row(algorithm, cells, columns, [metric] * len(columns), pm)
    return table


def metric_table(dataset, selection, title, tdf, n_trials, pm) -> Table:
    metrics = [m for m in METRICS if m in set(tdf["metric"])]
    table = Table(dataset, selection, title, ["Algorithm"] + [SHORT[m] for m in metrics])
    for algorithm, adf in tdf.groupby("algorithm"):
        cells = [make_cell(adf[adf["metric"] == m], n_trials) for m in metrics]
        table.add_row(algorithm, cells, [NO_TEST_ENV] * len(metrics), metrics, pm)
    return table


# --- rendering ----------------------------------------------------------------------------
def render_text(tables: list[Table]) -> str:
    from tabulate import tabulate

    parts = []
    for t in tables:
        body = tabulate(t.rows, headers=t.header, tablefmt="simple", disable_numparse=True)
        parts.append("\n".join([f"== {t.title} ==", body, *t.footer]))
    return "\n\n".join(parts) + "\n"


def render_markdown(tables: list[Table]) -> str:
    from tabulate import tabulate

    parts = []
    for t in tables:
        body = tabulate(t.rows, headers=t.header, tablefmt="pipe", disable_numparse=True)
        parts.append("\n".join([f"### {t.title}", "", body, *([""] + [f"- {f}" for f in t.footer] if t.footer else [])]))
    return "\n\n".join(parts) + "\n"


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(s: str) -> str:
    """Escape LaTeX's special characters; ``±`` becomes ``$\\pm$``."""
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in s).replace("±", r"$\pm$")


def render_latex(tables: list[Table]) -> str:
    """A standalone document (article + booktabs), one ``table`` per table, footers as notes."""
    out = [r"\documentclass{article}", r"\usepackage[margin=2cm]{geometry}", r"\usepackage{booktabs}",
           r"\begin{document}", ""]
    for t in tables:
        out += [r"\begin{table}[ht]", r"\centering\small", rf"\caption{{{latex_escape(t.title)}}}",
                rf"\begin{{tabular}}{{l{'c' * (len(t.header) - 1)}}}", r"\toprule",
                " & ".join(latex_escape(h) for h in t.header) + r" \\", r"\midrule"]
        out += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in t.rows]
        out += [r"\bottomrule", r"\end{tabular}"]
        if t.footer:
            out += [r"\par\footnotesize"] + [latex_escape(f) + r"\\" for f in t.footer]
        out += [r"\end{table}", ""]
    out += [r"\end{document}", ""]
    return "\n".join(out)


def render_csv(tables: list[Table]) -> str:
    """One row per dataset/selection/metric/algorithm/column: mean and stderr (x100), n, note."""
    import pandas as pd

    cells = pd.DataFrame([c for t in tables for c in t.cells],
                         columns=["dataset", "selection", "metric", "algorithm", "column", "mean", "stderr", "n", "note"])
    return cells.to_csv(index=False, float_format="%.4f", lineterminator="\n")


RENDERERS = {"text": render_text, "markdown": render_markdown, "latex": render_latex, "csv": render_csv}


# --- plots --------------------------------------------------------------------------------
def slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in s).strip("_")


def write_plots(df, out_dir: Path) -> list[Path]:
    """Training curves per dataset, SparseShared usage heatmaps per run, metric-vs-hparam scatters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for dataset, ddf in df.groupby("dataset"):
        written += plot_curves(plt, dataset, ddf, out_dir)
        written += plot_hparam_scatter(plt, dataset, ddf, out_dir)
    written += plot_usage(plt, df, out_dir)
    return written


def curve_metrics(ddf) -> dict[str, Any]:
    """What the curves show: mean out-split accuracy over all envs, then the other logged metrics."""
    metrics = {"mean out acc": sel.mean_out(ddf, sel.env_indices(ddf))}
    for col in ("loss", "dci_disentanglement", "mcc", "fewshot_acc", "probe_sharing"):
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


def plot_usage(plt, df, out_dir: Path) -> list[Path]:
    if "usage" not in df.columns:
        return []
    written = []
    for run, rdf in df[df["usage"].map(lambda u: isinstance(u, list) and len(u) > 0)].groupby("run"):
        last = rdf.sort_values("step").iloc[-1]
        fig, ax = plt.subplots(figsize=(6, 4))
        im = ax.imshow(last["usage"], aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(im, ax=ax, label="importance |W_t[j]|")
        ax.set(xlabel="feature", ylabel="task", title=f"{run} (step {last['step']})")
        written.append(save(fig, plt, out_dir / f"usage_{slug(run)}.png"))
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


# --- command line ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.collect_results",
                                description="Tables (text, markdown, latex, csv) and plots from the runs below --input_dir.")
    p.add_argument("--input_dir", default="results", help="directory searched recursively for */results.jsonl")
    p.add_argument("--format", choices=sorted(RENDERERS), default="text")
    p.add_argument("--latex", action="store_const", const="latex", dest="format", help="alias of --format latex")
    p.add_argument("--output", default=None, help="write the tables to this file instead of stdout")
    p.add_argument("--selection", nargs="+", default=None, metavar="NAME",
                   help=f"selection methods (default: all that apply): {', '.join(sel.METHODS)}")
    p.add_argument("--plots", default=None, metavar="DIR",
                   help="write PNG plots (training curves, SparseShared's feature-usage heatmaps, metric vs hparam) "
                        "into DIR (default: INPUT_DIR/plots)")
    p.add_argument("--no_plots", action="store_true", help="tables only")
    return p


def collect(args: argparse.Namespace) -> str:
    """Read, select, render; returns the rendered tables (and writes plots when asked)."""
    for name in args.selection or []:
        sel.get_method(name)  # unknown names fail before any work
    records, stats = load_records(Path(args.input_dir))
    print(stats.summary(), file=sys.stderr)
    df = records_frame(records)
    text = RENDERERS[args.format](build_tables(df, args.selection))
    if not args.no_plots:
        plots = Path(args.plots or Path(args.input_dir) / "plots")
        written = write_plots(df, plots)
        print(f"wrote {plural(len(written), 'plot')} to {plots}", file=sys.stderr)
    return text


def main(argv: list[str] | None = None) -> None:
    def run() -> None:
        args = build_parser().parse_args(argv)
        text = collect(args)
        if args.output:
            Path(args.output).write_text(text)
        else:
            sys.stdout.write(text)

    cli(run)()


if __name__ == "__main__":
    main()
