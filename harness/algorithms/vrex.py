"""Risk Extrapolation (V-REx)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.algorithms.annealed import AnnealedPenaltyAlgorithm
from harness.hparams import HP, at_least, log_uniform
from harness.registry import ALGORITHMS


def vrex_penalty(env_risks: torch.Tensor) -> torch.Tensor:
    """The (population) variance of the per-environment risks; 0 with one environment."""
    return (env_risks - env_risks.mean()).square().mean()


@ALGORITHMS.register("VREx")
class VREx(AnnealedPenaltyAlgorithm):
    """V-REx: mean risk + lambda * variance of the environment risks (Krueger et al. 2021, arXiv 2003.00688).

    As DomainBed: weight 1 for the first ``vrex_penalty_anneal_iters`` steps, then ``vrex_lambda``,
    with Adam reset when the full penalty switches on.
    """

    HPARAMS = {"vrex_lambda": HP(1e1, log_uniform(-1, 5), at_least(0)),  # DomainBed's defaults and ranges
               "vrex_penalty_anneal_iters": HP(500, lambda r: int(10 ** r.uniform(0, 4)), at_least(0))}

    LAMBDA, ANNEAL = "vrex_lambda", "vrex_penalty_anneal_iters"

    def update(self, minibatches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        logits = self.predict(torch.cat([x for x, _ in minibatches])).split([len(x) for x, _ in minibatches])
        risks = torch.stack([F.cross_entropy(lg, y) for lg, (_, y) in zip(logits, minibatches)])
        nll, penalty = risks.mean(), vrex_penalty(risks)
        return self.annealed_step(nll, penalty)
