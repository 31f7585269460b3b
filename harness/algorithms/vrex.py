"""Risk Extrapolation (V-REx)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.algorithms.base import Algorithm
from harness.registry import ALGORITHMS


def vrex_penalty(env_risks: torch.Tensor) -> torch.Tensor:
    """The (population) variance of the per-environment risks; 0 with one environment."""
    return (env_risks - env_risks.mean()).square().mean()


@ALGORITHMS.register("VREx")
class VREx(Algorithm):
    """V-REx: mean risk + lambda * variance of the environment risks (Krueger et al. 2021, arXiv 2003.00688).

    As DomainBed: weight 1 for the first ``vrex_penalty_anneal_iters`` steps, then ``vrex_lambda``,
    with Adam reset when the full penalty switches on.
    """

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.register_buffer("update_count", torch.tensor(0, dtype=torch.long))
        self.optimizer = self._new_optimizer()

    def _new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"])

    def update(self, minibatches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        step, anneal = int(self.update_count), self.hparams["vrex_penalty_anneal_iters"]
        penalty_weight = self.hparams["vrex_lambda"] if step >= anneal else 1.0
        logits = self.predict(torch.cat([x for x, _ in minibatches])).split([len(x) for x, _ in minibatches])
        risks = torch.stack([F.cross_entropy(lg, y) for lg, (_, y) in zip(logits, minibatches)])
        nll, penalty = risks.mean(), vrex_penalty(risks)
        loss = nll + penalty_weight * penalty
        if step == anneal:
            self.optimizer = self._new_optimizer()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.update_count += 1
        return {"loss": loss.item(), "nll": nll.item(), "penalty": penalty.item()}
