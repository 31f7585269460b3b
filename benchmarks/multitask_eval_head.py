"""Does MultiTask's evaluation head converge on a finished run's features? (docs/real_images.md)

    python benchmarks/multitask_eval_head.py RUN_DIR [--lr 0.5 0.05]

MultiTask (harness/algorithms/multitask.py) reads the dataset's label through ``adapt``: a linear head from
zero, ``4 * head_steps`` plain gradient steps (of size ``head_lr`` before commit 9d386c8) on the frozen
features of the trainer's ``eval_n_fit`` training-domain points (``harness.evaluation.eval_predictor``'s
draw). Gradient descent on a logistic loss is stable only for step sizes below 2 / L, with L up to 1/4 of the
largest eigenvalue of the features' covariance for a binary head; this prints that eigenvalue, and the loss
and accuracy on those points after each step, for each ``--lr``. By default: the run's ``head_lr`` (what the
evaluation head took before it was bounded) and ``min(head_lr, multitask.stable_step)``, what it takes now.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from harness.algorithms.episodic import eval_mode, head_logits  # noqa: E402
from harness.algorithms.multitask import stable_step  # noqa: E402
from harness.checkpoints import finished_run, rebuild  # noqa: E402
from harness.datasets.tasks import ConcatEnv  # noqa: E402
from harness.errors import cli  # noqa: E402
from harness.hparams import episodic  # noqa: E402
from harness.loop import run_splits  # noqa: E402
from harness.utils import generator  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--lr", type=float, nargs="*",
                   help="step sizes (default: the run's head_lr and the evaluation head's bounded step)")
    a = p.parse_args()
    run = finished_run(a.run)
    if run.last["args"]["algorithm"] != "MultiTask":
        p.error(f"{a.run} is a {run.last['args']['algorithm']} run, not MultiTask")
    args = argparse.Namespace(**run.last["args"])
    algorithm, dataset = rebuild(run, os.environ.get("HARNESS_DATA", "data"))
    _, train_envs, _ = run_splits(dataset, args)
    pool = ConcatEnv(train_envs)
    n_fit = episodic(run.hparams, "eval_n_fit")
    x, y = pool.batch(torch.randperm(len(pool), generator=generator(args.seed, "adapt"))[: n_fit or len(pool)])
    with torch.no_grad(), eval_mode(algorithm):
        z = algorithm.features(x)
    top = torch.linalg.eigvalsh(torch.cov(z.T))[-3:].tolist()
    print(f"{a.run.name}: step {run.last['step']}, {len(y)} points, feature dim {z.shape[1]}, "
          f"largest covariance eigenvalues {', '.join(f'{e:.3g}' for e in reversed(top))}")
    n_classes = int(y.max()) + 1
    head_lr, steps = run.hparams["head_lr"], 4 * run.hparams["head_steps"]
    bounded = min(head_lr, stable_step(z[None], n_classes).item())
    for lr in a.lr or [head_lr, bounded]:
        trace = []
        for k in range(1, steps + 1):  # the head after k of MultiTask's steps (adapting: not differentiable)
            W, b = algorithm.fit_heads(z[None], y[None], n_classes, k, False, lr)
            logits = head_logits(z, W[0], b[0])
            trace.append((F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()))
        print(f"lr {lr:g}, {steps} steps: (loss, accuracy) after steps 1-6 "
              + " ".join(f"({l:.2f}, {c:.3f})" for l, c in trace[:6])
              + " ... last 4 " + " ".join(f"({l:.2f}, {c:.3f})" for l, c in trace[-4:]))


if __name__ == "__main__":
    cli(main)()
