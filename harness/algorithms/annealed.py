"""Shared by IRM and VREx: a penalty weighted 1 until an anneal step, then lambda, with Adam reset (DomainBed)."""

from __future__ import annotations

import torch

from harness.algorithms.base import Algorithm


class AnnealedPenaltyAlgorithm(Algorithm):
    """Subclasses name their hparams in ``LAMBDA`` and ``ANNEAL`` and end ``update`` with ``annealed_step``."""

    LAMBDA: str = ""
    ANNEAL: str = ""

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.register_buffer("update_count", torch.tensor(0, dtype=torch.long))
        self.optimizer = self._new_optimizer()

    def _new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"])

    def annealed_step(self, nll: torch.Tensor, penalty: torch.Tensor) -> dict[str, float]:
        step, anneal = int(self.update_count), self.hparams[self.ANNEAL]
        loss = nll + (self.hparams[self.LAMBDA] if step >= anneal else 1.0) * penalty
        if step == anneal:  # the jump in gradient scale upsets Adam's moments
            self.optimizer = self._new_optimizer()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.update_count += 1
        return {"loss": loss.item(), "nll": nll.item(), "penalty": penalty.item()}
