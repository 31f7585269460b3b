"""Invariant Risk Minimization (IRMv1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import autograd

from harness.algorithms.base import Algorithm
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
class IRM(Algorithm):
    """Invariant Risk Minimization, IRMv1 penalty (Arjovsky et al. 2019, arXiv 1907.02893), as in DomainBed.

    The penalty weight is 1 for the first ``irm_penalty_anneal_iters`` steps, then ``irm_lambda``;
    Adam is reset when it switches on (the jump in gradient scale upsets its moments).
    """

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.register_buffer("update_count", torch.tensor(0, dtype=torch.long))
        self.optimizer = self._new_optimizer()

    def _new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"])

    def update(self, minibatches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        step, anneal = int(self.update_count), self.hparams["irm_penalty_anneal_iters"]
        penalty_weight = self.hparams["irm_lambda"] if step >= anneal else 1.0
        logits = self.predict(torch.cat([x for x, _ in minibatches])).split([len(x) for x, _ in minibatches])
        nll = torch.stack([F.cross_entropy(lg, y) for lg, (_, y) in zip(logits, minibatches)]).mean()
        penalty = torch.stack([irm_penalty(lg, y) for lg, (_, y) in zip(logits, minibatches)]).mean()
        loss = nll + penalty_weight * penalty
        if step == anneal:
            self.optimizer = self._new_optimizer()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.update_count += 1
        return {"loss": loss.item(), "nll": nll.item(), "penalty": penalty.item()}
