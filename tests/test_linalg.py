import subprocess
import sys

import pytest
import torch

from harness import linalg


def _spd(B: int, n: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(B, n, n, generator=g, dtype=dtype)
    return A @ A.mT + n * torch.eye(n, dtype=dtype)


@pytest.mark.parametrize("rhs", [(6, 7, 3), (6, 7)])
def test_solve_matches_torch_and_differentiates(rhs):
    A = _spd(6, 7).requires_grad_()
    B = torch.randn(*rhs, dtype=torch.float64, requires_grad=True)
    X = linalg.solve(A, B)
    X_ref = torch.linalg.solve(A, B)
    assert X.shape == X_ref.shape
    assert torch.allclose(X, X_ref, atol=1e-12)
    gA, gB = torch.autograd.grad(X.square().sum(), (A, B))
    rA, rB = torch.autograd.grad(X_ref.square().sum(), (A, B))
    assert torch.allclose(gA, rA, atol=1e-12) and torch.allclose(gB, rB, atol=1e-12)
    X, info = linalg.solve_ex(A.detach(), B.detach())
    assert torch.allclose(X, X_ref, atol=1e-12) and info.shape == (6,) and int(info.abs().max()) == 0


def test_solve_spd_matches_and_flags_indefinite_matrices():
    A = _spd(5, 6)
    B = torch.randn(5, 6, dtype=torch.float64)
    X, ok = linalg.solve_spd(A, B)
    assert X.shape == B.shape and bool(ok.all())
    assert torch.allclose(X, torch.linalg.solve(A, B), atol=1e-12)
    A[2] = -A[2]
    _, ok = linalg.solve_spd(A, B)
    assert ok.tolist() == [True, True, False, True, True]
    with pytest.raises(ValueError, match="batch shape"):
        linalg.solve_spd(A, torch.randn(6, dtype=torch.float64))


def test_solve_rejects_a_broadcast_right_hand_side():
    with pytest.raises(ValueError, match="batch shape"):
        linalg.solve(_spd(4, 5), torch.randn(5, 2, dtype=torch.float64))


# Under torch.set_num_threads(2), PyTorch's batched CPU LU runs MKL getrf concurrently, which fails
# in ?LASWP and can hang for good (pytorch/pytorch#142815). Each solver that factors a batch must
# go through harness.linalg; this runs them in a fresh process with that thread setting.
_SCRIPT = r"""
import torch
torch.set_num_threads(2)
from harness.algorithms.sparse_shared.implicit import sparse_heads
from harness.algorithms.r2d2 import ridge_solution
from harness.algorithms.metaoptnet import kkt_implicit

g = torch.Generator().manual_seed(0)
Z = torch.randn(16, 50, 64, generator=g)
Z = (Z / Z.norm(dim=-1, keepdim=True)).requires_grad_()
Y = torch.arange(50).repeat(16, 1) % 5
W, b, info = sparse_heads(Z, Y, 5, alpha=0.2, beta=0.1, sparsity="group")  # sharing term: Newton, dense backward
(W.square().sum() + b.square().sum()).backward()
assert torch.isfinite(Z.grad).all() and info["mm_rounds"] >= 1 and info["newton_steps"] > 0
W, b, info = sparse_heads(Z, Y, 5, alpha=0.2, sparsity="l1")  # Newton finish
(W.square().sum() + b.square().sum()).backward()
assert torch.isfinite(Z.grad).all() and info["kkt"] <= 1e-5

zs = torch.randn(16, 240, 300, generator=g, requires_grad=True)
Wr = ridge_solution(zs, torch.randn(16, 240, 5, generator=g), 1.0)
Wr.square().sum().backward()
assert torch.isfinite(zs.grad).all()

S, K = 30, 5
f = torch.randn(16, S, 8, generator=g, dtype=torch.float64)
gram = (f @ f.mT).requires_grad_()
Yo = torch.nn.functional.one_hot(torch.arange(S) % K, K).to(torch.float64).expand(16, S, K)
alpha = kkt_implicit(gram, Yo, torch.ones(16, S, K, dtype=torch.float64), 0.1, 1e-3)
alpha.square().sum().backward()
assert torch.isfinite(gram.grad).all()
print("ok")
"""


def test_batched_solves_survive_set_num_threads():
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MKL ERROR" not in proc.stdout + proc.stderr
    assert proc.stdout.strip() == "ok"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_eigenvalue_bound_is_an_upper_bound_within_rank_root(dtype):
    g = torch.Generator().manual_seed(1)
    full = torch.randn(8, 50, 64, generator=g, dtype=torch.float64)
    low = torch.randn(8, 50, 3, generator=g, dtype=torch.float64) @ torch.randn(8, 3, 64, generator=g,
                                                                                 dtype=torch.float64)
    shifted = full + 3.0  # one dominant direction, as features with a ones column have
    for X in (full, low, shifted):
        G = X @ X.mT
        exact = torch.linalg.eigvalsh(G)[:, -1]
        bound = linalg.top_eigenvalue_bound(G.to(dtype)).double()
        rel = 1e-5 if dtype == torch.float32 else 1e-12
        assert bool((bound >= exact * (1 - rel)).all()), (bound / exact).min()
        assert bool((bound <= exact * 50 ** (1 / 32)).all()), (bound / exact).max()
    # a flat spectrum is the worst case: tr(I^32)^(1/32) = m^(1/32) exactly
    eye = torch.eye(50, dtype=dtype).expand(2, 50, 50)
    assert torch.allclose(linalg.top_eigenvalue_bound(eye), torch.full((2,), 50 ** (1 / 32), dtype=dtype))


def test_minres_solves_batched_and_indefinite_symmetric_systems():
    A = _spd(3, 8)
    A[1] -= 12 * torch.eye(8, dtype=torch.float64)  # symmetric, indefinite (CG would not do)
    assert float(torch.linalg.eigvalsh(A[1]).min()) < 0
    b = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    per_system = lambda x, y: (x * y).sum(dim=1, keepdim=True)  # noqa: E731
    x = linalg.minres(lambda v: (A @ v.unsqueeze(-1)).squeeze(-1), b, per_system, 1e-12, 100)
    assert torch.allclose(x, torch.linalg.solve(A, b), atol=1e-9)
    with pytest.warns(RuntimeWarning, match="MINRES stopped at its cap of 2 iterations.*; see here"):
        linalg.minres(lambda v: (A @ v.unsqueeze(-1)).squeeze(-1), b, per_system, 1e-12, 2, hint="; see here")


def test_robust_solve_falls_back_where_cholesky_fails():
    A = _spd(3, 5)
    A[0] = -A[0]  # negative definite: Cholesky fails, LU solves it
    A[2] = torch.ones(5, 5, dtype=torch.float64)  # singular: the pseudo-inverse
    g = torch.randn(3, 5, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x = linalg.robust_solve(A, g)
    assert torch.allclose(x[:2], torch.linalg.solve(A[:2], g[:2]), atol=1e-10)
    assert torch.allclose(x[2], torch.linalg.pinv(A[2]) @ g[2], atol=1e-10)
