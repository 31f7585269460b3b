import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# No test may touch the network; rendered datasets are cached once per machine for the suite.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HARNESS_CACHE", str(Path(tempfile.gettempdir()) / "harness-test-cache"))
# A shell starts a background command (`pytest &`) with SIGINT ignored, and an ignored signal stays ignored
# in every child: the tests that interrupt a run or a launcher with SIGINT would then see it finish instead.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# Under pytest-xdist (`-n`), each worker gets its share of the cores, it and the runs it starts, as the multi
# launcher does: oversubscribed OpenMP pools slow a run several-fold.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    from harness.launchers import thread_env, threads_per_worker

    for _name, _value in thread_env(threads_per_worker(int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))).items():
        os.environ.setdefault(_name, _value)

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


def require(reason: str | None, env: str) -> None:
    """Skip the test when ``reason`` (why a system dependency is missing) is set, or fail when ``env=1``.

    ``.ci/run`` installs every such dependency and sets the ``HARNESS_REQUIRE_*`` variables, so in CI a
    missing dependency is a failure, never a silent skip."""
    if reason is None:
        return
    if os.environ.get(env) == "1":
        pytest.fail(f"{env}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def require_real_fashion_mnist() -> None:
    """Skip (or, with HARNESS_REQUIRE_FMNIST=1, fail) unless the real Fashion-MNIST files are installed: the
    system copy (Debian's dataset-fashion-mnist) or HARNESS_FMNIST_DIRS."""
    from harness.datasets import rotated_fmnist
    from harness.errors import UserError

    try:
        rotated_fmnist.find_fmnist_dir(None)
        missing = None
    except UserError:
        missing = f"real Fashion-MNIST not installed in {rotated_fmnist.SYSTEM_DIRS[0]} (apt-get install dataset-fashion-mnist)"
    require(missing, "HARNESS_REQUIRE_FMNIST")


SLURM_PARTITION = "debug"


def slurm_unavailable_reason() -> str | None:
    """Why Slurm can't be used here (None if ``sinfo`` answers for the test partition)."""
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        return "Slurm not available: sinfo not found on PATH (start it with .ci/start-slurm.sh)"
    try:
        proc = subprocess.run([sinfo, "-h", "-p", SLURM_PARTITION, "-o", "%P %a %D %T"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"Slurm not available: sinfo did not answer: {exc!r}"
    if proc.returncode != 0:
        return f"Slurm not available: sinfo failed (rc={proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
    if not proc.stdout.strip():
        return f"Slurm not available: sinfo shows no partition {SLURM_PARTITION!r}"
    return None
