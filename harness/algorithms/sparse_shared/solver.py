"""Forward solver of the SparseShared inner problem (``problem.py``; Fumero et al., arXiv 2304.07939).

One convex solve (:func:`minimize`): FISTA with per-task steps and gradient adaptive restart
(O'Donoghue & Candes), finished by active-set Newton once the support has stopped changing: FISTA
finds the support in tens of iterations but needs hundreds more to converge on it. Every solve starts
cold, at W = 0 (warm starts saved nothing that mattered: docs/measurements_history.md).

The sharing term by majorise-minimise (:class:`Penalty`): the concave Phi, linearised at the iterate,
leaves the convex problem with per-row penalties ``alpha_t + beta lam_bar w_j``. FISTA starts on
``alpha_t`` alone; then Phi is linearised anew before every Newton step (without Newton, whenever FISTA
has converged) until the weights stop moving. The linearisation lies above Phi and touches it at the
iterate, so every step that lowers the convex objective lowers the full one.
"""
from __future__ import annotations

import functools
import math

import torch

from harness.algorithms.sparse_shared.problem import DEFAULTS, ActiveSet, InnerProblem, active_mask, sharing_weights
from harness.linalg import robust_solve

MM_TOL = 1e-3  # majorise-minimise stops when no importance share pt_j moves by more than this
STEP_GROWTH = 2.0  # first steps are STEP_GROWTH / L_t, halved (down to 1 / L_t) where the objective stops falling
STEP_CHECK = 10  # iterations between those objective checks
NEWTON_CHECK = 5  # iterations between support comparisons and convergence tests
NEWTON_SETTLED = 0.02  # fraction of entries whose sign may change between comparisons for Newton to start
NEWTON_STEPS = 6  # Newton steps per finish with the penalty fixed
NEWTON_MAX = 1024  # largest active set per task solved by Newton
NEWTON_MAX_ELEMS = 2 ** 22  # largest number of Hessian entries, all tasks together (16 MB in float32): enough
# for d=2048 T=16 C=5, whose first solve would otherwise stop at the 200-iteration cap without Newton
NEWTON_HALVINGS = 5  # step halvings tried per Newton step before a task keeps its iterate


def solve(problem: InnerProblem, max_iter: int = DEFAULTS["max_iter"], tol: float = DEFAULTS["tol"],
          mm_rounds: int = DEFAULTS["mm_rounds"]):
    """``(U, info)``: the augmented heads and ``iters`` (FISTA), ``newton_steps``, ``kkt`` (max over
    tasks), ``frac_zero``, ``mm_rounds`` (linearisations of Phi) and ``penalty`` (T, d+1, 1), the last
    convex problem's, which the implicit backward differentiates."""
    penalty = Penalty(problem, mm_rounds)
    U, iters, kkt, newton = minimize(problem, problem.initial_heads(), penalty, problem.lipschitz(), max_iter, tol)
    if not problem.binary:  # softmax CE is invariant to b_t + c 1: fix the gauge sum_k b_tk = 0
        U[:, -1] -= U[:, -1].mean(dim=1, keepdim=True)
    return U, {"iters": int(iters), "newton_steps": int(newton), "kkt": float(kkt), "mm_rounds": penalty.rounds,
               "frac_zero": float((U[:, :-1] == 0).double().mean()), "penalty": penalty.value}


class Penalty:
    """The convex problem's penalty (T, d+1, 1): ``alpha_t``, then, after each :meth:`relinearise` at
    heads U, ``alpha_t + beta lam_bar w(U)``; at most ``mm_rounds`` of those. Once no share pt_j at U
    differs by more than ``MM_TOL`` from those of the current linearisation, that one is kept (``settled``)."""

    def __init__(self, problem: InnerProblem, mm_rounds: int):
        self.problem, self.rounds, self.pt, self.value = problem, 0, None, problem.alpha_t
        self.left = mm_rounds if problem.sharing > 0 else 0

    @property
    def settled(self) -> bool:
        return self.left == 0

    def relinearise(self, U: torch.Tensor) -> None:
        w, pt = sharing_weights(U[:, :-1], self.problem.sparsity, self.problem.delta, self.problem.term)
        self.rounds += 1
        if self.pt is not None and float((pt - self.pt).abs().max()) <= MM_TOL:
            self.left = 0
        else:
            self.value, self.pt, self.left = self.problem.with_sharing(w), pt, self.left - 1


@functools.lru_cache(maxsize=8)
def _momentum(n: int) -> torch.Tensor:
    """FISTA's (t_k - 1) / t_{k+1} for the k-th step since a restart, k = 0..n (0 for k <= 1)."""
    t, out = 1.0, [0.0]
    for _ in range(n):
        t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        out.append((t - 1.0) / t_next)
        t = t_next
    return torch.tensor(out, dtype=torch.float64)


def minimize(problem: InnerProblem, U: torch.Tensor, penalty: Penalty, L: torch.Tensor, max_iter: int, tol: float):
    """The convex problem with ``penalty`` from U, relinearised as it allows: ``(U, FISTA iterations,
    max KKT, Newton steps)``.

    Steps start at ``STEP_GROWTH / L_t`` (the bound is worst-case; 2x cut iterations by a third); every
    ``STEP_CHECK`` iterations a task whose objective did not fall goes back to the last check with its
    step halved, never below the always-safe ``1 / L_t``. Every ``NEWTON_CHECK`` iterations, once the
    support has settled, :func:`newton_finish`.
    """
    T = U.shape[0]
    Lv = L.view(T, 1, 1)
    eta_safe = 1.0 / Lv
    newton = 0
    growth = torch.full((T, 1, 1), STEP_GROWTH, dtype=U.dtype, device=U.device)
    momentum = _momentum(max_iter + 1).to(U)
    since = torch.zeros(T, 1, 1, dtype=torch.long, device=U.device)  # steps since each task's restart
    X = Xe = U  # the iterate and the extrapolated point
    kkt, last_pattern = math.inf, None
    check_X, check_F = X, problem.objective(X, penalty.value)
    eta = growth / Lv
    thr = _threshold(eta, penalty, X)
    for it in range(1, max_iter + 1):
        Xn = problem.sparsity.prox(torch.addcmul(Xe, eta, problem.smooth_grad(Xe), value=-1.0), thr)
        dX, step = Xe - Xn, Xn - X
        since = (since + 1) * ((dX * step).sum(dim=(1, 2), keepdim=True) <= 0)  # 0: gradient restart
        X, Xe = Xn, torch.addcmul(Xn, torch.take(momentum, since), step)
        if it % NEWTON_CHECK:
            continue
        if it % STEP_CHECK == 0 and bool((growth > 1).any()):
            F = problem.objective(X, penalty.value)
            # "not decreased" counts as failed: with the long step the iterates can settle into a 2-cycle
            rose = ((F >= check_F - 1e-9 * check_F.abs()) & (growth.view(T) > 1)).view(T, 1, 1)
            if bool(rose.any()):  # back to the last check with half the step, momentum reset
                growth = torch.where(rose, (growth / 2).clamp_min(1.0), growth)
                eta = growth / Lv
                thr = _threshold(eta, penalty, X)
                X = torch.where(rose, check_X, X)
                Xe = torch.where(rose, X, Xe)
                since = since * ~rose
                continue
            check_X, check_F = X, F
        W = X[:, :-1]
        pattern = problem.sparsity.pattern(W)
        if last_pattern is not None and float((pattern != last_pattern).sum()) <= NEWTON_SETTLED * W.numel() \
                and _newton_affordable(X, problem.sparsity):
            X, kkt, k = newton_finish(problem, X, penalty, tol, eta_safe)
            newton += k
            if kkt <= tol and penalty.settled:
                break
            pattern = None  # wait for the support to settle again
        # cheap proxy for the KKT residual: the prox-gradient mapping at the extrapolated point
        elif float((dX / eta).square().sum(dim=(1, 2)).max()) <= (0.5 * tol) ** 2:
            kkt = float(problem.prox_step(X, penalty.value, eta_safe)[1].max())
            if kkt <= tol:
                if penalty.settled:
                    break
                penalty.relinearise(X)
        if pattern is None or kkt <= tol:  # restart on the (possibly new) penalty
            thr, Xe, kkt = _threshold(eta, penalty, X), X, math.inf
            since.zero_()
            check_X, check_F = X, problem.objective(X, penalty.value)
        last_pattern = pattern
    else:
        kkt = float(problem.prox_step(X, penalty.value, eta_safe)[1].max())
    return X, it, kkt, newton


def _threshold(eta: torch.Tensor, penalty: Penalty, U: torch.Tensor) -> torch.Tensor:
    """The prox threshold eta * penalty at U's full shape (see ``InnerProblem.ridge``)."""
    return (eta * penalty.value).expand_as(U).contiguous()


def _newton_affordable(U: torch.Tensor, sparsity) -> bool:
    """Whether the dense per-task Newton systems on U's support are small enough."""
    m = int(active_mask(U, sparsity).sum(dim=(1, 2)).max())
    return m <= NEWTON_MAX and U.shape[0] * m * m <= NEWTON_MAX_ELEMS


def newton_finish(problem: InnerProblem, U: torch.Tensor, penalty: Penalty, tol: float, eta_safe: torch.Tensor):
    """Active-set Newton: rounds of one prox-gradient step, then one Newton step on its support.

    The prox-gradient step (step ``eta_safe``, the KKT residual's) gives the residual and the support
    (for l1 also the signs), adding every entry that violates optimality; on that support the
    objective is smooth, with the Hessian the implicit backward solves with. Steps are projected onto
    the support's closure (an l1 entry that changes sign, or a group row that turns around, becomes
    zero, so zeros stay exact); each task takes the longest of the steps 1, 1/2, ... that decreases
    its objective (Armijo), else keeps the prox-gradient point. The penalty is relinearised before
    every round until it settles; then at most NEWTON_STEPS more. Returns (U, max KKT, Newton steps).
    """
    T = U.shape[0]
    slack = 4 * torch.finfo(U.dtype).eps
    kkt, steps, fixed = math.inf, 0, 0
    while True:
        if not penalty.settled:
            penalty.relinearise(U)
            fixed = 0
        pen = penalty.value
        Up, residual = problem.prox_step(U, pen, eta_safe)
        kkt = float(residual.max())
        if (kkt <= tol and penalty.settled) or fixed == NEWTON_STEPS:
            break
        U, S = Up, problem.scores(Up)
        obj, probs = problem.objective(U, pen, S), problem.probs(S)
        G = problem.grad(U, probs - problem.Yk)
        G[:, :-1] += pen[:, :-1] * problem.sparsity.importance_grad(U[:, :-1])
        A = ActiveSet.of(active_mask(U, problem.sparsity))
        g = A.gather(G)
        step = -robust_solve(problem.hessian(U, probs, A, pen), g.unsqueeze(-1)).squeeze(-1)
        dec = (g * step).sum(dim=1)  # directional derivative per task, < 0
        dU = A.scatter(step, U.shape)
        steps, fixed = steps + 1, fixed + 1
        todo = torch.ones(T, dtype=torch.bool, device=U.device)
        t = 1.0
        for _ in range(NEWTON_HALVINGS):
            Un = U + t * dU
            same_side = problem.sparsity.same_side(Un, U)
            same_side[:, -1] = True  # the bias row is free
            Un = torch.where(same_side, Un, 0.0)
            Fn = problem.objective(Un, pen)
            ok = todo & (Fn <= obj + 1e-4 * t * dec + slack * obj.abs())
            U = torch.where(ok.view(T, 1, 1), Un, U)
            obj = torch.where(ok, Fn, obj)
            todo &= ~ok
            if not bool(todo.any()):
                break
            t *= 0.5
    return U, kkt, steps
