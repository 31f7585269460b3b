"""Transfer to new tasks: freeze the backbone, fit a head on a task's support set, test on its query set.

Mean accuracy and 95% interval (1.96 * std / sqrt(episodes)) over seeded episodes, the
protocol of Snell et al. (arXiv 1703.05175) and Lee et al. (arXiv 1904.03758) for N-way
K-shot classes; for binary tasks on ground-truth factors, in- and out-of-distribution (held-out
factor combinations), it is this harness's protocol, in the spirit of Fumero et al.'s synthetic
experiments (arXiv 2304.07939, Sec. 4.1).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from harness.datasets.tasks import ClassTaskSampler

FACTOR_TASK_EPISODES = 100  # per split; enough for a ~+-2% interval at ~0.8 accuracy


@torch.no_grad()
def episode_accuracy(algorithm, sample, n_episodes: int, prefix: str) -> dict[str, float]:
    """``{prefix}_acc`` and ``{prefix}_ci95`` of ``algorithm.adapt`` over episodes ``sample(i)`` (one task each)."""
    device = algorithm.device()
    accs = []
    for episode in range(n_episodes):
        task = sample(episode).to(device)
        predict = algorithm.adapt(task.support_x[0], task.support_y[0], task.n_classes)
        accs.append((predict(task.query_x[0]).argmax(1) == task.query_y[0]).float().mean().item())
    accs_t = torch.tensor(accs)
    ci = 1.96 * accs_t.std().item() / math.sqrt(len(accs)) if len(accs) > 1 else float("nan")
    return {f"{prefix}_acc": accs_t.mean().item(), f"{prefix}_ci95": ci}


def fewshot_accuracy(algorithm, env, n_way: int = 5, k_shot: int = 5, n_query: int = 15,
                     n_episodes: int = 600, seed: int = 0) -> dict[str, float]:
    """``fewshot_acc`` and ``fewshot_ci95``: N-way K-shot episodes drawn from ``env``."""
    sampler = ClassTaskSampler([env], {"tasks_per_batch": 1, "n_way": n_way, "support": n_way * k_shot,
                                       "query": n_way * n_query}, seed)
    return episode_accuracy(algorithm, sampler.sample, n_episodes, "fewshot")


def factor_task_accuracy(algorithm, dataset, envs: Sequence, hparams: dict, seed: int = 0,
                         n_episodes: int = FACTOR_TASK_EPISODES) -> dict[str, float]:
    """``task_acc``/``task_ci95`` (training factor combinations) and ``ood_task_acc``/``ood_task_ci95``
    (held-out combinations) of binary factor tasks drawn from ``envs`` (held-out images)."""
    from harness.hparams import episodic

    settings = {**hparams, "tasks_per_batch": 1, **{k: episodic(hparams, k) for k in ("support", "query", "max_factors")}}
    out = {}
    for split, prefix in (("train", "task"), ("ood", "ood_task")):
        try:
            sampler = dataset.task_sampler(envs, settings, seed, split)
        except ValueError:  # no held-out combinations (ood_task_fraction 0)
            continue
        out.update(episode_accuracy(algorithm, sampler.sample, n_episodes, prefix))
    return out
