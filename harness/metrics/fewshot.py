"""Few-shot transfer: freeze the backbone, fit a head on K labelled examples per class, test on the rest.

Mean accuracy and 95% interval (1.96 * std / sqrt(episodes)) over seeded N-way K-shot episodes,
the protocol of Snell et al. (arXiv 1703.05175) and Lee et al. (arXiv 1904.03758).
"""

from __future__ import annotations

import math

import torch

from harness.datasets.tasks import ClassTaskSampler


@torch.no_grad()
def fewshot_accuracy(algorithm, env, n_way: int = 5, k_shot: int = 5, n_query: int = 15,
                     n_episodes: int = 600, seed: int = 0) -> dict[str, float]:
    """``fewshot_acc`` and ``fewshot_ci95`` of ``algorithm.adapt`` on episodes drawn from ``env``."""
    sampler = ClassTaskSampler([env], {"tasks_per_batch": 1, "n_way": n_way, "support": n_way * k_shot,
                                       "query": n_way * n_query}, seed)
    device = algorithm.device()
    accs = []
    for episode in range(n_episodes):
        task = sampler.sample(episode).to(device)
        predict = algorithm.adapt(task.support_x[0], task.support_y[0], task.n_classes)
        accs.append((predict(task.query_x[0]).argmax(1) == task.query_y[0]).float().mean().item())
    accs_t = torch.tensor(accs)
    ci = 1.96 * accs_t.std().item() / math.sqrt(len(accs)) if len(accs) > 1 else float("nan")
    return {"fewshot_acc": accs_t.mean().item(), "fewshot_ci95": ci}
