"""Deep CORAL, and the feature-matching base it shares with MMD (``mmd.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.algorithms.base import Algorithm
from harness.hparams import HP, at_least, log_uniform
from harness.registry import ALGORITHMS


def coral_penalty(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared differences of the means and covariances of two feature samples (DomainBed's mean_cov)."""
    mean_x, mean_y = x.mean(0, keepdim=True), y.mean(0, keepdim=True)
    cent_x, cent_y = x - mean_x, y - mean_y
    cova_x = cent_x.T @ cent_x / max(len(x) - 1, 1)
    cova_y = cent_y.T @ cent_y / max(len(y) - 1, 1)
    return (mean_x - mean_y).square().mean() + (cova_x - cova_y).square().mean()


class FeatureMatching(Algorithm):
    """ERM + ``mmd_gamma`` * mean over pairs of training environments of ``penalty(f_i, f_j)``."""

    HPARAMS = {"mmd_gamma": HP(1.0, log_uniform(-1, 1), at_least(0))}  # DomainBed's default and range (CORAL and MMD)

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=hparams["lr"], weight_decay=hparams["weight_decay"])

    def penalty(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, minibatches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        n = len(minibatches)
        feats = self.features(torch.cat([x for x, _ in minibatches])).split([len(x) for x, _ in minibatches])
        nll = torch.stack([F.cross_entropy(self.classifier(f), y) for f, (_, y) in zip(feats, minibatches)]).mean()
        pairs = [self.penalty(feats[i], feats[j]) for i in range(n) for j in range(i + 1, n)]
        penalty = torch.stack(pairs).mean() if pairs else nll.new_zeros(())  # one environment: no pairs
        loss = nll + self.hparams["mmd_gamma"] * penalty
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": nll.item(), "penalty": penalty.item()}


@ALGORITHMS.register("CORAL")
class CORAL(FeatureMatching):
    """Deep CORAL: align feature means and covariances across environments (Sun & Saenko 2016, arXiv 1607.01719).

    DomainBed's version: penalty = mean squared difference of means + of covariances, averaged
    over pairs of training environments, weighted by ``mmd_gamma``.
    """

    def penalty(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return coral_penalty(x, y)
