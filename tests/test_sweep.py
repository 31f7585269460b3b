"""Sweeps: job ids, states from locks, resume after a killed sweep, launchers."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require, slurm_unavailable_reason

from harness.lock import RunLock
from harness.sweep import Job

FAST = ["--datasets", "SyntheticLinear", "--algorithms", "ERM", "--steps", "40", "--checkpoint_freq", "20",
        "--dci_freq", "1000", "--hparams", '{"n_per_env": 400}']


def test_job_id_ignores_machine_paths(tmp_path):
    args = {"dataset": "SyntheticLinear", "algorithm": "ERM", "test_envs": [0], "hparams_seed": 1}
    a = Job(args, tmp_path / "a", data_dir="/data/one", device="cpu")
    b = Job(dict(args), tmp_path / "b", data_dir="/elsewhere", device="cuda")
    assert a.job_id == b.job_id and a.output_dir != b.output_dir
    assert Job({**args, "hparams_seed": 2}, tmp_path).job_id != a.job_id


def test_states_and_delete_incomplete_spares_live_runs(cli, tmp_path):
    out = tmp_path / "sweep"
    proc = cli("harness.sweep", "launch", *FAST, "--n_hparams", "3", "--output_dir", str(out), "--launcher", "dummy",
               "--skip_confirmation")
    commands = [l for l in proc.stdout.splitlines() if "harness.train" in l]
    assert len(commands) == 3
    dirs = [Path(c.split("--output_dir ")[1].split()[0]) for c in commands]
    dirs[0].mkdir(parents=True)  # incomplete: started, nobody running it
    (dirs[0] / "err.txt").write_text("Traceback...\nerror: something broke at step 3\n")
    dirs[1].mkdir(parents=True)
    with RunLock(dirs[1]):  # running: a live process holds the lock
        status = cli("harness.sweep", "status", *FAST, "--n_hparams", "3", "--output_dir", str(out)).stdout
        assert "running       1" in status and "incomplete    1" in status and "not launched  1" in status
        assert "error: something broke at step 3" in status
        cli("harness.sweep", "delete_incomplete", *FAST, "--n_hparams", "3", "--output_dir", str(out),
            "--skip_confirmation")
        assert not dirs[0].exists() and dirs[1].exists()


def test_killed_sweep_relaunch_runs_only_unfinished(tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "harness.sweep", "launch", *FAST, "--n_hparams", "4", "--output_dir", str(out),
           "--launcher", "multi", "--workers", "2", "--skip_confirmation"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(out.glob("*/done"))) < 1:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its jobs
    proc.wait()
    finished = {p.parent: p.stat().st_mtime_ns for p in out.glob("*/done")}
    assert 1 <= len(finished) < 4
    relaunch = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert relaunch.returncode == 0, relaunch.stderr
    first = relaunch.stdout.splitlines()[0]
    counts = re.match(r"4 jobs: (\d+) done, 0 running .*, (\d+) incomplete .*, (\d+) to start",
                      first)
    assert counts, first
    counts = counts.groups()
    assert int(counts[0]) == len(finished) and int(counts[1]) + int(counts[2]) == 4 - len(finished)
    assert len(list(out.glob("*/done"))) == 4
    for d, mtime in finished.items():  # finished runs were not run again
        assert (d / "done").stat().st_mtime_ns == mtime
    for d in (p for p in out.iterdir() if p.is_dir()):  # launch.log sits beside the runs
        records = [json.loads(l) for l in (d / "results.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [20, 40]


@pytest.mark.slurm
def test_slurm_launcher_runs_every_job(cli, tmp_path):
    require(slurm_unavailable_reason(), "HARNESS_REQUIRE_SLURM")
    out = tmp_path / "sweep"
    cli("harness.sweep", "launch", *FAST, "--n_hparams", "2", "--output_dir", str(out), "--launcher", "slurm",
        "--slurm_partition", "debug", "--slurm_cpus", "1", "--slurm_mem_gb", "2", "--slurm_time", "10",
        "--skip_confirmation", timeout=900)
    runs = [d for d in out.iterdir() if d.name != "_slurm"]
    assert len(runs) == 2
    for d in runs:
        assert (d / "done").exists()
        assert [json.loads(l)["step"] for l in (d / "results.jsonl").read_text().splitlines()] == [20, 40]
        assert "| threads 1 |" in (d / "out.txt").read_text()  # the allocation's CPUs, not the node's


def test_slurm_task_caps_threads_at_its_allocation(monkeypatch):
    """A Slurm array task runs its job with as many CPU threads as the task was given."""
    from harness.launchers import RequeueableJob

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    check = "import os, sys; sys.exit(0 if os.environ['OMP_NUM_THREADS'] == os.environ['MKL_NUM_THREADS'] == '3' else 1)"
    assert RequeueableJob()([sys.executable, "-c", check]) == 0
    with pytest.raises(RuntimeError, match="exit status 1"):
        RequeueableJob()([sys.executable, "-c", check.replace("'3'", "'2'")])


# --- specs under sweeps/ ------------------------------------------------------------------
SPECS = sorted((Path(__file__).resolve().parents[1] / "sweeps").glob("*.json"))


@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_every_spec_builds_jobs_whose_hparams_resolve(spec):
    """A spec is data: every job it makes must name registered things and known hparams."""
    import argparse

    from harness.hparams import resolve
    from harness.registry import ALGORITHMS, BACKBONES, DATASETS
    from harness.sweep import build_parser, make_jobs, resolve_options

    args = build_parser().parse_args(["launch", "--sweep", spec.stem, "--output_dir", "unused"])
    assert isinstance(args, argparse.Namespace)
    jobs = make_jobs(resolve_options(args))
    assert jobs and json.loads(spec.read_text())["description"]
    drawn, distinct = {}, {}
    for job in jobs:  # the draws differ by algorithm, dataset and hparams draw only, not by trial or test envs
        a = job.train_args
        distinct.setdefault(json.dumps([a[k] for k in ("algorithm", "dataset", "hparams_seed", "hparams")]), a)
    for a in distinct.values():
        ALGORITHMS.get(a["algorithm"]), DATASETS.get(a["dataset"])
        hp = resolve(a["algorithm"], a["dataset"], a["hparams_seed"], a["hparams"])
        if not str(hp["backbone"]).startswith("/"):
            BACKBONES.get(hp["backbone"])
        for k, v in (a["hparams"] or {}).items():
            drawn.setdefault(k, set()).add(json.dumps(v))
    searched = json.loads(spec.read_text()).get("search", {})
    assert all(len(drawn[k]) > 1 for k in searched), "a searched hparam never varied"


def test_search_ranges_are_drawn_within_bounds_and_checked(tmp_path):
    from harness.errors import UserError
    from harness.hparams import searched_hparams
    from harness.sweep import check_search_names

    search = {"lr": {"log_uniform": [-5, -4]}, "alpha": {"uniform": [0.1, 0.2]}, "n_way": {"choice": [5, 7]}}
    draws = [searched_hparams("SparseShared", "Sprites", s, search) for s in range(1, 30)]
    assert all(1e-5 <= d["lr"] <= 1e-4 and 0.1 <= d["alpha"] <= 0.2 and d["n_way"] in (5, 7) for d in draws)
    assert searched_hparams("SparseShared", "Sprites", 0, search) == {}  # draw 0 keeps the defaults
    assert "alpha" not in searched_hparams("ERM", "Sprites", 3, search)  # ERM has no alpha
    with pytest.raises(UserError, match="must look like"):
        searched_hparams("ERM", "Sprites", 1, {"lr": [1e-5, 1e-4]})
    with pytest.raises(UserError, match="unknown hparam"):
        check_search_names({"algorithms": ["ERM"], "datasets": ["Sprites"], "search": {"lrr": {"uniform": [0, 1]}}})


# --- spec validation, exit status (issue 21) ------------------------------------------------------
BAD_SPECS = [
    ({"n_hparams": "3"}, "'n_hparams' must be an integer"), ({"n_trials": 0}, "'n_trials' must be an integer >= 1"),
    ({"steps": 2.5}, "'steps'"), ({"steps": True}, "'steps'"), ({"holdout_fraction": 1}, "'holdout_fraction'"),
    ({"grid": {"lr": 3}}, "'grid'"), ({"grid": [1]}, "'grid'"), ({"hparams": "x"}, "'hparams' must be a JSON object"),
    ({"algorithms": None}, "'algorithms'"), ({"algorithms": []}, "'algorithms'"),
    ({"datasets": "SyntheticLinear"}, "must be a list of names"), ({"algorithms": ["SparseShard"]}, "did you mean"),
    ({"datasets": ["Nope"]}, "unknown dataset 'Nope'"), ({"hparams": {"lrr": 1}}, "unknown hparam(s) lrr"),
    ({"grid": {"lrr": [1]}}, "unknown hparam(s) lrr"), ({"hparams": {"lr": "fast"}}, "hparam lr must be a float"),
    ({"test_envs": [[5]]}, "'test_envs' [5] out of range"), ({"test_envs": [[0, 1, 2]]}, "at least one to train on"),
    ({"test_envs": [[1, 1]]}, "'test_envs' lists environment(s) [1] more than once"),
    ({"test_envs": [0]}, "'test_envs'"), ({"dci": "slow"}, "'dci'"), ({"launcher": "nope"}, "unknown launcher"),
    ({"n_hparams_from": 3, "n_hparams": 2}, "'n_hparams_from'"), ({"workers": 0}, "'workers'"),
    ({"wat": 1}, "unknown keys"),
]


@pytest.mark.parametrize("spec, expected", BAD_SPECS)
def test_bad_specs_are_one_line_before_any_job_is_planned(capsys, tmp_path, spec, expected):
    from harness import sweep

    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"datasets": ["SyntheticLinear"], **spec}))
    with pytest.raises(SystemExit) as e:
        sweep.main(["launch", "--sweep", str(path), "--output_dir", str(tmp_path / "out"), "--skip_confirmation"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("raw, expected", [(b'{"n_trials": NaN}', "NaN"), (b"\xff\xfe{}", "not UTF-8"),
                                           (b"[1]", "must be a JSON object"), (b"{", "not valid JSON")])
def test_unparsable_specs_are_one_line(capsys, tmp_path, raw, expected):
    from harness import sweep

    path = tmp_path / "spec.json"
    path.write_bytes(raw)
    with pytest.raises(SystemExit) as e:
        sweep.main(["status", "--sweep", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and expected in err[0], err


def test_sweep_accepts_a_path_with_or_without_json(capsys, tmp_path):
    from harness import sweep

    (tmp_path / "mine.json").write_text(json.dumps({"datasets": ["SyntheticLinear"], "n_hparams": 2}))
    for name in (str(tmp_path / "mine.json"), str(tmp_path / "mine")):
        sweep.main(["status", "--sweep", name, "--output_dir", str(tmp_path / "o")])
        assert "2 jobs" in capsys.readouterr().out


@pytest.mark.parametrize("dataset", ["PACS", "MiniImageNet", "CIFARFS", "Waterbirds", "Camelyon17", "CivilComments"])
def test_missing_data_stops_the_launch_before_any_job(capsys, tmp_path, dataset):
    from harness import sweep

    with pytest.raises(SystemExit) as e:
        sweep.main(["launch", "--datasets", dataset, "--data_dir", str(tmp_path / "nodata"), "--output_dir",
                    str(tmp_path / "out"), "--skip_confirmation"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and f"{dataset} not found" in err[0]
    assert not (tmp_path / "out").exists()


def test_launch_exits_non_zero_when_a_job_failed(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness.sweep", "launch", *FAST[:-2], "--hparams",
                           '{"n_per_env": 400, "lr": 1e12}', "--steps", "5", "--output_dir", str(tmp_path / "o"),
                           "--skip_confirmation"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1, proc.stderr
    assert "finished: 0/1 done, 1 failed" in proc.stdout and "diverged" in proc.stderr


def test_a_job_running_elsewhere_is_reported_as_running(capsys, tmp_path):
    from harness.launchers import run_job

    job = Job({"dataset": "SyntheticLinear", "algorithm": "ERM", "steps": 5}, tmp_path)
    job.output_dir.mkdir(parents=True)
    with RunLock(job.output_dir):
        assert job.state == "running"
        assert run_job(job.command, {"OMP_NUM_THREADS": "1"}) == 2
    err = capsys.readouterr().err
    assert "job running elsewhere" in err and "job failed" not in err
