"""Factor-grid sampling and environment bands.

Points of a factor grid, optionally with correlated factors: an equicorrelated Gaussian copula
over the standardised factors (Lachapelle et al., ICML 2023, arXiv 2211.14666), mapped to grid
indices through the Gaussian CDF; ``rho = 0`` gives independent uniform factors. Environment
``e`` of 3 restricts one factor's class to the e-th third of its range (``band_range``). A
published file's rows are chosen so that a complete file gives the renderer's points.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from harness.errors import UserError
from harness.utils import seed_hash

N_BANDS = 3


def band_range(size: int, e: int, n_bands: int = N_BANDS) -> tuple[int, int]:
    """Inclusive class range of band ``e``: classes c with ``c * n_bands // size == e``.

    For 32 classes this gives 0-10, 11-21, 22-31; for 15 classes 0-4, 5-9, 10-14.
    """
    lo = -(-e * size // n_bands)
    hi = -(-(e + 1) * size // n_bands) - 1
    return lo, hi


def _equicorrelation_sqrt(k: int, rho: float) -> np.ndarray:
    """Symmetric square root of ``(1 - rho) I + rho 11^T`` (valid for -1/(k-1) <= rho <= 1)."""
    p = np.full((k, k), 1.0 / k)
    lam_other, lam_one = 1.0 - rho, 1.0 - rho + rho * k  # eigenvalues on 1^perp and on 1
    return np.sqrt(max(lam_other, 0.0)) * (np.eye(k) - p) + np.sqrt(max(lam_one, 0.0)) * p


def check_rho(rho: float, k: int) -> float:
    rho = float(rho)
    lo = -1.0 / (k - 1) if k > 1 else -1.0
    if not (lo <= rho <= 1.0):
        raise UserError(f"factor_correlation={rho} is outside [{lo:.3f}, 1] for {k} equicorrelated factors")
    return rho


def normal_cdf(z: np.ndarray) -> np.ndarray:
    import torch

    return torch.special.ndtr(torch.from_numpy(np.asarray(z, dtype=np.float64))).numpy()


def sample_factor_classes(sizes: Sequence[int], n: int, rng: np.random.Generator, rho: float = 0.0,
                          restrict: dict[int, tuple[int, int]] | None = None) -> np.ndarray:
    """``n`` points of the factor grid ``sizes``, (n, K) int64 classes.

    z ~ N(0, C) with C equicorrelated (rho), u = Phi(z) is uniform per factor, and factor k
    takes class ``lo + floor(u * (hi - lo + 1))`` of its allowed range ``restrict[k] = (lo, hi)``
    (inclusive; the whole range by default). Points are drawn with replacement.
    """
    k = len(sizes)
    rho = check_rho(rho, k)
    e = rng.standard_normal((n, k))
    z = e if rho == 0 else e @ _equicorrelation_sqrt(k, rho)
    u = normal_cdf(z)
    out = np.empty((n, k), dtype=np.int64)
    restrict = restrict or {}
    for j, size in enumerate(sizes):
        lo, hi = restrict.get(j, (0, size - 1))
        width = hi - lo + 1
        out[:, j] = lo + np.minimum((u[:, j] * width).astype(np.int64), width - 1)
    return out


def env_rng(tag: str, data_seed: int, env: int) -> np.random.Generator:
    """The RNG of one environment: a pure function of (dataset family, data_seed, env index)."""
    return np.random.default_rng(seed_hash("factor-data", tag, int(data_seed), int(env)))


def locate_rows(file_classes: np.ndarray, sizes: Sequence[int], query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``file_classes`` (M, K) holding each point of ``query`` (N, K).

    Returns (rows, found); rows is meaningless where found is False. Works for any subset
    or order of the grid (keys are the C-order ravel of the classes).
    """
    sizes = tuple(int(s) for s in sizes)
    ok = np.all((file_classes >= 0) & (file_classes < np.asarray(sizes)), axis=1)
    keys = np.full(len(file_classes), -1, dtype=np.int64)
    keys[ok] = np.ravel_multi_index(tuple(file_classes[ok].T), sizes)
    qkeys = np.ravel_multi_index(tuple(np.asarray(query).T), sizes)
    if len(keys) == int(np.prod(sizes)) and np.array_equal(keys, np.arange(len(keys))):
        return qkeys, np.ones(len(qkeys), dtype=bool)  # the complete grid in the publisher's order
    order = np.argsort(keys, kind="stable")
    pos = np.clip(np.searchsorted(keys[order], qkeys), 0, max(len(keys) - 1, 0))
    rows = order[pos] if len(keys) else np.zeros(len(qkeys), dtype=np.int64)
    found = keys[rows] == qkeys if len(keys) else np.zeros(len(qkeys), dtype=bool)
    return rows, found


def choose_rows(file_classes: np.ndarray, sizes: Sequence[int], n: int, rng: np.random.Generator, rho: float,
                restrict: dict[int, tuple[int, int]], what: str) -> np.ndarray:
    """Rows of a published file for one environment.

    The grid points are drawn exactly as the procedural twin draws them (same RNG, same
    copula), so a complete file gives the same factor points as the renderer. A partial file
    (e.g. a test fixture) with ``rho = 0`` falls back to uniform rows within the environment
    (without replacement when there are enough); correlated sampling needs the complete grid.
    """
    query = sample_factor_classes(sizes, n, rng, rho, restrict)
    rows, found = locate_rows(file_classes, sizes, query)
    if found.all():
        return rows
    if rho != 0:
        raise UserError(f"{what}: factor_correlation needs the complete factor grid, but the file has "
                        f"{len(file_classes)} of {int(np.prod(sizes))} grid points")
    inside = np.ones(len(file_classes), dtype=bool)
    for j, (lo, hi) in restrict.items():
        inside &= (file_classes[:, j] >= lo) & (file_classes[:, j] <= hi)
    pool = np.flatnonzero(inside)
    if len(pool) == 0:
        raise UserError(f"{what}: the file has no images in the environment {restrict}")
    return np.sort(rng.choice(pool, size=n, replace=len(pool) < n))
