"""Benchmark: one SparseShared training step vs one ERM step, same backbone, same number of images.

    python benchmarks/bench_step.py [--repeats 7] [--device cpu|cuda] [--precision fp32|bf16] [--timm resnet18]
                                    [--only MLP]

SparseShared's batch is T tasks x (support + query) images; ERM's is one minibatch of the same
number of images (split over as many environments). Prints the median time of ``update`` for
both and the median ratio of alternating runs, per backbone and episode shape; the issue's goal
is a ratio of at most 1.5. ``--precision bf16`` gives both algorithms the hparam ``"precision": "bf16"``
(their backbones under bfloat16 autocast); ``--timm NAME`` adds a row with that timm backbone
(random init) on 3x64x64 images, for GPUs (the first GPU check:
``--device cuda --precision bf16 --timm resnet18``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from harness.datasets.tasks import TaskBatch  # noqa: E402
from harness.hparams import resolve  # noqa: E402
from harness.registry import ALGORITHMS  # noqa: E402


def paired_times(fn_a, fn_b, repeats: int, warmup: int = 2, device: str = "cpu") -> tuple[float, float, float]:
    """Median times of ``fn_a`` and ``fn_b`` run alternately, and the median of the per-pair ratios a/b.

    Alternating keeps a shared machine's changing load from landing on one side of the ratio."""
    def timed(fn) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(warmup):
        fn_a(), fn_b()
    pairs = [(timed(fn_a), timed(fn_b)) for _ in range(repeats)]
    return (statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs),
            statistics.median(a / b for a, b in pairs))


def bench(dataset: str, input_shape, n_classes: int, T: int, S: int, Q: int, d: int, device: str, repeats: int,
          precision: str, common: dict) -> tuple[float, float, float, dict]:
    """``common``: hparams both algorithms get (the backbone)."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # the same initial backbones in every run: the inner iterations depend on them
    n = T * (S + Q)
    x = torch.randn(T, S + Q, *input_shape, generator=g).to(device)
    y = torch.randint(0, n_classes, (T, S + Q), generator=g).to(device)
    tasks = TaskBatch(x[:, :S], y[:, :S], x[:, S:], y[:, S:], n_classes)
    common = {"feature_dim": d, "precision": precision, **common}
    hp = resolve("SparseShared", dataset, 0, {"tasks_per_batch": T, "support": S, "query": Q, **common})
    sparse = ALGORITHMS.get("SparseShared")(input_shape, n_classes, 3, hp).to(device)
    erm = ALGORITHMS.get("ERM")(input_shape, n_classes, 3, resolve("ERM", dataset, 0, common)).to(device)
    xs, ys = x.flatten(0, 1), y.flatten(0, 1)
    minibatches = [(xs[i::3], ys[i::3]) for i in range(3)]  # n images over 3 environments
    logs = {}
    assert n == sum(len(b[0]) for b in minibatches)
    return (*paired_times(lambda: logs.update(sparse.update(tasks)), lambda: erm.update(minibatches), repeats,
                          device=device), logs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--timm", metavar="NAME", help="add a row with this timm backbone (random init), e.g. resnet18")
    ap.add_argument("--only", metavar="TEXT", default="", help="run only the rows whose name contains TEXT, e.g. MLP")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, device {args.device}, precision {args.precision}, "
          f"threads {torch.get_num_threads()}, median of {args.repeats}")
    header = (f"{'backbone / episode':<46}{'images':>7}{'ERM ms':>9}{'Sparse ms':>11}{'ratio':>7}{'iters':>7}"
              f"{'newton':>8}")
    print(header + "\n" + "-" * len(header))
    configs = [
        ("MLP d=10, binary, T=16 S=Q=50", "SyntheticLinear", (10,), 2, 16, 50, 50, 10, {}),
        ("MLP d=64, binary, T=16 S=Q=50", "SyntheticLinear", (10,), 2, 16, 50, 50, 64, {}),
        ("SmallCNN 1x28x28 d=128, 5-way, T=16 S=Q=50", "RotatedFashionMNIST", (1, 28, 28), 5, 16, 50, 50, 128, {}),
        ("SmallCNN 1x28x28 d=128, 5-way, T=4 S=Q=50", "RotatedFashionMNIST", (1, 28, 28), 5, 4, 50, 50, 128, {}),
        ("SmallCNN 3x64x64 d=32, binary, T=16 S=Q=50", "Sprites", (3, 64, 64), 2, 16, 50, 50, 32, {}),
    ]
    if args.timm:  # MiniImageNet's space has the "pretrained" hparam; features keep the model's own width
        configs.append((f"{args.timm} 3x64x64, 5-way, T=16 S=Q=50", "MiniImageNet", (3, 64, 64), 5, 16, 50, 50, 64,
                        {"backbone": args.timm, "pretrained": False}))
    for name, dataset, shape, C, T, S, Q, d, common in (c for c in configs if args.only in c[0]):
        ts, te, ratio, logs = bench(dataset, shape, C, T, S, Q, d, args.device, args.repeats, args.precision, common)
        print(f"{name:<46}{T * (S + Q):>7}{te * 1e3:>9.1f}{ts * 1e3:>11.1f}{ratio:>7.2f}{logs['inner_iters']:>7.0f}"
              f"{logs['inner_newton_steps']:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
