"""SparseShared heads differentiable w.r.t. the features, by implicit differentiation (arXiv 2304.07939).

On the active set A of the last convex solve (non-zero W entries for l1, non-zero rows for group,
every bias entry) its solution satisfies ``F(u, Z) = grad_u [CE + rho/2 ||W||^2] + pen_tj dR(W_tj) = 0``
with u = (W_A, b) and ``pen`` that solve's penalty (alpha_t, plus beta lam_bar w_j with the sharing
term). With H = dF/du and the upstream gradient g_u, solve ``H v = g_u``; then ``grad_Z = -(dF/dZ)^T v``.
The penalties (lambda_max, the weights w_j) are constants; ``sharing_grad="full"`` adds the sharing
term's own Hessian ``beta lam_bar J^T Hess(Phi) J`` (``InnerProblem.sharing_hessian``), which couples the tasks.

H without it is block-diagonal over tasks and positive definite: batched Cholesky on the compressed
active set while it is small, otherwise MINRES with Hessian-vector products, scaled on both sides
by H's diagonal or its K x K row blocks (:func:`_scaling`).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from harness.algorithms.sparse_shared.problem import DEFAULTS, ActiveSet, InnerProblem, active_mask
from harness.algorithms.sparse_shared.solver import solve
from harness.linalg import minres, robust_solve
from harness.precision import full_precision

SHARING_GRAD = ("last_solve", "full")
# dense while the active dimension m <= DENSE_M or T m^2 <= DENSE_ELEMS, else MINRES (dense / MINRES ms, n=50
# float32 l1: T=16 m=173 41 / 125, m=307 102 / 61; T=4 m=386 62 / 77, m=543 149 / 79)
DENSE_M = 256
DENSE_ELEMS = 2 ** 20
CAP_HINT = ("; the implicit gradient is approximate (hparam backward \"dense\", or a larger backward_max_iter, "
            "solves it)")


@full_precision
def sparse_heads(Z: torch.Tensor, Y: torch.Tensor, n_classes: int, alpha: float = DEFAULTS["alpha"],
                 beta: float = DEFAULTS["beta"], rho: float = DEFAULTS["rho"], sparsity: str = DEFAULTS["sparsity"],
                 sharing_eps: float = DEFAULTS["sharing_eps"], lam: Optional[torch.Tensor] = None,
                 sharing: str = DEFAULTS["sharing"], sharing_grad: str = DEFAULTS["sharing_grad"], backward: str = "auto",
                 backward_tol: Optional[float] = None, backward_max_iter: int = 1000, **solver_options):
    """The heads ``(W (T, d, K), b (T, K), info)`` of (T, n, d) supports Z with (T, n) labels Y, differentiable
    w.r.t. ``Z``. ``alpha`` is relative to each task's lambda_max, ``beta`` to the batch's mean; ``lam`` fixes
    lambda_max; ``solver_options`` are :func:`solver.solve`'s. Softmax intercepts are centred (sum_k b_tk = 0).

    ``sharing_grad="last_solve"`` differentiates the last convex solve of majorise-minimise, its
    penalties held constant: it leaves out how the weights w_j move with the heads (the full
    objective's second-order sharing term). It equals finite differences of the last convex solve;
    against those of the converged MM solution it pointed the same way but was 0-45% off in size on
    small float64 problems. ``"full"`` adds that term (MINRES): the gradient of the stationary point
    of the full objective. With beta = 0 the two agree. ``backward``: "auto" | "dense" | "iterative";
    ``backward_tol``: MINRES's relative residual (1e-10 in float64, 1e-6 in float32).
    """
    if sharing_grad not in SHARING_GRAD:
        raise ValueError(f"sharing_grad must be one of {' | '.join(SHARING_GRAD)}, got {sharing_grad!r}")
    if backward not in ("auto", "dense", "iterative"):
        raise ValueError(f"backward must be auto|dense|iterative, got {backward!r}")
    problem = InnerProblem.build(Z, Y, n_classes, alpha, beta, rho, sparsity, sharing_eps, lam, sharing)
    with torch.no_grad():
        U, info = solve(problem, **solver_options)
    if torch.is_grad_enabled() and Z.requires_grad:
        grad_Z = functools.partial(implicit_grad_Z, problem, U, pen=info["penalty"], backward=backward,
                                   full_sharing=sharing_grad == "full" and problem.sharing > 0,
                                   backward_tol=backward_tol, backward_max_iter=backward_max_iter)
        U = _ImplicitHeads.apply(Z, U, grad_Z)
    return U[:, :-1], U[:, -1], info


class _ImplicitHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, Z, U, grad_Z):
        ctx.grad_Z = grad_Z
        return U.clone()

    @staticmethod
    def backward(ctx, gU):
        return ctx.grad_Z(gU), None, None


@full_precision
@torch.no_grad()
def implicit_grad_Z(problem: InnerProblem, U: torch.Tensor, gU: torch.Tensor, pen: torch.Tensor,
                    full_sharing: bool = False, backward: str = "auto", backward_tol: Optional[float] = None,
                    backward_max_iter: int = 1000) -> torch.Tensor:
    """grad_Z (T, n, d) of <gU, U*> for the solution U* (T, d+1, K) of the convex problem with penalty
    ``pen`` (T, d+1, 1); ``full_sharing`` adds the sharing term's Hessian (module doc)."""
    dtype = U.dtype
    T, n = U.shape[0], problem.Zat.shape[2]
    probs = problem.probs(problem.scores(U))
    M = active_mask(U, problem.sparsity)
    gU = gU.to(dtype)
    if not problem.binary:  # b is returned centred (sum_k b_k = 0): the gauge direction gets no gradient
        gU = torch.cat([gU[:, :-1], gU[:, -1:] - gU[:, -1:].mean(dim=2, keepdim=True)], dim=1)
    G = gU * M
    A = ActiveSet.of(M)
    if backward == "auto":
        backward = "dense" if A.m <= DENSE_M or T * A.m ** 2 <= DENSE_ELEMS else "iterative"
    if backward == "dense" and not full_sharing:
        H = problem.hessian(U, probs, A, pen)
        V = A.scatter(robust_solve(H, A.gather(G).unsqueeze(-1)).squeeze(-1), U.shape)
    else:
        tol = backward_tol if backward_tol is not None else (1e-10 if dtype == torch.float64 else 1e-6)
        V = _minres_solve(problem, U, probs, M, pen, G, full_sharing, tol, backward_max_iter)
    # F_U = Zat R^T / n + (Z-independent terms): d<F, V>/dZat = (V R + U J_P(V^T Zat)) / n, R, J_P (T, K, n).
    # The gauge part of V's bias row (its mean) changes nothing: J_P 1 = 0, and the ones row is dropped.
    jp = problem.jp(probs, problem.scores(V))
    gZat = torch.baddbmm(torch.bmm(V, probs - problem.Yk), U, jp, alpha=1.0 / n, beta=1.0 / n)
    return -gZat[:, :-1].transpose(1, 2)


def _minres_solve(problem: InnerProblem, U: torch.Tensor, probs: torch.Tensor, M: torch.Tensor, pen: torch.Tensor,
                  G: torch.Tensor, full_sharing: bool, tol: float, max_iter: int) -> torch.Tensor:
    """H V = G on the active set M by MINRES with Hessian-vector products, scaled by :func:`_scaling`;
    ``full_sharing`` adds the sharing Hessian, which couples every task into one system."""
    hvp = problem.hvp(U, probs, M, pen, full_sharing)
    dims = (0, 1, 2) if full_sharing else (1, 2)
    dot = lambda x, y: (x * y).sum(dim=dims, keepdim=True)  # noqa: E731
    lower, upper = _scaling(problem.row_blocks(U, probs, pen), M, problem.sparsity)
    return upper(minres(lambda x: lower(hvp(upper(x))), lower(G), dot, tol, max_iter, hint=CAP_HINT)) * M


def _scaling(B: torch.Tensor, M: torch.Tensor, sparsity):
    """(lower, upper): H ~ L L^T from the row blocks B (T, d+1, K, K), so that L^-1 H L^-T is near the
    identity: L^-1 per row for group heads with K > 1 (whole rows are active), 1 / sqrt(diag B) otherwise
    (Jacobi). T=16 n=50 float32, MINRES iterations plain -> scaled: group 5-way d=256 150 -> 25 (beta 0),
    350 -> 45 (full sharing, beta 0.1); binary l1 d=256 full sharing 55 -> 30. Identity off the active set."""
    eye = torch.eye(B.shape[-1], dtype=B.dtype, device=B.device)
    if sparsity.whole_rows and B.shape[-1] > 1:
        L, info = torch.linalg.cholesky_ex(torch.where(M.any(-1)[..., None, None], B, eye))
        if not bool(info.any()):
            Li = torch.linalg.solve_triangular(L, eye.expand_as(L), upper=False)
            return (lambda x: (Li * x.unsqueeze(-2)).sum(-1)), (lambda x: (Li * x.unsqueeze(-1)).sum(-2))
    diag = B.diagonal(dim1=-2, dim2=-1)
    sc = torch.where(M, diag.clamp_min(torch.finfo(B.dtype).tiny ** 0.5).rsqrt(), torch.ones_like(diag))
    return (lambda x: x * sc), (lambda x: x * sc)
