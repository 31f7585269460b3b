"""Benchmark: SparseShared inner solve + implicit backward vs a closed-form ridge head.

    python benchmarks/bench_inner.py [--repeats 7] [--quick] [--dtype float32] [--compile]
                                     [--alpha A] [--sparsity S] [--sharing_grad G] [--tol TOL]

Times (medians over repeats run alternately, after warm-up) one forward+backward of
  * sparse:  W, b = sparse_heads(Z, Y, ...); loss(W, b).backward()
  * ridge:   W = Z^T (Z Z^T + lam I)^{-1} Y_onehot (R2D2-style); loss(W).backward()
on the same inputs (cold start: every meta-batch has new tasks), and prints the median per-pair ratio. Options not
given are SparseShared's defaults (alpha, rho, sparsity, sharing_eps, mm_rounds, sharing_grad, and
inner_tol / inner_max_iter as tol / max_iter): what a training step solves. Rows: the
sharing term at beta 0.01 (the default) and 0.1, and beta = 0, at the main shape (T=16 tasks, n=50
support points, d=64 features, C=5 classes), the default at SyntheticLinear's shape (d=10, binary) and,
without ``--quick``, at d=2048.

Then the floor of any eager-PyTorch FISTA at the main shape: one iteration written with the fewest
tensor operations (scores, softmax residual, gradient, step, soft-threshold, momentum: 10 calls), and
how many such iterations fit in 3x a ridge head, against the iterations the solver needed;
``--compile`` also times that iteration compiled by ``torch.compile`` (10 iterations per call; the
first call compiles, tens of seconds on 2 cores, and needs a C++ compiler).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from harness.algorithms.sparse_shared.algorithm import SparseShared  # noqa: E402
from harness.algorithms.sparse_shared.implicit import sparse_heads  # noqa: E402
from bench_step import paired_times  # noqa: E402

# the algorithm's defaults: what a SparseShared training step solves
DEFAULTS = {k: SparseShared.HPARAMS[k].default for k in ("alpha", "rho", "sparsity", "sharing_eps", "mm_rounds",
                                                          "sharing_grad")}
DEFAULTS.update(tol=SparseShared.HPARAMS["inner_tol"].default, max_iter=SparseShared.HPARAMS["inner_max_iter"].default)


def make(T, n, d, C, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(T, n, d, generator=g, dtype=dtype)
    # a few informative directions so the heads are not pure noise
    Y = (torch.arange(n).repeat(T, 1) % C)
    mu = torch.randn(T, C, d, generator=g, dtype=dtype) * 0.5
    Z = Z + torch.gather(mu, 1, Y.unsqueeze(-1).expand(T, n, d))
    Z = Z / Z.norm(dim=-1, keepdim=True)
    return Z, Y


def ridge_step(Z, Y, C, lam=1.0):
    T, n, d = Z.shape
    Yo = F.one_hot(Y, C).to(Z.dtype)
    A = torch.bmm(Z, Z.transpose(1, 2)) + lam * torch.eye(n, dtype=Z.dtype)
    W = torch.bmm(Z.transpose(1, 2), torch.linalg.solve(A, Yo))
    (W * W).sum().backward()


def sparse_step(Z, Y, C, opts, out):
    W, b, info = sparse_heads(Z, Y, C, **opts)
    ((W * W).sum() + (b * b).sum()).backward()
    out.append(info)


def timeit(fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def minimal_fista_iteration(T, n, d, C, dtype, repeats, compile=False):
    """Seconds per FISTA iteration with the fewest tensor operations (no restart, stopping test or
    step control), median of ``repeats`` blocks of 100 iterations; with ``compile``, (seconds per
    iteration under ``torch.compile``, seconds the first call took)."""
    Z, Y = make(T, n, d, C, dtype)
    Zat = torch.cat([Z.transpose(1, 2), torch.ones(T, 1, n, dtype=dtype)], dim=1).contiguous()
    Yk = F.one_hot(Y, C).to(dtype).transpose(1, 2).contiguous()
    U = torch.zeros(T, d + 1, C, dtype=dtype)
    eta = torch.full((T, 1, 1), 0.5, dtype=dtype)
    thr = torch.full((T, d + 1, 1), 0.01, dtype=dtype)

    def iterations(U, X_old, k: int):
        for _ in range(k):
            R = torch.softmax(torch.bmm(U.transpose(1, 2), Zat), dim=1) - Yk
            V = torch.addcmul(U, eta, torch.bmm(Zat, R.transpose(1, 2)), value=-1.0)
            X = V - torch.clamp(V, min=-thr, max=thr)
            U, X_old = torch.add(X, X - X_old, alpha=0.5), X
        return U, X_old

    def block(fn):
        with torch.no_grad():
            for _ in range(10):
                fn(U, U, 10)

    if not compile:
        return timeit(lambda: block(iterations), repeats) / 100
    compiled = torch.compile(iterations)
    t0 = time.perf_counter()
    with torch.no_grad():
        compiled(U, U, 10)
    first = time.perf_counter() - t0
    return timeit(lambda: block(compiled), repeats) / 100, first


def bench(T, n, d, C, opts, dtype, repeats):
    """(ridge s, sparse s, ratio, forward-only s, info): ridge and sparse alternate (bench_step.paired_times),
    the ratio is the median of the per-pair ratios."""
    Z0, Y = make(T, n, d, C, dtype)

    def run_ridge():
        Z = Z0.clone().requires_grad_()
        ridge_step(Z, Y, C)

    infos = []

    def run_sparse():
        Z = Z0.clone().requires_grad_()
        sparse_step(Z, Y, C, opts, infos)

    ts, tr, ratio = paired_times(run_sparse, run_ridge, repeats)

    def run_fwd():
        with torch.no_grad():
            sparse_heads(Z0, Y, C, **opts)
    tf = timeit(run_fwd, max(3, repeats // 2), warmup=1)
    return tr, ts, ratio, tf, infos[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--quick", action="store_true", help="the main and SyntheticLinear shapes only (no d=2048)")
    ap.add_argument("--alpha", type=float, default=DEFAULTS["alpha"])
    ap.add_argument("--sparsity", default=DEFAULTS["sparsity"], choices=["l1", "group"])
    ap.add_argument("--sharing_grad", default=DEFAULTS["sharing_grad"], choices=["last_solve", "full"])
    ap.add_argument("--tol", type=float, default=DEFAULTS["tol"])
    ap.add_argument("--compile", action="store_true", help="also time the floor's iteration under torch.compile")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    base = dict(DEFAULTS, alpha=args.alpha, sparsity=args.sparsity, sharing_grad=args.sharing_grad, tol=args.tol)
    n = 50
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, dtype {args.dtype}, "
          f"alpha {args.alpha}, {args.sparsity}, sharing_grad {args.sharing_grad}, n_support {n}, medians of "
          f"{args.repeats} alternating runs (ratio: the median of the per-pair ratios)")
    hdr = (f"{'config':<44}{'ridge ms':>10}{'sparse ms':>11}{'(fwd ms)':>10}{'ratio':>8}{'iters':>7}{'newton':>8}"
           f"{'zero%':>7}{'mm':>4}")
    print(hdr)
    print("-" * len(hdr))

    def row(name, T, d, C, **over):
        opts = dict(base, **over)
        tr, ts, ratio, tf, info = bench(T, n, d, C, opts, dtype, args.repeats)
        print(f"{name:<44}{tr * 1e3:>10.2f}{ts * 1e3:>11.2f}{tf * 1e3:>10.2f}{ratio:>8.1f}"
              f"{info['iters']:>7d}{info['newton_steps']:>8d}{100 * info['frac_zero']:>7.1f}{info['mm_rounds']:>4d}",
              flush=True)
        return tr

    betas = ((0.01, " (default)"), (0.1, ""), (0.0, ""))
    ridge = [row(f"MAIN T=16 d=64 C=5 beta {beta:g}{tag}", 16, 64, 5, beta=beta) for beta, tag in betas]
    row("SyntheticLinear T=16 d=10 C=2 beta 0.01", 16, 10, 2, beta=0.01)
    t_it = minimal_fista_iteration(16, n, 64, 5, dtype, args.repeats)
    tr = statistics.median(ridge)
    print(f"floor: one FISTA iteration in 10 tensor operations {t_it * 1e6:.1f} us; 3x the ridge head "
          f"({3 * tr * 1e3:.2f} ms) holds {3 * tr / t_it:.0f} of them and nothing else (no backward)", flush=True)
    if args.compile:
        t_c, first = minimal_fista_iteration(16, n, 64, 5, dtype, args.repeats, compile=True)
        print(f"floor under torch.compile: {t_c * 1e6:.1f} us per iteration (first call, compiling: {first:.1f} s); "
              f"3x the ridge head holds {3 * tr / t_c:.0f}", flush=True)
    if args.quick:
        return
    for beta, tag in betas:
        row(f"T=16 d=2048 C=5 beta {beta:g}{tag}", 16, 2048, 5, beta=beta)

if __name__ == "__main__":
    main()
