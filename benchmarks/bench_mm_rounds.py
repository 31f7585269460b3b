"""Benchmark: how far majorise-minimise gets within its cap of linearisations (hparam ``mm_rounds``).

    python benchmarks/bench_mm_rounds.py [--betas 0.01 0.1] [--caps 1 2 3 5 10 20 50]

On bench_inner.py's main shape (T=16, n=50, d=64, 5-way, float64) at SparseShared's defaults, solves
with each cap and prints the full objective (cross-entropy, ridge, sparsity and beta lam_bar Phi, as in
docs/design.md, section 9), the entropy of the feature-importance shares, the linearisations used and
the Newton steps. Where the weights settle before the cap, larger caps print the same row.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench_inner import DEFAULTS, make  # noqa: E402
from harness.algorithms.sparse_shared import solver  # noqa: E402
from harness.algorithms.sparse_shared.problem import InnerProblem, row_importance  # noqa: E402
from harness.metrics.sharing import entropy  # noqa: E402


def full_objective(problem: InnerProblem, U: torch.Tensor) -> tuple[float, float]:
    """(the full objective summed over tasks, the entropy of the importance shares A_j / S).

    Phi(A) = St H(At / St) with At = A + delta S / d, St = (1 + delta) S (docs/design.md, section 9)."""
    A = row_importance(U[:, :-1], problem.sparsity)
    smooth = problem.objective(U, torch.zeros_like(problem.alpha_t)).sum()
    Aj = A.sum(0)
    S, delta = Aj.sum(), problem.delta
    phi = (1 + delta) * S * entropy(Aj + delta * S / Aj.shape[0])
    return float(smooth + (problem.alpha_t[:, :-1, 0] * A).sum() + problem.sharing * phi), entropy(Aj)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--betas", type=float, nargs="+", default=[0.01, 0.1])
    ap.add_argument("--caps", type=int, nargs="+", default=[1, 2, 3, 5, 10, 20, 50])
    args = ap.parse_args()
    Z, Y = make(16, 50, 64, 5, torch.float64)
    opts = {"max_iter": DEFAULTS["max_iter"], "tol": DEFAULTS["tol"]}
    print(f"{'beta':>6}{'cap':>5}{'full objective':>16}{'entropy':>9}{'used':>6}{'newton':>8}")
    for beta in args.betas:
        problem = InnerProblem.build(Z, Y, 5, DEFAULTS["alpha"], beta, DEFAULTS["rho"], DEFAULTS["sparsity"],
                                     DEFAULTS["sharing_eps"])
        for cap in args.caps:
            U, info = solver.solve(problem, mm_rounds=cap, **opts)
            f, h = full_objective(problem, U)
            print(f"{beta:>6g}{cap:>5d}{f:>16.6f}{h:>9.4f}{info['mm_rounds']:>6d}{info['newton_steps']:>8d}")


if __name__ == "__main__":
    main()
