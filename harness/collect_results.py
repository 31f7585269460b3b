"""Tables from a sweep: ``python -m harness.collect_results [--input_dir results/]``.

Reads every ``*/results.jsonl`` below the input directory, applies the model-selection
methods of ``harness.selection`` per (dataset, algorithm, test env, trial seed), and prints
one table per dataset, selection method and metric: rows are algorithms, columns the test
environments and their average, cells ``mean ± stderr`` over trial seeds. As in DomainBed's
``collect_results.py`` (Gulrajani & Lopez-Paz, arXiv 2007.01434) the standard error is
``std / sqrt(n)`` with the population std, and ``Avg`` is the mean of the column means; its error is
over the trials that have every test environment. A cell of a single trial shows no error (one
trial says nothing about the spread). Runs without test environments get one table per dataset
and selection, one column per metric. A dataset whose runs have different lengths gets separate
tables per length (``Sprites (200 steps)``): their checkpoints are not comparable.

Cells that cannot be computed show ``X``; cells averaged over fewer trial seeds than the
dataset has show ``*``. The footer of each table says why. Plots: ``harness/plots.py``.

Runs on a dataset's official splits (WILDS' protocol, records with ``protocol: "wilds"``) get one table
per dataset instead: the checkpoint and hparams draw selected on the OOD validation split
(``harness.selection.OfficialValidation``), columns the official metrics of every evaluation split.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import selection as sel
from harness.errors import UserError, cli
from harness.records import LoadStats, keep_runs, load_records, plural, read_jsonl, records_frame  # noqa: F401 (API)

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


def methods_for(df, names: list[str] | None, protocol: str = "domainbed") -> list[type[sel.SelectionMethod]]:
    """The selection methods of ``protocol`` that apply (``names``: those of them the user asked for)."""
    methods = [sel.get_method(n) for n in names] if names else list(sel.METHODS.values())
    wg = "wg_acc" in dataset_metrics(df)
    return [m for m in methods if m.protocol == protocol and (wg or not m.needs_wg or names)]


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
                            value, reason = chosen_value(costly_choice(method, group, test_env, metric, choice),
                                                         metric, test_env)
                            rows.append(dict(dataset=dataset, selection=method.name, metric=metric,
                                             algorithm=algorithm, test_env=test_env, trial_seed=trial,
                                             value=value, reason=reason))
    return pd.DataFrame(rows)


# Metrics computed every --dci_freq checkpoints (and at the last), not at every checkpoint.
COSTLY = ("dci_disentanglement", "dci_completeness", "dci_informativeness", "mcc", "fewshot_acc", "fewshot_ci95",
          "task_acc", "ood_task_acc")


def costly_choice(method: type[sel.SelectionMethod], group, test_env: int | None, metric: str,
                  choice: sel.Choice) -> sel.Choice:
    """The checkpoint a metric is read from: for a costly metric, ``method``'s choice among the checkpoints
    that recorded it (the same checkpoint whenever the unrestricted choice has it), else ``choice``."""
    if metric not in COSTLY or metric not in group.columns:
        return choice
    if choice.record is not None and finite(choice.record.get(metric)) is not None:
        return choice
    return method.select(group[group[metric].notna()], test_env)


def costly_footer(selection: str, metric: str) -> list[str]:
    """The footer line of a costly metric's table under a method that picks among checkpoints."""
    if metric not in COSTLY or selection in ("oracle", "last"):  # these read the last checkpoint, which has it
        return []
    return [f"{SHORT[metric]}: selected among the checkpoints that recorded it (every --dci_freq checkpoints "
            "and the last)"]


def prune_tables(tables: list[Table]) -> tuple[list[Table], str]:
    """Tables worth printing and one line on the others: a table whose cells are all X is left out with its
    reason, and a table identical to an earlier one of another selection method (without a held-out
    environment training-domain validation and last checkpoint both read the final checkpoint) is merged
    into it (``training-domain validation = last checkpoint``)."""
    kept: list[Table] = []
    empty: dict[str, list[str]] = {}
    for t in tables:
        if t.cells and all(c["mean"] is None for c in t.cells):
            import re

            notes = sorted({re.sub(r" \(trial_seed [^)]*\)", "", n).strip()
                            for c in t.cells if c["note"] and c["note"] != "a test environment is X"
                            for n in c["note"].split(";")})
            key = f"{sel.METHODS[t.selection].title} on {t.dataset}" + (f" ({notes[0]}" + (", ..." if len(notes) > 1
                                                                                           else "") + ")" if notes else "")
            empty.setdefault(key, []).append(t.title)
            continue
        no_test_env = all(c["column"] == NO_TEST_ENV for c in t.cells)
        twin = next((k for k in kept if no_test_env and k.dataset == t.dataset and k.selection != t.selection
                     and k.header == t.header and k.rows == t.rows and k.footer == t.footer
                     and k.title.replace(sel.METHODS[k.selection].title, "") ==
                     t.title.replace(sel.METHODS[t.selection].title, "")), None)
        if twin is not None:
            twin.title = twin.title.replace(sel.METHODS[twin.selection].title,
                                            f"{sel.METHODS[twin.selection].title} = {sel.METHODS[t.selection].title}", 1)
            continue
        kept.append(t)
    if not empty:
        return kept, ""
    parts = [f"{len(titles)} x {key}" for key, titles in empty.items()]
    return kept, (f"left out {plural(sum(map(len, empty.values())), 'table')} whose cells are all X: "
                  + "; ".join(parts))


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
    """DomainBed's ``format_mean``: mean and std/sqrt(n) (population std), times ``scale``; no error for n = 1."""
    if not values:
        return None, None
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    return scale * mean, (scale * std / math.sqrt(n) if n > 1 else None)


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
    err = "" if cell.stderr is None or cell.n < 2 else f" {pm} {cell.stderr:.1f}"
    return f"{cell.mean:.1f}{err}{cell.mark}"


def env_names(ddf) -> dict[int, str]:
    """Names of environments if the records carry them (``environments``), else ``env{i}``."""
    for col in ("environments", "args.environments", "env_names"):
        if col in ddf.columns:
            names = next((v for v in ddf[col] if isinstance(v, list)), None)
            if names:
                return dict(enumerate(map(str, names)))
    return {}


def protocol_of(df):
    """Each record's protocol: ``wilds`` for runs on a benchmark's official splits, else ``domainbed``."""
    return df["protocol"].fillna("domainbed") if "protocol" in df.columns else df["step"].map(lambda _: "domainbed")


def build_tables(df, selections: list[str] | None = None, pm: str = "±") -> list[Table]:
    """Every table: DomainBed-protocol runs per dataset and selection (one per metric over test envs, one
    over metrics without); runs on official splits (WILDS) one per dataset (:func:`official_tables`)."""
    official = protocol_of(df) == "wilds"
    return domainbed_tables(df[~official], selections, pm) + official_tables(df[official], selections, pm)


def domainbed_tables(df, selections: list[str] | None, pm: str) -> list[Table]:
    if df.empty:
        return []
    trials = trial_values(df, selections)
    if trials.empty:
        return []
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
    table.footer += costly_footer(selection, metric)
    return table


def metric_table(dataset, selection, title, tdf, n_trials, pm) -> Table:
    metrics = [m for m in METRICS if m in set(tdf["metric"])]
    table = Table(dataset, selection, title, ["Algorithm"] + [SHORT[m] for m in metrics])
    for algorithm, adf in tdf.groupby("algorithm"):
        cells = [make_cell(adf[adf["metric"] == m], n_trials) for m in metrics]
        table.add_row(algorithm, cells, [NO_TEST_ENV] * len(metrics), metrics, pm)
    return table


def official_tables(df, selections: list[str] | None, pm: str) -> list[Table]:
    """WILDS' protocol: per dataset, rows are algorithms, columns the official metrics of every evaluation
    split (``val adj_acc_avg``, ``test acc_wg``, ...) at the checkpoint and hparams draw selected on the
    records' ``select_on`` (:class:`harness.selection.OfficialValidation`); cells mean ± stderr over trial seeds."""
    import pandas as pd

    tables = []
    for method in methods_for(df, selections, "wilds") if not df.empty else []:
        for dataset, ddf in df.groupby("dataset"):
            first = ddf.iloc[0]
            columns = [f"{split}/{metric}" for split in first["eval_splits"] for metric in first["official_metrics"]]
            trials, n_trials = sorted(ddf["trial_seed"].unique()), ddf["trial_seed"].nunique()
            header = [c.replace("/", " ") for c in columns]
            table = Table(dataset, method.name, f"{dataset} | {method.title} ({first['select_on']}) | "
                          "official metrics (x100)", ["Algorithm"] + header)
            for algorithm, adf in ddf.groupby("algorithm"):
                rows = []
                for trial in trials:
                    choice = method.select(adf[adf["trial_seed"] == trial], None)
                    for column in columns:
                        value, reason = chosen_value(choice, column, None)
                        rows.append(dict(column=column, trial_seed=trial, value=value, reason=reason))
                rows = pd.DataFrame(rows)
                cells = [make_cell(rows[rows["column"] == c], n_trials) for c in columns]
                table.add_row(algorithm, cells, header, columns, pm)
            tables.append(table)
    return tables


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
                   help="write PNG plots (training curves, metric vs hparam, what algorithms declare in PLOT_LOGS) "
                        "into DIR (default: INPUT_DIR/plots)")
    p.add_argument("--no_plots", action="store_true", help="tables only")
    p.add_argument("--trials", type=int, nargs="+", metavar="SEED", help="only these trial seeds (default: every trial)")
    p.add_argument("--draws", type=int, nargs="+", metavar="SEED",
                   help="only these hparam draws (0: the defaults; default: every draw, selected among as DomainBed does)")
    return p


def collect(args: argparse.Namespace) -> str:
    """Read, select, render; returns the rendered tables (and writes plots when asked)."""
    for name in args.selection or []:
        sel.get_method(name)  # unknown names fail before any work
    records, stats = load_records(Path(args.input_dir))
    print(stats.summary(), file=sys.stderr)
    df = keep_runs(records_frame(records), args.trials, args.draws)
    tables, left_out = prune_tables(build_tables(df, args.selection))
    text = RENDERERS[args.format](tables)
    if left_out and args.format in ("text", "markdown"):
        text += f"\n{left_out}\n"
    elif left_out:
        print(left_out, file=sys.stderr)
    if not args.no_plots:
        from harness.plots import write_plots

        plots = Path(args.plots or Path(args.input_dir) / "plots")
        try:
            written = write_plots(df, plots)
        except OSError as e:  # e.g. a read-only results folder: the tables still matter
            print(f"warning: no plots written ({e.strerror or e}: {e.filename or plots}); "
                  "pass --plots DIR or --no_plots", file=sys.stderr)
        else:
            print(f"wrote {plural(len(written), 'plot')} to {plots}", file=sys.stderr)
    return text


def check_output(output: str | None) -> None:
    """--output's folder must exist before the tables are computed (they would be lost)."""
    if output is not None and not Path(output).resolve().parent.is_dir():
        raise UserError(f"--output {output}: folder {Path(output).parent} does not exist; create it first")
    if output is not None and Path(output).is_dir():
        raise UserError(f"--output {output} is a directory; give a file name")


def main(argv: list[str] | None = None) -> None:
    def run() -> None:
        args = build_parser().parse_args(argv)
        check_output(args.output)
        text = collect(args)
        if args.output:
            try:
                Path(args.output).write_text(text)
            except OSError as e:
                raise UserError(f"cannot write --output {args.output}: {e.strerror or e}") from None
        else:
            sys.stdout.write(text)

    cli(run)()


if __name__ == "__main__":
    main()
