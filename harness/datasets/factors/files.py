"""Reading the publishers' files: locating them under ``--data_dir`` and reading rows of an array.

Row access to ``.npz`` members without decoding the whole array: a member stored without
compression is memory-mapped in place, a compressed one is streamed and only the wanted rows are
kept (memory: one chunk of about 64 MiB plus the result).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from harness.errors import UserError


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


def read_sorted(reader: Callable[[np.ndarray], np.ndarray], rows: np.ndarray) -> np.ndarray:
    """``reader`` needs sorted unique rows (h5py fancy indexing); give back ``rows`` order."""
    uniq, inverse = np.unique(rows, return_inverse=True)
    return reader(uniq)[inverse]
