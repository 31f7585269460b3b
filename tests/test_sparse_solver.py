"""Tests for the SparseShared inner solver and its implicit gradient.

Every sharing variant is covered: beta = 0 (one convex solve), and the sharing term (beta > 0,
majorise-minimise) with ``sharing_grad`` "last_solve" (the default) or "full"."""
import inspect
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.algorithms.sparse_shared.implicit import implicit_grad_Z, sparse_heads
from harness.algorithms.sparse_shared.problem import (
    GAUGE,
    InnerProblem,
    active_mask,
    lambda_max,
    row_importance,
    sharing_weights,
)
from harness.algorithms.sparse_shared.penalties import SPARSITIES
from harness.algorithms.sparse_shared.solver import solve

DT = torch.float64


def _problem(T, n, d, C, seed, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(T, n, d, generator=g, dtype=torch.float64)
    Z = (Z / Z.norm(dim=-1, keepdim=True)).to(dtype)
    Y = torch.arange(n).repeat(T, 1) % C  # every class present
    Y = Y[:, torch.randperm(n, generator=g)]
    return Z, Y


def _smooth_obj(Z, Y, C, W, b, rho):
    """Independent implementation of the smooth part CE + rho/2 ||W||^2 of the inner objective."""
    S = torch.bmm(Z, W) + b.unsqueeze(1)
    if C == 2:
        ce = F.binary_cross_entropy_with_logits(S.squeeze(-1), Y.to(S.dtype), reduction="none").mean(1).sum()
    else:
        ce = sum(F.cross_entropy(S[t], Y[t]) for t in range(S.shape[0]))
    return ce + 0.5 * rho * (W ** 2).sum()


def _smooth_grads(Z, Y, C, W, b, rho):
    W = W.detach().clone().requires_grad_()
    b = b.detach().clone().requires_grad_()
    f = _smooth_obj(Z, Y, C, W, b, rho)
    return torch.autograd.grad(f, (W, b))


def _phi(A, delta):
    """Phi(A) of the sharing term (solver module doc) for importances A (T, d), differentiable."""
    A = A.sum(0)
    S, d = A.sum(), A.shape[0]
    At, St = A + delta * S / d, (1 + delta) * S
    return (At * torch.log(St / At)).sum()


def _importance(W, sparsity):
    """A_tj, (T, d), differentiable, with a zero (not nan) second derivative on zero rows of the group norm."""
    if sparsity == "l1":
        return W.abs().sum(-1)
    sq = (W * W).sum(-1)
    return torch.where(sq > 0, sq.clamp_min(1e-300).sqrt(), torch.zeros_like(sq))


# --------------------------------------------------------------------------- #
# 1. optimality conditions
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("C", [2, 3])
@pytest.mark.parametrize("sparsity", ["l1", "group"])
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_optimality_conditions(C, sparsity, beta):
    """Subgradient optimality of the (last) convex solve with its penalty per task and row: alpha_t
    alone for beta = 0, alpha_t + beta lam_bar w_j with the sharing term (info["penalty"])."""
    T, n, d = 3, 30, 8
    Z, Y = _problem(T, n, d, C, seed=10 + C)
    alpha, rho = 0.3, 1e-3
    W, b, info = sparse_heads(Z, Y, C, alpha, beta=beta, rho=rho, sparsity=sparsity, tol=1e-10, max_iter=20000)
    assert info["kkt"] <= 1e-10, info
    K = 1 if C == 2 else C
    assert W.shape == (T, d, K) and b.shape == (T, K)
    alpha_t = alpha * lambda_max(Z, Y, C, sparsity)
    pen = info["penalty"][:, :-1, 0]  # (T, d)
    if beta == 0:
        assert info["mm_rounds"] == 0 and torch.equal(pen, alpha_t.view(T, 1).expand(T, d))
    else:
        assert info["mm_rounds"] >= 1 and bool((pen > alpha_t.view(T, 1) * (1 + 1e-9)).all())
    gW, gb = _smooth_grads(Z, Y, C, W, b, rho)
    tol = 1e-6
    assert gb.abs().max() < tol
    nz = W != 0
    assert 0 < nz.sum() < nz.numel(), "problem should be sparse but not empty"
    for t in range(T):
        at = pen[t].unsqueeze(1)  # (d, 1)
        if sparsity == "l1":
            z = ~nz[t]
            assert (gW[t].abs() <= at + tol)[z].all()
            assert ((gW[t] + at * torch.sign(W[t]))[nz[t]].abs() <= tol).all()
        else:
            rn = W[t].norm(dim=1)
            gn = gW[t].norm(dim=1)
            assert (gn <= at[:, 0] + tol)[rn == 0].all()
            act = rn > 0
            r = gW[t][act] + at[act] * W[t][act] / rn[act].unsqueeze(1)
            assert (r.norm(dim=1) <= tol).all()


# --------------------------------------------------------------------------- #
# 2. exact zeros and lambda_max
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("C", [2, 4])
@pytest.mark.parametrize("sparsity", ["l1", "group"])
def test_exact_zeros_and_lambda_max(C, sparsity):
    Z, Y = _problem(4, 25, 10, C, seed=7)
    W, b, info = sparse_heads(Z, Y, C, 0.5, rho=1e-3, sparsity=sparsity, tol=1e-8)
    nzero = int((W == 0).sum())
    assert nzero > 0
    assert info["frac_zero"] == pytest.approx(nzero / W.numel())
    if sparsity == "group":
        # whole rows are zero
        rowzero = (W == 0).all(-1)
        assert int(rowzero.sum()) * W.shape[-1] == nzero
    W1, b1, info1 = sparse_heads(Z, Y, C, 1.0, beta=0.0, rho=0.0, sparsity=sparsity, tol=1e-10)
    assert torch.count_nonzero(W1) == 0 and info1["frac_zero"] == 1.0
    # the bias is then at its W=0 optimum: log class frequency / logit of positive rate
    freq = F.one_hot(Y, C).to(DT).mean(1)
    if C == 2:
        ref = torch.log(freq[:, 1:] / freq[:, :1])
    else:
        ref = torch.log(freq) - torch.log(freq).mean(1, keepdim=True)
    assert torch.allclose(b1, ref, atol=1e-8)
    # lambda_max is tight: slightly below it every task has a non-zero weight
    W2, _, _ = sparse_heads(Z, Y, C, 0.97, beta=0.0, rho=0.0, sparsity=sparsity, tol=1e-10)
    assert ((W2 != 0).flatten(1).any(1)).all()


# --------------------------------------------------------------------------- #
# 3. scikit-learn reference (binary, l1, T=1)
# --------------------------------------------------------------------------- #
def test_matches_sklearn_l1_logreg():
    from sklearn.linear_model import LogisticRegression

    n, d = 60, 6
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, d, generator=g, dtype=DT)
    w_true = torch.tensor([2.0, -1.5, 0, 0, 1.0, 0], dtype=DT)
    y = (X @ w_true + 0.5 * torch.randn(n, generator=g, dtype=DT) > 0.3).long()
    Z, Y = X.unsqueeze(0), y.unsqueeze(0)
    lam = float(lambda_max(Z, Y, 2, "l1")[0])
    alpha = 0.25
    Csk = 1.0 / (n * alpha * lam)  # sklearn: ||w||_1 + C sum_i logloss
    kw = dict(C=Csk, solver="saga", tol=1e-12, max_iter=200000, fit_intercept=True)
    if "l1_ratio" in inspect.signature(LogisticRegression).parameters and \
            tuple(int(v) for v in __import__("sklearn").__version__.split(".")[:2]) >= (1, 8):
        kw["l1_ratio"] = 1.0
    else:
        kw["penalty"] = "l1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = LogisticRegression(**kw).fit(X.numpy(), y.numpy())
    W, b, info = sparse_heads(Z, Y, 2, alpha, beta=0.0, rho=1e-10, tol=1e-11, max_iter=50000)
    assert info["kkt"] < 1e-10
    np.testing.assert_allclose(W[0, :, 0].numpy(), clf.coef_[0], atol=1e-3)
    np.testing.assert_allclose(b[0, 0].item(), clf.intercept_[0], atol=1e-3)
    # sklearn's exact zeros are ours too
    assert ((W[0, :, 0] == 0).numpy() == (clf.coef_[0] == 0)).all()


# --------------------------------------------------------------------------- #
# 4. implicit gradient vs central finite differences
# --------------------------------------------------------------------------- #
def _loss_fn(W, b, C, gw, gb, Zq, Yq):
    S = torch.bmm(Zq, W) + b.unsqueeze(1)
    if C == 2:
        q = F.binary_cross_entropy_with_logits(S.squeeze(-1), Yq.to(S.dtype))
    else:
        q = F.cross_entropy(S.reshape(-1, S.shape[-1]), Yq.reshape(-1))
    return (gw * W).sum() + (gb * b).sum() + q


@pytest.mark.parametrize("C,sparsity,mode", [(2, "l1", "dense"), (2, "group", "iterative"), (3, "l1", "iterative"),
                                            (3, "group", "dense")])
def test_implicit_grad_vs_finite_differences(C, sparsity, mode):
    """Central differences in every coordinate of Z at beta = 0, with either backward. With the
    sharing term: test_reweighted_implicit_gradient_is_that_of_the_last_convex_solve ("last_solve")
    and test_full_sharing_gradient_matches_finite_differences_at_the_mm_fixed_point ("full")."""
    T, n, d = 2, 9, 4
    Z, Y = _problem(T, n, d, C, seed=100 + 3 * C + (sparsity == "group"))
    Zq, Yq = _problem(T, 7, d, C, seed=999)
    K = 1 if C == 2 else C
    g = torch.Generator().manual_seed(5)
    gw = torch.randn(T, d, K, generator=g, dtype=DT)
    gb = torch.randn(T, K, generator=g, dtype=DT)
    lam = lambda_max(Z, Y, C, sparsity)  # held fixed (treated as a constant)
    kw = dict(lam=lam, beta=0.0, rho=0.05, sparsity=sparsity, tol=1e-13, max_iter=50000, backward=mode)
    alpha = 0.35
    Zr = Z.clone().requires_grad_()
    W, b, _ = sparse_heads(Zr, Y, C, alpha, **kw)
    mask = W.detach() != 0
    assert 0 < mask.sum() < mask.numel()
    _loss_fn(W, b, C, gw, gb, Zq, Yq).backward()
    h = 1e-5
    fd = torch.zeros_like(Z)
    with torch.no_grad():
        for i in range(Z.numel()):
            E = torch.zeros(Z.numel(), dtype=DT)
            E[i] = h
            E = E.view_as(Z)
            Wp, bp, _ = sparse_heads(Z + E, Y, C, alpha, **kw)
            Wm, bm, _ = sparse_heads(Z - E, Y, C, alpha, **kw)
            assert torch.equal(Wp != 0, mask) and torch.equal(Wm != 0, mask), "active set not stable"
            fd.view(-1)[i] = (_loss_fn(Wp, bp, C, gw, gb, Zq, Yq) - _loss_fn(Wm, bm, C, gw, gb, Zq, Yq)) / (2 * h)
    rel = (Zr.grad - fd).norm() / fd.norm()
    assert rel < 1e-4, float(rel)


@pytest.mark.parametrize("C,sparsity,beta", [(3, "l1", 0.05), (3, "group", 0.05), (2, "group", 0.0)])
def test_dense_and_iterative_backward_agree(C, sparsity, beta):
    Z, Y = _problem(3, 20, 10, C, seed=21)
    K = 1 if C == 2 else C
    gw = torch.randn(3, 10, K, dtype=DT)
    grads = []
    for mode in ("dense", "iterative"):
        Zr = Z.clone().requires_grad_()
        W, b, _ = sparse_heads(Zr, Y, C, 0.3, beta=beta, sparsity=sparsity, tol=1e-12, max_iter=50000,
                               backward=mode)
        ((W * gw).sum() + b.sum() * 0.3).backward()
        grads.append(Zr.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("C,sparsity,beta,sharing_grad,mode", [
    (3, "l1", 0.0, "last_solve", "dense"),
    (2, "group", 0.0, "last_solve", "iterative"),
    (3, "group", 0.05, "last_solve", "dense"),
    (2, "l1", 0.05, "last_solve", "iterative"),
    (2, "l1", 0.05, "full", "auto"),
    (3, "l1", 0.05, "full", "auto"),
    (3, "group", 0.05, "full", "auto"),
])
def test_backward_matches_a_dense_autograd_implicit_gradient(C, sparsity, beta, sharing_grad, mode):
    """The backward against implicit differentiation written with autograd: H the Hessian, on the
    active set, of the objective the backward differentiates (the last convex solve, its penalties
    frozen; for "full" the full objective, whose penalties at W are alpha_t + beta lam_bar w(W)),
    solved densely; grad_Z = -d<grad_u f, H^-1 g>/dZ. "full" always runs MINRES on the coupled
    Hessian, so this is its dense-vs-iterative check."""
    T, n, d, rho, alpha, delta = 3, 20, 6, 1e-3, 0.3, 0.1
    Z, Y = _problem(T, n, d, C, seed=31 + C)
    K = 1 if C == 2 else C
    lam = lambda_max(Z, Y, C, sparsity)
    problem = InnerProblem.build(Z, Y, C, alpha, beta, rho, sparsity, delta, lam)
    U, info = solve(problem, tol=1e-12, max_iter=50000)
    W, b = U[:, :-1], U[:, -1]
    g = torch.Generator().manual_seed(1)
    gW, gb = torch.randn(T, d, K, generator=g, dtype=DT), torch.randn(T, K, generator=g, dtype=DT)
    scale = beta * float(lam.mean())
    full = sharing_grad == "full"
    pen = problem.with_sharing(sharing_weights(W, sparsity, delta)[0]) if full else info["penalty"]
    got = implicit_grad_Z(problem, U, torch.cat([gW, gb.unsqueeze(1)], dim=1), pen, full_sharing=full,
                          backward=mode, backward_tol=1e-14)

    def objective(u, Zx):
        u = u.view(T, d + 1, K)
        Wu, bu = u[:, :d], u[:, d]
        A = _importance(Wu, sparsity)
        f = _smooth_obj(Zx, Y, C, Wu, bu, rho)
        if sharing_grad == "full":
            f = f + (alpha * lam.view(T, 1) * A).sum() + scale * _phi(A, delta)
        else:
            f = f + (pen[:, :-1, 0] * A).sum()
        return f + (0.5 * (GAUGE / K) * bu.sum(dim=1).square().sum() if K > 1 else 0.0)

    act = active_mask(U, sparsity).reshape(-1)
    u0 = torch.cat([W, b.unsqueeze(1)], dim=1).reshape(-1)
    H = torch.autograd.functional.hessian(lambda u: objective(u, Z), u0)[act][:, act]
    gbc = gb - gb.mean(dim=1, keepdim=True) if K > 1 else gb  # b is centred: no gradient along the gauge
    v = torch.zeros_like(u0)
    v[act] = torch.linalg.solve(H, torch.cat([gW, gbc.unsqueeze(1)], dim=1).reshape(-1)[act])
    v = v.view(T, d + 1, K)
    if K > 1:
        v[:, d] -= v[:, d].mean(dim=1, keepdim=True)
    Zr, ur = Z.clone().requires_grad_(), u0.clone().requires_grad_()
    gu = torch.autograd.grad(objective(ur, Zr), ur, create_graph=True)[0]
    ref = -torch.autograd.grad((gu * v.reshape(-1)).sum(), Zr)[0]
    assert float((got - ref).norm() / ref.norm()) < 1e-8


# --------------------------------------------------------------------------- #
# 5. implicit gradient vs unrolled (autograd through ISTA)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("C,sparsity,beta,sharing_grad", [
    (3, "l1", 0.0, "last_solve"),
    (3, "group", 0.0, "last_solve"),
    (2, "l1", 0.0, "last_solve"),
    (3, "group", 0.05, "last_solve"),
    (3, "l1", 0.05, "full"),
    (3, "group", 0.05, "full"),
])
def test_implicit_vs_unrolled(C, sparsity, beta, sharing_grad, monkeypatch):
    """Autograd through ISTA started near the solution. "last_solve": ISTA on the last convex problem,
    its penalty a constant; "full": each step's threshold recomputed from the iterate as
    alpha_t + beta lam_bar w(W), whose fixed point is the majorise-minimise one."""
    from harness.algorithms.sparse_shared import solver

    T, n, d = 2, 15, 5
    Z, Y = _problem(T, n, d, C, seed=40 + C)
    K = 1 if C == 2 else C
    alpha, rho, delta = 0.3, 0.05, 0.1
    lam = lambda_max(Z, Y, C, sparsity)
    alpha_t = (alpha * lam).view(T, 1, 1)
    g = torch.Generator().manual_seed(1)
    gw = torch.randn(T, d, K, generator=g, dtype=DT)
    gb = torch.randn(T, K, generator=g, dtype=DT)
    full = sharing_grad == "full"
    if full:
        monkeypatch.setattr(solver, "MM_TOL", 1e-13)  # majorise-minimise run to its fixed point

    Zr = Z.clone().requires_grad_()
    W, b, info = sparse_heads(Zr, Y, C, alpha, beta=beta, rho=rho, sparsity=sparsity, tol=1e-12, max_iter=50000,
                              sharing_grad=sharing_grad, mm_rounds=3000 if full else 5)
    ((gw * W).sum() + (gb * b).sum()).backward()
    g_impl = Zr.grad.clone()

    def threshold(Wg):
        if not full:
            return info["penalty"][:, :-1]
        A = _importance(Wg, sparsity).sum(0)
        S = A.sum()
        nlog = -torch.log((A + delta * S / d) / ((1 + delta) * S))
        return alpha_t + beta * lam.mean() * (nlog + delta / d * nlog.sum()).view(1, d, 1)

    # unrolled ISTA started at the (detached) solution's neighbourhood
    Zu = Z.clone().requires_grad_()
    Wu = (W.detach() * 0.9).requires_grad_(False)
    bu = b.detach() * 0.9
    step = 1.0 / (1.0 + rho)
    for _ in range(1500):
        Wg = Wu if Wu.requires_grad else Wu.clone().requires_grad_()
        bg = bu if bu.requires_grad else bu.clone().requires_grad_()
        f = _smooth_obj(Zu, Y, C, Wg, bg, rho)
        gW_, gb_ = torch.autograd.grad(f, (Wg, bg), create_graph=True)
        V = Wg - step * gW_
        thr = step * threshold(Wg)
        if sparsity == "l1":
            Wu = torch.sign(V) * torch.clamp(V.abs() - thr, min=0)
        else:
            nr = V.norm(dim=2, keepdim=True).clamp_min(1e-300)
            Wu = V * torch.clamp(1 - thr / nr, min=0)
        bu = bg - step * gb_
    assert torch.equal(Wu.detach() != 0, W.detach() != 0)
    assert torch.allclose(Wu.detach(), W.detach(), atol=1e-9)
    if C > 2:
        bu = bu - bu.mean(dim=1, keepdim=True)  # same gauge as the solver
    g_unr = torch.autograd.grad((gw * Wu).sum() + (gb * bu).sum(), Zu)[0]
    rel = (g_impl - g_unr).norm() / g_unr.norm()
    assert rel < 1e-6, float(rel)


# --------------------------------------------------------------------------- #
# 6. float32 and device handling
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
@pytest.mark.parametrize("beta,sharing_grad", [(0.0, "last_solve"), (0.05, "last_solve"), (0.05, "full")])
def test_float32_and_device(beta, sharing_grad, device):
    dev = torch.device(device)
    Z, Y = _problem(4, 30, 16, 5, seed=3)
    Z32 = Z.float().to(dev).requires_grad_()
    kw = dict(beta=beta, sharing_grad=sharing_grad)
    W, b, info = sparse_heads(Z32, Y.to(dev), 5, 0.2, tol=1e-5, **kw)
    assert W.dtype == torch.float32 and b.dtype == torch.float32
    assert W.device == Z32.device and b.device == Z32.device
    assert info["kkt"] <= 1e-5 and isinstance(info["iters"], int) and isinstance(info["frac_zero"], float)
    Z64 = Z.clone().requires_grad_()
    W64, b64, _ = sparse_heads(Z64, Y, 5, 0.2, tol=1e-10, max_iter=20000, **kw)
    assert (W.detach().cpu().double() - W64.detach()).abs().max() < 5e-3
    W.sum().backward()
    W64.sum().backward()
    assert Z32.grad.dtype == torch.float32 and Z32.grad.device == Z32.device and torch.isfinite(Z32.grad).all()
    assert float((Z32.grad.cpu().double() - Z64.grad).norm() / Z64.grad.norm()) < 0.05


@pytest.mark.parametrize("C,sparsity", [(2, "l1"), (5, "l1"), (2, "group"), (5, "group")])
def test_newton_polish_matches_fista_and_saves_iterations(C, sparsity, monkeypatch):
    # The solver finishes with active-set Newton once the support settles; FISTA alone must reach
    # the same optimum in more iterations.
    from harness.algorithms.sparse_shared import solver

    Z, Y = _problem(6, 40, 24, C, seed=200 + C)
    kw = dict(beta=0.0, sparsity=sparsity, tol=1e-10, max_iter=20000)
    W, b, info = sparse_heads(Z, Y, C, 0.2, **kw)
    monkeypatch.setattr(solver, "_newton_affordable", lambda *a: False)
    W0, b0, info0 = sparse_heads(Z, Y, C, 0.2, **kw)
    assert info["newton_steps"] > 0 and info0["newton_steps"] == 0
    assert info["kkt"] <= 1e-10 and info0["kkt"] <= 1e-10
    assert info["iters"] < info0["iters"] / 2, (info, info0)
    assert torch.equal(W == 0, W0 == 0) and 0 < info["frac_zero"] < 1
    # both within KKT residual 1e-10 of the optimum; curvature >= rho = 1e-3 bounds the distance by 1e-7
    assert (W - W0).abs().max() < 1e-6 and (b - b0).abs().max() < 1e-6


@pytest.mark.parametrize("C,sparsity", [(2, "l1"), (3, "group")])
def test_step_backoff_recovers_from_too_long_steps(C, sparsity, monkeypatch):
    # Steps start at STEP_GROWTH / L_t and are halved, per task, where the objective rose between
    # checks (back to the last check, momentum reset). Started 64x too long, every task must back off
    # and still reach the optimum of the default run.
    from harness.algorithms.sparse_shared import solver

    Z, Y = _problem(6, 40, 24, C, seed=300 + C)
    kw = dict(beta=0.0, sparsity=sparsity, tol=1e-10, max_iter=20000)
    W, b, info = sparse_heads(Z, Y, C, 0.2, **kw)
    monkeypatch.setattr(solver, "STEP_GROWTH", 64.0)
    W1, b1, info1 = sparse_heads(Z, Y, C, 0.2, **kw)
    assert info1["kkt"] <= 1e-10 and info1["iters"] < 20000, info1
    assert torch.equal(W == 0, W1 == 0)
    assert (W - W1).abs().max() < 1e-6 and (b - b1).abs().max() < 1e-6


@pytest.mark.parametrize("C,sparsity,beta,sharing_grad", [
    (2, "l1", 0.0, "last_solve"), (5, "group", 0.0, "last_solve"), (2, "l1", 0.1, "full"), (5, "group", 0.1, "full")])
def test_iterative_backward_converges_on_wide_problems(C, sparsity, beta, sharing_grad):
    # Scaled by its diagonal (l1) or K x K row blocks (group), MINRES converged here (float32) in
    # 15 (binary l1) and 25 (5-way group) iterations at beta 0, 30 and 45 with the full sharing
    # Hessian; plain MINRES took 15, 150, 55 and 350 (measured at 5-iteration steps). A cap of 100
    # holds the scaled ones and not plain MINRES on group heads.
    g = torch.Generator().manual_seed(0)
    T, n, d = 16, 50, 256
    Y = torch.arange(n).repeat(T, 1) % C
    Z = torch.randn(T, n, d, generator=g) + 0.5 * torch.randn(T, C, d, generator=g).gather(
        1, Y.unsqueeze(-1).expand(T, n, d))
    Z = Z / Z.norm(dim=-1, keepdim=True)
    problem = InnerProblem.build(Z, Y, C, 0.2, beta, sparsity=sparsity)
    U, info = solve(problem, max_iter=2000, tol=1e-5)  # the converged heads the counts above were measured at
    full = sharing_grad == "full"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stopping at the iteration cap fails the test
        iterative = implicit_grad_Z(problem, U, 2 * U, info["penalty"], full_sharing=full, backward="iterative",
                                    backward_max_iter=100)
    assert torch.isfinite(iterative).all()
    if not full:  # with the sharing Hessian there is no dense solve
        dense = implicit_grad_Z(problem, U, 2 * U, info["penalty"], backward="dense")
        assert (iterative - dense).norm() / dense.norm() < 5e-5


def test_iterative_backward_warns_when_it_stops_at_its_cap():
    Z, Y = _problem(3, 20, 10, 3, seed=21)
    kw = dict(beta=0.05, tol=1e-12, max_iter=50000, backward="iterative")
    for cap, warns in ((2, True), (1000, False)):
        Zr = Z.clone().requires_grad_()
        W, b, _ = sparse_heads(Zr, Y, 3, 0.3, backward_max_iter=cap, **kw)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (W.sum() + b.sum()).backward()
        hit = [w for w in caught if "MINRES stopped at its cap" in str(w.message)]
        assert bool(hit) == warns, [str(w.message) for w in caught]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_l1_prox_is_soft_thresholding(dtype):
    g = torch.Generator().manual_seed(3)
    V = torch.randn(16, 65, 5, generator=g, dtype=torch.float64).to(dtype)
    thr = (torch.rand(16, 65, 1, generator=g, dtype=torch.float64) * 1.5).to(dtype)
    thr[:, -1] = 0.0  # an unpenalised (bias) row passes through
    V[0, 0, 0] = thr[0, 0, 0]  # on the threshold: exactly zero
    X = SPARSITIES["l1"].prox(V, thr)
    assert torch.equal(X, torch.sign(V) * torch.clamp(V.abs() - thr, min=0))
    assert torch.equal(X[:, -1], V[:, -1]) and X[0, 0, 0].item() == 0.0
    assert 0.3 < float((X == 0).to(torch.float64).mean()) < 0.9


def test_non_finite_features_raise_floating_point_error():
    Z, Y = _problem(2, 12, 5, 2, seed=0)
    Z[1, 3, 2] = float("nan")
    with pytest.raises(FloatingPointError, match="not finite"):
        sparse_heads(Z, Y, 2, alpha=0.2)
    Z[1, 3, 2] = float("inf")
    with pytest.raises(FloatingPointError, match="not finite"):
        sparse_heads(Z.requires_grad_(), Y, 2, alpha=0.2)


# --------------------------------------------------------------------------- #
# the reweighted (scale-free) sharing term
# --------------------------------------------------------------------------- #
def _reweighted_objective(Z, Y, C, W, b, alpha, beta, rho, delta, lam, sparsity):
    """Independent implementation of the full objective with the sharing term (solver module doc)."""
    A = _importance(W, sparsity)  # (T, d)
    return (_smooth_obj(Z, Y, C, W, b, rho) + (alpha * lam.view(-1, 1) * A).sum()
            + beta * lam.mean() * _phi(A, delta))


@pytest.mark.parametrize("C,sparsity", [(2, "l1"), (3, "l1"), (3, "group")])
def test_reweighted_rounds_decrease_the_full_objective_to_a_stationary_point(C, sparsity):
    Z, Y = _problem(4, 30, 8, C, seed=21 + C)
    alpha, beta, rho, delta = 0.1, 0.2, 1e-3, 0.1
    lam = lambda_max(Z, Y, C, sparsity)
    kw = dict(beta=beta, rho=rho, sparsity=sparsity, lam=lam, sharing_eps=delta, tol=1e-12, max_iter=50000)
    values = []
    for rounds in (1, 2, 3, 5, 8):
        W, b, info = sparse_heads(Z, Y, C, alpha, mm_rounds=rounds, **kw)
        values.append(float(_reweighted_objective(Z, Y, C, W, b, alpha, beta, rho, delta, lam, sparsity)))
    W0, b0, _ = sparse_heads(Z, Y, C, alpha, beta=0.0, rho=rho, sparsity=sparsity, lam=lam, tol=1e-12, max_iter=50000)
    values.insert(0, float(_reweighted_objective(Z, Y, C, W0, b0, alpha, beta, rho, delta, lam, sparsity)))
    assert all(v1 <= v0 + 1e-10 for v0, v1 in zip(values, values[1:])), values
    assert values[-1] < values[0] - 1e-4, values
    # stationarity of the full objective: the last convex problem's weights, recomputed at its
    # solution, leave it (nearly) optimal
    W, b, info = sparse_heads(Z, Y, C, alpha, mm_rounds=500, **kw)
    w, _ = sharing_weights(W, sparsity, delta)
    pen = alpha * lam.view(-1, 1, 1) + beta * lam.mean() * w.view(1, -1, 1)
    assert torch.allclose(info["penalty"][:, :-1], pen, rtol=0, atol=2e-3 * float(pen.max()))
    assert 0 < (row_importance(W, sparsity).sum(0) > 0).sum() < 8  # sharing dropped some features, not all


@pytest.mark.parametrize("C,sparsity", [(3, "l1"), (2, "l1"), (3, "group")])
def test_reweighted_implicit_gradient_is_that_of_the_last_convex_solve(C, sparsity):
    """Exact against finite differences with the penalties held fixed; the weights' own dependence on
    Z (left out by design) is measured against the fully converged solution."""
    K = 1 if C == 2 else C
    Z, Y = _problem(4, 30, 8, C, seed=5)
    lam = lambda_max(Z, Y, C, sparsity)
    kw = dict(beta=0.3, sparsity=sparsity, lam=lam, tol=1e-12, max_iter=50000, mm_rounds=500)
    g = torch.Generator().manual_seed(1)
    GW = torch.randn(4, 8, K, generator=g, dtype=DT)
    V = torch.randn(*Z.shape, generator=g, dtype=DT)
    Zr = Z.clone().requires_grad_()
    W, b, info = sparse_heads(Zr, Y, C, 0.05, **kw)
    (W * GW).sum().backward()
    implicit_dir = float((Zr.grad * V).sum())
    pen, h = info["penalty"], 1e-5

    from harness.algorithms.sparse_shared import solver

    def f_fixed(Zx):  # the last convex problem, its per-row penalties frozen
        problem = InnerProblem.build(Zx, Y, C, 0.05, sparsity=sparsity, lam=lam)
        U0 = torch.cat([W, b.unsqueeze(1)], dim=1).detach()
        fixed = solver.Penalty(problem, 0)
        fixed.value = pen
        return (solver.minimize(problem, U0, fixed, problem.lipschitz(), 50000, 1e-13)[0][:, :-1] * GW).sum()

    fd_fixed = float((f_fixed(Z + h * V) - f_fixed(Z - h * V)) / (2 * h))
    assert abs(implicit_dir - fd_fixed) <= 1e-5 * max(1.0, abs(fd_fixed)), (implicit_dir, fd_fixed)
    f_full = lambda Zx: (sparse_heads(Zx, Y, C, 0.05, **kw)[0] * GW).sum()  # noqa: E731
    fd_full = float((f_full(Z + h * V) - f_full(Z - h * V)) / (2 * h))
    assert fd_full * implicit_dir > 0  # same direction; the size differs by the left-out term


def test_long_step_two_cycle_is_detected():
    """A binary problem where the 2/L step settled into a 2-cycle (KKT 0.125 after 20000 iterations)."""
    torch.manual_seed(0)
    Z = torch.randn(4, 30, 8, dtype=DT)
    Y = torch.randint(0, 2, (4, 30))
    W, b, info = sparse_heads(Z, Y, 2, 0.2, beta=0.0, tol=1e-10, max_iter=2000)
    assert info["kkt"] <= 1e-10 and info["iters"] < 500, info


def test_entropy_of_the_feature_importances():
    """The training log's ``entropy``: H(p), p_j proportional to sum_t ||W_tj||_2."""
    import math

    from harness.metrics.sharing import entropy

    W = torch.randn(3, 5, 2, dtype=DT, generator=torch.Generator().manual_seed(0))
    W[:, 1] = 0  # a feature no task uses contributes nothing
    W[0, 2] = 0
    p = W.norm(dim=-1).sum(0) / W.norm(dim=-1).sum()
    p = p[p > 0]
    assert entropy(row_importance(W, "group").sum(0)) == pytest.approx(float(-(p * p.log()).sum()), rel=1e-12)
    assert entropy(torch.tensor([0.0, 3.0, 0.0])) == 0.0
    assert entropy(torch.zeros(5)) == pytest.approx(math.log(5))  # no feature used: the uniform's


def test_sharing_stats():
    from harness.metrics.sharing import sharing_stats
    one = torch.tensor([[1.0, 0, 0, 0], [2.0, 1e-6, 0, 0]])  # 1e-6 is below the relative threshold
    s = sharing_stats(one)
    assert s["sharing"] == pytest.approx(1.0) and s["features_used"] == 1 and s["mean_reuse"] == 1.0
    spread = torch.eye(4)
    s = sharing_stats(spread)
    assert s["sharing"] == pytest.approx(0.0, abs=1e-12) and s["sharing_counts"] == pytest.approx(0.0, abs=1e-12)
    assert s["mean_reuse"] == 0.25 and s["features_per_task"] == 1.0


@pytest.mark.parametrize("C,sparsity,alpha", [(3, "l1", 0.05), (2, "l1", 0.1), (3, "group", 0.05)])
def test_full_sharing_gradient_matches_finite_differences_at_the_mm_fixed_point(C, sparsity, alpha, monkeypatch):
    from harness.algorithms.sparse_shared import solver

    monkeypatch.setattr(solver, "MM_TOL", 1e-13)  # majorise-minimise run to its fixed point
    Z, Y = _problem(4, 30, 8, C, seed=40 + C + (sparsity == "group"))
    lam = lambda_max(Z, Y, C, sparsity)
    kw = dict(beta=0.25, sparsity=sparsity, lam=lam, tol=1e-13, max_iter=50000, mm_rounds=3000)
    g = torch.Generator().manual_seed(2)
    GW = torch.randn(4, 8, 1 if C == 2 else C, generator=g, dtype=DT)
    V = torch.randn(*Z.shape, generator=g, dtype=DT)
    Zr = Z.clone().requires_grad_()
    W, b, info = sparse_heads(Zr, Y, C, alpha, sharing_grad="full", backward_tol=1e-12, **kw)
    assert info["mm_rounds"] < 3000
    (W * GW).sum().backward()
    h = 1e-6
    f = lambda Zx: (sparse_heads(Zx, Y, C, alpha, **kw)[0] * GW).sum()  # noqa: E731
    fd = float((f(Z + h * V) - f(Z - h * V)) / (2 * h))
    assert float((Zr.grad * V).sum()) == pytest.approx(fd, rel=1e-5, abs=1e-7)
