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
