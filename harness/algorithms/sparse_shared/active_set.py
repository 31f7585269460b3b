"""The inner problem's Hessian on its active set, shared by the solver and the implicit backward.

The head is handled as an augmented matrix ``U = [W; b]`` of shape (T, d+1, K) whose last row is
the (never penalised) bias, paired with the augmented features ``Za = [Z, 1]``. The active set is
the non-zero entries of W (l1) or its non-zero rows (group), plus every bias entry; it is
compressed per task to its first ``m`` slots (``m`` the largest count over tasks, the rest padding).

On the active set the convex objective CE + rho/2 ||W||^2 + sum_j alpha_tj R(W_tj) is smooth, and
its Hessian (:func:`active_hessian`, block-diagonal over tasks, positive definite) is what both the
solver's Newton finish (:func:`harness.algorithms.sparse_shared.solver._newton_polish`) and implicit
differentiation (:mod:`harness.algorithms.sparse_shared.implicit`) solve with.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from harness.linalg import solve_ex, solve_spd


# curvature added along the (CE-invariant) constant-bias direction for softmax heads
GAUGE = 0.5


class ActiveSet(NamedTuple):
    idx: torch.Tensor  # (T, m) flat indices into the (d+1)*K augmented head, active first
    valid: torch.Tensor  # (T, m) bool: slot holds an active entry (not padding)
    j_idx: torch.Tensor  # (T, m) row of each slot (d = bias row)
    k_idx: torch.Tensor  # (T, m) column of each slot
    is_w: torch.Tensor  # (T, m) bool: valid and penalised (not a bias entry)

    @property
    def m(self) -> int:
        return self.idx.shape[1]

    def same_w_row(self) -> torch.Tensor:
        """(T, m, m) bool: both slots are penalised entries of the same feature row."""
        w = self.is_w
        return (self.j_idx.unsqueeze(2) == self.j_idx.unsqueeze(1)) & w.unsqueeze(2) & w.unsqueeze(1)

    def gather(self, X: torch.Tensor) -> torch.Tensor:
        """(T, d+1, K) -> (T, m), zero on padding."""
        T = X.shape[0]
        return X.reshape(T, -1).gather(1, self.idx) * self.valid.to(X.dtype)

    def scatter(self, v: torch.Tensor, shape) -> torch.Tensor:
        """(T, m) -> (T, d+1, K), zero off the active set."""
        T = v.shape[0]
        out = torch.zeros(T, shape[1] * shape[2], dtype=v.dtype, device=v.device)
        return out.scatter_(1, self.idx, v * self.valid.to(v.dtype)).view(shape)


def active_mask(W: torch.Tensor, sparsity: str) -> torch.Tensor:
    """(T, d+1, K) bool mask of the augmented head's active entries (bias always active)."""
    T, d, K = W.shape
    M = W != 0 if sparsity == "l1" else (W != 0).any(dim=2, keepdim=True).expand(T, d, K)
    return torch.cat([M, torch.ones(T, 1, K, dtype=torch.bool, device=W.device)], dim=1)


def compress(M: torch.Tensor) -> ActiveSet:
    """Compress a (T, d+1, K) mask to per-task slot indices (active entries first, stable order)."""
    T, d1, K = M.shape
    Mf = M.reshape(T, d1 * K)
    counts = Mf.sum(dim=1)
    m = int(counts.max())
    idx = torch.argsort((~Mf).to(torch.int8), dim=1, stable=True)[:, :m]
    valid = torch.arange(m, device=M.device).unsqueeze(0) < counts.unsqueeze(1)
    j_idx = torch.div(idx, K, rounding_mode="floor")
    return ActiveSet(idx, valid, j_idx, idx - j_idx * K, (j_idx < d1 - 1) & valid)


def row_penalty(pen: torch.Tensor, T: int, d: int) -> torch.Tensor:
    """The penalty weight of each task and W row, (T, d+1), zero on the bias row, from a weight per
    task ((T,) or (T, 1, 1)) or per task and row ((T, d, 1))."""
    rows = pen.reshape(T, -1).expand(T, d)
    return torch.cat([rows, torch.zeros(T, 1, dtype=rows.dtype, device=rows.device)], dim=1)


def active_hessian(Za, P, U, A: ActiveSet, binary: bool, alpha_t, rho: float, sparsity: str):
    """Hessian of CE + rho/2 ||W||^2 + sum_j alpha_tj R(W_tj) on the compressed active set, (T, m, m).

    ``alpha_t``: the penalty weight per task ((T,) or (T, 1, 1)) or per task and row ((T, d, 1)).

    Identity on padding slots; softmax heads get ``GAUGE`` curvature along the constant-bias
    direction (the null space of CE), so the matrix is positive definite.
    """
    T, n, d1 = Za.shape
    d = d1 - 1
    K = U.shape[2]
    if sparsity == "group" and K > 1:
        return _group_hessian(Za, P, U, A, alpha_t, rho)
    dtype = Za.dtype
    m = A.m
    vf, wf = A.valid.to(dtype), A.is_w.to(dtype)
    Zg = Za.gather(2, A.j_idx.unsqueeze(1).expand(T, n, m)) * vf.unsqueeze(1)  # (T, n, m)
    if binary:
        Hm = torch.bmm((Zg * (P * (1 - P))).transpose(1, 2), Zg)
    else:
        ZP = Zg * P.gather(2, A.k_idx.unsqueeze(1).expand(T, n, m))
        Ek = (A.k_idx.unsqueeze(2) == A.k_idx.unsqueeze(1)).to(dtype)
        Hm = torch.bmm(ZP.transpose(1, 2), Zg) * Ek - torch.bmm(ZP.transpose(1, 2), ZP)
    Hm = Hm / n
    diag = rho * wf
    if sparsity == "group":
        # curvature of alpha_t ||W_j||: alpha_t / ||W_j|| (I - w w^T / ||W_j||^2) on each active row
        Wn = torch.linalg.vector_norm(U[:, :d, :], dim=2)  # (T, d)
        Wn1 = torch.cat([Wn, torch.ones(T, 1, dtype=dtype, device=Za.device)], dim=1)
        nr = Wn1.gather(1, A.j_idx) * wf + (1 - wf)  # 1 where unused
        sc = row_penalty(alpha_t, T, d).gather(1, A.j_idx) / nr * wf
        Ej = A.same_w_row().to(dtype)
        un = A.gather(U) / nr
        Hm = Hm - Ej * (sc.unsqueeze(2) * un.unsqueeze(2) * un.unsqueeze(1))
        diag = diag + sc
    Hm = Hm + torch.diag_embed(diag + (1 - vf))
    if not binary:
        isb = ((A.j_idx == d) & A.valid).to(dtype)
        Hm = Hm + (GAUGE / K) * isb.unsqueeze(2) * isb.unsqueeze(1)
    return Hm


def _group_hessian(Za, P, U, A: ActiveSet, alpha_t, rho: float):
    """:func:`active_hessian` for group sparsity with softmax heads, built from its block structure.

    The active set is whole rows (K consecutive slots each), so the CE Hessian is
    sum_i (z_i z_i^T) kron (diag(p_i) - p_i p_i^T) on the active rows, and the penalty, ridge,
    gauge and padding terms are K x K blocks on the diagonal: no (m x m) index masks.
    """
    T, n, d1 = Za.shape
    K = U.shape[2]
    r = A.m // K
    dtype, dev = Za.dtype, Za.device
    rows, rvalid, rw = A.j_idx[:, ::K], A.valid[:, ::K], A.is_w[:, ::K]  # (T, r)
    Zr = Za.gather(2, rows.unsqueeze(1).expand(T, n, r)) * rvalid.to(dtype).unsqueeze(1)  # (T, n, r)
    ZP = (Zr.unsqueeze(3) * P.unsqueeze(2)).reshape(T, n, r * K)
    eye = torch.eye(K, dtype=dtype, device=dev)
    H1 = torch.bmm(ZP.transpose(1, 2), Zr).view(T, r, K, r, 1) * eye.view(1, 1, K, 1, K)
    Hm = (H1.reshape(T, r * K, r * K) - torch.bmm(ZP.transpose(1, 2), ZP)) / n
    Ur = U.gather(1, rows.unsqueeze(2).expand(T, r, K))  # (T, r, K)
    nr = torch.linalg.vector_norm(Ur, dim=2, keepdim=True)
    u = Ur / torch.where(rw.unsqueeze(2), nr, torch.ones_like(nr))
    pen = row_penalty(alpha_t, T, d1 - 1).gather(1, rows).unsqueeze(2)  # (T, r, 1)
    sc = torch.where(rw.unsqueeze(2), pen / nr, torch.zeros_like(nr)).unsqueeze(3)
    # diagonal blocks: rho I + alpha_t / ||W_j|| (I - u u^T) on W rows, the gauge on the bias row, I on padding
    block = torch.where(rw.view(T, r, 1, 1), rho * eye + sc * (eye - u.unsqueeze(3) * u.unsqueeze(2)),
                        torch.where(rvalid.view(T, r, 1, 1), torch.full_like(eye, GAUGE / K), eye))
    ar = torch.arange(r, device=dev)
    Hv = Hm.view(T, r, K, r, K)
    Hv[:, ar, :, ar, :] += block.permute(1, 0, 2, 3)
    return Hm


def robust_solve(H: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Solve H x = g for symmetric H expected positive definite: Cholesky, LU where it fails (H
    numerically indefinite), the pseudo-inverse where that fails too (near-singular)."""
    x, ok = solve_spd(H, g)
    if bool(ok.all()) and bool(torch.isfinite(x).all()):
        return x
    try:
        x, info = solve_ex(H, g)
        if int(info.max()) == 0 and bool(torch.isfinite(x).all()):
            return x
    except RuntimeError:
        pass
    return torch.linalg.pinv(H, hermitian=True) @ g
