"""DomainBed's MNIST network (harness/backbones/domainbed_mnist.py): layer sizes, normalisation, parameter
count and order of operations as DomainBed's ``MNIST_CNN`` (arXiv 2007.01434, domainbed/networks.py), and
the default backbone of RotatedFashionMNIST."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import require_real_fashion_mnist
from torch import nn

from harness.backbones import build_backbone
from harness.errors import UserError
from harness.hparams import resolve


def domainbed_parameter_count(in_channels: int) -> int:
    """DomainBed's MNIST_CNN counted by hand: four convolutions (weights + biases) and four GroupNorms
    (a weight and a bias per channel)."""
    conv = lambda c_in, c_out: c_in * c_out * 3 * 3 + c_out  # noqa: E731
    return (conv(in_channels, 64) + conv(64, 128) + conv(128, 128) + conv(128, 128)
            + 2 * 64 + 3 * 2 * 128)


def test_shape_groupnorm_and_parameter_count():
    net = build_backbone("MNIST_CNN", (1, 28, 28), {"feature_dim": 128})
    assert net.n_outputs == 128
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 128)
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert [(m.num_groups, m.num_channels) for m in norms] == [(8, 64), (8, 128), (8, 128), (8, 128)]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (1, 64, (3, 3), (1, 1), (1, 1)), (64, 128, (3, 3), (2, 2), (1, 1)),
        (128, 128, (3, 3), (1, 1), (1, 1)), (128, 128, (3, 3), (1, 1), (1, 1))]
    assert sum(p.numel() for p in net.parameters()) == domainbed_parameter_count(1) == 370_560
    # ColoredMNIST's two channels: only conv1 grows
    net2 = build_backbone("MNIST_CNN", (2, 28, 28), {"feature_dim": 128})
    assert sum(p.numel() for p in net2.parameters()) == domainbed_parameter_count(2)


def test_forward_is_conv_relu_groupnorm_then_global_average_pool():
    torch.manual_seed(0)
    net = build_backbone("MNIST_CNN", (1, 28, 28), {"feature_dim": 128}).eval()
    with torch.no_grad():  # GroupNorm with non-trivial affine parameters, so the order matters
        for m in net.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.normal_()
                m.bias.normal_()
    x = torch.rand(2, 1, 28, 28)
    h = x
    for conv, gn in ((net.conv1, net.bn0), (net.conv2, net.bn1), (net.conv3, net.bn2), (net.conv4, net.bn3)):
        h = F.group_norm(F.relu(conv(h)), gn.num_groups, gn.weight, gn.bias, gn.eps)
    assert h.shape == (2, 128, 14, 14)  # conv2's stride 2
    with torch.no_grad():
        torch.testing.assert_close(net(x), h.mean((2, 3)))
        torch.testing.assert_close(net.train()(x), h.mean((2, 3)))  # no running statistics


def test_feature_dim_other_than_128_adds_a_projection_and_non_images_fail():
    net = build_backbone("MNIST_CNN", (1, 28, 28), {"feature_dim": 32})
    assert net.n_outputs == 32 and net(torch.rand(2, 1, 28, 28)).shape == (2, 32)
    with pytest.raises(UserError, match="MNIST_CNN needs image inputs"):
        build_backbone("MNIST_CNN", (10,), {"feature_dim": 128})


def test_default_backbone_of_rotated_fashion_mnist_trains():
    """RotatedFashionMNIST's default hparams pick MNIST_CNN; one ERM and one SparseShared step run on it."""
    from harness.algorithms.sparse_shared.algorithm import SparseShared  # noqa: F401  (registers)
    from harness.datasets.tasks import TaskBatch
    from harness.registry import ALGORITHMS

    for name in ("ERM", "SparseShared"):
        hp = resolve(name, "RotatedFashionMNIST", 0, None)
        assert hp["backbone"] == "MNIST_CNN" and hp["feature_dim"] == 128
    torch.manual_seed(0)
    erm = ALGORITHMS.get("ERM")((1, 28, 28), 10, 2, {**resolve("ERM", "RotatedFashionMNIST"), "batch_size": 4})
    assert erm.featurizer.n_outputs == 128
    logs = erm.update([(torch.rand(4, 1, 28, 28), torch.randint(10, (4,))) for _ in range(2)])
    assert torch.isfinite(torch.tensor(logs["loss"]))
    hp = resolve("SparseShared", "RotatedFashionMNIST", 0, json.dumps({"tasks_per_batch": 2, "support": 10,
                                                                        "query": 10}))
    ss = ALGORITHMS.get("SparseShared")((1, 28, 28), 10, 2, hp)
    y = torch.arange(5).repeat_interleave(2).repeat(2, 1)
    logs = ss.update(TaskBatch(torch.rand(2, 10, 1, 28, 28), y, torch.rand(2, 10, 1, 28, 28), y, 5))
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())


@pytest.mark.slow
def test_default_backbone_end_to_end_on_real_fashion_mnist(cli, tmp_path):
    """harness.train with RotatedFashionMNIST's defaults (MNIST_CNN) runs on the real files (a smoke run:
    20 steps of 8 images per domain, 300 images per domain; accuracy is measured in docs/rotated_fmnist.md)."""
    require_real_fashion_mnist()
    out = tmp_path / "run"
    cli("harness.train", "--dataset", "RotatedFashionMNIST", "--algorithm", "ERM", "--test_envs", "5",
        "--steps", "20", "--checkpoint_freq", "20", "--hparams", '{"n_per_env": 300, "batch_size": 8}',
        "--data_dir", str(tmp_path / "empty"), "--output_dir", str(out), timeout=300)
    rec = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    assert rec["hparams"]["backbone"] == "MNIST_CNN" and rec["step"] == 20
    assert all(0.0 <= rec[f"env{i}_out_acc"] <= 1.0 for i in range(6))
