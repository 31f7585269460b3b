"""Mixed precision (harness/precision.py): bfloat16 autocast for training steps, inner solvers in float32."""

import math

import pytest
import torch
import torch.nn.functional as F

from harness.algorithms.metaoptnet import svm_head_weights
from harness.algorithms.r2d2 import ridge_solution
from harness.algorithms.sparse_shared.implicit import sparse_heads
from harness.errors import UserError
from harness.precision import autocast
from harness.registry import ALGORITHMS
from test_algorithms import NUM_CLASSES, build, make_batch, update


def test_autocast_contexts():
    x = torch.randn(4, 8)
    with autocast("cpu", "bf16"):
        assert (x @ x.T).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert (x @ x.T).dtype == torch.float32
    with pytest.raises(UserError, match="unknown precision 'fp16'"):
        autocast("cpu", "fp16")


def _features(dtype, T=8, n=40, d=32, C=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    Y = (torch.arange(n) % C).repeat(T, 1)
    mu = torch.randn(T, C, d, generator=g)
    Z = torch.randn(T, n, d, generator=g) + torch.gather(mu, 1, Y.unsqueeze(-1).expand(T, n, d))
    return (Z / Z.norm(dim=-1, keepdim=True)).to(dtype), Y


@pytest.mark.parametrize("sharing_in", ["outer", "inner"])
def test_sparse_heads_solve_in_float32_under_bf16_autocast(sharing_in):
    """Without full_precision the solver's products ran in bfloat16: on bench_inner's main shape the outer
    solve stopped at its 200-iteration cap (KKT 1.3e-3 for tol 1e-4), and bfloat16 features gave bfloat16
    heads (KKT 3e-2)."""
    opts = dict(alpha=0.2, beta=0.1, sharing_in=sharing_in, tol=1e-4, max_iter=200)
    Z, Y = _features(torch.bfloat16)
    Zref = Z.float().requires_grad_()
    W0, b0, info0 = sparse_heads(Zref, Y, 4, **opts)
    ((W0 ** 2).sum() + b0.sum()).backward()
    Zb = Z.clone().requires_grad_()
    with autocast("cpu", "bf16"):
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
    with autocast("cpu", "bf16"):
        ridge = ridge_solution(Z, targets, 1.0)
        svm, _ = svm_head_weights(Z, Y, 4, 0.1, 1.0, 200, 1e-5)
    assert ridge.dtype == svm.dtype == torch.float32
    assert torch.equal(ridge, ref_ridge) and torch.equal(svm, ref_svm)


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_every_algorithm_trains_under_bf16_autocast(name):
    """Two training steps under bfloat16 autocast, then adapt/predict in float32 as the evaluation does."""
    algorithm = build(name, "image", 2)
    cls = type(algorithm)
    for step in range(2):
        with autocast("cpu", "bf16"):
            logs = update(algorithm, make_batch(cls, (1, 28, 28), 2, seed=step), seed=step)
        assert all(math.isfinite(v) for v in logs.values()), logs
    assert all(p.dtype == torch.float32 for p in algorithm.parameters())
    x = torch.randn(5, 1, 28, 28)
    logits = algorithm.adapt(torch.randn(12, 1, 28, 28), torch.arange(12) % NUM_CLASSES, NUM_CLASSES)(x)
    assert logits.dtype == torch.float32 and logits.shape == (5, NUM_CLASSES)
