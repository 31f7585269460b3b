"""Where pretrained weights come from: a local file or folder, the Hugging Face cache, or the hub.

Shared by the timm and transformers backbones. Nothing here imports timm, transformers or
torch, so that the offline checks answer in well under a second: an offline run asking for
a hub name ends with one line saying how to point at local weights, before any heavy import.
"""

from __future__ import annotations

import glob
import os
import socket
import threading
from pathlib import Path

from harness.errors import UserError

_TRUE = {"1", "on", "yes", "true"}
# weight files looked for, in this order, when ``pretrained`` names a folder
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin", "model.pth", "model.pt")
WEIGHT_EXTENSIONS = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".npz")
_reachable_cache: dict[str, bool] = {}


def offline_by_env() -> bool:
    """True when the user asked for offline mode (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = 1.0) -> bool:
    """Whether a TCP connection to the hub (or the HTTPS proxy) opens within ``timeout`` seconds.

    Name resolution is not covered by socket timeouts, so the probe runs in a daemon thread
    that is abandoned after ``timeout``.
    """
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    endpoint = proxy or os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if endpoint in _reachable_cache:
        return _reachable_cache[endpoint]
    from urllib.parse import urlparse

    u = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    host, port = u.hostname or "huggingface.co", u.port or (443 if u.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    _reachable_cache[endpoint] = bool(result and result[0])
    return _reachable_cache[endpoint]


def is_offline() -> bool:
    return offline_by_env() or not hub_reachable()


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def cached_repos(repo_globs: list[str]) -> list[Path]:
    """Folders of the Hugging Face cache whose repo id matches one of ``repo_globs`` (``org/name*``)."""
    root = hf_cache_dir()
    out: list[Path] = []
    for pattern in repo_globs:
        out += [Path(p) for p in glob.glob(str(root / ("models--" + pattern.replace("/", "--"))))]
    return [p for p in out if (p / "snapshots").is_dir()]


def local_weights(value) -> Path | None:
    """The local file or folder that ``hparams["pretrained"]`` names, or None for True/False.

    A string must be an existing path; a missing one is a one-line UserError.
    """
    if isinstance(value, bool) or value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise UserError(f"hparam 'pretrained' must be true, false or a path to local weights, got {value!r}")
    path = Path(value).expanduser()
    if not path.exists():
        raise UserError(f"pretrained weights not found: {path} (hparam 'pretrained' must be an existing file "
                        "or folder, or true for the hub's weights, or false for random initialisation)")
    return path


def weight_file(path: Path, what: str) -> Path:
    """``path`` itself, or the weight file inside the folder ``path``."""
    if path.is_file():
        return path
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    found = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_EXTENSIONS))
    if len(found) == 1:
        return found[0]
    raise UserError(f"{what}: cannot tell which weight file of {path} to load "
                    f"({'found ' + ', '.join(p.name for p in found) if found else 'none found'}; expected one of "
                    f"{', '.join(WEIGHT_FILES)}); point 'pretrained' at the file itself")


def offline_message(what: str, hub_name: str, example: str, random_init_ok: bool = True) -> str:
    why = "HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set" if offline_by_env() else "the hub cannot be reached"
    alt = " or use --hparams '{\"pretrained\": false}' for random initialisation" if random_init_ok else ""
    return (f"{what}: pretrained weights for '{hub_name}' come from the Hugging Face hub, but {why} and they are "
            f"not in the local cache ({hf_cache_dir()}); point at local weights with --hparams "
            f"'{{\"pretrained\": \"{example}\"}}'" + (f",{alt}" if alt else ""))
