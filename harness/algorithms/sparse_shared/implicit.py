"""Implicit differentiation of the SparseShared inner solution w.r.t. the features.

Forward: :func:`solve_heads` under ``no_grad``.  Backward: on the active set A
(non-zero entries of W for l1, non-zero rows for group, plus every bias entry)
the solution of the last convex solve satisfies the smooth stationarity condition

    F(u, Z) = grad_u [ CE + rho/2 ||W||^2 ] + pen_tj dR(W_tj)|_A = 0,

with u = (W_A, b) and ``pen_tj`` that solve's penalty per task and row (``info["penalty"]``:
alpha_t, plus beta lam_bar w_j with the sharing term). With H = dF/du (Hessian on A) and upstream
gradient g_u, solve ``H v = g_u`` and return ``grad_Z = -(dF/dZ)^T v``. The penalties (hence
lambda_max, alpha, beta and the weights w_j) are constants; ``sharing_grad="full"`` adds the
sharing term's own Hessian ``beta lam_bar J^T Hess(Phi) J`` to H (:class:`_SharingHessian`).
Entries outside A get zero gradient.

Internally the head is handled as an augmented matrix ``U = [W; b]`` of shape
(T, d+1, K) whose last row is the (never penalised) bias, paired with the augmented
features ``[Z, 1]``.

H is symmetric. Without the sharing Hessian the tasks decouple: H is block-diagonal and positive
definite, solved on the compressed active set by batched Cholesky when it is small, otherwise
matrix-free. The sharing Hessian couples every task, so with it H is always solved matrix-free.
Matrix-free is (batched) MINRES with analytic Hessian-vector products, on H scaled symmetrically
by its diagonal (l1, binary heads) or its K x K row blocks (group).
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch

from harness.algorithms.sparse_shared.active_set import (
    GAUGE,
    active_hessian,
    active_mask,
    compress,
    robust_solve,
)
from harness.algorithms.sparse_shared.solver import (
    DEFAULT_MAX_ITER,
    DEFAULT_RHO,
    DEFAULT_SHARING_EPS,
    DEFAULT_TOL,
    _check_option,
    _probs,
    _targets,
    head_dims,
    lambda_max,
    solve_heads,
)
from harness.precision import full_precision

__all__ = ["sparse_heads", "implicit_grad_Z", "DENSE_MAX"]

# largest compressed active dimension (per system) solved densely
DENSE_MAX = 2048
# largest number of dense matrix entries (all systems together)
DENSE_MAX_ELEMS = 2 ** 25
# Dense while m <= DENSE_SMALL_M or T m^2 <= DENSE_SMALL_ELEMS, else MINRES; n=50, float32, beta=0, dense / MINRES
# ms: l1 T=16 m=173 41 / 125, m=307 102 / 61; T=4 m=386 62 / 77, m=543 149 / 79; group 5-way T=16 m~300 ~100 / ~100.
DENSE_SMALL_M = 256
DENSE_SMALL_ELEMS = 2 ** 20


# --------------------------------------------------------------------------- #
# public entry point
# --------------------------------------------------------------------------- #
@full_precision
def sparse_heads(
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
    sharing_grad: str = "last_solve",
    backward: str = "auto",
    backward_tol: Optional[float] = None,
    backward_max_iter: int = 1000,
):
    """Solve the inner problem; (W, b) are differentiable w.r.t. ``Z``.

    ``sharing_grad="last_solve"`` (the default) differentiates the last convex solve of the
    majorise-minimise loop, its per-row penalties ``alpha_t + beta lam_bar w_j`` held constant: it
    leaves out how the weights w_j move with the heads, the full objective's second-order sharing
    term, which couples the tasks. It equals finite differences of the last convex solve; against
    those of the converged MM solution it pointed the same way but was 0-45% off in size on small
    float64 problems. ``sharing_grad="full"`` adds that term (``beta lam_bar J^T Hess(Phi) J`` on the
    active set, J = dA/dW) and solves with MINRES: the gradient of the stationary point of the full
    objective (tests/test_sparse_solver.py). With beta = 0 there is one solve and the two agree.
    lambda_max is a constant in both.

    Same options as :func:`solve_heads`, plus
      backward: "auto" | "dense" | "iterative" (how ``H v = g`` is solved);
      backward_tol: relative residual for MINRES (default 1e-10 in float64,
        1e-6 in float32); backward_max_iter: MINRES iteration cap.
    """
    _check_option("sparsity", sparsity)
    _check_option("sharing_grad", sharing_grad)
    if backward not in ("auto", "dense", "iterative"):
        raise ValueError(f"backward must be auto|dense|iterative, got {backward!r}")
    W, b, info = solve_heads(Z.detach(), Y, n_classes, alpha, beta=beta, rho=rho, sparsity=sparsity,
                             max_iter=max_iter, tol=tol, init=init, lam=lam, sharing_eps=sharing_eps,
                             mm_rounds=mm_rounds)
    if not (torch.is_grad_enabled() and Z.requires_grad):
        return W, b, info
    if lam is None:
        lam = lambda_max(Z.detach(), Y.to(Z.device), n_classes, sparsity)
    opts = dict(
        lam=lam.detach().to(device=Z.device, dtype=Z.dtype).reshape(-1), Y=Y.to(Z.device), n_classes=n_classes,
        alpha=float(alpha), rho=float(rho), sparsity=sparsity, backward=backward, penalty=info["penalty"],
        sharing_curvature=(float(beta) * float(lam.mean()), float(sharing_eps))
        if sharing_grad == "full" and beta > 0 else None,
        backward_tol=backward_tol, backward_max_iter=int(backward_max_iter),
    )
    Wo, bo = _ImplicitHeads.apply(Z, W, b, opts)
    return Wo, bo, info


class _ImplicitHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, Z, W, b, opts):
        ctx.opts = opts
        ctx.save_for_backward(Z.detach(), W, b)
        return W.clone(), b.clone()

    @staticmethod
    def backward(ctx, gW, gb):
        Z, W, b = ctx.saved_tensors
        o = ctx.opts
        if gW is None:
            gW = torch.zeros_like(W)
        if gb is None:
            gb = torch.zeros_like(b)
        gZ = implicit_grad_Z(Z, o["Y"], o["n_classes"], W, b, gW, gb, alpha=o["alpha"], lam=o["lam"],
                             rho=o["rho"], sparsity=o["sparsity"], penalty=o["penalty"],
                             sharing_curvature=o["sharing_curvature"], backward=o["backward"],
                             backward_tol=o["backward_tol"], backward_max_iter=o["backward_max_iter"])
        return gZ, None, None, None


# --------------------------------------------------------------------------- #
# the backward computation
# --------------------------------------------------------------------------- #
@full_precision
@torch.no_grad()
def implicit_grad_Z(Z, Y, n_classes, W, b, gW, gb, alpha, lam=None, rho=DEFAULT_RHO, sparsity="l1",
                    backward="auto", backward_tol=None, backward_max_iter=1000, penalty=None, sharing_curvature=None):
    """grad_Z of <gW, W*> + <gb, b*> by implicit differentiation (see module doc); ``penalty``: the
    solve's per-task or per-row l1 weights (``info["penalty"]``), alpha * lambda_max when None;
    ``sharing_curvature``: (beta * lam_bar, delta) to add the sharing term's Hessian."""
    T, n, d = Z.shape
    binary, K = head_dims(n_classes)
    dtype, dev = Z.dtype, Z.device
    Yt = _targets(Y, K, binary, dtype)
    if lam is None:
        lam = lambda_max(Z, Y, n_classes, sparsity)
    alpha_t = float(alpha) * lam.reshape(T, 1, 1) if penalty is None else penalty.to(dtype)  # constant
    ones = torch.ones(T, n, 1, dtype=dtype, device=dev)
    Za = torch.cat([Z, ones], dim=2)  # (T, n, d+1)
    U = torch.cat([W, b.unsqueeze(1)], dim=1)  # (T, d+1, K)
    S = torch.bmm(Za, U)
    P = _probs(S, binary)
    R = P - Yt

    M = active_mask(W, sparsity)  # (T, d+1, K)
    if not binary:
        # b is returned centred (sum_k b_k = 0): the gauge direction gets no gradient
        gb = gb - gb.mean(dim=1, keepdim=True)
    G = torch.cat([gW, gb.unsqueeze(1)], dim=1).to(dtype) * M

    coupled = sharing_curvature is not None
    A = compress(M)
    m = A.m
    if coupled:
        dense = False  # matrix-free: the sharing Hessian couples every task
    elif backward == "auto":
        dense = (m <= DENSE_MAX and T * m * m <= DENSE_MAX_ELEMS
                 and (m <= DENSE_SMALL_M or T * m * m <= DENSE_SMALL_ELEMS))
    else:
        dense = backward == "dense"

    if dense:
        Hm = active_hessian(Za, P, U, A, binary, alpha_t, rho, sparsity)
        V = A.scatter(robust_solve(Hm, A.gather(G).unsqueeze(-1)).squeeze(-1), U.shape)
    else:
        if backward_tol is None:
            backward_tol = 1e-10 if dtype == torch.float64 else 1e-6
        op = _HVP(Za, P, U, M, binary, alpha_t, rho, sparsity, sharing_curvature)
        if coupled:
            dot = lambda x, y: (x * y).sum().view(1, 1, 1)  # noqa: E731
        else:
            dot = lambda x, y: (x * y).sum(dim=(1, 2), keepdim=True)  # noqa: E731
        # MINRES on H scaled symmetrically by an approximation of its diagonal (Jacobi; l1, binary heads)
        # or of its K x K row blocks (group): T=16 n=50 float32, iterations plain -> scaled: group 5-way d=256
        # 148 -> 21 (beta 0), 601 -> 51 (beta 0.1, sharing_grad full); binary l1 d=256 full 119 -> 43.
        Li = _block_scale(op) if sparsity == "group" and K > 1 else None
        if Li is not None:
            lo = lambda x: (Li * x.unsqueeze(-2)).sum(-1)  # noqa: E731
            up = lambda x: (Li * x.unsqueeze(-1)).sum(-2)  # noqa: E731
            V = up(_minres(lambda x: lo(op(up(x))), lo(G), dot, backward_tol, backward_max_iter))
        elif sparsity == "l1" or K == 1:
            sc = _jacobi_scale(op)
            V = _minres(lambda x: op(x * sc) * sc, G * sc, dot, backward_tol, backward_max_iter) * sc
        else:  # a row block was not positive definite
            V = _minres(op, G, dot, backward_tol, backward_max_iter)
        V = V * M

    if not binary:
        V = torch.cat([V[:, :d, :], V[:, d:, :] - V[:, d:, :].mean(dim=2, keepdim=True)], dim=1)
    # grad_Z = -(dF/dZ)^T v,  F_U = Za^T R / n + (Z-independent terms)
    #   d<F, V>/dZa = R V^T / n + (J_P S_v) U^T / n,  S_v = Za V
    Sv = torch.bmm(Za, V)
    Q = _jp(P, Sv, binary)
    gZa = (torch.bmm(R, V.transpose(1, 2)) + torch.bmm(Q, U.transpose(1, 2))) / n
    return -gZa[:, :, :d]


def _jp(P, S, binary):
    """Softmax / sigmoid Jacobian (symmetric) applied to S, per sample."""
    if binary:
        return P * (1 - P) * S
    PS = P * S
    return PS - P * PS.sum(dim=-1, keepdim=True)


# --------------------------------------------------------------------------- #
# matrix-free Hessian on the active set
# --------------------------------------------------------------------------- #
class _HVP:
    def __init__(self, Za, P, U, M, binary, alpha_t, rho, sparsity, sharing_curvature=None):
        T, n, d1 = Za.shape
        self.Za, self.P, self.M, self.binary = Za, P, M, binary
        self.n, self.d = n, d1 - 1
        self.rho, self.sparsity = rho, sparsity
        self.Zat = Za.transpose(1, 2)
        W = U[:, :-1, :]
        self.W = W
        if sparsity == "group":
            nr = torch.linalg.vector_norm(W, dim=2, keepdim=True)  # (T, d, 1)
            safe = torch.where(nr > 0, nr, torch.ones_like(nr))
            self.g_scale = torch.where(nr > 0, alpha_t.reshape(T, -1, 1) / safe, torch.zeros_like(nr))
            self.g_dir = W / safe
        self.sharing = _SharingHessian(W, sparsity, *sharing_curvature) if sharing_curvature else None

    def __call__(self, V):
        V = V * self.M
        d = self.d
        Sv = torch.bmm(self.Za, V)
        Q = _jp(self.P, Sv, self.binary)
        out = torch.bmm(self.Zat, Q) / self.n
        Vw = V[:, :d, :]
        extra = self.rho * Vw
        if self.sparsity == "group":
            proj = (self.g_dir * Vw).sum(dim=2, keepdim=True)
            extra = extra + self.g_scale * (Vw - self.g_dir * proj)
        if self.sharing is not None:
            extra = extra + self.sharing(Vw)
        vb = V[:, d:, :]
        if self.binary:
            eb = torch.zeros_like(vb)
        else:  # gauge fixing: penalise the constant bias direction (null space of CE)
            eb = (GAUGE / vb.shape[2]) * vb.sum(dim=2, keepdim=True).expand_as(vb)
        out = out + torch.cat([extra, eb], dim=1)
        return out * self.M


class _SharingHessian:
    """``scale * J^T Hess(Phi) J`` of the sharing term (solver module doc) as a product.

    With Phi = St log St - sum_j At_j log At_j, At = M A, M = I + delta/d 11^T and v = 1 / At:
    Hess(Phi) = M (11^T / St - diag(v)) M, applied to dA = J V (J = dA/dW: signs for l1, unit rows
    for group; the row norms' own curvature is in the convex Hessian through the per-row penalty)."""

    def __init__(self, W: torch.Tensor, sparsity: str, scale: float, delta: float):
        if sparsity == "l1":
            self.q = torch.sign(W)
        else:
            nr = torch.linalg.vector_norm(W, dim=2, keepdim=True)
            self.q = W / torch.where(nr > 0, nr, torch.ones_like(nr))
        A = (self.q * W).sum(dim=(0, 2))  # (d,)
        d = A.shape[0]
        S = A.sum()
        self.v = 1.0 / (A + delta * S / d)
        self.St, self.scale, self.mix = (1 + delta) * S, scale, delta / d

    def __call__(self, Vw: torch.Tensor) -> torch.Tensor:
        dA = (self.q * Vw).sum(dim=(0, 2))
        mdA = dA + self.mix * dA.sum()  # M dA
        h = mdA.sum() / self.St - self.v * mdA  # (11^T / St - diag(v)) M dA
        h = h + self.mix * h.sum()  # M (...)
        return self.scale * self.q * h.view(1, -1, 1)


def _row_terms(op: "_HVP"):
    """Main terms of H's K x K block on each W row beyond CE, shared by the two preconditioners:
    ``iso * I - sum coef * v v^T`` over ``rank_one`` (ridge; group penalty pen_tj / ||w|| (I - u u^T))."""
    iso = torch.full_like(op.W[..., :1], op.rho)  # (T, d, 1)
    rank_one = []
    if op.sparsity == "group":
        iso = iso + op.g_scale
        rank_one.append((op.g_scale, op.g_dir))
    return iso, rank_one


def _jacobi_scale(op: "_HVP") -> torch.Tensor:
    """1 / sqrt(diag B) on the active set (1 off it), B the curvature blocks of :func:`_row_terms` plus
    CE and the gauge. Scaling H by it on both sides keeps it symmetric for MINRES."""
    d = op.d
    diag = torch.bmm(op.Zat.square(), op.P * (1 - op.P)) / op.n  # CE: (T, d+1, K)
    iso, rank_one = _row_terms(op)
    extra = iso - sum(coef * v.square() for coef, v in rank_one)
    bias = torch.full_like(diag[:, d:], 0.0 if op.binary else GAUGE / diag.shape[2])
    diag = diag + torch.cat([extra.expand_as(op.W), bias], dim=1)
    tiny = torch.finfo(diag.dtype).tiny ** 0.5
    return torch.where(op.M, diag.clamp_min(tiny).rsqrt(), torch.ones_like(diag))


def _block_scale(op: "_HVP"):
    """``L^-1`` per task and row, (T, d+1, K, K), for group heads with K > 1, where ``L L^T`` is the
    K x K block of H on that row (CE, :func:`_row_terms`, gauge); identity off the active set. None
    if a block is not positive definite."""
    T, n, d1 = op.Za.shape
    K = op.P.shape[2]
    dtype, dev = op.P.dtype, op.P.device
    Zsq = op.Za.square()
    PP = (op.P.unsqueeze(3) * op.P.unsqueeze(2)).reshape(T, n, K * K)
    B = (torch.diag_embed(torch.bmm(Zsq.transpose(1, 2), op.P))
         - torch.bmm(Zsq.transpose(1, 2), PP).view(T, d1, K, K)) / n
    eye = torch.eye(K, dtype=dtype, device=dev)
    iso, rank_one = _row_terms(op)
    Wb = iso.unsqueeze(-1) * eye - sum(coef.unsqueeze(-1) * v.unsqueeze(-1) * v.unsqueeze(-2)
                                       for coef, v in rank_one)
    B = B + torch.cat([Wb, torch.full((T, 1, K, K), GAUGE / K, dtype=dtype, device=dev)], dim=1)
    B = torch.where(op.M.any(-1)[..., None, None], B, eye)
    L, info = torch.linalg.cholesky_ex(B)
    if bool(info.any()):
        return None
    return torch.linalg.solve_triangular(L, eye.expand_as(L), upper=False)


def _minres(A, b, dot, rtol, maxiter):
    """Batched MINRES (Paige & Saunders, as in scipy) for symmetric A.

    ``dot`` reduces to per-system scalars (broadcastable to the vectors).
    Stops when every system's residual estimate is <= rtol * ||b||.
    """
    x = torch.zeros_like(b)
    beta1 = torch.sqrt(dot(b, b))
    if float(beta1.max()) == 0:
        return x
    zero = torch.zeros_like(beta1)
    tiny = torch.finfo(b.dtype).tiny
    r1 = b
    r2 = b
    y = b
    oldb = zero
    beta = beta1
    dbar = zero
    epsln = zero
    phibar = beta1
    cs = -torch.ones_like(beta1)
    sn = zero
    w = torch.zeros_like(b)
    w2 = torch.zeros_like(b)

    def safe_inv(z):
        return torch.where(z > tiny, 1.0 / torch.where(z > tiny, z, torch.ones_like(z)), torch.zeros_like(z))

    for itn in range(1, maxiter + 1):
        s = safe_inv(beta)
        v = s * y
        y = A(v)
        if itn >= 2:
            y = y - (beta * safe_inv(oldb)) * r1
        alfa = dot(v, y)
        y = y - (alfa * s) * r2
        r1 = r2
        r2 = y
        oldb = beta
        beta = torch.sqrt(dot(y, y).clamp_min(0))
        oldeps = epsln
        delta = cs * dbar + sn * alfa
        gbar = sn * dbar - cs * alfa
        epsln = sn * beta
        dbar = -cs * beta
        gamma = torch.sqrt(gbar * gbar + beta * beta).clamp_min(tiny)
        cs = gbar / gamma
        sn = beta / gamma
        phi = cs * phibar
        phibar = sn * phibar
        denom = 1.0 / gamma
        w1 = w2
        w2 = w
        w = (v - oldeps * w1 - delta * w2) * denom
        x = x + phi * w
        if bool((phibar <= rtol * beta1).all()):
            break
    else:
        rel = float((phibar / torch.where(beta1 > 0, beta1, torch.ones_like(beta1))).max())
        warnings.warn(f"implicit backward: MINRES stopped at its cap of {maxiter} iterations with relative residual "
                      f"{rel:.1e} > {rtol:.0e}; the backbone gradient is approximate (sparse_heads(..., "
                      "backward='dense') or a larger backward_max_iter solves it fully)", RuntimeWarning, stacklevel=2)
    return x
