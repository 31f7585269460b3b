"""What `sweep launch` says while its jobs run (issue 33): per-run progress without a terminal, with
a real launcher and real training subprocesses."""

from __future__ import annotations

import re

from conftest import run_cli


def test_launch_without_a_terminal_logs_each_running_job(tmp_path):
    out = tmp_path / "sweep"
    proc = run_cli("harness.sweep", "launch", "--datasets", "SyntheticLinear", "--algorithms", "ERM", "--steps", "300",
                   "--checkpoint_freq", "300", "--dci", "fast", "--hparams", '{"n_per_env": 300}',
                   "--output_dir", str(out), "--skip_confirmation", "--progress_every", "0.5",
                   env={"HARNESS_PROGRESS_WRITE_S": "0.2"})
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    step_line = re.compile(rf"^  {run.name}: step (\d+)/300 \(\d+%\) \| [\d.e+]+ steps/s \| ETA \d+:\d\d:\d\d"
                           rf" \| {re.escape(str(run / 'out.txt'))}$", re.M)
    steps = [int(s) for s in step_line.findall(proc.stdout)]
    assert steps and 0 < steps[0] < 300 and steps == sorted(steps), proc.stdout[-2000:]
    assert re.search(r"^progress \d\d:\d\d:\d\d: 1 running, 0 done", proc.stdout, re.M)
    assert "finished: 1/1 done" in proc.stdout
    log = (out / "launch.log").read_text()  # the same reports, kept in the sweep's folder
    assert step_line.search(log) and log.count("progress ") == proc.stdout.count("progress ")
    # the finished job's speed is what the next launch's estimate uses
    proc = run_cli("harness.sweep", "launch", "--datasets", "SyntheticLinear", "--algorithms", "ERM", "--steps", "300",
                   "--checkpoint_freq", "300", "--dci", "fast", "--hparams", '{"n_per_env": 300}', "--n_trials", "2",
                   "--output_dir", str(out), "--launcher", "dummy")
    assert "ERM on SyntheticLinear: 1 job x 300 steps x " in proc.stdout and "(measured in this folder)" in proc.stdout


def estimate(steps: str, tmp_path) -> tuple[str, int]:
    proc = run_cli("harness.sweep", "launch", "--datasets", "SyntheticLinear", "--algorithms", "SparseShared", "ERM",
                   "--n_hparams", "3", "--steps", steps, "--output_dir", str(tmp_path / "sweep"), check=False)
    h, m, s = map(int, re.search(r"^estimated wall time: (\d+):(\d\d):(\d\d) \(h:mm:ss; an ESTIMATE", proc.stdout,
                                 re.M).groups())
    return proc.stdout, 3600 * h + 60 * m + s


def test_confirmation_states_jobs_per_algorithm_and_an_estimate_that_scales_with_steps(tmp_path):
    """Answered with a closed stdin (no): nothing runs, but the prompt said what it would cost."""
    text, short = estimate("1000", tmp_path)
    assert "nothing launched" in text and "Launch 6 jobs" in text
    for algorithm in ("SparseShared", "ERM"):
        assert re.search(rf"^  {algorithm} on SyntheticLinear: 3 jobs x 1000 steps x [\d.]+ s/step \(declared", text, re.M)
    _, long = estimate("2000", tmp_path)
    assert short > 0 and abs(long - 2 * short) <= 1, (short, long)
    assert not (tmp_path / "sweep").exists()
