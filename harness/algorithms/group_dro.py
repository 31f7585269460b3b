"""Group distributionally robust optimisation over training environments."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.algorithms.base import Algorithm
from harness.hparams import HP, at_least, log_uniform
from harness.registry import ALGORITHMS


@ALGORITHMS.register("GroupDRO")
class GroupDRO(Algorithm):
    """Online GroupDRO (Sagawa et al. 2020, arXiv 1911.08731), groups = training environments, as DomainBed.

    Group weights ``q`` (a buffer, so a resumed run continues with them) follow exponentiated
    gradient ascent on the group losses, ``q_e <- q_e exp(eta * loss_e)`` renormalised; the
    model minimises the q-weighted loss.
    """

    HPARAMS = {"groupdro_eta": HP(1e-2, log_uniform(-3, -1), at_least(0))}  # DomainBed's default and range

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.register_buffer("q", torch.full((num_domains,), 1.0 / num_domains))
        self.optimizer = torch.optim.Adam(self.parameters(), lr=hparams["lr"], weight_decay=hparams["weight_decay"])

    def update(self, minibatches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        if len(minibatches) != len(self.q):
            raise ValueError(f"GroupDRO was built for {len(self.q)} training environments, got {len(minibatches)} minibatches")
        logits = self.predict(torch.cat([x for x, _ in minibatches])).split([len(x) for x, _ in minibatches])
        losses = torch.stack([F.cross_entropy(lg, y) for lg, (_, y) in zip(logits, minibatches)])
        with torch.no_grad():
            q = self.q * (self.hparams["groupdro_eta"] * losses.detach()).exp()
            self.q.copy_(q / q.sum())
        loss = losses @ self.q
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), **{f"q{e}": v for e, v in enumerate(self.q.tolist())}}
