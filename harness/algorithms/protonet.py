"""Prototypical networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.algorithms.episodic import EpisodicAlgorithm, Head
from harness.registry import ALGORITHMS

def class_centroids(zs: torch.Tensor, ys: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(T, S, d), (T, S) -> (T, C, d) per-class means (a class absent from the support gets 0)."""
    onehot = F.one_hot(ys, n_classes).to(zs.dtype)  # (T, S, C)
    counts = onehot.sum(1).clamp_min(1.0)  # (T, C)
    return onehot.transpose(1, 2) @ zs / counts.unsqueeze(-1)


@ALGORITHMS.register("ProtoNet")
class ProtoNet(EpisodicAlgorithm):
    """Prototypical networks (Snell et al. 2017, arXiv 1703.05175).

    The head of a task is its class centroids in feature space; logits are the negative squared
    Euclidean distances to them.
    """

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.make_optimizer()

    def fit_head(self, zs: torch.Tensor, ys: torch.Tensor, n_classes: int, adapting: bool = False) -> Head:
        centroids = class_centroids(zs, ys, n_classes)
        return lambda zq: -sq_distances(zq, centroids)


def sq_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(T, Q, d), (T, C, d) -> (T, Q, C) squared Euclidean distances (no sqrt, so no NaN gradient at 0)."""
    return (a.square().sum(-1, keepdim=True) - 2 * a @ b.transpose(1, 2) + b.square().sum(-1).unsqueeze(1)).clamp_min(0)
