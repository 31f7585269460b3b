"""Task samplers: turn a multi-environment dataset into episodes for meta-learners.

A task is ``(support_x, support_y, query_x, query_y)`` with labels relabelled 0..C-1; a
``TaskBatch`` stacks T tasks of equal shape. Every sampler is a pure function of
``(seed, step)``, so a resumed run draws exactly the episodes an uninterrupted run draws.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import torch

from harness.datasets.envs import EnvDataset
from harness.errors import UserError
from harness.hparams import episodic
from harness.utils import generator


@dataclass
class TaskBatch:
    support_x: torch.Tensor  # (T, S, *input_shape)
    support_y: torch.Tensor  # (T, S)
    query_x: torch.Tensor  # (T, Q, *input_shape)
    query_y: torch.Tensor  # (T, Q)
    n_classes: int

    def to(self, device) -> "TaskBatch":
        return TaskBatch(self.support_x.to(device), self.support_y.to(device), self.query_x.to(device),
                         self.query_y.to(device), self.n_classes)


class ConcatEnv(EnvDataset):
    """Several environments seen as one (metadata concatenated); ``batch`` gathers per environment."""

    def __init__(self, envs: Sequence[EnvDataset]):
        self.envs = list(envs)
        sizes = torch.tensor([len(e) for e in self.envs])
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
        self.factors = (torch.cat([e.factors.float() for e in self.envs])
                        if all(e.factors is not None for e in self.envs) else None)
        self.groups = torch.cat([e.groups for e in self.envs]) if all(e.groups is not None for e in self.envs) else None
        self.factor_names = self.envs[0].factor_names

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int):
        e = int(torch.searchsorted(self.offsets, torch.tensor(i), right=True)) - 1
        return self.envs[e][i - int(self.offsets[e])]

    def batch(self, indices: torch.Tensor):
        env_of = torch.searchsorted(self.offsets, indices, right=True) - 1
        x_out = y_out = None
        for e in env_of.unique().tolist():
            pos = (env_of == e).nonzero().flatten()
            x, y = self.envs[e].batch(indices[pos] - self.offsets[e])
            if x_out is None:
                x_out = x.new_empty((len(indices),) + tuple(x.shape[1:]))
                y_out = y.new_empty(len(indices))
            x_out[pos], y_out[pos] = x, y
        return x_out, y_out

    @property
    def labels(self) -> torch.Tensor:
        return torch.cat([e.labels for e in self.envs])


TASK_SPLITS = ("train", "ood", "all")


def heldout_combinations(n_factors: int, max_factors: int, fraction: float, seed: int) -> set[tuple[int, ...]]:
    """Factor subsets reserved for out-of-distribution tasks: a seeded ``fraction`` of the subsets
    of 2..``max_factors`` factors (at least one when ``fraction > 0``). Single factors are never
    held out, so training still sees every factor; what is new at test time is the combination."""
    combos = [c for k in range(2, max_factors + 1) for c in itertools.combinations(range(n_factors), k)]
    if fraction <= 0 or not combos:
        return set()
    order = torch.randperm(len(combos), generator=generator(seed, "heldout_combinations")).tolist()
    return {combos[i] for i in order[: max(1, round(fraction * len(combos)))]}


class FactorTaskSampler:
    """Binary linear-threshold tasks on random subsets of 1..``max_factors`` ground-truth factors.

    Each task draws a subset S of factors, a direction w on S, and labels a point by whether
    ``w . z_S`` exceeds its median over the task's points (so classes are balanced): this
    harness's protocol for the sparse factor tasks of Fumero et al. (arXiv 2304.07939, Sec. 2).

    Factors are equally likely, or Zipf-distributed with hparam ``factor_skew`` > 0 (the tasks then reuse
    a few factors often: the regime where sharing features across tasks should matter most).

    ``split``: ``train`` draws only subsets outside :func:`heldout_combinations` (hparam
    ``ood_task_fraction``; the held-out set depends on ``data_seed`` only, so every algorithm
    and trial holds out the same combinations), ``ood`` only held-out ones, ``all`` any.
    """

    def __init__(self, envs: Sequence[EnvDataset], hparams: dict, seed: int, split: str = "train"):
        if split not in TASK_SPLITS:
            raise ValueError(f"split must be one of {TASK_SPLITS}, not {split!r}")
        self.pool = ConcatEnv(envs)
        f = self.pool.factors.float()
        self.z = (f - f.mean(0)) / f.std(0).clamp_min(1e-8)  # standardised factors
        self.n_factors = self.z.shape[1]
        self.T, self.S, self.Q = hparams["tasks_per_batch"], hparams["support"], hparams["query"]
        self.max_factors = min(episodic(hparams, "max_factors"), self.n_factors)
        fraction = hparams.get("ood_task_fraction", 0.0)
        if not 0.0 <= fraction < 1.0:
            raise UserError(f"ood_task_fraction must be in [0, 1), got {fraction}")
        self.heldout = heldout_combinations(self.n_factors, self.max_factors, fraction, hparams.get("data_seed", 0))
        self.heldout_sorted = sorted(self.heldout)
        if split == "ood" and not self.heldout:
            raise ValueError("no held-out factor combinations (ood_task_fraction = 0 or max_factors < 2)")
        self.split, self.seed = split, seed
        # hparam factor_skew s > 0: factor i is drawn with probability proportional to (i + 1)^-s (Zipf), so a
        # few factors are reused by many tasks; 0: every factor equally likely
        skew = float(hparams.get("factor_skew", 0.0))
        self.factor_p = None if skew <= 0 else torch.arange(1, self.n_factors + 1, dtype=torch.float64) ** -skew

    def _subset(self, g: torch.Generator) -> torch.Tensor:
        if self.split == "ood":
            combos = self.heldout_sorted
            return torch.tensor(combos[int(torch.randint(len(combos), (1,), generator=g))])
        while True:  # rejection: at most a fraction of multi-factor subsets is held out
            k = int(torch.randint(1, self.max_factors + 1, (1,), generator=g))
            if self.factor_p is None:
                subset = torch.randperm(self.n_factors, generator=g)[:k]
            else:
                subset = torch.multinomial(self.factor_p, k, replacement=False, generator=g)
            if self.split == "all" or tuple(sorted(subset.tolist())) not in self.heldout:
                return subset

    def sample(self, step: int) -> TaskBatch:
        g = generator(self.seed, "factor_tasks", self.split, step)
        n = self.S + self.Q
        idx = torch.randint(len(self.pool), (self.T, n), generator=g)
        ys = []
        for t in range(self.T):
            subset = self._subset(g)
            w = torch.randn(len(subset), generator=g)
            score = self.z[idx[t]][:, subset] @ w
            ys.append((score > score.median()).long())
        y = torch.stack(ys)
        x, _ = self.pool.batch(idx.flatten())
        x = x.view(self.T, n, *x.shape[1:])
        return TaskBatch(x[:, : self.S], y[:, : self.S], x[:, self.S :], y[:, self.S :], 2)


class ClassTaskSampler:
    """N-way K-shot tasks within one environment (drawn at random per task); labels relabelled.

    ``support`` and ``query`` hparams are totals per task: K = support // N shots per class.
    """

    def __init__(self, envs: Sequence[EnvDataset], hparams: dict, seed: int):
        self.envs = list(envs)
        self.by_class = []  # per env: {class: indices}
        for env in self.envs:
            labels = env.labels
            self.by_class.append({int(c): (labels == c).nonzero().flatten() for c in labels.unique()})
        self.T = hparams["tasks_per_batch"]
        n_classes = min(len(d) for d in self.by_class)
        self.N = min(episodic(hparams, "n_way"), n_classes)
        self.K = max(1, hparams["support"] // self.N)
        self.Qk = max(1, hparams["query"] // self.N)
        self.seed = seed

    def sample(self, step: int) -> TaskBatch:
        g = generator(self.seed, "class_tasks", step)
        xs, ys = [], []
        for _ in range(self.T):
            e = int(torch.randint(len(self.envs), (1,), generator=g))
            classes = list(self.by_class[e])
            chosen = [classes[i] for i in torch.randperm(len(classes), generator=g)[: self.N].tolist()]
            idx, lab = [], []
            for new_label, c in enumerate(chosen):
                pool = self.by_class[e][c]
                pick = pool[torch.randint(len(pool), (self.K + self.Qk,), generator=g)]
                idx.append(pick)
                lab.append(torch.full((self.K + self.Qk,), new_label))
            idx, lab = torch.stack(idx), torch.stack(lab)  # (N, K+Q)
            order = torch.cat([idx[:, : self.K].flatten(), idx[:, self.K :].flatten()])
            y = torch.cat([lab[:, : self.K].flatten(), lab[:, self.K :].flatten()])
            x, _ = self.envs[e].batch(order)
            xs.append(x)
            ys.append(y)
        x, y = torch.stack(xs), torch.stack(ys)
        s = self.N * self.K
        return TaskBatch(x[:, :s], y[:, :s], x[:, s:], y[:, s:], self.N)
