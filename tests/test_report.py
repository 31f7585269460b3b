"""The sharing study's report (harness.report) on records written in the trainer's format."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]


def _write_run(root: Path, name: str, algorithm: str, hp: dict, seed: int, finals: dict, steps=(500, 1000),
               dataset: str = "SyntheticLinear"):
    run = root / name
    run.mkdir(parents=True)
    lines = []
    for i, step in enumerate(steps):
        scale = (i + 1) / len(steps)
        rec = {"step": step, "args": {"dataset": dataset, "algorithm": algorithm, "trial_seed": seed,
                                      "hparams_seed": 0, "test_envs": [], "steps": steps[-1]},
               "hparams": hp, **{k: v * scale if isinstance(v, float) else v for k, v in finals.items()}}
        lines.append(json.dumps(rec))
    (run / "results.jsonl").write_text("\n".join(lines) + "\n")
    (run / "done").write_text("")


def test_report_tables_correlations_and_plots(tmp_path):
    rng = np.random.default_rng(0)
    sharing, dci = [], []
    cells = [(0.3, b) for b in (0.0, 0.03, 0.1) for _ in range(3)] + [(a, b) for a in (0.1, 0.6) for b in (0.0, 0.1)]
    for i, (alpha, beta) in enumerate(cells):
        s = 0.1 + beta + 0.05 * rng.random()
        d = 0.6 + 2 * beta + 0.1 * rng.random()
        sharing.append(s)
        dci.append(d)
        hp = {"alpha": alpha, "beta": beta, "sharing": "reweighted", "feature_dim": 10}
        _write_run(tmp_path / "runs", f"ss{i}", "SparseShared", hp, i % 3,
                   {"dci_disentanglement": d, "dci_completeness": d - 0.05, "mcc": d + 0.1, "task_acc": 0.8,
                    "probe_sharing": s, "probe_sharing_counts": s / 2, "probe_mean_reuse": 0.3 + s,
                    "probe_features_used": 10 - i % 4, "probe_features_per_task": 3.0, "entropy": 2.0 - s})
    for i in range(3):
        _write_run(tmp_path / "runs", f"mt{i}", "MultiTask", {}, i, {"dci_disentanglement": 0.2 + 0.01 * i, "mcc": 0.5})
    (tmp_path / "runs" / "unfinished").mkdir()
    (tmp_path / "runs" / "unfinished" / "results.jsonl").write_text("")
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "harness.report", "--input_dir", str(tmp_path / "runs"),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = " ".join((out / "sharing.md").read_text().split())
    r = stats.pearsonr(sharing, dci).statistic
    assert f"| 13 | {r:+.2f} (p=" in text  # the headline correlation over all 13 runs
    assert "the training heads' sharing (with the training beta)**: r = " in text
    assert "alpha = 0.3" in text and "| SparseShared beta 0.1 | 3 |" in text
    assert f"r = {r:+.3f}" in text and "0.947" in text
    mt = [0.2, 0.21, 0.22]
    half = stats.t.ppf(0.975, 2) * np.std(mt, ddof=1) / np.sqrt(3)
    assert f"| MultiTask | 3 | {np.mean(mt):.3f} ± {half:.3f} |" in text
    for png in ("sharing_dci_vs_step.png", "sharing_phase.png", "sharing_vs_dci.png"):
        assert (out / png).stat().st_size > 1000


def test_report_missing_input_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness.report", "--input_dir", str(tmp_path / "nope"),
                           "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr


def test_report_image_datasets_and_transfer(tmp_path):
    """(d): each image dataset's runs by algorithm and beta with DCI by step; (e): the rows that
    ``harness.transfer --out`` appends, read from ``transfer.jsonl`` beside the runs."""
    runs = tmp_path / "runs"
    for i, beta in enumerate((0.0, 0.0, 0.1, 0.1)):
        _write_run(runs, f"syn{i}", "SparseShared", {"alpha": 0.3, "beta": beta, "feature_dim": 10}, i % 2,
                   {"dci_disentanglement": 0.9 - beta, "mcc": 0.95, "probe_sharing": 0.1 + beta})
    for ds in ("Sprites", "Shapes"):
        for beta in (0.0, 0.1):
            _write_run(runs, f"{ds}-ss-{beta}", "SparseShared", {"alpha": 0.3, "beta": beta}, 0,
                       {"dci_disentanglement": 0.4 + beta, "mcc": 0.5}, steps=(400, 800, 1200), dataset=ds)
        _write_run(runs, f"{ds}-mt", "MultiTask", {}, 0, {"dci_disentanglement": 0.21, "mcc": 0.3},
                   steps=(400, 800, 1200), dataset=ds)
    rows = [{"source": "Sprites", "target": "Shapes", "algorithm": "SparseShared", "hparams": {"beta": 0.1},
             "source_task_acc": 0.81, "task_acc": 0.62, "task_ci95": 0.03},
            {"source": "Shapes", "target": "Sprites", "algorithm": "MultiTask", "hparams": {"head_lr": 0.5},
             "source_task_acc": 0.76, "task_acc": 0.55, "task_ci95": 0.04},
            {"source": "Shapes", "target": "Sprites", "algorithm": "MultiTask", "hparams": {"head_lr": 0.5},
             "source_task_acc": 0.78, "task_acc": 0.65, "task_ci95": 0.04}]
    (runs / "transfer.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "harness.report", "--input_dir", str(runs), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = " ".join((out / "sharing.md").read_text().split())
    assert "## (d) Sprites (1200 steps)" in text and "## (d) Shapes (1200 steps)" in text
    assert "| SparseShared beta 0.1 | 1 | 0.500 |" in text  # D at the last step: 0.4 + 0.1
    assert "| MultiTask | 1 | 0.210 |" in text
    assert "| Sprites | Shapes | SparseShared beta 0.1 | 1 | 0.810 | 0.620 ± 0.030 |" in text
    assert "| Shapes | Sprites | MultiTask | 2 | 0.770 ± 0.127 | 0.600 ± 0.635 |" in text  # two seeds: over runs
    assert (out / "sharing_sprites_curve.png").stat().st_size > 1000


def test_overcomplete_section_pairs_seeds_and_words_the_verdict(tmp_path):
    """Runs under overcomplete/ get the section 'Where the sharing term helps, if anywhere': per width, the
    paired (by seed) difference of D to beta 0 with its t-interval, and a verdict worded by that interval."""
    runs = tmp_path / "runs"
    base_d = {0: 0.90, 1: 0.92, 2: 0.88}
    for width in (10, 20):
        for beta, shift in ((0.0, 0.0), (0.03, -0.10 if width == 10 else 0.02)):
            for seed, d in base_d.items():
                hp = {"alpha": 0.3, "beta": beta, "sharing": "reweighted", "feature_dim": width, "factor_skew": 0.0}
                d1 = d + shift + 0.01 * seed * (beta > 0)
                _write_run(runs / "overcomplete", f"w{width}b{beta}s{seed}", "SparseShared", hp, seed,
                           {"dci_disentanglement": d1, "dci_completeness": d1, "mcc": 0.9, "redundancy": width / 10,
                            "probe_sharing": 0.1, "entropy": 2.0}, steps=(1000, 2000))
    _write_run(runs, "old", "SparseShared", {"alpha": 0.3, "beta": 0.0, "sharing": "reweighted", "feature_dim": 10}, 0,
               {"dci_disentanglement": 0.9, "mcc": 0.9, "probe_sharing": 0.1, "entropy": 2.0})
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "harness.report", "--input_dir", str(runs), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = (out / "sharing.md").read_text()
    section = " ".join(text[text.index("## Where the sharing term helps, if anywhere"):].split())
    diffs = np.array([0.01 * s for s in range(3)])
    for width, shift in ((10, -0.10), (20, 0.02)):
        d = shift + diffs
        half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
        assert "| SparseShared beta 0.03 | 3 |" in section and f"{d.mean():+.3f} ± {half:.3f}" in section
    assert "feature_dim 10: beta 0.03 lowers D" in section and "feature_dim 20: beta 0.03 raises D" in section
    assert "old" not in section and (out / "overcomplete_plateau.png").stat().st_size > 1000
