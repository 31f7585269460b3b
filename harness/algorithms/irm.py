"""Invariant Risk Minimization (IRMv1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import autograd

from harness.algorithms.annealed import AnnealedPenaltyAlgorithm
from harness.hparams import HP, at_least, log_uniform
from harness.registry import ALGORITHMS


def irm_penalty(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """IRMv1's squared gradient of the risk w.r.t. a dummy scale w = 1 on the logits.

    DomainBed's unbiased estimate: the product of the gradients on the two halves of the
    minibatch (even / odd positions), so it is ~0 in expectation for an optimal classifier.
    A minibatch of fewer than 2 examples has no two halves: its penalty is 0.
    """
    if len(y) < 2:
        return logits.sum() * 0.0
    scale = torch.ones((), device=logits.device, dtype=logits.dtype, requires_grad=True)
    loss_1 = F.cross_entropy(logits[::2] * scale, y[::2])
    loss_2 = F.cross_entropy(logits[1::2] * scale, y[1::2])
    grad_1 = autograd.grad(loss_1, [scale], create_graph=True)[0]
    grad_2 = autograd.grad(loss_2, [scale], create_graph=True)[0]
    return grad_1 * grad_2


@ALGORITHMS.register("IRM")
class IRM(AnnealedPenaltyAlgorithm):
    """Invariant Risk Minimization, IRMv1 penalty (Arjovsky et al. 2019, arXiv 1907.02893), as in DomainBed.

    The penalty weight is 1 for the first ``irm_penalty_anneal_iters`` steps, then ``irm_lambda``;
    Adam is reset when it switches on (the jump in gradient scale upsets its moments).
    """

    HPARAMS = {"irm_lambda": HP(1e2, log_uniform(-1, 5), at_least(0)),  # DomainBed's defaults and ranges
               "irm_penalty_anneal_iters": HP(500, lambda r: int(10 ** r.uniform(0, 4)), at_least(0))}

    LAMBDA, ANNEAL = "irm_lambda", "irm_penalty_anneal_iters"

    def update(self, minibatches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        logits = self.predict(torch.cat([x for x, _ in minibatches])).split([len(x) for x, _ in minibatches])
        nll = torch.stack([F.cross_entropy(lg, y) for lg, (_, y) in zip(logits, minibatches)]).mean()
        penalty = torch.stack([irm_penalty(lg, y) for lg, (_, y) in zip(logits, minibatches)]).mean()
        return self.annealed_step(nll, penalty)
