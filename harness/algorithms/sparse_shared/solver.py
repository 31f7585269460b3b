"""Batched inner solver for SparseShared heads (Fumero et al., NeurIPS 2023, arXiv 2304.07939).

Inner problem, jointly over a batch of ``T`` tasks::

    W*, b* = argmin_{W,b}  sum_t mean_i CE(Z_t W_t + b_t ; Y_t) + rho/2 ||W||^2
                           + sum_t alpha_t R(W_t) + beta * lam_bar * Phi(A(W))

``R`` is the entrywise l1 norm or the row-wise L2,1 norm (group over classes), ``alpha_t = alpha *
lambda_max_t`` is relative to the smallest penalty that makes ``W_t = 0`` optimal and ``lam_bar``
is the batch's mean ``lambda_max_t``. ``A_tj`` is row j's share of ``R(W_t)`` (the row's l1 norm,
or its l2 norm for group sparsity), ``A_j = sum_t A_tj``, ``S = sum_j A_j``, and

    Phi(A) = sum_j At_j log(St / At_j),   At_j = A_j + delta S / d,   St = (1 + delta) S,

that is ``St * H(pt)`` with ``pt = At / St`` the importance distribution mixed with a fraction
``delta`` (``sharing_eps``) of the uniform one. Phi is concave and 1-homogeneous in A: the sharing
term scales like the sparsity term, is invariant to nothing that R is not, and its derivative
``w_j = dPhi/dA_j = -log pt_j + delta/d sum_k (-log pt_k) > 0`` is a per-feature penalty weight
(never a reward for growth). ``delta`` bounds the weight of an unused feature (its entry barrier)
by about ``log(d / delta)``. Majorise-minimise (:func:`_reweighted`): each round linearises Phi at
the previous heads, leaving the convex weighted problem with per-row penalties
``alpha_t + beta lam_bar w_j``, solved by FISTA with an active-set Newton finish (below); every
round decreases the full objective. ``beta = 0`` is the first, unshared solve alone.

Binary tasks (``n_classes == 2``) use a single logit (``K = 1``) and the
logistic loss; otherwise ``K = n_classes`` and softmax cross-entropy.

FISTA runs with gradient-based adaptive restart (O'Donoghue & Candes) and a per-task step
from a Lipschitz bound ``L_t`` (:func:`_fista`); it finishes with active-set Newton once the
support has (nearly) stopped changing (:func:`_newton_polish`): FISTA identifies the support in
tens of iterations but needs hundreds more to converge on it.

Pure torch; works for float32/float64 on the device of ``Z``. Over 450 lines because it is one
forward path (data layout, FISTA, Newton finish, majorise-minimise) read top to bottom; the Hessian
it shares with the backward lives in ``active_set.py``.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from harness.algorithms.episodic import require_finite
from harness.algorithms.sparse_shared.active_set import (
    active_hessian,
    active_mask,
    compress,
    robust_solve,
)
from harness.linalg import top_eigenvalue_bound
from harness.precision import full_precision

__all__ = [
    "solve_heads",
    "lambda_max",
    "prox",
    "head_dims",
    "DEFAULT_TOL",
    "DEFAULT_MAX_ITER",
    "DEFAULT_RHO",
    "DEFAULT_SHARING_EPS",
    "row_importance",
    "sharing_weights",
]

DEFAULT_TOL = 1e-5
DEFAULT_MAX_ITER = 2000
DEFAULT_RHO = 1e-3
DEFAULT_SHARING_EPS = 0.1  # delta: the uniform share mixed into the importances of the reweighted sharing term
MM_TOL = 1e-3  # majorise-minimise stops when no feature's importance share pt_j moves by more than this


# --------------------------------------------------------------------------- #
# small helpers
# --------------------------------------------------------------------------- #
def head_dims(n_classes: int) -> Tuple[bool, int]:
    """Return ``(binary, K)``: binary heads have a single logit column."""
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    binary = n_classes == 2
    return binary, (1 if binary else n_classes)


OPTIONS = {"sparsity": ("l1", "group"), "sharing_grad": ("last_solve", "full")}


def _check_option(name: str, value: str) -> None:
    if value not in OPTIONS[name]:
        raise ValueError(f"{name} must be one of {' | '.join(OPTIONS[name])}, got {value!r}")


def _targets(Y: torch.Tensor, K: int, binary: bool, dtype) -> torch.Tensor:
    """(T, n, K) float targets: one-hot for softmax, y in {0,1} for binary."""
    if binary:
        return Y.to(dtype).unsqueeze(-1)
    return F.one_hot(Y.long(), K).to(dtype)


def _probs(S: torch.Tensor, binary: bool) -> torch.Tensor:
    return torch.sigmoid(S) if binary else torch.softmax(S, dim=-1)


class _Data(NamedTuple):
    """The supports in the solvers' layout: scores and residuals are (T, K, n), classes before
    samples, because PyTorch's CPU softmax over a last dimension of a few classes is ~7x slower
    than over dimension 1 at the benchmark's shapes (55 vs 8 us at 16 x 50 x 5)."""

    Zt: torch.Tensor  # (T, d, n) features, transposed and contiguous
    Yk: torch.Tensor  # (T, K, n) targets
    binary: bool

    @staticmethod
    def of(Z: torch.Tensor, Yt: torch.Tensor, binary: bool) -> "_Data":
        """From (T, n, d) features and (T, n, K) targets."""
        return _Data(Z.transpose(1, 2).contiguous(), Yt.transpose(1, 2).contiguous(), binary)

    def scores(self, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(T, K, n) logits of the heads (W, b)."""
        return torch.baddbmm(b.unsqueeze(2), W.transpose(1, 2), self.Zt)

    def probs(self, S: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(S) if self.binary else torch.softmax(S, dim=1)

    def residual(self, S: torch.Tensor) -> torch.Tensor:
        """dCE/dS per sample (probabilities minus targets), (T, K, n)."""
        return self.probs(S).sub_(self.Yk)

    def ce(self, S: torch.Tensor) -> torch.Tensor:
        """Mean CE per task, (T,)."""
        if self.binary:
            return (F.softplus(S) - self.Yk * S).sum(dim=(1, 2)) / S.shape[2]
        return (torch.log_softmax(S, dim=1) * self.Yk).sum(dim=(1, 2)) / -S.shape[2]

    def grad_w(self, W: torch.Tensor, R: torch.Tensor, rho: float) -> torch.Tensor:
        """Gradient of mean CE + rho/2 ||W||^2 w.r.t. W from the residual R, (T, d, K)."""
        return torch.baddbmm(W, self.Zt, R.transpose(1, 2), beta=rho, alpha=1.0 / R.shape[2])


def _intercept_at_zero(Yt: torch.Tensor, binary: bool) -> torch.Tensor:
    """Optimal intercept for W = 0 (log class frequency / logit of positive rate)."""
    freq = Yt.mean(dim=1)  # (T, K)
    tiny = torch.finfo(Yt.dtype).tiny ** 0.5
    if binary:
        f = freq.clamp(tiny, 1 - 1e-7 if Yt.dtype == torch.float32 else 1 - 1e-15)
        return torch.log(f) - torch.log1p(-f)
    return torch.log(freq.clamp_min(tiny))


def row_importance(W: torch.Tensor, sparsity: str) -> torch.Tensor:
    """A_tj, row j's share of R(W_t): its l1 norm (l1) or l2 norm (group), (T, d)."""
    if sparsity == "l1":
        return W.abs().sum(dim=2)
    return torch.linalg.vector_norm(W, dim=2)


def sharing_weights(W: torch.Tensor, sparsity: str, delta: float = DEFAULT_SHARING_EPS):
    """(w, pt): w_j = dPhi/dA_j of the reweighted sharing term (see the module doc) and the mixed
    importance distribution pt, both (d,). All-zero heads give the uniform distribution."""
    A = row_importance(W.detach(), sparsity).sum(dim=0)
    d = A.shape[0]
    S = A.sum()
    if float(S) <= 0:
        pt = torch.full_like(A, 1.0 / d)
    else:
        pt = (A + delta * S / d) / ((1 + delta) * S)
    nlog = -torch.log(pt)
    return nlog + (delta / d) * nlog.sum(), pt


def prox(V: torch.Tensor, thr: torch.Tensor, sparsity: str) -> torch.Tensor:
    """Prox of ``thr_t * R``; ``thr`` broadcastable to (T,1,1). Exact zeros."""
    if sparsity == "l1":
        # = sign(V) * max(|V| - thr, 0) in 3 operations instead of 5 (that form gives -0.0 where this gives 0.0)
        return V - torch.clamp(V, min=-thr, max=thr)
    nrm = torch.linalg.vector_norm(V, dim=2, keepdim=True)
    scale = torch.clamp(1 - thr / nrm.clamp_min(torch.finfo(V.dtype).tiny), min=0)
    return V * scale


# --------------------------------------------------------------------------- #
# lambda_max and Lipschitz constants
# --------------------------------------------------------------------------- #
@torch.no_grad()
def lambda_max(Z: torch.Tensor, Y: torch.Tensor, n_classes: int, sparsity: str = "l1") -> torch.Tensor:
    """Smallest per-task penalty making W_t = 0 optimal for the CE part, (T,).

    Computed at the optimal intercept for W = 0; inflated by 32 ulps so that
    alpha = 1 reliably yields W = 0 in floating point.
    """
    Z = Z.detach()
    binary, K = head_dims(n_classes)
    Yt = _targets(Y, K, binary, Z.dtype)
    n = Z.shape[1]
    P0 = Yt.mean(dim=1, keepdim=True)  # optimal probabilities at W = 0
    G = torch.bmm(Z.transpose(1, 2), P0 - Yt) / n  # (T, d, K)
    if sparsity == "l1":
        lam = G.abs().amax(dim=(1, 2))
    else:
        lam = torch.linalg.vector_norm(G, dim=2).amax(dim=1)
    # a few ulps of head-room so that alpha = 1 gives exact zeros despite round-off
    return lam * (1.0 + 32 * torch.finfo(Z.dtype).eps)


@torch.no_grad()
def _lipschitz(Z: torch.Tensor, binary: bool) -> torch.Tensor:
    """Per-task Lipschitz bound of the CE gradient w.r.t. (W, b), (T,)."""
    T, n, d = Z.shape
    wd = torch.float64 if Z.dtype == torch.float64 else torch.float32
    Za = torch.cat([Z, torch.ones(T, n, 1, dtype=Z.dtype, device=Z.device)], dim=2).to(wd)
    if n <= d + 1:
        G = torch.bmm(Za, Za.transpose(1, 2))
    else:
        G = torch.bmm(Za.transpose(1, 2), Za)
    # the trace of the ones column keeps tr G >= n > 0; headroom for the round-off of the squarings
    lam = top_eigenvalue_bound(G) * (1.0 + 1e3 * torch.finfo(wd).eps)
    return ((0.25 if binary else 0.5) * lam / n).to(Z.dtype)


# --------------------------------------------------------------------------- #
# the solver
# --------------------------------------------------------------------------- #
def _kkt(D: _Data, W, b, rho, eta, thr, sparsity):
    """Per-task KKT residual: ||(W - prox(W - eta g))/eta|| combined with ||g_b||, g the gradient of
    the smooth part CE + rho/2 ||W||^2."""
    R = D.residual(D.scores(W, b))
    GW, gb = D.grad_w(W, R, rho), R.mean(dim=2)
    Gm = (W - prox(W - eta * GW, thr, sparsity)) / eta
    return torch.sqrt((Gm * Gm).sum(dim=(1, 2)) + (gb * gb).sum(dim=1))


@full_precision
@torch.no_grad()
def solve_heads(
    Z: torch.Tensor,
    Y: torch.Tensor,
    n_classes: int,
    alpha: float,
    beta: float = 0.0,
    rho: float = DEFAULT_RHO,
    sparsity: str = "l1",
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    init: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    lam: Optional[torch.Tensor] = None,
    sharing_eps: float = DEFAULT_SHARING_EPS,
    mm_rounds: int = 5,
):
    """Solve the batched sparse inner problem.

    Args:
        Z: (T, n, d) support features.  Y: (T, n) integer labels in [0, n_classes).
        alpha: relative sparsity level in [0, 1]; alpha_t = alpha * lambda_max_t.
        beta: sharing weight, relative to the batch's mean lambda_max (0: no sharing term).
        rho: ridge on W.
        sharing_eps: delta of the sharing term (module doc); mm_rounds: the cap on
            majorise-minimise rounds after the first, unshared solve.
        tol: stopping threshold on the KKT residual (max over tasks).
        init: optional warm start (W0, b0).
        lam: optional precomputed lambda_max (T,) (e.g. to hold it fixed in
            finite-difference checks); computed from (Z, Y) when None.

    Returns:
        W (T, d, K), b (T, K), info dict with ``iters`` (FISTA iterations), ``newton_steps``
        (of the active-set Newton finish), ``kkt``, ``frac_zero``, ``mm_rounds`` and ``penalty``,
        the per-task (T, 1, 1) or per-row (T, d, 1) l1 weights of the last convex solve (what the
        implicit backward differentiates).
        For softmax heads b is centred (sum_k b_tk = 0), the intercept being
        defined only up to a constant shift.
        K = 1 for binary problems, n_classes otherwise.  Zeros in W are exact (W is a
        prox iterate or a Newton step projected onto the support).
    """
    _check_option("sparsity", sparsity)
    Z = Z.detach()
    if Z.dim() != 3:
        raise ValueError(f"Z must be (T, n, d), got {tuple(Z.shape)}")
    require_finite(Z)
    T, n, d = Z.shape
    binary, K = head_dims(n_classes)
    dtype, dev = Z.dtype, Z.device
    Yt = _targets(Y.to(dev), K, binary, dtype)
    rounds = 0

    if lam is None:
        lam = lambda_max(Z, Y.to(dev), n_classes, sparsity)
    lam = lam.detach().to(device=dev, dtype=dtype).reshape(T)
    alpha_t = penalty = (float(alpha) * lam).view(T, 1, 1)
    L = _lipschitz(Z, binary) + rho  # (T,)

    if init is not None:
        W = init[0].detach().to(device=dev, dtype=dtype).clone()
        b = init[1].detach().to(device=dev, dtype=dtype).clone()
        if W.shape != (T, d, K) or b.shape != (T, K):
            raise ValueError("init shapes do not match (T, d, K), (T, K)")
    else:
        W = torch.zeros(T, d, K, dtype=dtype, device=dev)
        b = _intercept_at_zero(Yt, binary)

    if beta > 0:
        W, b, it, kkt, newton, penalty, rounds = _reweighted(
            _Data.of(Z, Yt, binary), W, b, rho, alpha_t, float(beta) * float(lam.mean()), float(sharing_eps), L,
            sparsity, max_iter, tol, mm_rounds)
    else:
        W, b, it, kkt, newton = _fista(_Data.of(Z, Yt, binary), W, b, rho, alpha_t, L, sparsity, max_iter, tol)

    if not binary:
        # softmax CE is invariant to b_t + c*1; fix the gauge sum_k b_tk = 0
        b = b - b.mean(dim=1, keepdim=True)

    info = {
        "iters": int(it),
        "newton_steps": int(newton),
        "kkt": float(kkt),
        "frac_zero": float((W == 0).to(torch.float64).mean().item()),
        "mm_rounds": rounds,
        "penalty": penalty,
    }
    return W, b, info


def _reweighted(D: _Data, W, b, rho, alpha_t, scale, delta, L, sparsity, max_iter, tol, max_rounds):
    """Majorise-minimise for the reweighted sharing term (module doc).

    Round 0 solves with ``alpha_t`` alone; each later round adds ``scale * w_j`` (``scale = beta *
    lam_bar``, w from the previous heads) to every row's penalty and re-solves from the previous
    heads. Linearising the concave Phi majorises it, so each round lowers the full objective; it
    stops once no importance share moves by more than ``MM_TOL``, or after ``max_rounds``.
    Returns (W, b, FISTA iterations, KKT of the last solve, Newton steps, its penalty, rounds).
    """
    W, b, it, kkt, newton = _fista(D, W, b, rho, alpha_t, L, sparsity, max_iter, tol)
    w, pt = sharing_weights(W, sparsity, delta)
    penalty, rounds = alpha_t, 0
    for rounds in range(1, max_rounds + 1):
        penalty = alpha_t + scale * w.view(1, -1, 1)
        W, b, i, kkt, k = _fista(D, W, b, rho, penalty, L, sparsity, max_iter, tol)
        it, newton = it + i, newton + k
        w, pt_next = sharing_weights(W, sparsity, delta)
        moved = float((pt_next - pt).abs().max())
        pt = pt_next
        if moved <= MM_TOL:
            break
    return W, b, it, kkt, newton, penalty, rounds


STEP_GROWTH = 2.0  # first try steps STEP_GROWTH / L_t; halved (down to 1 / L_t) where the objective stops falling
STEP_CHECK = 10  # iterations between objective checks


def _task_objective(D: _Data, W, b, rho, alpha_t, sparsity):
    """Per-task convex objective (T,): CE + rho/2 ||W_t||^2 + sum_j alpha_tj A_tj, with ``alpha_t`` a
    weight per task ((T, 1, 1)) or per task and row ((T, d, 1))."""
    T = W.shape[0]
    return (D.ce(D.scores(W, b)) + 0.5 * rho * (W * W).sum(dim=(1, 2))
            + (alpha_t.reshape(T, -1) * row_importance(W, sparsity)).sum(dim=1))


class _Augmented(NamedTuple):
    """The solvers' view of the augmented head ``U = [W; b]``, (T, d+1, K): features with a row of
    ones, the ridge per row and the penalty per task and row, both zero on the bias row."""

    Zat: torch.Tensor  # (T, d+1, n)
    ridge: torch.Tensor  # (1, d+1, 1)
    pen: torch.Tensor  # (T, d+1, 1)

    @staticmethod
    def of(D: _Data, alpha_t, rho: float) -> "_Augmented":
        T, d, n = D.Zt.shape
        dtype, dev = D.Zt.dtype, D.Zt.device
        Zat = torch.cat([D.Zt, torch.ones(T, 1, n, dtype=dtype, device=dev)], dim=1)
        ridge = torch.full((1, d + 1, 1), rho, dtype=dtype, device=dev)
        ridge[:, d] = 0.0
        pen = torch.cat([alpha_t.to(dtype).expand(T, d, 1), torch.zeros(T, 1, 1, dtype=dtype, device=dev)], dim=1)
        return _Augmented(Zat, ridge, pen)

    def scores(self, U: torch.Tensor) -> torch.Tensor:
        """(T, K, n) logits."""
        return torch.bmm(U.transpose(1, 2), self.Zat)

    def grad(self, U: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        """Gradient of mean CE + rho/2 ||W||^2 from the residual R (T, K, n), (T, d+1, K)."""
        return torch.baddbmm(U * self.ridge, self.Zat, R.transpose(1, 2), alpha=1.0 / R.shape[2])


@functools.lru_cache(maxsize=8)
def _momentum_cpu(n: int) -> torch.Tensor:
    t, out = 1.0, []
    for _ in range(n):
        tn = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        out.append((t - 1.0) / tn)
        t = tn
    return torch.tensor(out, dtype=torch.float64)


def _momentum_table(n: int, dtype, device) -> torch.Tensor:
    """FISTA's momentum (t_k - 1) / t_{k+1} after k steps since the last restart (t_0 = 1), read-only
    (built once per length: 0.3-0.4 ms in Python for 200-2000 entries, per solve otherwise)."""
    return _momentum_cpu(n).to(dtype=dtype, device=device)


def _fista(D: _Data, W, b, rho, alpha_t, L, sparsity, max_iter, tol):
    """FISTA with per-task steps and gradient adaptive restart.

    Steps start at ``STEP_GROWTH / L_t``: the Lipschitz bound is worst-case, and a 2x longer step
    cut iterations by a third in benchmarks/bench_inner.py. Every ``STEP_CHECK`` iterations the
    objective of each task is compared with the last check; a task whose objective did not fall goes
    back to that point with its step halved, never below the always-safe ``1 / L_t``.
    Every ``NEWTON_CHECK`` iterations, once the support has settled, :func:`_newton_polish`.
    The head is iterated as ``U = [W; b]`` (its bias row has no penalty and no ridge): at these
    shapes each tensor operation costs more than its arithmetic, so the loop keeps them few.
    """
    T, d, K = W.shape
    aug = _Augmented.of(D, alpha_t, rho)
    Lv = L.view(T, 1, 1)
    growth = torch.full((T, 1, 1), STEP_GROWTH, dtype=W.dtype, device=W.device)
    momentum = _momentum_table(max_iter + 1, W.dtype, W.device)
    since = torch.zeros(T, 1, 1, dtype=torch.long, device=W.device)  # steps since each task's restart
    X = Yu = torch.cat([W, b.unsqueeze(1)], dim=1)
    kkt = float("inf")
    it = 0
    proxy_tol2 = (0.5 * tol) ** 2
    next_check = 0
    eta_safe = 1.0 / Lv

    def split(U):
        return U[:, :d], U[:, d]

    def objective(U):
        return _task_objective(D, *split(U), rho, alpha_t, sparsity)

    def kkt_max(U):
        return float(_kkt(D, *split(U), rho, eta_safe, eta_safe * alpha_t, sparsity).max())

    ck_X, ck_F = X, objective(X)
    eta = growth / Lv
    thr = eta * aug.pen
    last_pattern, newton = None, 0
    for it in range(1, max_iter + 1):
        G = aug.grad(Yu, D.residual(aug.scores(Yu)))
        Xn = prox(torch.addcmul(Yu, eta, G, value=-1.0), thr, sparsity)
        dU = Yu - Xn
        stepU = Xn - X
        keep = (dU * stepU).sum(dim=(1, 2), keepdim=True) <= 0  # gradient restart where this is > 0
        mom = torch.take(momentum, since) * keep
        since = (since + 1) * keep
        X = Xn
        Yu = torch.addcmul(Xn, mom, stepU)
        if it % STEP_CHECK == 0 and bool((growth > 1).any()):
            F = objective(X)
            # not decreased counts as failed too: with the long step the iterates can settle into a
            # 2-cycle whose objective repeats exactly at every check (KKT stuck at 0.1 for 20000 iterations)
            rose = ((F >= ck_F - 1e-9 * ck_F.abs()) & (growth.view(T) > 1)).view(T, 1, 1)
            if bool(rose.any()):  # back to the last check with half the step, momentum reset
                growth = torch.where(rose, (growth / 2).clamp_min(1.0), growth)
                eta = growth / Lv
                thr = eta * aug.pen
                X = torch.where(rose, ck_X, X)
                Yu = torch.where(rose, X, Yu)
                since = since * ~rose
                continue
            ck_X, ck_F = X, F
        if it % NEWTON_CHECK == 0:
            settled, pattern = _support_settled(X[:, :d], last_pattern, sparsity)
            if settled and _newton_affordable(X[:, :d], sparsity):
                Xw, Xb, kkt, k = _newton_polish(D, aug, *split(X), rho, alpha_t, sparsity, tol, eta_safe)
                newton += k
                X = Yu = torch.cat([Xw, Xb.unsqueeze(1)], dim=1)
                if kkt <= tol:
                    break
                since.zero_()
                ck_X, ck_F = X, objective(X)
                pattern = None  # wait for the support to settle again
            last_pattern = pattern
        if it >= next_check:
            # cheap proxy: prox-gradient mapping at the extrapolated point
            if float((dU / eta).square().sum(dim=(1, 2)).max()) <= proxy_tol2:
                kkt = kkt_max(X)
                if kkt <= tol:
                    break
                next_check = it + 5
    else:
        kkt = kkt_max(X)
    W, b = split(X)
    return W.contiguous(), b.contiguous(), it, kkt, newton


NEWTON_CHECK = 5  # iterations between support comparisons
NEWTON_SETTLED = 0.002  # fraction of entries whose sign may change between comparisons for Newton to start
NEWTON_STEPS = 6  # prox-gradient + Newton rounds per polish
NEWTON_MAX = 1024  # largest active set (per task) solved by Newton; FISTA alone beyond
NEWTON_MAX_ELEMS = 2 ** 20  # largest number of Hessian entries (all tasks together); 2^21 gave nothing
# more on bench_inner's shapes (l1 T=16 C=20: 16 x 340^2 entries stays with FISTA at every limit tried)
NEWTON_HALVINGS = 5  # step halvings tried per Newton step before a task keeps its iterate


def _newton_affordable(X, sparsity):
    """Whether the dense per-task Newton systems on the support of ``X`` are small enough (and in
    a dtype the Cholesky factorisation supports)."""
    if X.dtype not in (torch.float32, torch.float64):
        return False
    T, d, K = X.shape
    nz = X.ne(0) if sparsity == "l1" else X.ne(0).any(dim=2, keepdim=True).expand(T, d, K)
    m = int(nz.sum(dim=(1, 2)).max()) + K
    return m <= NEWTON_MAX and T * m * m <= NEWTON_MAX_ELEMS


def _support_settled(X, last, sparsity):
    """(settled, pattern): whether at most NEWTON_SETTLED of the signs (rows for group) changed since ``last``."""
    pattern = torch.sign(X) if sparsity == "l1" else X.ne(0).any(dim=2).to(X.dtype)
    settled = last is not None and float((pattern != last).sum()) <= NEWTON_SETTLED * X.numel()
    return settled, pattern


def _newton_polish(D: _Data, aug: _Augmented, X, Xb, rho, alpha_t, sparsity, tol, eta_safe):
    """Active-set Newton: rounds of one prox-gradient step, then one Newton step on its support.

    The prox-gradient step (step ``eta_safe``, that of the KKT residual) gives the residual and the
    support (and, for l1, the signs), adding every entry that violates optimality; on that support
    the objective is smooth, with the Hessian the implicit backward solves with. Newton steps are
    projected back onto the support's closure (an l1 entry that changes sign, or a group row that
    turns around, becomes zero, so zeros stay exact); each task takes the longest of the steps
    1, 1/2, ... that decreases its objective (Armijo), otherwise it keeps the prox-gradient point.
    Returns (X, Xb, max KKT residual, Newton steps taken).
    """
    T, d, n = D.Zt.shape
    Za = aug.Zat.transpose(1, 2)  # (T, n, d+1): features with a column of ones
    slack = 4 * torch.finfo(X.dtype).eps
    l1 = sparsity == "l1"

    def grad(X, Xb):
        """(U, P (T, n, K), gradient of the smooth part on the augmented head)."""
        U = torch.cat([X, Xb.unsqueeze(1)], dim=1)
        P = D.probs(aug.scores(U))
        return U, P.transpose(1, 2), aug.grad(U, P - D.Yk)

    kkt = float("inf")
    steps = 0
    for rnd in range(NEWTON_STEPS + 1):
        G = grad(X, Xb)[2]
        Xp = prox(X - eta_safe * G[:, :d], eta_safe * alpha_t, sparsity)
        kkt = float((((X - Xp) / eta_safe).square().sum(dim=(1, 2)) + G[:, d].square().sum(dim=1)).sqrt().max())
        if kkt <= tol or rnd == NEWTON_STEPS:
            break
        X, Xb = Xp, Xb - eta_safe.view(T, 1) * G[:, d]
        obj = _task_objective(D, X, Xb, rho, alpha_t, sparsity)
        U, P, G = grad(X, Xb)
        if l1:
            pen = torch.sign(X)
        else:
            nrm = torch.linalg.vector_norm(X, dim=2, keepdim=True)
            pen = X / torch.where(nrm > 0, nrm, torch.ones_like(nrm))
        G[:, :d] += alpha_t * pen
        A = compress(active_mask(X, sparsity))
        g = A.gather(G)
        H = active_hessian(Za, P, U, A, D.binary, alpha_t, rho, sparsity)
        step = -robust_solve(H, g.unsqueeze(-1)).squeeze(-1)
        dec = (g * step).sum(dim=1)  # directional derivative per task, < 0
        dU = A.scatter(step, U.shape)
        steps += 1
        todo = torch.ones(T, dtype=torch.bool, device=X.device)
        t = 1.0
        for _ in range(NEWTON_HALVINGS):
            Un = U + t * dU
            Wn, bn = Un[:, :d], Un[:, d]
            Wn = torch.where(Wn * X > 0, Wn, 0.0) if l1 else \
                torch.where((Wn * X).sum(dim=2, keepdim=True) > 0, Wn, 0.0)
            Fn = _task_objective(D, Wn, bn, rho, alpha_t, sparsity)
            ok = todo & (Fn <= obj + 1e-4 * t * dec + slack * obj.abs())
            X = torch.where(ok.view(T, 1, 1), Wn, X)
            Xb = torch.where(ok.view(T, 1), bn, Xb)
            obj = torch.where(ok, Fn, obj)
            todo &= ~ok
            if not bool(todo.any()):
                break
            t *= 0.5
    return X, Xb, kkt, steps
