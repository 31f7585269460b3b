"""Wall time of the instant commands (goal: < 1.5 s each): python benchmarks/bench_cli.py"""

import statistics
import subprocess
import sys
import time

COMMANDS = [["harness.sweep", "--help"], ["harness.list"], ["harness.train", "--help"],
            ["harness.collect_results", "--help"]]


def main(repeats: int = 5) -> None:
    for cmd in COMMANDS:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", *cmd], check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        print(f"python -m {' '.join(cmd):32s} median {statistics.median(times):.3f} s  (max {max(times):.3f} s)")


if __name__ == "__main__":
    main()
