"""Empirical risk minimisation: the baseline every domain-generalization paper compares to."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.algorithms.base import Algorithm
from harness.registry import ALGORITHMS


@ALGORITHMS.register("ERM")
class ERM(Algorithm):
    """ERM on the pooled training environments (Vapnik 1998; DomainBed, arXiv 2007.01434)."""

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=hparams["lr"], weight_decay=hparams["weight_decay"])

    def update(self, minibatches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        loss = F.cross_entropy(self.predict(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}
