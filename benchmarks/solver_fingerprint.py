"""Fingerprints of the SparseShared inner solve and its implicit backward, to check that a refactor leaves
the numbers bit for bit as they were:

    python benchmarks/solver_fingerprint.py > a.txt    # on one commit
    python benchmarks/solver_fingerprint.py > b.txt    # on another
    diff a.txt b.txt                                   # no output: identical

One line per case: bench_inner's inputs at its shapes (SyntheticLinear's d=10 binary, d=64 binary and
5-way), float32 and float64, l1 and group sparsity, beta 0, 0.01 and 0.1, both ``sharing_grad``; then the
SHA-256 of the heads, intercepts and ``grad_Z`` (their bytes), the solver's iteration counts and the first
digits of the heads' sum (to read which differ). Options are the algorithm's defaults otherwise.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench_inner import DEFAULTS, make  # noqa: E402
from harness.algorithms.sparse_shared.implicit import sparse_heads  # noqa: E402

SHAPES = [(16, 50, 10, 2), (16, 50, 64, 2), (16, 50, 64, 5)]


def fingerprint(T: int, n: int, d: int, C: int, dtype, **options) -> str:
    Z, Y = make(T, n, d, C, dtype)
    Z.requires_grad_(True)
    W, b, info = sparse_heads(Z, Y, C, **{**DEFAULTS, **options})
    g = torch.Generator().manual_seed(1)
    loss = (W * torch.randn(W.shape, generator=g, dtype=dtype)).sum() + (b * torch.randn(b.shape, generator=g,
                                                                                          dtype=dtype)).sum()
    loss.backward()
    digest = hashlib.sha256()
    for t in (W.detach(), b.detach(), Z.grad):
        digest.update(t.contiguous().numpy().tobytes())
    counts = f"iters {info['iters']} newton {info['newton_steps']} mm {info['mm_rounds']}"
    return f"{digest.hexdigest()[:16]} {counts} sum {float(W.detach().sum()):.6g}"


def main() -> None:
    torch.set_num_threads(1)
    cases = itertools.product(SHAPES, (torch.float32, torch.float64), ("l1", "group"), (0.0, 0.01, 0.1),
                              ("last_solve", "full"))
    for (T, n, d, C), dtype, sparsity, beta, grad in cases:
        if beta == 0 and grad == "full":
            continue  # the same as last_solve
        name = f"T={T} n={n} d={d} C={C} {str(dtype)[6:]} {sparsity} beta={beta} {grad}"
        print(name, fingerprint(T, n, d, C, dtype, sparsity=sparsity, beta=beta, sharing_grad=grad), flush=True)


if __name__ == "__main__":
    main()
