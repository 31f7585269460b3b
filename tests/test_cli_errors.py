"""Errors a user can cause end with one line on stderr and exit status 2, never a traceback."""

import pytest


@pytest.mark.parametrize("args, expected", [
    (["--algorithm", "Nope"], ["unknown algorithm 'Nope'", "ERM", "did you mean"]),
    (["--dataset", "SyntheticLinearr"], ["unknown dataset 'SyntheticLinearr'", "did you mean 'SyntheticLinear'"]),
    (["--hparams", '{"lrr": 1}'], ["unknown hparam(s) lrr", "Valid:", "lr"]),
    (["--hparams", "{lr: 1}"], ["not valid JSON"]),
    (["--test_envs", "7"], ["--test_envs [7] out of range", "0=shift0"]),
    (["--hparams", '{"precision": "fp16"}'], ["hparam precision must be one of fp32 | bf16", "fp16"]),
])
def test_user_errors_are_one_line_exit_2(cli, tmp_path, args, expected):
    out = tmp_path / "run"
    proc = cli("harness.train", "--output_dir", str(out), "--steps", "1", *args, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for piece in expected:
        assert piece in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (out / "done").exists()


@pytest.mark.parametrize("algorithm, freq", [("ERM", "100"), ("SparseShared", "100"), ("SparseShared", "1"),
                                             ("MetaOptNet", "100")])
def test_diverging_loss_is_a_clear_error(cli, tmp_path, algorithm, freq):
    """SparseShared's and MetaOptNet's solvers once ended such a run in a LinAlgError traceback (NaN features
    reached a factorisation); now they raise FloatingPointError, which the trainer reports like a NaN loss,
    in a training step (freq 100) or in the evaluation after it (freq 1)."""
    out = tmp_path / "run"
    proc = cli("harness.train", "--output_dir", str(out), "--algorithm", algorithm, "--steps", "50",
               "--checkpoint_freq", freq, "--dci", "fast", "--hparams", '{"lr": 1e12}', check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "diverged at step" in lines[0] and "try a smaller lr" in lines[0], proc.stderr
    assert not (out / "done").exists()
    assert "diverged" in (out / "err.txt").read_text()


@pytest.mark.parametrize("hparams, expected", [
    ('{"alpha": -0.1}', "hparam alpha must be in [0, 1]"),
    ('{"sparsity": "l2"}', 'hparam sparsity must be one of l1 | group, got "l2"'),
    ('{"rho": 0}', "hparam rho must be > 0"),
    ('{"sharing_grad": "exact"}', 'hparam sharing_grad must be one of last_solve | full, got "exact"'),
])
def test_sparse_shared_hparams_out_of_domain_are_one_line_errors(cli, tmp_path, hparams, expected):
    """Before, a negative alpha trained silently with an expanding 'prox' and an unknown option failed
    with a ValueError traceback at the first step."""
    out = tmp_path / "run"
    proc = cli("harness.train", "--output_dir", str(out), "--algorithm", "SparseShared", "--steps", "1",
               "--hparams", hparams, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr
    assert not (out / "done").exists()
