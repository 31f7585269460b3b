import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# No test may touch the network; rendered datasets are cached once per machine for the suite.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HARNESS_CACHE", str(Path(tempfile.gettempdir()) / "harness-test-cache"))

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, check: bool = True, env: dict | None = None, timeout: float = 600,
            cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m <args>`` as a real subprocess and capture its output."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=cwd or ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture
def cli():
    return run_cli
