"""The scripts behind docs/real_images.md, on the committed records: benchmarks/plateau_curves.py (the plateau
rule) and benchmarks/compare_algorithms.py (each algorithm minus ERM), the latter against collect_results."""

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "docs" / "measured" / "colored_fmnist_plateau"
sys.path.insert(0, str(ROOT / "benchmarks"))

from plateau_curves import plateau, settled_from, update_seconds  # noqa: E402
from plateau_queue import SWEEPS  # noqa: E402


def test_settled_from_is_the_first_step_of_the_last_stretch_inside_the_band():
    curve = [(100 * (i + 1), v, 0.3) for i, v in enumerate([0.5, 0.79, 0.9, 0.81, 0.8, 0.8, 0.8, 0.8, 0.8])]
    assert settled_from(curve, 5, 0.02) == 400  # 0.9 at step 300 is the last one outside 0.8 +- 0.02
    assert settled_from(curve, 5, 0.2) == 200


def test_update_time_weights_each_records_mean_step_time_by_its_steps():
    import pandas as pd

    run = pd.DataFrame({"step": [300, 100, 250], "step_time": [4.0, 1.0, 2.0]})  # out of order, uneven gaps
    assert update_seconds(run) == 100 * 1.0 + 150 * 2.0 + 50 * 4.0


def test_rule_needs_two_windows_and_compares_their_means():
    flat = [(s, 0.8, 0.3) for s in range(10)]
    assert plateau(flat[:9], 5, 0.01) is None
    assert plateau(flat, 5, 0.01) == (0.8, 0.8, True)
    rising = [(s, 0.5 + 0.005 * s, 0.3) for s in range(10)]  # the last five average 0.025 above the five before
    last, before, ok = plateau(rising, 5, 0.01)
    assert abs(last - before - 0.025) < 1e-12 and not ok
    assert plateau(rising, 5, 0.03)[2]


def test_verdicts_match_the_records(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/plateau_curves.py", "--input_dir", str(RECORDS),
                           "--output", str(tmp_path / "curve.png")], capture_output=True, text=True, cwd=ROOT, check=True)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[-1].strip(" |")
            for line in proc.stdout.splitlines() if line.startswith("| ColoredFashionMNIST-")}
    runs = sorted(p.parent for p in RECORDS.rglob("results.jsonl"))
    assert len(rows) == len(runs) >= 6 and (tmp_path / "curve.png").stat().st_size > 0
    for run in runs:  # the rule recomputed from the raw lines
        recs = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
        train = [i for i in range(3) if i not in recs[0]["args"]["test_envs"]]
        val = [sum(r[f"env{i}_out_acc"] for i in train) / len(train) for r in recs]
        expected = abs(sum(val[-5:]) / 5 - sum(val[-10:-5]) / 5) <= 0.01
        assert rows[run.name] == ("yes" if expected else "no"), run.name
    assert f"{sum(v == 'yes' for v in rows.values())} of {len(rows)} runs plateaued" in proc.stdout


@pytest.mark.parametrize("selection, metric, only", [("training_domain", "acc", []), ("oracle", "wg_acc", []),
                                                     ("training_domain", "wg_acc", ["--draws", "0"]),
                                                     ("oracle", "acc", ["--trials", "0", "2"])])
def test_comparison_means_equal_collect_results(selection, metric, only):
    def run(*args):
        return subprocess.run([sys.executable, *args, *only], capture_output=True, text=True, cwd=ROOT, check=True).stdout

    table = run("-m", "harness.collect_results", "--input_dir", str(RECORDS), "--no_plots", "--format", "csv",
                "--selection", selection)
    expected = {r["algorithm"]: (float(r["mean"]), float(r["stderr"]) if r["stderr"] else None) for r in csv.DictReader(io.StringIO(table))
                if r["metric"] == metric and r["column"] == "-90%"}
    rows = [line.split(" | ") for line in run("benchmarks/compare_algorithms.py", "--input_dir", str(RECORDS),
                                              "--selection", selection, "--metric", metric).splitlines()
            if line.startswith("| ") and line.split(" | ")[1] == "-90%"]
    got = {r[0].strip("| "): r[3].split(" ± ") for r in rows}
    assert set(got) == set(expected) and len(got) >= 6
    for alg, (mean, se) in got.items():  # one trial: no standard error in either
        assert abs(float(mean) - expected[alg][0]) <= 0.051, (alg, mean, expected[alg])
        assert se == "-" if expected[alg][1] is None else abs(float(se) - expected[alg][1]) <= 0.051, (alg, se)


def test_comparison_keeps_only_the_trials_asked_for():
    out = subprocess.run([sys.executable, "benchmarks/compare_algorithms.py", "--input_dir", str(RECORDS), "--trials", "0"],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ") and line.split(" | ")[1] == "-90%"]
    assert len(rows) >= 6 and all("," not in r[2] and r[3].endswith("± -") for r in rows), out


def test_comparison_keeps_only_the_draws_asked_for():
    def run(*args):
        return subprocess.run([sys.executable, "benchmarks/compare_algorithms.py", "--input_dir", str(RECORDS), *args],
                              capture_output=True, text=True, cwd=ROOT)

    rows = [line.split(" | ") for line in run("--draws", "0").stdout.splitlines() if line.startswith("| ")][1:]
    assert len(rows) >= 8 and all(n.strip().split(" (")[1].startswith("h0@") for r in rows for n in r[2].split(","))
    empty = run("--draws", "99")
    assert empty.returncode == 2 and empty.stderr.strip().splitlines() == [
        "error: no records left after --trials/--draws"], empty.stderr


def test_plateau_verdicts_keep_only_the_draws_asked_for():
    def run(*args):
        return subprocess.run([sys.executable, "benchmarks/plateau_curves.py", "--input_dir", str(RECORDS), *args],
                              capture_output=True, text=True, cwd=ROOT)

    out = run("--draws", "0").stdout
    names = [line.split(" | ")[0].strip("| ") for line in out.splitlines() if line.startswith("| ColoredFashionMNIST-")]
    seeds = {json.loads((RECORDS / n / "results.jsonl").read_text().splitlines()[0])["args"]["hparams_seed"] for n in names}
    assert len(names) >= 8 and seeds == {0}
    empty = run("--draws", "99")
    assert empty.returncode == 2 and empty.stderr.strip().splitlines() == [
        "error: no records left after --trials/--draws"], empty.stderr


def test_plateau_queue_holds_every_unfinished_run_of_both_sweeps_once():
    """benchmarks/plateau_queue.py's runs are the sweeps' own jobs (same ids, so a launch finds them done),
    and with the committed records it leaves out no run that is not done."""
    from plateau_queue import queue, sweep_jobs

    root = ROOT / "docs" / "measured"
    entries = queue(root)
    ids = [e.job.job_id for e in entries]
    assert len(ids) == len(set(ids))
    hp = json.dumps({"backbone": "SmallCNN", "n_per_env": 2000})
    for sweep, n_hparams in zip(SWEEPS, (3, 1)):
        jobs = sweep_jobs(["--sweep", sweep, "--n_hparams", str(n_hparams), "--hparams", hp], root / sweep)
        probes = sweep_jobs(["--sweep", sweep, "--algorithms", "SparseShared", "--n_hparams", str(n_hparams),
                             "--hparams", json.dumps({**json.loads(hp), "eval_head": "probe"})],
                            root / f"{sweep}_probe")
        for group, queued in ((jobs, {e.job.job_id: e.job for e in entries}),
                              (probes, {e.probe.job_id: e.probe for e in entries if e.probe})):
            missing = [j.job_id for j in group if j.state != "done" and j.job_id not in queued]
            assert not missing, missing
            for j in group:
                if j.job_id in queued:
                    assert [c for c in queued[j.job_id].command if c != "--keep_checkpoints"] == j.command
    # (a): draws 1-2 of SparseShared and ProtoNet, draw 2 of MultiTask; (b): all 8 algorithms, 2 held out
    assert Counter(e.job.train_args["dataset"] for e in entries) == {"ColoredFashionMNIST": 15,
                                                                     "RotatedFashionMNIST": 48}
    assert Counter(e.probe.train_args["dataset"] for e in entries if e.probe) == {"ColoredFashionMNIST": 6,
                                                                                  "RotatedFashionMNIST": 6}


def test_plateau_queue_starts_a_new_machine_from_the_committed_records(tmp_path):
    from plateau_queue import queue, seed_from_records

    records = ROOT / "docs" / "measured"
    committed = sorted(p.parent.name for sweep in SWEEPS
                       for folder in (sweep, f"{sweep}_probe") for p in (records / folder).glob("*/done"))
    assert seed_from_records(records, tmp_path) == len(committed) > 0
    assert seed_from_records(records, tmp_path) == 0  # nothing twice
    entries = queue(tmp_path)
    done = {e.job.job_id for e in entries if e.job.state == "done"} | {
        e.probe.job_id for e in entries if e.probe and e.probe.state == "done"}
    assert done and done <= set(committed)


def test_mixed_commit_warning_names_only_the_runs_tabled():
    """SparseShared's own-head runs come from two commits (draw 0 from one, later draws from another): the
    warning appears over every draw and not at --draws 0, whose runs are all one commit's."""
    def warnings(*args):
        proc = subprocess.run([sys.executable, "benchmarks/compare_algorithms.py", "--input_dir", str(RECORDS), *args],
                              capture_output=True, text=True, cwd=ROOT, check=True)
        return [line for line in proc.stderr.splitlines() if "mixes runs of different code versions" in line]

    commits = {json.loads(p.read_text().splitlines()[-1])["commit"] for p in RECORDS.glob("*SparseShared*/results.jsonl")}
    assert len(commits) == 2
    (every,) = [w for w in warnings() if "/ SparseShared mixes" in w]
    assert all(c in every for c in commits)
    assert warnings("--draws", "0") == []


def test_summary_holds_the_per_trial_tables_cells():
    """--summary (the page's tables) is the per-trial tables of each selection and metric, one column pair each."""
    def run(*args):
        return subprocess.run([sys.executable, "benchmarks/compare_algorithms.py", "--input_dir", str(RECORDS),
                               "--selection", "training_domain", "oracle", "--metric", "acc", "wg_acc", *args],
                              capture_output=True, text=True, cwd=ROOT, check=True).stdout

    per_trial = [[r.strip(" |") for r in line.split(" | ")] for line in run().splitlines()
                 if line.startswith("| ") and not line.startswith("| algorithm")]
    summary = [[r.strip(" |") for r in line.split(" | ")] for line in run("--summary").splitlines()
               if line.startswith("| ") and not line.startswith("| algorithm")]
    assert summary[0][0] == "ERM" and len(summary) >= 8 and len(per_trial) == 4 * len(summary)
    for i, row in enumerate(summary):
        for j in range(4):  # training_domain acc, wg_acc, oracle acc, wg_acc: the order of the per-trial tables
            alg, env, trials, mean, diff = per_trial[j * len(summary) + i]
            assert row[:2] == [alg, env] and row[2] == str(trials.count("@")) and row[3 + 2 * j: 5 + 2 * j] == [mean, diff]


@pytest.mark.parametrize("sweep", SWEEPS)
def test_committed_report_is_what_the_committed_records_give(tmp_path, sweep):
    """docs/real_images.md's tables come from benchmarks/plateau_report.sh over the committed records: rerun on
    a copy of them, it writes every committed table byte for byte (a report left stale by new records fails)."""
    committed = ROOT / "docs" / "measured" / sweep
    tables = ["tables.txt", "tables.tex", "tables_defaults.txt", "tables_defaults.tex", "plateau.txt",
              "compare.txt", "summary.md"]
    for folder in (sweep, f"{sweep}_probe"):  # the records only
        shutil.copytree(ROOT / "docs" / "measured" / folder, tmp_path / folder,
                        ignore=shutil.ignore_patterns(*tables, "curve.png"))
    subprocess.run(["bash", "benchmarks/plateau_report.sh", sweep], cwd=ROOT, check=True, capture_output=True,
                   env={**os.environ, "PLATEAU_RECORDS": str(tmp_path)})
    for name in tables:
        assert (tmp_path / sweep / name).read_text() == (committed / name).read_text(), name
    assert (tmp_path / sweep / "curve.png").stat().st_size > 10_000


@pytest.mark.parametrize("sweep", SWEEPS)
def test_the_pages_tables_are_the_committed_summary(sweep):
    """docs/real_images.md prints each sweep's summary.md tables (defaults, every draw) as they are: with the
    test above, the page's table cells are what the committed records give."""
    page = (ROOT / "docs" / "real_images.md").read_text()
    summary = (ROOT / "docs" / "measured" / sweep / "summary.md").read_text()
    tables = [t.strip() for t in re.findall(r"(?:^\|.*\n?)+", summary, flags=re.M)]  # runs of '|' lines
    assert len(tables) == 2 and all(t.count("\n") >= 9 for t in tables)
    if sweep == SWEEPS[1]:  # (b) runs default hparams only, so both tables are one
        assert tables[0] == tables[1]
    for table in tables:
        assert table in page
