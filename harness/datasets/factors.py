"""Shared machinery of the factor datasets (dSprites, 3DShapes, MPI3D and their renderers).

* Factor-grid sampling, optionally with correlated factors: an equicorrelated Gaussian
  copula over the standardised factors (Lachapelle et al., ICML 2023, arXiv 2211.14666),
  mapped to grid indices through the Gaussian CDF. ``rho = 0`` gives independent uniform
  factors.
* Environment bands: environment ``e`` of 3 restricts one factor's class to the e-th third of
  its range (``band_range``).
* A content-addressed cache (``$HARNESS_CACHE`` or ``~/.cache/harness``) written atomically;
  an unreadable or mismatching cache file is rebuilt.
* Row access to ``.npz`` members without decoding the whole array: a member stored without
  compression is memory-mapped in place, a compressed one is streamed and only the wanted rows
  are kept (memory: one chunk of about 64 MiB plus the result).
* ``ProceduralFactorDataset`` and ``FileFactorDataset``: the common construction of the
  rendered datasets and of the loaders of the publishers' files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from harness.errors import UserError
from harness.utils import atomic_write_bytes, seed_hash

N_BANDS = 3


# ----------------------------------------------------------------------------------------
# factor sampling
# ----------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------
# cache
# ----------------------------------------------------------------------------------------
def cache_dir() -> Path:
    d = os.environ.get("HARNESS_CACHE")
    return Path(d) if d else Path.home() / ".cache" / "harness"


def digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str((p.dtype.str, p.shape)).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


def cached_arrays(tag: str, key: Any, build: Callable[[], dict[str, np.ndarray]],
                  enabled: bool = True) -> dict[str, np.ndarray]:
    """``build()`` memoised on disk under ``cache_dir()/<tag>-<sha256(key)>.npz``.

    ``key`` must hold everything that determines the content. The file stores its key; a
    file that cannot be read, or whose key differs, is rebuilt and rewritten atomically. A
    cache that cannot be written is skipped with a warning.
    """
    if not enabled:
        return build()
    key_json = json.dumps(key, sort_keys=True, default=str)
    path = cache_dir() / f"{tag}-{digest(key_json)[:24]}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["__key__"]) == key_json:
                    return {k: z[k] for k in z.files if k != "__key__"}
        except Exception:  # corrupt or truncated: rebuild below
            pass
    arrays = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, __key__=np.array(key_json), **arrays)
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        warnings.warn(f"could not write the data cache {path}: {e}")
    return arrays


def file_fingerprint(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


# ----------------------------------------------------------------------------------------
# published files
# ----------------------------------------------------------------------------------------
def find_file(data_dir: str | None, candidates: Sequence[str], dataset: str, source: str) -> Path:
    """The first existing ``data_dir/<candidate>``; a one-line UserError naming the first otherwise."""
    if not data_dir:
        raise UserError(f"{dataset} reads {candidates[0]} under --data_dir, but no data_dir was given "
                        f"(get the file from {source})")
    base = Path(data_dir).expanduser()
    for c in candidates:
        if (base / c).is_file():
            return base / c
    also = f" (or {base / candidates[1]})" if len(candidates) > 1 else ""
    raise UserError(f"{dataset}: file not found: {base / candidates[0]}{also}; download it from {source}")


class NpzMember:
    """One array of an ``.npz`` archive, read by rows without decoding the rest.

    Opening reads only the zip directory and the array header (shape, dtype). ``rows(idx)``
    memory-maps a member stored without compression (``np.savez``); a compressed member
    (``np.savez_compressed``) is decompressed as a stream in ~64 MiB chunks, keeping only the
    wanted rows (time: one pass over the member; memory: a chunk plus the result).
    """

    CHUNK_BYTES = 64 << 20  # streaming chunk of a compressed member

    def __init__(self, path: Path, key: str, what: str):
        self.path, self.key, self.what = Path(path), key, what
        try:
            with zipfile.ZipFile(self.path) as zf:
                try:
                    info = zf.getinfo(key + ".npy")
                except KeyError:
                    keys = sorted(n[:-4] for n in zf.namelist() if n.endswith(".npy"))
                    raise UserError(f"{what}: {self.path} has no array '{key}' (it has: {', '.join(keys)})") from None
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                    else:
                        shape, fortran, dtype = np.lib.format._read_array_header(f, version)
                    self.header_len = f.tell()
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
            raise UserError(f"{what}: {self.path} is not a readable .npz archive ({type(e).__name__}: {e})") from None
        if dtype.hasobject:
            raise UserError(f"{what}: array '{key}' of {self.path} holds Python objects, expected numbers")
        self.shape, self.fortran, self.dtype = tuple(shape), fortran, dtype
        self.stored = info.compress_type == zipfile.ZIP_STORED
        self.info = info

    def __len__(self) -> int:
        return self.shape[0]

    def check(self, shape_tail: tuple[int, ...] | None = None, ndim: int | None = None, n: int | None = None) -> None:
        if ndim is not None and len(self.shape) != ndim:
            raise UserError(f"{self.what}: array '{self.key}' of {self.path} has shape {self.shape}, "
                            f"expected {ndim} dims")
        if shape_tail is not None and self.shape[1:] != tuple(shape_tail):
            raise UserError(f"{self.what}: array '{self.key}' of {self.path} has shape {self.shape}, "
                            f"expected (N, {', '.join(map(str, shape_tail))})")
        if n is not None and self.shape[0] != n:
            raise UserError(f"{self.what}: array '{self.key}' of {self.path} has {self.shape[0]} rows, expected {n}")

    def read_all(self) -> np.ndarray:
        with np.load(self.path, allow_pickle=False) as z:
            return z[self.key]

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """``array[indices]`` (any order, repeats allowed)."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= self.shape[0]):
            raise IndexError(f"row index out of range for {self.key} with {self.shape[0]} rows")
        uniq, inverse = np.unique(indices, return_inverse=True)
        if self.stored and not self.fortran:
            got = self._memmap()[uniq]
        elif self.fortran:
            got = self.read_all()[uniq]
        else:
            got = self._stream(uniq)
        return np.asarray(got[inverse])

    def _memmap(self) -> np.ndarray:
        with open(self.path, "rb") as fh:
            fh.seek(self.info.header_offset)
            local = fh.read(30)
        if local[:4] != b"PK\x03\x04":
            raise UserError(f"{self.what}: {self.path} has a damaged zip entry for '{self.key}'")
        name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
        start = self.info.header_offset + 30 + name_len + extra_len  # data follows the local file header
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=start + self.header_len, shape=self.shape)

    def _stream(self, uniq: np.ndarray) -> np.ndarray:
        row_shape = self.shape[1:]
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
        out = np.empty((len(uniq),) + row_shape, dtype=self.dtype)
        if len(uniq) == 0:
            return out
        chunk = max(1, self.CHUNK_BYTES // max(row_bytes, 1))
        with zipfile.ZipFile(self.path) as zf, zf.open(self.info) as f:
            f.read(self.header_len)
            done, start = 0, 0
            while done < len(uniq):
                count = min(chunk, self.shape[0] - start)
                buf = f.read(count * row_bytes)
                if len(buf) != count * row_bytes:
                    raise UserError(f"{self.what}: array '{self.key}' of {self.path} is truncated")
                block = np.frombuffer(buf, dtype=self.dtype).reshape((count,) + row_shape)
                stop = np.searchsorted(uniq, start + count)
                out[done:stop] = block[uniq[done:stop] - start]
                done, start = stop, start + count
        return out


# ----------------------------------------------------------------------------------------
# dataset bases
# ----------------------------------------------------------------------------------------
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


def read_sorted(reader: Callable[[np.ndarray], np.ndarray], rows: np.ndarray) -> np.ndarray:
    """``reader`` needs sorted unique rows (h5py fancy indexing); give back ``rows`` order."""
    uniq, inverse = np.unique(rows, return_inverse=True)
    return reader(uniq)[inverse]
