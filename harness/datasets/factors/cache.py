"""A content-addressed cache of arrays (``$HARNESS_CACHE`` or ``~/.cache/harness``), written atomically;
an unreadable or mismatching cache file is rebuilt."""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.utils import atomic_write_bytes


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
