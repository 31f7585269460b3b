"""Embedded synthetic data with known factors: no download, CPU-fast."""

from __future__ import annotations

from typing import Sequence

import torch

from harness.datasets.base import MultiEnvDataset, TensorEnv
from harness.errors import UserError
from harness.hparams import HP, at_least, fraction, in_range, int_pow2, log_uniform
from harness.registry import DATASETS
from harness.utils import generator


def invertible_mixing(n: int, n_layers: int = 3, seed: int = 0):
    """A fixed random invertible nonlinear map R^n -> R^n: (orthogonal linear, leaky-ReLU) x n_layers."""
    g = generator("mixing", n, n_layers, seed)
    mats = [torch.linalg.qr(torch.randn(n, n, generator=g))[0] for _ in range(n_layers)]

    def mix(z: torch.Tensor) -> torch.Tensor:
        h = z
        for i, m in enumerate(mats):
            h = h @ m
            if i < n_layers - 1:
                h = torch.nn.functional.leaky_relu(h, 0.2)
        return h

    return mix


def correlated_uniform(n: int, k: int, rho: float, g: torch.Generator) -> torch.Tensor:
    """(n, k) U(0, 1) marginals joined by a Gaussian copula with equicorrelation rho."""
    cov = torch.full((k, k), rho, dtype=torch.float64).fill_diagonal_(1.0)
    e = torch.randn(n, k, generator=g, dtype=torch.float64)
    return torch.special.ndtr(e @ torch.linalg.cholesky(cov).T).float()


@DATASETS.register("SyntheticLinear")
class SyntheticLinear(MultiEnvDataset):
    """Factors z ~ U(-1, 1)^K, observations x = f(z) with f a fixed random invertible MLP.

    ``factor_correlation`` rho couples the factors through a Gaussian copula (every pair equally
    correlated, uniform marginals kept), the correlated-factors test of the sharing study.

    The kind of setting of Fumero et al.'s synthetic experiments (arXiv 2304.07939, Sec. 2 and
    4.1): tasks depend linearly on sparse subsets of z, so a sparse and shared representation
    identifies z up to permutation and scaling. The mixing, shifts and task distribution are this
    harness's protocol. Environments shift the factor distribution: in environment e
    every factor is drawn from U(-1 + s_e, 1 + s_e) with s_e = 0, 0.25, 0.5. The primary label
    (for per-environment algorithms) is ``1[z_0 + z_1 > s_e]``.
    """

    # lr 3e-3 and every factor combination kept for training tasks (ood_task_fraction 0): identifiability
    # needs the task diversity (docs/measurements_history.md, "Default hparams chosen from measurements")
    HPARAMS = {"backbone": HP("MLP"), "feature_dim": HP(10), "batch_size": HP(64, int_pow2(5, 7)),
               "lr": HP(3e-3, log_uniform(-3.5, -2)), "n_factors": HP(10, domain=in_range(1, 1024)),
               "n_per_env": HP(4000, domain=in_range(1, 10**7)), "data_seed": HP(0, domain=at_least(0)),
               "ood_task_fraction": HP(0.0, domain=fraction(open_hi=True)),
               "factor_correlation": HP(0.0, domain=in_range(-1, 1, open_lo=True)),
               # tasks' factors drawn Zipf-skewed (harness.datasets.tasks.FactorTaskSampler); 0: uniform
               "factor_skew": HP(0.0, domain=at_least(0))}

    ENVIRONMENTS = ["shift0", "shift25", "shift50"]
    NUM_CLASSES = 2
    METRICS = ("disentanglement",)
    N_STEPS = 2000  # SparseShared's DCI D plateaus from about 2000 steps (docs/study/sharing.md)
    CHECKPOINT_FREQ = 250
    SHIFTS = (0.0, 0.25, 0.5)
    TEST_ENV_SETS = [[]]  # sweeps: no held-out environment (identifiability is measured on held-out points)

    def __init__(self, data_dir: str | None, test_envs: Sequence[int], hparams: dict):
        super().__init__(data_dir, test_envs, hparams)
        hparams = self.hparams
        k, n = hparams["n_factors"], hparams["n_per_env"]
        self.INPUT_SHAPE = (k,)
        mix = invertible_mixing(k, seed=hparams["data_seed"])
        rho = float(hparams["factor_correlation"])
        if not -1.0 / (k - 1) < rho < 1.0:
            raise UserError(f"factor_correlation must be in (-1/{k - 1}, 1) for {k} factors, got {rho}")
        for e, shift in enumerate(self.SHIFTS):
            g = generator("SyntheticLinear", k, n, e, hparams["data_seed"])
            z = (correlated_uniform(n, k, rho, g) if rho else torch.rand(n, k, generator=g)) * 2 - 1 + shift
            y = (z[:, 0] + z[:, 1] > shift).long()
            self.datasets.append(TensorEnv(mix(z), y, factors=z, factor_names=[f"z{i}" for i in range(k)]))
