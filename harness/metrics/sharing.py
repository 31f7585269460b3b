"""How much a batch of sparse task heads shares features (Fumero et al., arXiv 2304.07939, Sec. 2.1).

The paper measures sharing by the entropy of the distribution of feature importances across tasks;
the statistics here add count-based views of the same usage matrix, each in [0, 1].
"""

from __future__ import annotations

import math

import torch


def entropy(weights: torch.Tensor) -> float:
    """H(q) in nats of q = weights / sum(weights), for d non-negative weights; log d, the uniform
    distribution's, when they sum to zero (no feature used: nothing shared)."""
    w = weights.detach().double()
    total = float(w.sum())
    if total <= 0:
        return math.log(w.numel())
    q = w[w > 0] / total
    return float(-(q * q.log()).sum())


def _normalised_sharing(weights: torch.Tensor) -> float:
    """1 - H(q) / log d for q = weights / sum(weights): 1 when one feature takes everything, 0 when
    uniform, nan when the weights sum to zero."""
    if float(weights.sum()) <= 0:
        return float("nan")
    return 1.0 - entropy(weights) / math.log(weights.numel())


def sharing_stats(importance: torch.Tensor, rel_threshold: float = 1e-3) -> dict[str, float]:
    """Sharing statistics of a (T tasks, d features) matrix of non-negative importances (row norms of
    the heads). A task uses feature j when its importance exceeds ``rel_threshold`` times the
    largest importance in the matrix, so tiny weights left by the solver do not count as use.

    - ``sharing``: 1 - H(p)/log d of the importance distribution p_j = A_j / sum A over used entries;
    - ``sharing_counts``: the same for the number of tasks using each feature;
    - ``mean_reuse``: the mean, over used features, of the fraction of tasks that use it;
    - ``features_used``: features used by at least one task;
    - ``features_per_task``: mean number of features a task uses.
    """
    imp = importance.detach().double()
    T = imp.shape[0]
    used = imp > rel_threshold * float(imp.max()) if float(imp.max()) > 0 else torch.zeros_like(imp, dtype=torch.bool)
    counts = used.sum(dim=0).double()
    n_used = int((counts > 0).sum())
    return {"sharing": _normalised_sharing((imp * used).sum(dim=0)),
            "sharing_counts": _normalised_sharing(counts),
            "mean_reuse": float(counts[counts > 0].mean()) / T if n_used else float("nan"),
            "features_used": n_used,
            "features_per_task": float(used.sum(dim=1).double().mean())}
