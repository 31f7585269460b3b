"""Mixed precision (harness/precision.py): the backbone under bfloat16 autocast, the rest in float32."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from harness.algorithms.metaoptnet import svm_head_weights
from harness.algorithms.r2d2 import ridge_solution
from harness.algorithms.sparse_shared.implicit import sparse_heads
from harness.backbones import build_backbone
from harness.errors import UserError
from harness.precision import check_precision
from harness.registry import ALGORITHMS
from test_algorithms import INPUTS, NUM_CLASSES, hparams_for, make_batch, update

BF16 = torch.autocast("cpu", dtype=torch.bfloat16)


def test_check_precision():
    check_precision("cpu", "bf16")
    with pytest.raises(UserError, match="unknown precision 'fp16'"):
        check_precision("cpu", "fp16")


@pytest.mark.parametrize("name, shape, over", [("MLP", (10,), {"mlp_width": 16, "mlp_depth": 2}),
                                               ("SmallCNN", (1, 28, 28), {"cnn_width": 4})])
def test_bf16_backbone_computes_in_bfloat16_and_returns_float32(name, shape, over):
    hp = {"feature_dim": 8, **over}
    torch.manual_seed(0)
    ref = build_backbone(name, shape, {**hp, "precision": "fp32"})
    torch.manual_seed(0)
    net = build_backbone(name, shape, {**hp, "precision": "bf16"})
    inner = []
    first = next(m for m in net.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
    first.register_forward_hook(lambda m, i, o: inner.append(o.dtype))
    x = torch.randn(6, *shape)
    z = net(x)
    assert inner == [torch.bfloat16] and z.dtype == torch.float32
    assert net.state_dict().keys() == ref.state_dict().keys()
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert torch.allclose(z, ref(x), rtol=0.05, atol=0.05) and not torch.equal(z, ref(x))
    z.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())
    assert copy.deepcopy(net)(x).dtype == torch.float32  # Fish trains a deep copy of the backbone


def _features(dtype, T=8, n=40, d=32, C=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    Y = (torch.arange(n) % C).repeat(T, 1)
    mu = torch.randn(T, C, d, generator=g)
    Z = torch.randn(T, n, d, generator=g) + torch.gather(mu, 1, Y.unsqueeze(-1).expand(T, n, d))
    return (Z / Z.norm(dim=-1, keepdim=True)).to(dtype), Y


@pytest.mark.parametrize("beta,sharing_grad", [(0.0, "last_solve"), (0.1, "last_solve"), (0.1, "full")])
def test_sparse_heads_solve_in_float32_under_bf16_autocast(beta, sharing_grad):
    """Without full_precision the solver's products ran in bfloat16: on bench_inner's main shape the
    solve stopped at its 200-iteration cap (KKT 1.3e-3 for tol 1e-4), and bfloat16 features gave bfloat16
    heads (KKT 3e-2)."""
    opts = dict(alpha=0.2, beta=beta, sharing_grad=sharing_grad, tol=1e-4, max_iter=200)
    Z, Y = _features(torch.bfloat16)
    Zref = Z.float().requires_grad_()
    W0, b0, info0 = sparse_heads(Zref, Y, 4, **opts)
    ((W0 ** 2).sum() + b0.sum()).backward()
    Zb = Z.clone().requires_grad_()
    with BF16:
        W, b, info = sparse_heads(Zb, Y, 4, **opts)
        ((W ** 2).sum() + b.sum()).backward()
    assert W.dtype == torch.float32 and info["kkt"] <= 1e-4 and info["iters"] == info0["iters"]
    assert torch.equal(W, W0) and torch.equal(b, b0)
    assert Zb.grad.dtype == torch.bfloat16
    assert torch.allclose(Zb.grad.float(), Zref.grad.to(torch.bfloat16).float())


def test_closed_form_and_svm_heads_solve_in_float32_under_bf16_autocast():
    Z, Y = _features(torch.float32)
    targets = F.one_hot(Y, 4).float()
    ref_ridge = ridge_solution(Z, targets, 1.0)
    ref_svm, _ = svm_head_weights(Z, Y, 4, 0.1, 1.0, 200, 1e-5)
    with BF16:
        ridge = ridge_solution(Z, targets, 1.0)
        svm, _ = svm_head_weights(Z, Y, 4, 0.1, 1.0, 200, 1e-5)
    assert ridge.dtype == svm.dtype == torch.float32
    assert torch.equal(ridge, ref_ridge) and torch.equal(svm, ref_svm)


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_every_algorithm_trains_with_bf16_precision(name):
    """Two training steps with ``"precision": "bf16"``, then adapt/predict, as the trainer runs them."""
    torch.manual_seed(0)
    algorithm = ALGORITHMS.get(name)(INPUTS["image"][0], NUM_CLASSES, 2, {**hparams_for(name, "image"),
                                                                         "precision": "bf16"})
    cls = type(algorithm)
    for step in range(2):
        logs = update(algorithm, make_batch(cls, (1, 28, 28), 2, seed=step), seed=step)
        assert all(math.isfinite(v) for v in logs.values()), logs
    assert all(p.dtype == torch.float32 for p in algorithm.parameters())
    x = torch.randn(5, 1, 28, 28)
    assert algorithm.features(x).dtype == torch.float32
    logits = algorithm.adapt(torch.randn(12, 1, 28, 28), torch.arange(12) % NUM_CLASSES, NUM_CLASSES)(x)
    assert logits.dtype == torch.float32 and logits.shape == (5, NUM_CLASSES)
