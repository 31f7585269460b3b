"""Batched linear solves that are safe on every CPU thread setting.

PyTorch's batched CPU LU (behind ``torch.linalg.solve``, ``solve_ex``, ``inv``) factors several
matrices at once on different threads. Once ``torch.set_num_threads(n > 1)`` has been called, MKL's
``getrf`` is not safe under that: it prints ``Intel oneMKL ERROR: Parameter 6 was incorrect on entry
to SLASWP`` and returns garbage or never returns (pytorch/pytorch#142815, #141358; seen here with
torch 2.14.1, a batch of 16 matrices of size 235). On the CPU with more than one thread these
functions therefore factor one matrix at a time (each factorisation still uses every thread);
elsewhere they are the batched PyTorch call. Cholesky does not pivot (no ?LASWP), so
:func:`solve_spd` factors the whole batch at once everywhere. :func:`top_eigenvalue_bound` replaces
the batched symmetric eigensolver where only an upper bound on the largest eigenvalue is needed.
:func:`robust_solve` falls back from Cholesky to LU to the pseudo-inverse; :func:`minres` solves
symmetric systems given only their products.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch


def _one_at_a_time(A: torch.Tensor, B: torch.Tensor) -> bool:
    if B.shape[: A.dim() - 2] != A.shape[:-2]:
        raise ValueError(f"right-hand side {tuple(B.shape)} does not have the batch shape of {tuple(A.shape)}")
    return A.dim() > 2 and A.device.type == "cpu" and torch.get_num_threads() > 1


def solve(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.solve(A, B)`` (differentiable), safe for batches on a multi-threaded CPU.

    ``B`` has A's batch shape and is a matrix ``(..., n, k)`` or a vector ``(..., n)`` per system.
    """
    if not _one_at_a_time(A, B):
        return torch.linalg.solve(A, B)
    return torch.stack([solve(a, b) for a, b in zip(A, B)])


def solve_ex(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.solve_ex(A, B)``, safe for batches on a multi-threaded CPU (B as in :func:`solve`)."""
    if not _one_at_a_time(A, B):
        return torch.linalg.solve_ex(A, B)
    parts = [solve_ex(a, b) for a, b in zip(A, B)]
    return torch.stack([x for x, _ in parts]), torch.stack([i for _, i in parts])


def solve_spd(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``A X = B`` for symmetric positive definite ``A`` (B as in :func:`solve`) by batched Cholesky.

    Returns ``(X, ok)``: ``ok`` (batch shape) is False where the factorisation failed (A not positive
    definite to working precision); ``X`` is not meaningful there.
    """
    if B.shape[: A.dim() - 2] != A.shape[:-2]:
        raise ValueError(f"right-hand side {tuple(B.shape)} does not have the batch shape of {tuple(A.shape)}")
    vec = B.dim() == A.dim() - 1
    # the upper factor: LAPACK's lower one of the row-major matrix, without a transposed copy (~25% faster)
    R, info = torch.linalg.cholesky_ex(A, upper=True)
    X = torch.cholesky_solve(B.unsqueeze(-1) if vec else B, R, upper=True)
    return (X.squeeze(-1) if vec else X), info == 0


def top_eigenvalue_bound(G: torch.Tensor, squarings: int = 5) -> torch.Tensor:
    """Upper bound on the largest eigenvalue of each symmetric PSD matrix in ``G`` (..., m, m).

    ``lambda_max <= (tr G^(2^k))^(1/2^k) <= rank^(1/2^k) lambda_max``, by ``k - 1`` normalised squarings
    and a Frobenius norm; needs ``tr G > 0``. With the default ``k = 5`` it is at most
    ``rank^(1/32)`` (1.13 at rank 50) above the top eigenvalue, and several times cheaper than the
    batched symmetric eigensolver (docs/measurements_history.md, "Inner-solver pieces").
    """
    if squarings < 1:
        raise ValueError(f"squarings must be >= 1, got {squarings}")
    s = G.diagonal(dim1=-2, dim2=-1).sum(-1)
    M = G / s[..., None, None]
    logtr = torch.log(s)
    for _ in range(squarings - 1):
        M = M @ M
        t = M.diagonal(dim1=-2, dim2=-1).sum(-1)
        logtr = 2 * logtr + torch.log(t)
        M = M / t[..., None, None]
    logtr = 2 * logtr + torch.log(M.square().sum((-2, -1)))
    return torch.exp(logtr / 2 ** squarings)


def robust_solve(H: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Solve H x = g (batched, symmetric, expected positive definite): Cholesky; LU where it fails;
    the pseudo-inverse where that fails too."""
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


def minres(A: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
           dot: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], rtol: float, maxiter: int,
           hint: str = "") -> torch.Tensor:
    """Batched MINRES (Paige & Saunders, as in scipy) for symmetric (possibly indefinite) ``A``.

    ``dot`` reduces to per-system scalars broadcastable to the vectors (one system: a full sum). Stops
    when every residual estimate is <= rtol ||b||; at the cap it warns (RuntimeWarning, ``hint`` appended).
    """
    x = torch.zeros_like(b)
    beta1 = torch.sqrt(dot(b, b))
    if float(beta1.max()) == 0:
        return x
    tiny = torch.finfo(b.dtype).tiny
    zero = torch.zeros_like(beta1)
    r1 = r2 = y = b
    oldb, beta, dbar, epsln, phibar, cs, sn = zero, beta1, zero, zero, beta1, -torch.ones_like(beta1), zero
    w = w2 = torch.zeros_like(b)

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
        r1, r2, oldb = r2, y, beta
        beta = torch.sqrt(dot(y, y).clamp_min(0))
        oldeps = epsln
        delta = cs * dbar + sn * alfa
        gbar = sn * dbar - cs * alfa
        epsln, dbar = sn * beta, -cs * beta
        gamma = torch.sqrt(gbar * gbar + beta * beta).clamp_min(tiny)
        cs, sn = gbar / gamma, beta / gamma
        phi, phibar = cs * phibar, sn * phibar
        w1, w2 = w2, w
        w = (v - oldeps * w1 - delta * w2) / gamma
        x = x + phi * w
        if bool((phibar <= rtol * beta1).all()):
            break
    else:
        rel = float((phibar / torch.where(beta1 > 0, beta1, torch.ones_like(beta1))).max())
        warnings.warn(f"MINRES stopped at its cap of {maxiter} iterations with relative residual {rel:.1e} > "
                      f"{rtol:.0e}{hint}", RuntimeWarning, stacklevel=2)
    return x
