"""What code made a record: the harness version, its git commit, torch's version and the device.

Every checkpoint record carries these (harness/loop.py) so that ``harness.collect_results`` can tell
copies of a run made by different code apart. Never fails: what cannot be known is ``"unknown"``.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parents[1]  # the directory that holds the harness package


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """``git rev-parse HEAD`` of the checkout the harness runs from (once per process); ``"unknown"`` when git
    is absent or the package is not in a checkout of its own (e.g. installed into site-packages)."""
    try:
        top = subprocess.run(["git", "-C", str(SOURCE), "rev-parse", "--show-toplevel", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        lines = top.stdout.split()
        if top.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != SOURCE:
            return "unknown"
        return lines[1]
    except Exception:  # no git, a timeout, an unreadable folder: provenance must never stop a run
        return "unknown"


def provenance(device: Any = None) -> dict[str, str]:
    """``{"version", "commit", "torch", "device"}`` of this process (``device``: a torch.device or its name)."""
    import harness

    try:
        import torch

        torch_version = str(torch.__version__)
        name = str(device) if device is not None else "unknown"
        if name.startswith("cuda") and torch.cuda.is_available():
            name = f"{name} ({torch.cuda.get_device_name(torch.device(name))})"
    except Exception:
        torch_version, name = "unknown", str(device) if device is not None else "unknown"
    return {"version": getattr(harness, "__version__", "unknown"), "commit": git_commit(),
            "torch": torch_version, "device": name}
