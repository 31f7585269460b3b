"""Fault injection, second round (issue 29): writes through links, provenance, results dropped or mixed in
silence, and bad input that ended in a traceback or a silently wrong run. Shares the small runs and
helpers of tests/test_faults.py (whose docstring lists every class of failure both files cover)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_faults import ENV, ROOT, RUN, finished, one_line, records, resumable, run_train  # noqa: F401 (fixtures)

from harness import checkpoints

RUN_FILES = ("lock", "out.txt", "err.txt", "results.jsonl", "checkpoint.pt", "done")  # what a run writes

SWEEP = ["--datasets", "SyntheticLinear", "--algorithms", "ERM", "--steps", "20", "--checkpoint_freq", "10",
         "--dci_freq", "1000", "--hparams", '{"n_per_env": 300}']


def sweep_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.sweep", *args], capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=timeout, stdin=subprocess.DEVNULL)


def sweep_jobs(*args: str):
    from harness import sweep

    return sweep.make_jobs(sweep.resolve_options(sweep.build_parser().parse_args(["status", *args])))


# --- links ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", RUN_FILES)
def test_a_link_where_a_run_file_should_be_is_refused(capsys, tmp_path, finished, name):
    """lock, out.txt, err.txt, results.jsonl, checkpoint.pt, done: a link is one line, its target untouched."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    for run in (tmp_path / "fresh", tmp_path / "resumed"):
        if run.name == "resumed":
            shutil.copytree(finished, run)
            (run / "done").unlink()
        else:
            run.mkdir()
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(victim)
        one_line(*run_train(capsys, run), "symbolic link", name)
        assert victim.read_text() == "precious\n" and (run / name).is_symlink()


def test_run_files_are_opened_without_following_links(tmp_path):
    """Below the up-front check: the opens themselves refuse a link (a link made after the check)."""
    from harness.lock import RunLock
    from harness.train import Tee, write_done

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    for name in ("lock", "results.jsonl", "out.txt", "done"):
        (run / name).symlink_to(victim)
    with pytest.raises(OSError):
        checkpoints.append_record(run / "results.jsonl", {"step": 1})
    with pytest.raises(OSError):
        with Tee(run / "out.txt", "stdout"):
            pass
    with pytest.raises(OSError):
        write_done(run)
    with pytest.raises(OSError):
        with RunLock(run, wait_s=0):
            pass
    assert victim.read_text() == "precious\n"


def test_a_linked_sweep_job_directory_is_never_deleted_through(tmp_path):
    out = tmp_path / "sw"
    args = [*SWEEP, "--n_hparams", "2", "--output_dir", str(out)]
    jobs = sweep_jobs(*args)
    target = tmp_path / "precious"
    (target / "sub").mkdir(parents=True)
    (target / "data.txt").write_text("keep")
    (target / "sub" / "more.txt").write_text("keep")
    out.mkdir()
    jobs[0].output_dir.symlink_to(target, target_is_directory=True)
    jobs[1].output_dir.mkdir()  # a real incomplete job beside it
    for command in ("delete_incomplete", "status", "launch"):
        proc = sweep_cli(command, *args, "--skip_confirmation")
        one_line(proc.returncode, proc.stderr, "symbolic link", jobs[0].job_id)
    from harness.sweep import delete_run

    assert not delete_run(jobs[0].output_dir)
    assert (target / "data.txt").read_text() == "keep" and (target / "sub" / "more.txt").read_text() == "keep"
    assert jobs[0].output_dir.is_symlink()


def test_delete_incomplete_unlinks_links_inside_a_job_never_follows_them(tmp_path):
    from harness.sweep import delete_run

    target = tmp_path / "precious"
    target.mkdir()
    (target / "data.txt").write_text("keep")
    run = tmp_path / "job"
    run.mkdir()
    (run / "checkpoint.pt").symlink_to(target / "data.txt")
    (run / "plots").symlink_to(target, target_is_directory=True)
    assert delete_run(run) and not run.exists()
    assert (target / "data.txt").read_text() == "keep"


# --- provenance ----------------------------------------------------------------------------
def test_every_record_says_which_code_made_it(finished):
    import torch

    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    expected = head.stdout.strip() if head.returncode == 0 else "unknown"
    for r in records(finished):
        assert (r["version"], r["commit"], r["torch"], r["device"]) == ("0.1.0", expected, torch.__version__, "cpu")


def test_commit_is_unknown_outside_a_checkout_or_without_git(tmp_path):
    shutil.copytree(ROOT / "harness", tmp_path / "harness", ignore=shutil.ignore_patterns("__pycache__"))
    code = "from harness.provenance import provenance; print(provenance('cpu')['commit'])"
    for path, env in ((tmp_path, {}), (ROOT, {"PATH": str(tmp_path / "nowhere")})):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env={**ENV, "PYTHONPATH": str(path), **env}, cwd=path)
        assert proc.returncode == 0 and proc.stdout.strip() == "unknown", proc.stderr


def _copy_run(src: Path, dst: Path, commit: str | None = None, acc: float | None = None, **args) -> Path:
    """A copy of a finished run whose records say another commit / accuracy / args."""
    shutil.copytree(src, dst)
    lines = []
    for r in (json.loads(l) for l in (dst / "results.jsonl").read_text().splitlines()):
        if commit is not None:
            r["commit"] = commit
        if acc is not None:
            r.update({k: acc for k in r if k.endswith("_out_acc")})
        r["args"].update(args)
        lines.append(json.dumps(r) + "\n")
    (dst / "results.jsonl").write_text("".join(lines))
    return dst


def collect(capsys, *argv: str) -> tuple[int, str, str]:
    from harness import collect_results

    capsys.readouterr()
    try:
        collect_results.main(["--no_plots", *argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_two_copies_of_a_job_from_two_commits_are_named_not_averaged(capsys, tmp_path, finished):
    root = tmp_path / "in"
    _copy_run(finished, root / "old", commit="a" * 40, acc=0.5)
    new = _copy_run(finished, root / "new", commit="b" * 40, acc=0.25)
    os.utime(new / "done", (time.time() + 60, time.time() + 60))
    code, out, err = collect(capsys, "--input_dir", str(root))
    assert code == 0, err
    line = next(l for l in err.splitlines() if "copies of one job" in l)
    assert "old (commit " + "a" * 40 in line and "new (commit " + "b" * 40 in line and "kept new" in line
    assert "25.0" in out and "37.5" not in out and "50.0" not in out  # the newer copy, not the mean
    assert "1 duplicate copy of a job" in err


def test_a_cell_mixing_commits_is_a_warning_naming_both(capsys, tmp_path, finished):
    root = tmp_path / "in"
    _copy_run(finished, root / "one", commit="a" * 40)
    _copy_run(finished, root / "two", commit="b" * 40, trial_seed=1, seed=1)
    code, out, err = collect(capsys, "--input_dir", str(root))
    assert code == 0, err
    line = next(l for l in err.splitlines() if "mixes" in l)
    assert "SyntheticLinear / ERM" in line and "a" * 40 in line and "b" * 40 in line


# --- nothing dropped in silence ---------------------------------------------------------------
def test_finished_runs_that_cannot_be_read_are_listed(capsys, tmp_path, finished):
    root = tmp_path / "in"
    _copy_run(finished, root / "good")
    (_copy_run(finished, root / "empty", seed=5) / "results.jsonl").write_text("")
    (_copy_run(finished, root / "missing", seed=6) / "results.jsonl").unlink()
    isdir = _copy_run(finished, root / "isdir", seed=7)
    (isdir / "results.jsonl").unlink()
    (isdir / "results.jsonl").mkdir()
    code, out, err = collect(capsys, "--input_dir", str(root))
    assert code == 0 and "Traceback" not in err, err
    assert "3 finished runs without readable records (empty, isdir, missing)" in err
    assert "read 2 records from 1 run" in err


def test_a_truncated_last_record_of_a_finished_run_is_named(capsys, tmp_path, finished):
    run = _copy_run(finished, tmp_path / "in" / "cut")
    text = (run / "results.jsonl").read_text()
    (run / "results.jsonl").write_text(text[: len(text) - 40])
    code, out, err = collect(capsys, "--input_dir", str(tmp_path / "in"))
    assert code == 0, err
    assert any("cut: 1 line of results.jsonl unreadable" in l and "step 10" in l for l in err.splitlines()), err


@pytest.mark.parametrize("field, value", [("step", "20"), ("step", 20.5), ("test_envs", "0"), ("test_envs", [0.5])])
def test_wrongly_typed_records_are_skipped_and_counted(capsys, tmp_path, finished, field, value):
    run = _copy_run(finished, tmp_path / "in" / "r")
    rs = [json.loads(l) for l in (run / "results.jsonl").read_text().splitlines()]
    (rs[-1] if field == "step" else rs[-1]["args"])[field] = value
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    code, out, err = collect(capsys, "--input_dir", str(tmp_path / "in"))
    assert code == 0 and "Traceback" not in err and "skipped 1 corrupt line" in err, err


def test_collect_output_in_a_missing_folder_is_one_line_before_any_work(capsys, tmp_path, finished):
    _copy_run(finished, tmp_path / "in" / "r")
    for output in (tmp_path / "nope" / "t.txt", tmp_path):
        code, out, err = collect(capsys, "--input_dir", str(tmp_path / "in"), "--output", str(output))
        one_line(code, err, "--output")


def test_finished_run_with_other_arguments_is_an_error_not_done(capsys, tmp_path, finished):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    line = one_line(*run_train(capsys, run, "--algorithm", "IRM"), "other arguments")
    assert "algorithm" in line and "IRM" in line
    assert run_train(capsys, run)[0] == 0  # its own arguments: already done


def test_resume_refuses_records_of_another_run(capsys, resumable):
    rs = (resumable / "results.jsonl").read_text().splitlines()
    first = json.loads(rs[0])
    first["args"]["algorithm"] = "IRM"
    (resumable / "results.jsonl").write_text("\n".join([json.dumps(first), *rs[1:]]) + "\n")
    before = (resumable / "results.jsonl").read_bytes()
    one_line(*run_train(capsys, resumable), "belongs to another run", "algorithm")
    assert (resumable / "results.jsonl").read_bytes() == before and not (resumable / "done").exists()


def test_empty_output_dir_is_an_error(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_train(capsys, Path("x"), "--output_dir", "")
    one_line(code, err, "--output_dir is empty")
    assert not list(tmp_path.iterdir())


def test_done_without_records_is_incomplete_and_launch_runs_it(tmp_path):
    out = tmp_path / "sw"
    args = [*SWEEP, "--output_dir", str(out)]
    (job,) = sweep_jobs(*args)
    job.output_dir.mkdir(parents=True)
    (job.output_dir / "done").write_text("")
    proc = sweep_cli("status", *args)
    assert proc.returncode == 0 and re.search(r"incomplete +1", proc.stdout) and re.search(r"done +0", proc.stdout)
    assert "has 'done' but no records" in proc.stdout
    proc = sweep_cli("launch", *args, "--skip_confirmation")
    assert proc.returncode == 0, proc.stderr
    assert job.state == "done" and [r["step"] for r in records(job.output_dir)] == [10, 20]


def test_ctrl_c_stops_the_multi_launcher_and_all_its_jobs(tmp_path):
    from harness.lock import is_held

    out = tmp_path / "sw"
    args = [*SWEEP, "--steps", "200", "--checkpoint_freq", "100", "--n_hparams", "3", "--output_dir", str(out), "--launcher", "multi",
            "--workers", "1", "--skip_confirmation"]
    jobs = sweep_jobs(*args)
    proc = subprocess.Popen([sys.executable, "-m", "harness.sweep", "launch", *args], env=ENV, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not any((j.output_dir / "checkpoint.pt").exists() for j in jobs):  # a job is past its first checkpoint
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)  # the launcher only: it must stop its jobs itself
    out_text, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, (proc.returncode, err, out_text[-2000:])
    time.sleep(1.0)  # a queued job would have started by now
    started = [j for j in jobs if j.output_dir.exists()]
    assert len(started) == 1 and not is_held(started[0].output_dir) and started[0].state == "incomplete"
    proc = sweep_cli("launch", *args[:-5], "--skip_confirmation", timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert all(j.state == "done" for j in jobs)
    assert "resuming from step" in (started[0].output_dir / "out.txt").read_text()


# --- bad input -------------------------------------------------------------------------------
BAD_HPARAMS = [
    ('{"mlp_width": 0}', "hparam mlp_width must be in [1, "), ('{"mlp_depth": -1}', "hparam mlp_depth"),
    ('{"n_per_env": 1}', "no held-out"), ('{"feature_dim": 1000000000}', "hparam feature_dim"),
    ('{"batch_size": 1000000000000}', "hparam batch_size"), ('{"lr": 1e309}', "hparam lr must be a finite"),
    ('{"weight_decay": 1e309}', "hparam weight_decay must be a finite"),
    ('{"mlp_width": 65536, "mlp_depth": 64}', "GiB"), ('{"precision": "fp8"}', "hparam precision"),
    ('{"ood_task_fraction": 1.5}', "hparam ood_task_fraction"), ('{"backbone": ""}', "hparam backbone"),
]


@pytest.mark.parametrize("hparams, expected", BAD_HPARAMS)
def test_hparams_outside_their_domain_stop_before_the_run(capsys, tmp_path, hparams, expected):
    out = tmp_path / "run"
    t0 = time.time()
    base = [a for a in RUN if a not in ("--hparams", '{"n_per_env": 300}')]
    one_line(*run_train(capsys, out, "--hparams", hparams, base=base), expected)
    assert time.time() - t0 < 30 and not (out / "results.jsonl").exists() and not (out / "done").exists()


def test_every_builtin_hparam_has_a_domain_its_draws_satisfy():
    from harness import hparams as hp
    from harness.registry import ALGORITHMS, DATASETS

    lead_owned: set[str] = set()
    for algorithm in ALGORITHMS.names():
        for dataset in DATASETS.names():
            space = hp.space(algorithm, dataset)
            missing = [k for k, h in space.items()
                       if h.domain is None and not isinstance(h.default, bool) and k not in lead_owned]
            assert not missing, (algorithm, dataset, missing)
            for seed in range(4):
                for k, v in hp.random_hparams(algorithm, dataset, seed).items():
                    hp.check(k, v, space[k])


@pytest.mark.parametrize("search, expected", [
    ({"lr": {"log_uniform": ["a", 1]}}, "two finite numbers"), ({"lr": {"log_uniform": [-5, 400]}}, "overflows"),
    ({"lr": {"uniform": [-1.7e308, 1.7e308]}}, "Range exceeds"), ({"lr": {"choice": []}}, "at least one option"),
    ({"lr": {"uniform": [0, 0]}}, "hparam lr must be > 0"), ({"batch_size": {"uniform": [8, 64]}}, "batch_size"),
    ({"lr": {"uniform": [-3, -2]}}, "hparam lr"),
])
def test_every_draw_of_a_sweep_spec_is_checked_before_any_job(tmp_path, search, expected):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"datasets": ["SyntheticLinear"], "n_hparams": 4, "steps": 5, "search": search}))
    proc = sweep_cli("launch", "--sweep", str(spec), "--output_dir", str(tmp_path / "sw"), "--skip_confirmation")
    one_line(proc.returncode, proc.stderr, expected)
    assert not (tmp_path / "sw").exists()


def test_an_enormous_sweep_is_refused_at_once(tmp_path):
    t0 = time.time()
    proc = sweep_cli("status", *SWEEP, "--n_trials", "10000000", "--output_dir", str(tmp_path / "sw"))
    one_line(proc.returncode, proc.stderr, "10,000,000 jobs", "at most")
    assert time.time() - t0 < 60


def test_a_wrongly_cased_name_suggests_the_right_one():
    from harness.errors import UserError
    from harness.registry import ALGORITHMS, DATASETS

    with pytest.raises(UserError, match="did you mean 'ERM'"):
        ALGORITHMS.get("erm")
    with pytest.raises(UserError, match="did you mean 'SyntheticLinear'"):
        DATASETS.get("syntheticlinear")


def test_report_without_sparse_shared_runs_is_one_line(capsys, tmp_path, finished):
    from harness import report

    shutil.copytree(finished, tmp_path / "in" / "r")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        report.main(["--input_dir", str(tmp_path / "in"), "--out", str(tmp_path / "rep")])
    one_line(e.value.code, capsys.readouterr().err, "no finished SparseShared runs")


def test_correlate_plot_under_a_file_is_one_line(capsys, tmp_path, finished):
    from harness import correlate

    shutil.copytree(finished, tmp_path / "in" / "r")
    (tmp_path / "file").write_text("x")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        correlate.main(["--input_dir", str(tmp_path / "in"), "--x", "hparams.lr", "--y", "mcc",
                        "--plot", str(tmp_path / "file" / "p.png")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        "error: cannot write --plot"), err


@pytest.mark.parametrize("bad", ["../../secret.jpg", "ABSOLUTE", "001.a/../../../secret.jpg"])
def test_waterbirds_metadata_naming_files_outside_the_dataset_is_refused(tmp_path, bad):
    import csv

    from test_wilds_and_backbones import make_waterbirds

    from harness.errors import UserError
    from harness.registry import DATASETS

    secret = tmp_path / "secret.jpg"
    shutil.copy(next((make_waterbirds(tmp_path / "data")).rglob("*.jpg")), secret)
    meta = tmp_path / "data" / "waterbirds_v1.0" / "metadata.csv"
    rows = list(csv.reader(meta.open()))
    rows[1][1] = str(secret) if bad == "ABSOLUTE" else bad
    with meta.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(UserError, match="outside the dataset folder") as e:
        DATASETS.get("Waterbirds")(str(tmp_path / "data"), [1, 2], {"image_size": 16})
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad", ["../../secret.jpg", "ABSOLUTE"])
def test_mini_imagenet_csv_naming_files_outside_the_dataset_is_refused(tmp_path, bad):
    from test_image_datasets import make_mini_csv

    from harness.errors import UserError
    from harness.registry import DATASETS

    make_mini_csv(tmp_path / "data")
    secret = tmp_path / "secret.jpg"
    train = tmp_path / "data" / "miniImageNet" / "train.csv"
    lines = train.read_text().splitlines()
    first = next((tmp_path / "data" / "miniImageNet" / "images").iterdir())
    shutil.copy(first, secret)
    lines[1] = f"{secret if bad == 'ABSOLUTE' else bad},{lines[1].split(',')[1]}"
    train.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="outside the dataset folder"):
        DATASETS.get("MiniImageNet")(str(tmp_path / "data"), [1, 2], {})
