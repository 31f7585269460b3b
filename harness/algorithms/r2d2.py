"""R2D2: a closed-form ridge-regression head per task."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.algorithms.episodic import EpisodicAlgorithm, Head
from harness.hparams import HP, above, log_uniform
from harness.linalg import solve
from harness.precision import full_precision
from harness.registry import ALGORITHMS


@full_precision
def ridge_solution(zs: torch.Tensor, targets: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """argmin_W ||zs W - targets||^2 + lam ||W||^2, batched: (T, S, p), (T, S, C) -> (T, p, C).

    Woodbury form ``zs^T (zs zs^T + lam I_S)^-1 targets`` when S < p (few shots, wide features),
    otherwise the normal equations ``(zs^T zs + lam I_p)^-1 zs^T targets``. Both differentiable.
    """
    S, p = zs.shape[-2:]
    if S < p:
        gram = zs @ zs.transpose(-1, -2) + lam * torch.eye(S, dtype=zs.dtype, device=zs.device)
        return zs.transpose(-1, -2) @ solve(gram, targets)
    gram = zs.transpose(-1, -2) @ zs + lam * torch.eye(p, dtype=zs.dtype, device=zs.device)
    return solve(gram, zs.transpose(-1, -2) @ targets)


def with_bias_column(z: torch.Tensor) -> torch.Tensor:
    return torch.cat([z, torch.ones_like(z[..., :1])], -1)


@ALGORITHMS.register("R2D2")
class R2D2(EpisodicAlgorithm):
    """Ridge-regression differentiable discriminator (Bertinetto et al. 2019, arXiv 1805.08136).

    Per task: ridge regression from support features (with a constant column, for an intercept)
    to one-hot labels, in closed form (Woodbury when S < d + 1); query logits are
    ``scale * (z W) + bias`` with ``scale``, ``bias`` and the ridge lambda learned (log-space)
    by meta-training, as in the paper.
    """

    # Bertinetto et al., arXiv 1805.08136; lambda, scale and bias are meta-learned from these inits
    HPARAMS = {"ridge_lambda": HP(1.0, log_uniform(-2, 2), above(0)), "learn_lambda": HP(True),
               "init_scale": HP(10.0, log_uniform(0, 2), above(0))}

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.log_lambda = nn.Parameter(torch.tensor(math.log(hparams["ridge_lambda"])),
                                       requires_grad=bool(hparams["learn_lambda"]))
        self.log_scale = nn.Parameter(torch.tensor(math.log(hparams["init_scale"])))
        self.bias = nn.Parameter(torch.tensor(0.0))
        self.make_optimizer()

    def fit_head(self, zs: torch.Tensor, ys: torch.Tensor, n_classes: int, adapting: bool = False) -> Head:
        targets = F.one_hot(ys, n_classes).to(zs.dtype)
        W = ridge_solution(with_bias_column(zs), targets, self.log_lambda.exp())
        scale, bias = self.log_scale.exp(), self.bias
        return lambda zq: scale * (with_bias_column(zq) @ W) + bias

    def step_logs(self, logits, tasks) -> dict[str, float]:
        return {**super().step_logs(logits, tasks), "ridge_lambda": self.log_lambda.exp().item(),
                "scale": self.log_scale.exp().item()}
