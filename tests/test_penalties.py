"""Every registered penalty variant (harness/algorithms/sparse_shared/penalties.py) against what it claims.

Parametrised over ``SPARSITIES`` and ``SHARINGS`` as they are at import, so a variant is tested the moment
it is registered: a sharing term's weights and Hessian are the derivatives of its value (autograd); a
concave term lies below its linearisation (majorise-minimise's premise); a norm's importance gradient is
the derivative of its importance and its prox minimises what a prox minimises; and, for every (norm,
term) pair, in float64: the solution satisfies the optimality conditions of its last convex problem, the
implicit gradient equals central finite differences of that problem (penalties frozen) and, with
``sharing_grad="full"``, those of the converged majorise-minimise solution, and autograd through an
unrolled ISTA whose thresholds follow the term's weights. The variant-specific references (an
independent Phi, scikit-learn's l1 logistic regression) stay in tests/test_sparse_solver.py.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from harness.algorithms.sparse_shared import solver
from harness.algorithms.sparse_shared.implicit import sparse_heads
from harness.algorithms.sparse_shared.penalties import SHARINGS, SPARSITIES, SharingTerm, mixed_distribution
from harness.algorithms.sparse_shared.problem import InnerProblem, lambda_max
from test_sparse_solver import _problem, _smooth_grads

DT = torch.float64


@SHARINGS.register("sqrt")
class SqrtSharing(SharingTerm):
    """The example of penalties.py's docstring and docs/design.md, registered here: the tests below cover it
    as they cover the built-in variants."""

    def value(self, A, delta):
        return torch.sqrt(A + delta).sum()

    def weights(self, A, delta):
        return 0.5 / torch.sqrt(A + delta), mixed_distribution(A, delta)[0]

    def hessian(self, A, delta):
        return lambda x: -0.25 * (A + delta) ** -1.5 * x


# a beta at which each term moves the penalties without holding any at 0 (their scales differ: penalties.py)
BETA = {"reweighted": 0.25, "entropy": 0.05}
PAIRS = [(C, sparsity, sharing) for (sparsity, sharing), C in
         itertools.product(itertools.product(SPARSITIES, SHARINGS), (2, 3))]


def _importances(seed: int, d: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = torch.rand(d, generator=g, dtype=DT) * 2
    A[2] = 0.0  # an unused feature
    return A


@pytest.mark.parametrize("name", list(SHARINGS))
@pytest.mark.parametrize("delta", [0.1, 0.5])
def test_sharing_weights_and_hessian_are_derivatives_of_the_value(name, delta):
    term = SHARINGS[name]
    A = _importances(1)
    w, p = term.weights(A, delta)
    assert float(p.sum()) == pytest.approx(1.0) and bool((p > 0).all())
    Ar = A.clone().requires_grad_()
    (grad,) = torch.autograd.grad(term.value(Ar, delta), Ar)
    torch.testing.assert_close(w, grad, rtol=1e-10, atol=1e-12)
    H = torch.autograd.functional.hessian(lambda a: term.value(a, delta), A)
    x = torch.randn(A.shape, generator=torch.Generator().manual_seed(2), dtype=DT)
    torch.testing.assert_close(term.hessian(A, delta)(x), H @ x, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", [n for n, t in SHARINGS.items() if t.concave])
def test_concave_terms_lie_below_their_linearisation(name):
    term, delta = SHARINGS[name], 0.1
    A = _importances(3)
    w, _ = term.weights(A, delta)
    assert bool((w >= 0).all())  # never a reward for larger heads
    for seed in range(20):
        B = _importances(100 + seed)
        assert float(term.value(B, delta)) <= float(term.value(A, delta) + w @ (B - A)) + 1e-12


@pytest.mark.parametrize("name", list(SPARSITIES))
def test_sparsity_norm_gradient_prox_and_dual(name):
    norm = SPARSITIES[name]
    g = torch.Generator().manual_seed(4)
    W = torch.randn(3, 6, 4, generator=g, dtype=DT)
    W[:, 1] = 0.0  # a zero row
    Wr = W.clone().requires_grad_()
    (grad,) = torch.autograd.grad((norm.importance(Wr) * torch.arange(1.0, 7.0, dtype=DT)).sum(), Wr)
    on = norm.active(W)
    ref = norm.importance_grad(W) * torch.arange(1.0, 7.0, dtype=DT).view(1, 6, 1)
    torch.testing.assert_close(grad[on], ref[on])
    # the prox minimises 1/2 ||X - V||^2 + thr R(X): no perturbation of it does better
    V, thr = torch.randn(3, 6, 4, generator=g, dtype=DT), torch.full((3, 6, 1), 0.7, dtype=DT)
    P = norm.prox(V, thr)
    assert bool((P == 0).any()), "exact zeros"

    def f(X):
        return 0.5 * ((X - V) ** 2).sum() + (thr[..., 0] * norm.importance(X)).sum()

    for k in range(50):
        E = 1e-3 * torch.randn(V.shape, generator=g, dtype=DT) * (k % 2 or on.to(DT).mean())
        assert float(f(P)) <= float(f(P + E)) + 1e-12
    # the dual: W = 0 solves the prox of a gradient G exactly when thr >= dual_max(G)
    G = torch.randn(3, 6, 4, generator=g, dtype=DT)
    lam = norm.dual_max(G).view(3, 1, 1)
    assert torch.count_nonzero(norm.prox(G, lam.expand(3, 6, 1) * (1 + 1e-12))) == 0
    assert bool((norm.prox(G, lam.expand(3, 6, 1) * 0.99).flatten(1) != 0).any(dim=1).all())


@pytest.mark.parametrize("C,sparsity,sharing", PAIRS)
def test_optimality_of_the_last_convex_problem(C, sparsity, sharing):
    T, n, d, alpha, rho = 3, 30, 8, 0.3, 1e-3
    Z, Y = _problem(T, n, d, C, seed=10 + C)
    beta = BETA.get(sharing, 0.25)
    W, b, info = sparse_heads(Z, Y, C, alpha, beta=beta, rho=rho, sparsity=sparsity, sharing=sharing, tol=1e-11,
                              max_iter=50000)
    assert info["kkt"] <= 1e-11, info
    pen = info["penalty"][:, :-1]
    alpha_t = alpha * lambda_max(Z, Y, C, sparsity).view(T, 1, 1)
    assert torch.equal(pen, alpha_t.expand_as(pen)) == (sharing == "none")
    gW, gb = _smooth_grads(Z, Y, C, W, b, rho)
    assert float(gb.abs().max()) < 1e-8
    eta = 0.5
    norm = SPARSITIES[sparsity]
    torch.testing.assert_close(norm.prox(W - eta * gW, eta * pen), W, rtol=0, atol=1e-8)
    assert 0 < int((W != 0).sum()) < W.numel()


@pytest.mark.parametrize("C,sparsity,sharing", PAIRS)
def test_implicit_gradient_equals_finite_differences(C, sparsity, sharing, monkeypatch):
    """``last_solve`` against central differences of the last convex problem (its penalties frozen), and
    ``full`` against those of the converged solution."""
    monkeypatch.setattr(solver, "MM_TOL", 1e-13)  # majorise-minimise run to its fixed point
    T, n, d, alpha = 4, 30, 8, 0.05
    Z, Y = _problem(T, n, d, C, seed=40 + C)
    lam = lambda_max(Z, Y, C, sparsity)
    kw = dict(beta=BETA.get(sharing, 0.25), sparsity=sparsity, sharing=sharing, lam=lam, tol=1e-13, max_iter=50000,
              mm_rounds=3000)
    g = torch.Generator().manual_seed(2)
    GW = torch.randn(T, d, 1 if C == 2 else C, generator=g, dtype=DT)
    V = torch.randn(*Z.shape, generator=g, dtype=DT)
    h = 1e-6
    for sharing_grad in ("last_solve", "full"):
        Zr = Z.clone().requires_grad_()
        W, b, info = sparse_heads(Zr, Y, C, alpha, sharing_grad=sharing_grad, backward_tol=1e-13, **kw)
        assert info["mm_rounds"] < 3000
        (W * GW).sum().backward()
        if sharing_grad == "last_solve":
            pen = info["penalty"]

            def f(Zx):
                problem = InnerProblem.build(Zx, Y, C, alpha, sparsity=sparsity, lam=lam)
                fixed = solver.Penalty(problem, 0)
                fixed.value = pen
                U0 = torch.cat([W, b.unsqueeze(1)], dim=1).detach()
                return (solver.minimize(problem, U0, fixed, problem.lipschitz(), 50000, 1e-13)[0][:, :-1] * GW).sum()
        else:
            def f(Zx):
                return (sparse_heads(Zx, Y, C, alpha, **kw)[0] * GW).sum()
        fd = float((f(Z + h * V) - f(Z - h * V)) / (2 * h))
        assert float((Zr.grad * V).sum()) == pytest.approx(fd, rel=1e-5, abs=1e-7), sharing_grad


@pytest.mark.parametrize("C,sparsity,sharing", PAIRS)
def test_full_gradient_equals_unrolled_ista(C, sparsity, sharing, monkeypatch):
    """Autograd through ISTA started near the solution, each step's threshold alpha_t + scale w(A(W))
    from the term's weights at the iterate: the fixed point of majorise-minimise."""
    monkeypatch.setattr(solver, "MM_TOL", 1e-13)
    T, n, d, alpha, rho, delta = 2, 15, 5, 0.3, 0.05, 0.1
    Z, Y = _problem(T, n, d, C, seed=40 + C)
    K = 1 if C == 2 else C
    lam = lambda_max(Z, Y, C, sparsity)
    beta, norm, term = BETA.get(sharing, 0.25), SPARSITIES[sparsity], SHARINGS[sharing]
    g = torch.Generator().manual_seed(1)
    gw, gb = torch.randn(T, d, K, generator=g, dtype=DT), torch.randn(T, K, generator=g, dtype=DT)
    Zr = Z.clone().requires_grad_()
    W, b, info = sparse_heads(Zr, Y, C, alpha, beta=beta, rho=rho, sparsity=sparsity, sharing=sharing, lam=lam,
                              sharing_eps=delta, tol=1e-12, max_iter=50000, sharing_grad="full", mm_rounds=3000)
    ((gw * W).sum() + (gb * b).sum()).backward()
    scale = term.scale(beta, lam)

    def threshold(Wg):
        w, _ = term.weights(norm.importance(Wg).sum(0), delta)
        return alpha * lam.view(T, 1, 1) + scale * w.view(1, d, 1)

    Zu = Z.clone().requires_grad_()
    Wu, bu = W.detach() * 0.9, b.detach() * 0.9
    step = 0.5 / (1.0 + rho)
    for _ in range(1500):
        S = torch.bmm(Zu, Wu) + bu.unsqueeze(1)
        if C == 2:
            R = (torch.sigmoid(S.squeeze(-1)) - Y.to(DT)).unsqueeze(-1)
        else:
            R = torch.softmax(S, -1) - torch.nn.functional.one_hot(Y, C).to(DT)
        gW = torch.bmm(Zu.transpose(1, 2), R) / n + rho * Wu
        Wu = norm.prox(Wu - step * gW, step * threshold(Wu))
        bu = bu - step * R.mean(1)
        if C > 2:
            bu = bu - bu.mean(1, keepdim=True)
    assert float((Wu - W.detach()).abs().max()) < 1e-8
    (g_unrolled,) = torch.autograd.grad((gw * Wu).sum() + (gb * bu).sum(), Zu)
    assert float((g_unrolled - Zr.grad).norm() / Zr.grad.norm()) < 1e-4
