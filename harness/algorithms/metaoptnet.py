"""MetaOptNet: a differentiable multiclass (Crammer-Singer) SVM head per task, in pure PyTorch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.algorithms.episodic import EpisodicAlgorithm, Head, require_finite
from harness.hparams import HP, above, at_least, log_uniform
from harness.linalg import solve
from harness.precision import full_precision
from harness.registry import ALGORITHMS


def project_simplex(v: torch.Tensor, radius: float) -> torch.Tensor:
    """Euclidean projection of each row (last dim) of ``v`` onto {b >= 0, sum(b) = radius} (sort-based)."""
    u = v.sort(-1, descending=True).values
    css = u.cumsum(-1) - radius
    k = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype, device=v.device)
    rho = ((u - css / k) > 0).sum(-1, keepdim=True).clamp_min(1)  # the condition holds on a prefix
    theta = css.gather(-1, rho - 1) / rho.to(v.dtype)
    return (v - theta).clamp_min(0)


def solve_cs_dual(zs: torch.Tensor, Y: torch.Tensor, C: float, eps: float, max_iter: int = 200,
                  tol: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The Crammer-Singer dual of each task, by accelerated projected gradient (FISTA, adaptive restart).

    Minimises, over alpha (T, S, K), ``0.5 sum_m alpha_m^T G alpha_m + 0.5 eps ||alpha||^2 - sum_i alpha_{i,y_i}``
    subject to ``alpha_im <= C [m = y_i]`` and ``sum_m alpha_im = 0``, with ``G = zs zs^T`` (MetaOptNet's
    form; ``eps`` is its ridge on the dual). With ``beta = C Y - alpha`` each row of ``beta`` lies on the
    simplex of radius C, so projection is cheap and batched. Returns (alpha, beta, info); no gradient.
    """
    with torch.no_grad():
        T, S, d = zs.shape
        gram = zs @ zs.transpose(1, 2)
        small = zs.transpose(1, 2) @ zs if d < S else gram  # same nonzero spectrum, smaller matrix
        L = torch.linalg.eigvalsh(small)[:, -1].clamp_min(0) + eps  # Lipschitz constant of the gradient
        step = (1.0 / L)[:, None, None]
        CY = C * Y

        def grad_beta(b):  # gradient w.r.t. beta of the objective at alpha = C Y - beta
            a = CY - b
            return -(gram @ a + eps * a - Y)

        beta = CY.clone()  # alpha = 0 is feasible
        z, t = beta, torch.ones(T, 1, 1, dtype=zs.dtype, device=zs.device)
        residual, it = float("inf"), 0
        for it in range(1, max_iter + 1):
            new = project_simplex(z - step * grad_beta(z), C)
            t_new = (1 + torch.sqrt(1 + 4 * t * t)) / 2
            restart = ((z - new) * (new - beta)).sum((1, 2), keepdim=True) > 0  # O'Donoghue & Candes
            momentum = torch.where(restart, torch.zeros_like(t), (t - 1) / t_new)
            z = new + momentum * (new - beta)
            beta, t = new, torch.where(restart, torch.ones_like(t_new), t_new)
            if it % 10 == 0 or it == max_iter:
                residual = (beta - project_simplex(beta - step * grad_beta(beta), C)).abs().amax().item() / C
                if residual < tol:
                    break
        return CY - beta, beta, {"iters": it, "residual": residual}


def kkt_implicit(gram: torch.Tensor, Y: torch.Tensor, beta: torch.Tensor, C: float, eps: float) -> torch.Tensor:
    """alpha as a differentiable function of ``gram`` at the dual solution (implicit differentiation).

    With the active set (``beta == 0``: alpha at its upper bound) fixed, the KKT conditions are linear:
    free (i, m): ``(G alpha)_im + eps alpha_im - Y_im - mu_i = 0``; active: ``alpha_im = C Y_im``; and
    ``sum_m alpha_im = 0``. Solving that system (size S K + S) gives the solution, and autograd through
    ``torch.linalg.solve`` gives its exact derivative w.r.t. ``gram``.
    """
    T, S, K = Y.shape
    n = S * K
    eye_k = torch.eye(K, dtype=gram.dtype, device=gram.device)
    H = (gram[:, :, None, :, None] * eye_k[None, None, :, None, :]).reshape(T, n, n)
    H = H + eps * torch.eye(n, dtype=gram.dtype, device=gram.device)
    free = (beta > 0).reshape(T, n, 1).to(gram.dtype)
    E = torch.kron(torch.eye(S, dtype=gram.dtype, device=gram.device),
                   torch.ones(1, K, dtype=gram.dtype, device=gram.device)).expand(T, S, n)  # row sums
    top = torch.cat([free * H + torch.diag_embed(1 - free[..., 0]), -free * E.transpose(1, 2)], -1)
    bottom = torch.cat([E, gram.new_zeros(T, S, S)], -1)
    y = Y.reshape(T, n)
    rhs = torch.cat([free[..., 0] * y + (1 - free[..., 0]) * C * y, gram.new_zeros(T, S)], -1)
    sol = solve(torch.cat([top, bottom], 1), rhs)
    return sol[:, :n].view(T, S, K)


@full_precision
def svm_head_weights(zs: torch.Tensor, ys: torch.Tensor, n_classes: int, C: float, eps: float,
                     max_iter: int, tol: float) -> tuple[torch.Tensor, dict]:
    """(T, S, d) support features -> (T, d, K) Crammer-Singer weights ``W = zs^T alpha``, differentiable."""
    require_finite(zs)
    Y = F.one_hot(ys, n_classes).to(zs.dtype)
    alpha, beta, info = solve_cs_dual(zs, Y, C, eps, max_iter, tol)
    if torch.is_grad_enabled() and zs.requires_grad:
        exact = kkt_implicit(zs @ zs.transpose(1, 2), Y, beta, C, eps)
        alpha = alpha + (exact - exact.detach())  # the iterative value, the implicit gradient
    return zs.transpose(1, 2) @ alpha, info


@ALGORITHMS.register("MetaOptNet")
class MetaOptNet(EpisodicAlgorithm):
    """MetaOptNet-SVM (Lee et al. 2019, arXiv 1904.03758): a Crammer-Singer multiclass SVM head per task.

    The dual QP is solved by batched accelerated projected gradient (no external QP solver, runs on
    CPU and GPU); the backbone is trained through it by implicit differentiation of the KKT
    conditions at the solution. Logits ``scale * zq W`` with a learned scale, as the paper.
    """

    # C = 0.1 and the dual ridge 1.0 are the values of Lee et al.'s code
    HPARAMS = {"svm_C": HP(0.1, log_uniform(-2, 0), above(0)), "svm_dual_ridge": HP(1.0, domain=at_least(0)),
               "svm_max_iter": HP(200, domain=at_least(1)),
               "svm_tol": HP(1e-4, domain=above(0)), "init_scale": HP(1.0, log_uniform(-1, 1), above(0))}

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.log_scale = nn.Parameter(torch.tensor(math.log(hparams["init_scale"])))
        self.make_optimizer()
        self._last_info: dict = {}

    def fit_head(self, zs: torch.Tensor, ys: torch.Tensor, n_classes: int, adapting: bool = False) -> Head:
        h = self.hparams
        W, self._last_info = svm_head_weights(zs, ys, n_classes, h["svm_C"], h["svm_dual_ridge"],
                                              h["svm_max_iter"], h["svm_tol"])
        scale = self.log_scale.exp()
        return lambda zq: scale * (zq @ W)

    def step_logs(self, logits, tasks) -> dict[str, float]:
        return {**super().step_logs(logits, tasks), "svm_iters": float(self._last_info["iters"]),
                "svm_residual": float(self._last_info["residual"]), "scale": self.log_scale.exp().item()}
