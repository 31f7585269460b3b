"""Inter-domain Mixup."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.algorithms.base import Algorithm
from harness.hparams import HP, above, log_uniform
from harness.registry import ALGORITHMS


def random_pairs(minibatches: list[tuple[torch.Tensor, torch.Tensor]]):
    """DomainBed's ``random_pairs_of_minibatches``: a random cycle over environments, cut to equal sizes.

    With one environment it pairs the minibatch with itself (Mixup then reduces to ERM).
    """
    perm = torch.randperm(len(minibatches)).tolist()
    pairs = []
    for k in range(len(perm)):
        (xi, yi), (xj, yj) = minibatches[perm[k]], minibatches[perm[(k + 1) % len(perm)]]
        n = min(len(xi), len(xj))
        pairs.append(((xi[:n], yi[:n]), (xj[:n], yj[:n])))
    return pairs


def mix(xi, yi, xj, yj, lam: float, num_classes: int):
    """Mixed inputs and the mixed (soft) targets lam * onehot(yi) + (1 - lam) * onehot(yj)."""
    x = lam * xi + (1 - lam) * xj
    t = lam * F.one_hot(yi, num_classes).to(x.dtype) + (1 - lam) * F.one_hot(yj, num_classes).to(x.dtype)
    return x, t


@ALGORITHMS.register("Mixup")
class Mixup(Algorithm):
    """Inter-domain Mixup (Yan et al. 2020, arXiv 2001.00677; DomainBed): mix minibatches of pairs of
    environments with lam ~ Beta(mixup_alpha, mixup_alpha) and train on the mixed targets.

    The loss ``lam CE(f(x), yi) + (1 - lam) CE(f(x), yj)`` equals the cross-entropy with the mixed
    soft target. lam is drawn from torch's generator, so the trainer's per-step seed makes resume exact.
    """

    HPARAMS = {"mixup_alpha": HP(0.2, log_uniform(-1, 1), above(0))}  # DomainBed's default and range

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=hparams["lr"], weight_decay=hparams["weight_decay"])

    def update(self, minibatches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        alpha = torch.tensor(float(self.hparams["mixup_alpha"]))
        beta = torch.distributions.Beta(alpha, alpha)
        loss = 0.0
        for (xi, yi), (xj, yj) in random_pairs(minibatches):
            lam = float(beta.sample())
            x, target = mix(xi, yi, xj, yj, lam, self.num_classes)
            loss = loss + F.cross_entropy(self.predict(x), target)
        loss = loss / len(minibatches)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}
