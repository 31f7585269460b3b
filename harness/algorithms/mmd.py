"""MMD-AAE-style feature alignment with a Gaussian-kernel MMD penalty."""

from __future__ import annotations

import torch

from harness.algorithms.coral import FeatureMatching
from harness.registry import ALGORITHMS

GAMMAS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)  # DomainBed's bandwidths


def sq_dists(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    d = x1.square().sum(-1, keepdim=True) + x2.square().sum(-1, keepdim=True).T - 2 * x1 @ x2.T
    return d.clamp_min(1e-30)


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, gammas=GAMMAS) -> torch.Tensor:
    """A sum of Gaussian kernels exp(-g ||x - y||^2) over the bandwidths ``gammas``."""
    d = sq_dists(x, y)
    return sum(torch.exp(-g * d) for g in gammas)


def mmd_penalty(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The (biased, V-statistic) squared MMD between two samples under ``gaussian_kernel``."""
    return gaussian_kernel(x, x).mean() + gaussian_kernel(y, y).mean() - 2 * gaussian_kernel(x, y).mean()


@ALGORITHMS.register("MMD")
class MMD(FeatureMatching):
    """MMD feature alignment across environments (Li et al. 2018, CVPR, "Domain Generalization with
    Adversarial Feature Learning"), as DomainBed: ERM + ``mmd_gamma`` * mean pairwise Gaussian MMD^2.
    """

    def penalty(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return mmd_penalty(x, y)
