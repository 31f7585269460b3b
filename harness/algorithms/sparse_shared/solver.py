"""Forward solver of the SparseShared inner problem (``problem.py``; Fumero et al., arXiv 2304.07939).

Majorise-minimise (:func:`solve`): the concave sharing term Phi is linearised at the previous heads,
leaving the convex problem with per-row penalties ``alpha_t + beta lam_bar w_j``; every round lowers
the full objective. The first round is the unshared solve (``beta = 0`` stops there).

Each convex problem (:func:`minimize`): FISTA with per-task steps and gradient adaptive restart
(O'Donoghue & Candes), finished by active-set Newton once the support has stopped changing: FISTA
finds the support in tens of iterations but needs hundreds more to converge on it. A warm start
(every round after the first) goes to Newton at once. Pure torch, float32 or float64, on Z's device.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import torch

from harness.algorithms.sparse_shared.problem import (
    ActiveSet,
    InnerProblem,
    active_mask,
    importance_grad,
    prox,
    sharing_weights,
)
from harness.linalg import robust_solve
from harness.precision import full_precision

MM_TOL = 1e-3  # majorise-minimise stops when no importance share pt_j moves by more than this
STEP_GROWTH = 2.0  # first steps are STEP_GROWTH / L_t, halved (down to 1 / L_t) where the objective stops falling
STEP_CHECK = 10  # iterations between those objective checks
NEWTON_CHECK = 5  # iterations between support comparisons
NEWTON_SETTLED = 0.002  # fraction of entries whose sign may change between comparisons for Newton to start
NEWTON_STEPS = 6  # prox-gradient + Newton rounds per finish
NEWTON_MAX = 1024  # largest active set per task solved by Newton
NEWTON_MAX_ELEMS = 2 ** 22  # largest number of Hessian entries, all tasks together (16 MB in float32): enough
# for d=2048 T=16 C=5, whose first solve would otherwise stop at the 200-iteration cap without Newton
NEWTON_HALVINGS = 5  # step halvings tried per Newton step before a task keeps its iterate


@full_precision
@torch.no_grad()
def solve_heads(Z: torch.Tensor, Y: torch.Tensor, n_classes: int, alpha: float, beta: float = 0.0,
                rho: float = 1e-3, sparsity: str = "l1", sharing_eps: float = 0.1,
                lam: Optional[torch.Tensor] = None, **solver_options):
    """The heads of (T, n, d) supports Z with (T, n) labels Y: ``(W (T, d, K), b (T, K), info)``.

    ``alpha`` is relative to each task's lambda_max, ``beta`` to the batch's mean; ``lam`` fixes
    lambda_max. ``solver_options`` are :func:`solve`'s. Softmax intercepts are centred (sum_k b_tk = 0).
    """
    problem = InnerProblem.build(Z, Y, n_classes, alpha, beta, rho, sparsity, sharing_eps, lam)
    U, info = solve(problem, **solver_options)
    return U[:, :-1].contiguous(), U[:, -1].contiguous(), info


def solve(problem: InnerProblem, init: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, max_iter: int = 2000,
          tol: float = 1e-5, mm_rounds: int = 5):
    """``(U, info)``: the augmented heads and ``iters`` (FISTA), ``newton_steps``, ``kkt`` (the last
    solve's, max over tasks), ``frac_zero``, ``mm_rounds`` and ``penalty`` (T, d+1, 1), the last convex
    solve's, which the implicit backward differentiates. ``init``: a warm start (W, b)."""
    if init is None:
        U = problem.initial_heads()
    else:
        U = torch.cat([init[0], init[1].unsqueeze(1)], dim=1).detach().to(problem.Zat)
        if U.shape != (problem.Zat.shape[0], problem.d + 1, problem.Yk.shape[1]):
            raise ValueError("init shapes do not match (T, d, K), (T, K)")
    L = problem.lipschitz()
    pen, rounds = problem.alpha_t, 0
    U, iters, kkt, newton = minimize(problem, U, pen, L, max_iter, tol, warm=init is not None)
    if problem.sharing > 0:
        w, pt = sharing_weights(U[:, :-1], problem.sparsity, problem.delta)
        for rounds in range(1, mm_rounds + 1):
            pen = problem.with_sharing(w)
            U, i, kkt, k = minimize(problem, U, pen, L, max_iter, tol, warm=True)
            iters, newton = iters + i, newton + k
            w, pt_next = sharing_weights(U[:, :-1], problem.sparsity, problem.delta)
            moved, pt = float((pt_next - pt).abs().max()), pt_next
            if moved <= MM_TOL:
                break
    if not problem.binary:  # softmax CE is invariant to b_t + c 1: fix the gauge sum_k b_tk = 0
        U[:, -1] -= U[:, -1].mean(dim=1, keepdim=True)
    return U, {"iters": int(iters), "newton_steps": int(newton), "kkt": float(kkt), "mm_rounds": rounds,
               "frac_zero": float((U[:, :-1] == 0).double().mean()), "penalty": pen}


@functools.lru_cache(maxsize=8)
def _momentum_cpu(n: int) -> torch.Tensor:
    """FISTA's momentum (t_k - 1) / t_{k+1} after k steps since a restart (t_0 = 1), built once per length."""
    t, out = 1.0, []
    for _ in range(n):
        tn = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        out.append((t - 1.0) / tn)
        t = tn
    return torch.tensor(out, dtype=torch.float64)


def minimize(problem: InnerProblem, U: torch.Tensor, pen: torch.Tensor, L: torch.Tensor, max_iter: int, tol: float,
             warm: bool = False):
    """The convex problem with penalty ``pen`` from U: ``(U, FISTA iterations, max KKT, Newton steps)``.

    Steps start at ``STEP_GROWTH / L_t`` (the bound is worst-case; 2x cut iterations by a third); every
    ``STEP_CHECK`` iterations a task whose objective did not fall goes back to the last check with its
    step halved, never below the always-safe ``1 / L_t``. Every ``NEWTON_CHECK`` iterations, once the
    support has settled, :func:`newton_finish`; a warm start with a non-empty support tries it first.
    """
    T = U.shape[0]
    Lv = L.view(T, 1, 1)
    eta_safe = 1.0 / Lv
    newton = 0
    if warm and bool((U[:, :-1] != 0).any()) and _newton_affordable(U, problem.sparsity):
        U, kkt, newton = newton_finish(problem, U, pen, tol, eta_safe)
        if kkt <= tol:
            return U, 0, kkt, newton
    growth = torch.full((T, 1, 1), STEP_GROWTH, dtype=U.dtype, device=U.device)
    momentum = _momentum_cpu(max_iter + 1).to(U)
    since = torch.zeros(T, 1, 1, dtype=torch.long, device=U.device)  # steps since each task's restart
    X = Xe = U  # the iterate and the extrapolated point
    kkt, it, next_check, last_pattern = float("inf"), 0, 0, None
    check_X, check_F = X, problem.objective(X, pen)
    eta = growth / Lv
    thr = eta * pen
    for it in range(1, max_iter + 1):
        Xn = prox(torch.addcmul(Xe, eta, problem.smooth_grad(Xe), value=-1.0), thr, problem.sparsity)
        dX, step = Xe - Xn, Xn - X
        keep = (dX * step).sum(dim=(1, 2), keepdim=True) <= 0  # gradient restart where this is > 0
        mom = torch.take(momentum, since) * keep
        since = (since + 1) * keep
        X, Xe = Xn, torch.addcmul(Xn, mom, step)
        if it % STEP_CHECK == 0 and bool((growth > 1).any()):
            F = problem.objective(X, pen)
            # "not decreased" counts as failed: with the long step the iterates can settle into a 2-cycle
            rose = ((F >= check_F - 1e-9 * check_F.abs()) & (growth.view(T) > 1)).view(T, 1, 1)
            if bool(rose.any()):  # back to the last check with half the step, momentum reset
                growth = torch.where(rose, (growth / 2).clamp_min(1.0), growth)
                eta = growth / Lv
                thr = eta * pen
                X = torch.where(rose, check_X, X)
                Xe = torch.where(rose, X, Xe)
                since = since * ~rose
                continue
            check_X, check_F = X, F
        if it % NEWTON_CHECK == 0:
            W = X[:, :-1]
            pattern = torch.sign(W) if problem.sparsity == "l1" else W.ne(0).any(dim=2).to(W.dtype)
            if last_pattern is not None and float((pattern != last_pattern).sum()) <= NEWTON_SETTLED * W.numel() \
                    and _newton_affordable(X, problem.sparsity):
                X, kkt, k = newton_finish(problem, X, pen, tol, eta_safe)
                newton += k
                if kkt <= tol:
                    break
                Xe, pattern = X, None  # wait for the support to settle again
                since.zero_()
                check_X, check_F = X, problem.objective(X, pen)
            last_pattern = pattern
        # cheap proxy for the KKT residual: the prox-gradient mapping at the extrapolated point
        if it >= next_check and float((dX / eta).square().sum(dim=(1, 2)).max()) <= (0.5 * tol) ** 2:
            kkt = float(problem.kkt(X, pen, eta_safe).max())
            if kkt <= tol:
                break
            next_check = it + 5
    else:
        kkt = float(problem.kkt(X, pen, eta_safe).max())
    return X, it, kkt, newton


def _newton_affordable(U: torch.Tensor, sparsity: str) -> bool:
    """Whether the dense per-task Newton systems on U's support are small enough."""
    m = int(active_mask(U, sparsity).sum(dim=(1, 2)).max())
    return m <= NEWTON_MAX and U.shape[0] * m * m <= NEWTON_MAX_ELEMS


def newton_finish(problem: InnerProblem, U: torch.Tensor, pen: torch.Tensor, tol: float, eta_safe: torch.Tensor):
    """Active-set Newton: rounds of one prox-gradient step, then one Newton step on its support.

    The prox-gradient step (step ``eta_safe``, the KKT residual's) gives the residual and the support
    (for l1 also the signs), adding every entry that violates optimality; on that support the
    objective is smooth, with the Hessian the implicit backward solves with. Steps are projected onto
    the support's closure (an l1 entry that changes sign, or a group row that turns around, becomes
    zero, so zeros stay exact); each task takes the longest of the steps 1, 1/2, ... that decreases
    its objective (Armijo), else keeps the prox-gradient point. Returns (U, max KKT, Newton steps).
    """
    T = U.shape[0]
    slack = 4 * torch.finfo(U.dtype).eps
    kkt, steps = float("inf"), 0
    for rnd in range(NEWTON_STEPS + 1):
        Up, residual = problem.prox_step(U, pen, eta_safe)
        kkt = float(residual.max())
        if kkt <= tol or rnd == NEWTON_STEPS:
            break
        U, S = Up, problem.scores(Up)
        obj, probs = problem.objective(U, pen, S), problem.probs(S)
        G = problem.grad(U, probs - problem.Yk)
        G[:, :-1] += pen[:, :-1] * importance_grad(U[:, :-1], problem.sparsity)
        A = ActiveSet.of(active_mask(U, problem.sparsity))
        g = A.gather(G)
        step = -robust_solve(problem.hessian(U, probs, A, pen), g.unsqueeze(-1)).squeeze(-1)
        dec = (g * step).sum(dim=1)  # directional derivative per task, < 0
        dU = A.scatter(step, U.shape)
        steps += 1
        todo = torch.ones(T, dtype=torch.bool, device=U.device)
        t = 1.0
        for _ in range(NEWTON_HALVINGS):
            Un = U + t * dU
            same_side = Un * U > 0 if problem.sparsity == "l1" else (Un * U).sum(dim=2, keepdim=True) > 0
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
