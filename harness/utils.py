"""Small helpers shared by the engine: seeds, devices, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def seed_hash(*args: Any) -> int:
    """A 31-bit integer derived from any JSON-able arguments (DomainBed's ``misc.seed_hash``)."""
    digest = hashlib.md5(json.dumps(args, sort_keys=True, default=str).encode()).hexdigest()
    return int(digest, 16) % (2**31)


def generator(*args: Any):
    """A CPU ``torch.Generator`` seeded from ``seed_hash(*args)``: randomness as a pure function of its key."""
    import torch

    g = torch.Generator()
    g.manual_seed(seed_hash(*args))
    return g


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from harness.errors import UserError

        raise UserError("--device cuda was asked for but CUDA is not available (use --device auto or cpu)")
    return torch.device(name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``. The file keeps
    the mode of the one it replaces (a new one gets the umask's), not mkstemp's 0600."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


# Files a run writes into its output directory (harness/train.py, harness/lock.py, harness/checkpoints.py).
RUN_FILES = ("lock", "out.txt", "err.txt", "results.jsonl", "checkpoint.pt", "done", "checkpoints")


def refuse_links(run_dir: str | os.PathLike, names: tuple[str, ...] = RUN_FILES) -> None:
    """A one-line UserError when ``run_dir`` holds a symbolic link where one of ``names`` should be: a run
    never writes, locks or deletes through a link (it would change the link's target)."""
    from harness.errors import UserError

    for name in names:
        path = Path(run_dir) / name
        if path.is_symlink():
            raise UserError(f"{path} is a symbolic link (to {os.readlink(path)}); a run never writes through "
                            "links: remove it (or choose another --output_dir)")


def open_nofollow(path: str | os.PathLike, flags: int, mode: int = 0o666) -> int:
    """``os.open`` that fails (ELOOP) instead of following a symbolic link at ``path``."""
    return os.open(path, flags | os.O_NOFOLLOW, mode)


def relative_inside(base: str | os.PathLike, name: object) -> Path | None:
    """``base / name`` for a relative path read from a data file that stays inside ``base`` lexically; None
    for an absolute path, a ``..`` escape, an empty name or one that is not a string (annotation files must
    never name files outside their dataset's folder)."""
    if not isinstance(name, str) or not name or "\x00" in name or Path(name).is_absolute():
        return None
    norm = os.path.normpath(name)
    if norm == ".." or norm.startswith(".." + os.sep) or os.path.isabs(norm):
        return None
    return Path(base) / name


def dataset_path(base: str | os.PathLike, name: object, listed_in: str | os.PathLike) -> Path:
    """``base / name`` for a file named by an annotation file (``listed_in``); a one-line UserError when the
    name leaves the dataset's folder (``..``, an absolute path), as the archive unpacker refuses such members."""
    path = relative_inside(base, name)
    if path is None:
        from harness.errors import UserError

        raise UserError(f"{listed_in} names {str(name)[:120]!r}, a path outside the dataset folder {base}; "
                        "refusing to read it (the file is corrupt or crafted)")
    return path
