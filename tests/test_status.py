"""`sweep status` under other arguments than the launch's says what differs (issue 33)."""

from __future__ import annotations

from conftest import run_cli

SWEEP = ["--datasets", "SyntheticLinear", "--algorithms", "ERM", "--dci", "fast", "--hparams", '{"n_per_env": 300}']


def test_status_without_the_launchs_steps_names_them(tmp_path):
    out = str(tmp_path / "sweep")
    run_cli("harness.sweep", "launch", *SWEEP, "--steps", "1", "--checkpoint_freq", "1", "--output_dir", out,
            "--skip_confirmation")
    same = run_cli("harness.sweep", "status", *SWEEP, "--steps", "1", "--checkpoint_freq", "1", "--output_dir", out)
    assert "  done          1" in same.stdout and "note:" not in same.stdout
    other = run_cli("harness.sweep", "status", *SWEEP, "--checkpoint_freq", "1", "--output_dir", out)
    assert "  not launched  1" in other.stdout
    assert (f"note: {out} holds 1 run of the same datasets and algorithms under other arguments "
            "(--steps 1 there, --steps not given here)") in other.stdout, other.stdout
    unrelated = run_cli("harness.sweep", "status", "--datasets", "SyntheticLinear", "--algorithms", "MultiTask",
                        "--output_dir", out)
    assert "note:" not in unrelated.stdout  # runs of other algorithms are another sweep's business
