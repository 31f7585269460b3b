"""Sweep wall time with ``multi --workers 2`` vs ``local`` for 2 CPU-bound jobs (goal: ratio <= 0.6).

    python benchmarks/bench_launchers.py [--steps 300]

Both sweeps run the same two jobs (ERM on SyntheticLinear, two hparam draws) in fresh
directories, one after the other, in this one invocation; the ratio is printed.
"""

import argparse
import subprocess
import sys
import tempfile
import time


def sweep_seconds(launcher: str, steps: int, root: str) -> float:
    cmd = [sys.executable, "-m", "harness.sweep", "launch", "--datasets", "SyntheticLinear", "--algorithms", "ERM",
           "--n_hparams", "2", "--steps", str(steps), "--checkpoint_freq", str(steps), "--dci_freq", "1000",
           "--hparams", '{"n_per_env": 2000, "mlp_width": 512}', "--launcher", launcher, "--workers", "2",
           "--output_dir", f"{root}/{launcher}", "--skip_confirmation"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as root:
        local = sweep_seconds("local", args.steps, root)
        multi = sweep_seconds("multi", args.steps, root)
    print(f"local {local:.1f} s | multi --workers 2 {multi:.1f} s | ratio multi/local {multi / local:.2f}")


if __name__ == "__main__":
    main()
