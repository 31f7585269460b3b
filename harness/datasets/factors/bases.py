"""``ProceduralFactorDataset`` and ``FileFactorDataset``: the common construction of the rendered
factor datasets and of the loaders of the publishers' files."""

from __future__ import annotations

import numpy as np

from harness.datasets.factors.cache import cached_arrays, digest
from harness.datasets.factors.sampling import band_range, check_rho, choose_rows, env_rng, sample_factor_classes
from harness.errors import UserError
from harness.hparams import HP, at_least, fraction, in_range, int_pow2


def _hp_rho(hparams: dict) -> float:
    try:
        return float(hparams.get("factor_correlation", 0.0))
    except (TypeError, ValueError):
        raise UserError(f"factor_correlation must be a number, got {hparams.get('factor_correlation')!r}") from None


def _hp_n(hparams: dict) -> int:
    n = hparams.get("n_per_env", 4000)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise UserError(f"n_per_env must be a positive integer, got {n!r}")
    return int(n)


class FactorDatasetMixin:
    """Attributes shared by the factor datasets.

    FAMILY        tag of the factor grid; the renderer and the loader of one grid share it, so
                  the same (data_seed, env) draws the same grid points in both
    GRID          factor name -> the values of its classes (publisher's order)
    LABEL_FACTOR  index (in GRID) of the factor that is the primary label
    ENV_FACTOR    index (in GRID) of the factor whose thirds are the environments
    """

    # ood_task_fraction: the share of multi-factor combinations kept out of the training tasks, for
    # out-of-distribution tasks at evaluation (harness/datasets/tasks.py)
    HPARAMS = {"backbone": HP("SmallCNN"), "feature_dim": HP(32), "batch_size": HP(32, int_pow2(3, 6)),
               "n_per_env": HP(4000, domain=in_range(1, 10**7)), "data_seed": HP(0, domain=at_least(0)),
               "factor_correlation": HP(0.0, domain=in_range(-1, 1, open_lo=True)), "data_cache": HP(True),
               "ood_task_fraction": HP(0.2, domain=fraction(open_hi=True))}
    FAMILY: str = ""
    GRID: dict[str, np.ndarray] = {}
    LABEL_FACTOR: int = 0
    ENV_FACTOR: int = 0

    def sizes(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.GRID.values())

    def factor_names(self) -> tuple[str, ...]:
        return tuple(self.GRID)

    def class_values(self, classes: np.ndarray) -> np.ndarray:
        """Factor values of grid classes; a categorical label factor keeps its class index."""
        cols = []
        for j, vals in enumerate(self.GRID.values()):
            cols.append(classes[:, j].astype(np.float64) if j == self.LABEL_FACTOR else np.asarray(vals)[classes[:, j]])
        return np.stack(cols, 1)

    def env_restrict(self, e: int) -> dict[int, tuple[int, int]]:
        return {self.ENV_FACTOR: band_range(self.sizes()[self.ENV_FACTOR], e)}


class ProceduralFactorDataset(FactorDatasetMixin):
    """Body of a rendered factor dataset: sample the grid per environment, render, cache.

    Subclasses (also ``MultiEnvDataset``) set the FactorDatasetMixin attributes, RENDER_VERSION
    (bump it when the picture changes) and ``render(classes) -> uint8 (N, C, H, W)``.
    """

    RENDER_VERSION: int = 1

    @staticmethod
    def render(classes: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def build_envs(self, hparams: dict) -> None:
        import torch

        from harness.datasets.base import TensorEnv

        n, rho = _hp_n(hparams), _hp_rho(hparams)
        data_seed = int(hparams.get("data_seed", 0))
        for e in range(len(self.ENVIRONMENTS)):
            classes = sample_factor_classes(self.sizes(), n, env_rng(self.FAMILY, data_seed, e), rho,
                                            self.env_restrict(e))
            key = {"dataset": type(self).__name__, "render_version": self.RENDER_VERSION,
                   "classes": digest(classes)}
            arrays = cached_arrays(type(self).__name__.lower(), key, lambda: {"x": self.render(classes)},
                                   enabled=bool(hparams.get("data_cache", True)))
            x = arrays["x"]
            if x.shape != (n,) + tuple(self.INPUT_SHAPE) or x.dtype != np.uint8:  # defensive: stale cache
                x = self.render(classes)
            self.datasets.append(TensorEnv(
                torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(classes[:, self.LABEL_FACTOR]),
                factors=torch.from_numpy(self.class_values(classes)).float(), factor_names=self.factor_names()))


class FileFactorDataset(FactorDatasetMixin):
    """Body of a loader of a published file: pick rows per environment, read them, cache them.

    Subclasses implement ``open_file() -> (file_classes (M, K) int, file_values (M, K) float,
    read_rows(sorted unique rows) -> uint8 (n, C, H, W), fingerprint)``.
    """

    def open_file(self):
        raise NotImplementedError

    def build_envs(self, hparams: dict) -> None:
        import torch

        from harness.datasets.base import TensorEnv

        n, rho = _hp_n(hparams), _hp_rho(hparams)
        check_rho(rho, len(self.GRID))
        data_seed = int(hparams.get("data_seed", 0))
        file_classes, file_values, read_rows, fingerprint = self.open_file()
        for e in range(len(self.ENVIRONMENTS)):
            rows = choose_rows(file_classes, self.sizes(), n, env_rng(self.FAMILY, data_seed, e), rho,
                               self.env_restrict(e), type(self).__name__)
            key = {"dataset": type(self).__name__, "file": fingerprint, "rows": digest(rows)}
            x = cached_arrays(type(self).__name__.lower(), key, lambda: {"x": read_rows(rows)},
                              enabled=bool(hparams.get("data_cache", True)))["x"]
            classes = file_classes[rows]
            values = file_values[rows].astype(np.float64)
            values[:, self.LABEL_FACTOR] = classes[:, self.LABEL_FACTOR]
            self.datasets.append(TensorEnv(
                torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(classes[:, self.LABEL_FACTOR].copy()),
                factors=torch.from_numpy(values).float(), factor_names=self.factor_names()))
