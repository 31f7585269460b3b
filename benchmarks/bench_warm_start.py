"""Benchmark: would a training task's solve gain from the last head fitted for the same factor subset?

    python benchmarks/bench_warm_start.py --run RUN_DIR [--steps 60] [--seed 123]

RUN_DIR is a finished SparseShared run on SyntheticLinear (e.g. one of ``identifiability.py``'s).
Its frozen backbone embeds the training task batches the run's sampler draws (each task: a subset of
1-3 of the 10 factors, a new direction on it, new points). Each batch is solved cold, as training
does (FISTA from W = 0, then Newton); from step 20, batches where at least 8 tasks have a subset seen
before are also solved warm: those tasks start from the last head of their subset and the solve goes
straight to the Newton finish (FISTA only if that does not converge). Prints the median times and
iteration counts of both and how far the warm heads end from the cold ones.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from harness.algorithms.sparse_shared import solver  # noqa: E402
from harness.algorithms.sparse_shared.problem import InnerProblem  # noqa: E402
from harness.datasets.tasks import FactorTaskSampler  # noqa: E402
from harness.registry import DATASETS  # noqa: E402
from harness.transfer import finished_run, frozen_algorithm  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a finished SparseShared run on SyntheticLinear")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seed", type=int, default=123, help="the task sampler's seed")
    args = ap.parse_args()
    torch.set_num_threads(1)
    alg, _ = frozen_algorithm(finished_run(args.run), None)
    h = alg.hparams
    dataset = DATASETS.get("SyntheticLinear")(None, [], h)
    sampler = FactorTaskSampler([dataset[i] for i in range(len(dataset))], h, seed=args.seed)
    drawn = []  # the factor subsets of the batch being sampled
    draw = sampler._subset

    def recorded(g: torch.Generator) -> torch.Tensor:
        subset = draw(g)
        drawn.append(tuple(sorted(subset.tolist())))
        return subset

    sampler._subset = recorded
    opts = dict(max_iter=h["inner_max_iter"], tol=h["inner_tol"], mm_rounds=h["mm_rounds"])
    last, rows, warm_tasks = {}, [], 0
    for step in range(args.steps):
        drawn.clear()
        tasks = sampler.sample(step)
        T, S = tasks.support_y.shape
        with torch.no_grad():
            zs = alg.features(tasks.support_x.flatten(0, 1)).view(T, S, -1)
        problem = InnerProblem.build(zs, tasks.support_y, 2, h["alpha"], h["beta"], h["rho"], h["sparsity"],
                                     h["sharing_eps"])
        t0 = time.perf_counter()
        U, info = solver.solve(problem, **opts)
        cold = time.perf_counter() - t0
        seen = [t for t, s in enumerate(drawn) if s in last]
        if step >= 20 and len(seen) >= 8:
            warm_tasks += len(seen)
            t0 = time.perf_counter()
            Uw = problem.initial_heads()
            for t in seen:
                Uw[t] = last[drawn[t]]
            penalty, L = solver.Penalty(problem, opts["mm_rounds"]), problem.lipschitz()
            Uw, kkt, newton = solver.newton_finish(problem, Uw, penalty, opts["tol"], 1.0 / L.view(-1, 1, 1))
            iters = 0
            if not (kkt <= opts["tol"] and penalty.settled):
                Uw, iters, kkt, more = solver.minimize(problem, Uw, penalty, L, opts["max_iter"], opts["tol"])
                newton += more
            warm = time.perf_counter() - t0
            rows.append((cold, info["iters"], info["newton_steps"], warm, iters, newton,
                         float((Uw[:, :-1] - U[:, :-1]).abs().max())))
        for t, s in enumerate(drawn):
            last[s] = U[t].clone()
    if not rows:
        sys.exit("no batch had 8 tasks with a subset seen before; raise --steps")
    med = [statistics.median(r[i] for r in rows) for i in range(7)]
    print(f"{len(rows)} batches, {warm_tasks} warm-started tasks")
    print(f"cold: {med[0] * 1e3:.2f} ms, {med[1]:.0f} FISTA iterations + {med[2]:.0f} Newton steps (medians)")
    print(f"warm: {med[3] * 1e3:.2f} ms, {med[4]:.0f} FISTA iterations + {med[5]:.0f} Newton steps (medians)")
    print(f"max |W_warm - W_cold| per batch: median {med[6]:.1e}, largest {max(r[6] for r in rows):.1e} "
          f"(both stop at inner_tol {opts['tol']:g})")


if __name__ == "__main__":
    main()
