"""Shared machinery of the factor datasets (dSprites, 3DShapes, MPI3D and their renderers).

* ``sampling``: factor-grid sampling with an optional Gaussian copula, environment bands, choosing
  a published file's rows;
* ``cache``: the content-addressed, atomically written array cache;
* ``files``: finding the publishers' files, ``.npz`` row streaming (``NpzMember``);
* ``bases``: ``ProceduralFactorDataset`` and ``FileFactorDataset``.

Everything is importable from ``harness.datasets.factors``.
"""

from harness.datasets.factors.bases import FactorDatasetMixin, FileFactorDataset, ProceduralFactorDataset
from harness.datasets.factors.cache import cache_dir, cached_arrays, digest, file_fingerprint
from harness.datasets.factors.files import NpzMember, find_file, read_sorted
from harness.datasets.factors.sampling import (N_BANDS, band_range, check_rho, choose_rows, env_rng, locate_rows,
                                               normal_cdf, sample_factor_classes)

__all__ = ["FactorDatasetMixin", "FileFactorDataset", "ProceduralFactorDataset", "cache_dir", "cached_arrays",
           "digest", "file_fingerprint", "NpzMember", "find_file", "read_sorted", "N_BANDS", "band_range",
           "check_rho", "choose_rows", "env_rng", "locate_rows", "normal_cdf", "sample_factor_classes"]
