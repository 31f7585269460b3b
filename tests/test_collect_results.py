"""harness.collect_results and harness.selection: golden outputs, selection rules, skip counts,
LaTeX escaping/compilation and plots. Regenerate the golden files with
``python tests/golden/regenerate.py`` (``--sweep`` to rebuild the sweep) and review the diff."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import require

from harness import selection as sel
from harness.collect_results import (Cell, Table, build_tables, latex_escape, load_records,
                                     records_frame, render_latex)

GOLDEN = Path(__file__).resolve().parent / "golden"
SWEEP = GOLDEN / "sweep"
FORMATS = {"text": "expected.txt", "markdown": "expected.md", "latex": "expected.tex", "csv": "expected.csv"}


# --- golden outputs -----------------------------------------------------------------------
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_format_matches_golden(cli, fmt, tmp_path):
    out = tmp_path / "tables"
    proc = cli("harness.collect_results", "--input_dir", str(SWEEP), "--format", fmt, "--output", str(out), "--no_plots")
    assert out.read_text() == (GOLDEN / FORMATS[fmt]).read_text(), \
        f"{fmt} output differs from {FORMATS[fmt]}; if intended, run python tests/golden/regenerate.py"
    assert proc.stdout == ""


def test_latex_flag_is_an_alias_and_stdout_is_default(cli):
    proc = cli("harness.collect_results", "--input_dir", str(SWEEP), "--latex", "--no_plots")
    assert proc.stdout == (GOLDEN / "expected.tex").read_text()


def test_skip_counts_are_reported(cli):
    proc = cli("harness.collect_results", "--input_dir", str(SWEEP), "--no_plots")
    assert "read 87 records from 29 runs; skipped 1 corrupt line in 1 file, 1 unfinished run" in proc.stderr


def test_missing_runs_show_x_and_footer():
    text = (GOLDEN / "expected.txt").read_text()
    assert "* SparseShared, env1: missing runs: test_envs [1] (trial_seed 1)" in text
    assert "X SparseShared, env0: missing runs: test_envs [0, 1], [0, 2] (trial_seed 0, 1)" in text
    md = (GOLDEN / "expected.md").read_text()
    assert "| SparseShared | X " in md


def test_partial_and_corrupt_files(tmp_path):
    run = tmp_path / "a" / "run"
    shutil.copytree(SWEEP / "SyntheticLinear" / "ERM_te0_t0_h0", run)
    with open(run / "results.jsonl", "a") as f:
        f.write('{"step": 400, "env0_in')  # killed mid-write
    shutil.copytree(SWEEP / "SyntheticLinear" / "ERM_te0_t0_h1", tmp_path / "b")
    (tmp_path / "b" / "done").unlink()
    records, stats = load_records(tmp_path)
    assert (stats.runs, stats.records, stats.corrupt_lines, stats.corrupt_files, stats.unfinished) == (1, 3, 1, 1, ["b"])
    assert stats.summary() == "read 3 records from 1 run; skipped 1 corrupt line in 1 file, 1 unfinished run"


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "no results.jsonl"),
    (lambda d: (d / "r").mkdir() or (d / "r" / "results.jsonl").write_text("{}\n"), "no finished runs"),
])
def test_user_errors(cli, tmp_path, setup, message):
    setup(tmp_path)
    proc = cli("harness.collect_results", "--input_dir", str(tmp_path), check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("harness.collect_results", "--input_dir", str(tmp_path / "nope"), check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = cli("harness.collect_results", "--input_dir", str(SWEEP), "--selection", "bogus", "--no_plots", check=False)
    assert proc.returncode == 2 and "unknown selection method 'bogus'" in proc.stderr


# --- selection methods on a constructed example --------------------------------------------
def rec(test_envs, hseed, step, accs, trial=0, **extra) -> dict:
    """A record with env{i}_{in,out}_acc = accs[i] (a pair (in, out) or one value for both)."""
    r = {"step": step, "args": {"dataset": "D", "algorithm": "A", "test_envs": list(test_envs),
                                "hparams_seed": hseed, "trial_seed": trial}, "hparams": {"lr": 10.0 ** -hseed}}
    for i, a in enumerate(accs):
        r[f"env{i}_in_acc"], r[f"env{i}_out_acc"] = a if isinstance(a, tuple) else (a, a)
    return {**r, **extra, "run": f"te{test_envs}_h{hseed}"}


@pytest.fixture
def example() -> pd.DataFrame:
    """Test env 0. hparams 0 peaks on training-env validation at step 1; hparams 1 ends with the best
    test-env out accuracy (so the oracle picks it) but never beats hparams 0 on validation."""
    return records_frame([
        rec([0], 0, 1, [(0.50, 0.40), 0.90, 0.90]),
        rec([0], 0, 2, [(0.60, 0.45), 0.80, 0.80]),
        rec([0], 1, 1, [(0.55, 0.50), 0.70, 0.70]),
        rec([0], 1, 2, [(0.70, 0.90), 0.85, 0.85]),
    ])


def test_training_domain_validation_picks_best_checkpoint_and_hparams(example):
    choice = sel.TrainingDomainValidation.select(example, 0)
    assert (choice.record["hparams_seed"], choice.record["step"]) == (0, 1)
    assert choice.val == pytest.approx(0.90) and choice.record["env0_in_acc"] == 0.50


def test_oracle_uses_last_checkpoint_and_test_out_acc(example):
    choice = sel.OracleSelection.select(example, 0)
    assert (choice.record["hparams_seed"], choice.record["step"]) == (1, 2)
    assert choice.record["env0_in_acc"] == 0.70  # differs from training-domain validation's 0.50


def test_last_checkpoint(example):
    choice = sel.LastCheckpoint.select(example, 0)
    assert (choice.record["hparams_seed"], choice.record["step"]) == (1, 2)  # 0.85 > 0.80 at the last step


def test_leave_one_out_needs_the_extra_runs(example):
    choice = sel.LeaveOneDomainOut.select(example, 0)
    assert choice.record is None and choice.reason == "missing runs: test_envs [0, 1], [0, 2]"
    assert sel.OracleSelection.select(example, None).reason == "no test env"


def test_leave_one_out_cross_validation(example):
    # With env v also held out, env{v}_in_acc scores (hparams, step): hparams 1 / step 1 wins.
    extra = [rec([0, v], h, s, [0.1, a, a]) for v in (1, 2) for h, s, a in
             [(0, 1, 0.3), (0, 2, 0.4), (1, 1, 0.8), (1, 2, 0.5)]]
    df = pd.concat([example, records_frame(extra)], ignore_index=True)
    choice = sel.LeaveOneDomainOut.select(df, 0)
    assert (choice.record["hparams_seed"], choice.record["step"], choice.val) == (1, 1, pytest.approx(0.8))
    assert choice.record["env0_in_acc"] == 0.55 and choice.record["test_envs"] == (0,)


def test_worst_group_validation():
    wg = lambda out: {"env1_out_wg_acc": out, "env1_in_wg_acc": out, "env0_in_wg_acc": 0.3, "env0_out_wg_acc": 0.3}  # noqa: E731
    df = records_frame([rec([0], 0, 1, [0.5, 0.9], **wg(0.2)), rec([0], 1, 1, [0.6, 0.7], **wg(0.6))])
    assert sel.WorstGroupValidation.select(df, 0).record["hparams_seed"] == 1
    assert sel.TrainingDomainValidation.select(df, 0).record["hparams_seed"] == 0
    assert sel.WorstGroupValidation.select(records_frame([rec([0], 0, 1, [0.5, 0.9])]), 0).record is None


def test_no_test_env_uses_final_checkpoint():
    df = records_frame([rec([], 0, 1, [0.9, 0.9], dci_disentanglement=0.1),
                        rec([], 0, 2, [0.6, 0.6], dci_disentanglement=0.4)])
    choice = sel.TrainingDomainValidation.select(df, None)
    assert choice.record["step"] == 2 and choice.record["dci_disentanglement"] == 0.4
    tables = build_tables(df, ["training_domain"])
    assert tables[0].header == ["Algorithm", "Acc", "DCI D"] and tables[0].rows == [["A", "60.0", "40.0"]]


def test_table_cells_mean_and_stderr_over_trials():
    df = records_frame([rec([0], 0, 1, [0.5, 0.9], trial=0), rec([0], 0, 1, [0.7, 0.9], trial=1)])
    table = build_tables(df, ["oracle"])[0]
    assert table.header == ["Algorithm", "env0", "Avg"]
    assert table.rows == [["A", "60.0 ± 7.1", "60.0 ± 7.1"]]  # std 0.1 / sqrt(2), DomainBed's format_mean
    assert table.cells[0]["mean"] == pytest.approx(60.0) and table.cells[0]["n"] == 2


def test_env_names_from_records():
    df = records_frame([rec([1], 0, 1, [0.5, 0.9], environments=["photo", "sketch"])])
    assert build_tables(df, ["oracle"])[0].header == ["Algorithm", "sketch", "Avg"]


# --- LaTeX --------------------------------------------------------------------------------
def test_latex_escapes_specials():
    assert latex_escape(r"a_b 5% & #1 $x$ {y} ~ ^ \ ±") == \
        r"a\_b 5\% \& \#1 \$x\$ \{y\} \textasciitilde{} \textasciicircum{} \textbackslash{} $\pm$"
    table = Table("My_Data", "oracle", "My_Data | 100% & more", ["Algorithm", "env_0 #1", "Avg"])
    table.add_row("Algo_{v2}", [Cell(50.0, 1.0, 2), Cell(50.0, 1.0, 2)], ["env_0 #1", "Avg"], ["acc", "acc"], "±")
    tex = render_latex([table])
    assert tex.startswith(r"\documentclass{article}") and r"\usepackage{booktabs}" in tex
    assert all(k in tex for k in (r"\toprule", r"\midrule", r"\bottomrule", r"\end{document}"))
    assert r"Algo\_\{v2\} & 50.0 $\pm$ 1.0 & 50.0 $\pm$ 1.0 \\" in tex
    assert r"Algorithm & env\_0 \#1 & Avg \\" in tex and r"My\_Data | 100\% \& more" in tex


def test_latex_compiles(tmp_path):
    require(None if shutil.which("pdflatex") else
            "pdflatex not installed (apt-get install texlive-latex-base texlive-latex-recommended)", "HARNESS_REQUIRE_LATEX")
    shutil.copy(GOLDEN / "expected.tex", tmp_path / "tables.tex")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "tables.tex"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "tables.pdf").stat().st_size > 0


# --- plots --------------------------------------------------------------------------------
def test_plots_are_written(cli, tmp_path):
    proc = cli("harness.collect_results", "--input_dir", str(SWEEP), "--format", "csv", "--plots", str(tmp_path))
    pngs = {p.name: p.stat().st_size for p in tmp_path.glob("*.png")}
    assert {"curves_SyntheticLinear.png", "curves_Waterbirds.png", "curves_Shapes3D.png",
            "usage_Shapes3D_SparseShared_t0_h0.png", "hparam_Shapes3D_lr.png", "hparam_Shapes3D_beta.png"} <= set(pngs)
    assert all(size > 1000 for size in pngs.values()) and f"wrote {len(pngs)} plots" in proc.stderr


def test_usage_heatmaps_are_written_by_default(cli, tmp_path):
    shutil.copytree(SWEEP / "Shapes3D", tmp_path / "Shapes3D")
    proc = cli("harness.collect_results", "--input_dir", str(tmp_path))
    heatmaps = sorted(p.name for p in (tmp_path / "plots").glob("usage_*.png"))
    assert heatmaps == [f"usage_Shapes3D_SparseShared_t{t}_h{h}.png" for t in (0, 1) for h in (0, 1)], heatmaps
    assert f"to {tmp_path / 'plots'}" in proc.stderr
    proc = cli("harness.collect_results", "--input_dir", str(tmp_path / "Shapes3D"), "--no_plots")
    assert "wrote" not in proc.stderr and not (tmp_path / "Shapes3D" / "plots").exists()


def test_collect_does_not_import_torch():
    code = "import sys, harness.collect_results, harness.selection; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# --- harness.correlate ----------------------------------------------------------------------
def test_correlate_reports_pearson_over_final_checkpoints(cli, tmp_path):
    """The golden Shapes3D SparseShared runs: r must equal scipy's on the final records."""
    from scipy import stats

    df = records_frame(load_records(SWEEP)[0])
    final = sel.final_checkpoints(df[df["dataset"] == "Shapes3D"]).dropna(subset=["probe_sharing"])
    r = stats.pearsonr(final["probe_sharing"], final["dci_disentanglement"]).statistic
    plot = tmp_path / "scatter.png"
    proc = cli("harness.correlate", "--input_dir", str(SWEEP), "--plot", str(plot))
    row = next(l for l in proc.stdout.splitlines() if l.startswith("Shapes3D"))
    assert row.split()[1] == str(len(final)) and float(row.split()[2]) == pytest.approx(r, abs=5e-4)
    assert plot.stat().st_size > 1000
    proc = cli("harness.correlate", "--input_dir", str(SWEEP), "--x", "nope", "--plot", str(plot), check=False)
    assert proc.returncode == 2 and "no run records 'nope'" in proc.stderr and "Traceback" not in proc.stderr


# --- newcomer findings ---------------------------------------------------------------------
def test_single_trial_shows_no_spread():
    table = build_tables(records_frame([rec([0], 0, 1, [0.5, 0.9])]), ["oracle"])[0]
    assert table.rows == [["A", "50.0", "50.0"]] and table.cells[0]["stderr"] is None


def test_runs_of_different_lengths_get_separate_tables():
    short = {**rec([0], 0, 2, [0.5, 0.9]), "run": "short"}
    long = [{**rec([0], 0, s, [0.7, 0.9]), "run": "long"} for s in (2, 10)]
    titles = [t.title for t in build_tables(records_frame([short, *long]), ["oracle"])]
    assert sorted(titles) == ["D (10 steps) | test-domain validation (oracle) | accuracy (%)",
                              "D (2 steps) | test-domain validation (oracle) | accuracy (%)"], titles


def test_input_that_is_a_file_is_one_clear_line(cli):
    path = SWEEP / "Shapes3D" / next(p.name for p in (SWEEP / "Shapes3D").iterdir()) / "results.jsonl"
    proc = cli("harness.collect_results", "--input_dir", str(path), check=False)
    assert proc.returncode == 2 and "is a file" in proc.stderr and "Traceback" not in proc.stderr


def test_read_only_plot_folder_warns_and_prints_the_tables(cli, tmp_path):
    shutil.copytree(SWEEP / "Shapes3D", tmp_path / "Shapes3D")
    blocker = tmp_path / "plots"
    blocker.write_text("a file where the plot folder would go")
    proc = cli("harness.collect_results", "--input_dir", str(tmp_path))
    assert "warning: no plots written" in proc.stderr and "Traceback" not in proc.stderr
    assert "== Shapes3D | training-domain validation" in proc.stdout


def test_plots_follow_what_algorithms_declare(monkeypatch):
    from harness import plots
    from harness.algorithms.erm import ERM

    monkeypatch.setattr(ERM, "PLOT_LOGS", {"my_matrix": "heatmap", "my_stat": "curve", "x": "bogus"}, raising=False)
    plots.plot_logs.cache_clear()
    try:
        df = records_frame([{**rec([0], 0, 1, [0.5, 0.9]), "args": {**rec([0], 0, 1, [0.5])["args"], "algorithm": "ERM"},
                             "my_matrix": [[1.0, 0.0]], "my_stat": 0.3}])
        assert plots.declared(df, "heatmap") == ["my_matrix"] and "my_stat" in plots.curve_metrics(df)
    finally:
        plots.plot_logs.cache_clear()


def test_correlate_default_plot_stays_out_of_the_input_dir(cli, tmp_path):
    shutil.copytree(SWEEP / "Shapes3D", tmp_path / "kept" / "Shapes3D")
    proc = cli("harness.correlate", "--input_dir", str(tmp_path / "kept"), cwd=str(tmp_path))
    assert not list((tmp_path / "kept").rglob("*.png"))
    assert (tmp_path / "results" / "plots" / "kept_probe_sharing_vs_dci_disentanglement.png").exists(), proc.stderr
