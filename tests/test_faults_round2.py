"""Fault injection, second round (issue 29): writes through links, provenance, results dropped or mixed in
silence, and bad input that ended in a traceback or a silently wrong run. Shares the small runs and
helpers of tests/test_faults.py (whose docstring lists every class of failure both files cover)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_faults import ENV, ROOT, RUN, finished, one_line, records, run_train  # noqa: F401 (fixture)

from harness import checkpoints
from harness.utils import RUN_FILES

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
