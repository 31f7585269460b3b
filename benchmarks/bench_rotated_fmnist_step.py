"""Benchmark: seconds per training step of each algorithm on RotatedFashionMNIST-shaped batches.

    OMP_NUM_THREADS=1 python benchmarks/bench_rotated_fmnist_step.py [--algorithms ERM SparseShared ...]
        [--hparams '{"batch_size": 16}'] [--steps 3]

Random 1x28x28 inputs (the step's cost does not depend on pixel values), 5 training environments
(one held out), hparams as ``harness.train`` resolves them for RotatedFashionMNIST plus ``--hparams``.
Prints the median time of ``update`` after one warm-up step; used to size sweeps/rotated_fmnist.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from harness.datasets.tasks import TaskBatch  # noqa: E402
from harness.hparams import resolve, space  # noqa: E402
from harness.registry import ALGORITHMS  # noqa: E402

SHAPE, N_CLASSES, N_ENVS = (1, 28, 28), 10, 5


def batch_for(algorithm, hp: dict):
    if algorithm.EPISODIC:
        t, n = hp["tasks_per_batch"], hp["n_way"]
        k, q = max(1, hp["support"] // n), max(1, hp["query"] // n)
        sy = torch.arange(n).repeat_interleave(k).repeat(t, 1)
        qy = torch.arange(n).repeat_interleave(q).repeat(t, 1)
        return TaskBatch(torch.rand(t, n * k, *SHAPE), sy, torch.rand(t, n * q, *SHAPE), qy, n)
    b = hp["batch_size"]
    return [(torch.rand(b, *SHAPE), torch.randint(N_CLASSES, (b,))) for _ in range(N_ENVS)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--algorithms", nargs="+", default=["ERM", "CORAL", "IRM", "ProtoNet", "MultiTask", "SparseShared"])
    p.add_argument("--hparams", default=None)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    print(f"threads {torch.get_num_threads()} | overrides {args.hparams}")
    for name in args.algorithms:
        valid = space(name, "RotatedFashionMNIST")  # overrides an algorithm does not have are skipped
        overrides = {k: v for k, v in json.loads(args.hparams or "{}").items() if k in valid}
        hp = resolve(name, "RotatedFashionMNIST", 0, json.dumps(overrides))
        torch.manual_seed(0)
        algo = ALGORITHMS.get(name)(SHAPE, N_CLASSES, N_ENVS, hp)
        batch = batch_for(algo, hp)
        algo.update(batch)  # warm-up
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            algo.update(batch)
            times.append(time.perf_counter() - t0)
        imgs = (batch.support_x.shape[0] * (batch.support_x.shape[1] + batch.query_x.shape[1])
                if algo.EPISODIC else sum(len(x) for x, _ in batch))
        print(f"{name:13s} {statistics.median(times):7.3f} s/step  ({imgs} images/step, backbone {hp['backbone']})",
              flush=True)


if __name__ == "__main__":
    main()
