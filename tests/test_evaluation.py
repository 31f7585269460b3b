"""The evaluation head of episodic algorithms (issue 19): hparams ``eval_head`` ("own" | "probe") and
``eval_n_fit`` (0: every training-domain 'in' point), read by ``harness.evaluation.eval_predictor``."""

from __future__ import annotations

import argparse

import pytest
import torch

from harness import hparams as hp
from harness import train
from harness.datasets.base import TensorEnv
from harness.evaluation import eval_predictor, split_metrics
from harness.registry import ALGORITHMS

ARGS = argparse.Namespace(seed=0)


def blobs(n: int, seed: int) -> TensorEnv:
    """Three well-separated Gaussian blobs in R^4, labelled by blob: an easy 3-class problem."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = 4.0 * torch.eye(4)[:3]
    return TensorEnv(centres[y] + torch.randn(n, 4, generator=g), y)


def episodic(name: str = "ProtoNet", **overrides):
    torch.manual_seed(0)
    hparams = hp.resolve(name, "SyntheticLinear", 0, overrides)
    return ALGORITHMS.get(name)((4,), 3, 2, hparams)


def test_eval_hparams_are_episodic_with_defaults_that_change_nothing():
    """The defaults evaluate as the evaluation did before the hparams existed: the algorithm's own ``adapt``
    on 2,000 training-domain points drawn by ``seed_hash(seed, "adapt")``, written out here by hand."""
    from harness.datasets.tasks import ConcatEnv
    from harness.utils import generator

    assert "eval_head" not in hp.default_hparams("ERM", "SyntheticLinear")
    assert all(hp.random_hparams("SparseShared", "Sprites", s)["eval_head"] == "own" for s in (1, 2, 3))
    envs, test = [blobs(1500, 0), blobs(1500, 1)], blobs(200, 2)
    algorithm = episodic("ProtoNet")
    with torch.no_grad():
        got = eval_predictor(algorithm, envs, ARGS)(test.x)
        pool = ConcatEnv(envs)
        x, y = pool.batch(torch.randperm(len(pool), generator=generator(ARGS.seed, "adapt"))[:2000])
        assert torch.equal(got, algorithm.adapt(x, y)(test.x))


@pytest.mark.parametrize("n_fit, expected", [(100, 100), (0, 480), (2000, 480)])
def test_eval_n_fit_zero_fits_on_every_training_point(n_fit, expected):
    envs = [blobs(240, 0), blobs(240, 1)]
    algorithm = episodic(eval_n_fit=n_fit)
    seen = []
    own = algorithm.adapt
    algorithm.adapt = lambda x, y, num_classes=None: seen.append(len(x)) or own(x, y, num_classes)
    with torch.no_grad():
        eval_predictor(algorithm, envs, ARGS)
    assert seen == [expected]


@pytest.mark.parametrize("name", ["ProtoNet", "SparseShared"])
def test_probe_head_reads_an_easy_label(name):
    envs, test = [blobs(300, 0), blobs(300, 1)], blobs(300, 2)
    algorithm = episodic(name, eval_head="probe")
    algorithm.adapt = None  # the probe must not go through the algorithm's own head
    with torch.no_grad():
        predict = eval_predictor(algorithm, envs, ARGS)
        assert predict(test.x[:5]).shape == (5, 3)
        acc = split_metrics(predict, test, "test", 128, algorithm.device())["test_acc"]
    assert acc > 0.9, acc


@pytest.mark.parametrize("overrides, message", [('{"eval_head": "linear"}', "eval_head must be one of own | probe"),
                                                ('{"eval_n_fit": -1}', "eval_n_fit must be >= 0")])
def test_bad_eval_hparam_is_one_line(capsys, tmp_path, overrides, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        train.main(["--algorithm", "ProtoNet", "--steps", "1", "--hparams", overrides, "--output_dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: hparam ") and message in err[0], err
    assert not out.exists()
