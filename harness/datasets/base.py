"""The dataset protocol: multi-environment datasets with optional metadata.

A ``MultiEnvDataset`` (DomainBed's ``MultipleDomainDataset`` idea, arXiv 2007.01434) holds
one ``EnvDataset`` per environment. An environment yields ``(x, y)`` and may carry metadata
aligned with its indices: ``factors`` (N x K ground-truth factors) and ``groups`` (N group
ids). ``batch(indices)`` fetches many items at once (vectorised for in-memory data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch.utils.data import Dataset, default_collate


class EnvDataset(Dataset):
    """One environment. Subclasses either hold tensors (``TensorEnv``) or read files."""

    factors: torch.Tensor | None = None
    groups: torch.Tensor | None = None
    factor_names: tuple[str, ...] = ()

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return default_collate([self[int(i)] for i in indices])

    def subset(self, indices: torch.Tensor) -> "EnvDataset":
        return SubsetEnv(self, indices)

    @property
    def labels(self) -> torch.Tensor:
        """All labels (used for class-balanced task sampling); subclasses override when cheap."""
        return torch.as_tensor([int(self[i][1]) for i in range(len(self))])


class TensorEnv(EnvDataset):
    """An in-memory environment: ``x`` (N, ...), ``y`` (N,) and optional metadata."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, factors: torch.Tensor | None = None,
                 groups: torch.Tensor | None = None, factor_names: Sequence[str] = (), transform=None):
        assert len(x) == len(y), "x and y must have the same length"
        self.x, self.y = x, y.long()
        self.factors, self.groups = factors, groups
        self.factor_names = tuple(factor_names)
        self.transform = transform  # applied to float batches; None for test environments

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        x = self._decode(self.x[i : i + 1])
        return x[0], self.y[i]

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._decode(self.x[indices]), self.y[indices]

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:  # images are stored as bytes to save memory
            x = x.float().div_(255.0)
        return self.transform(x) if self.transform is not None else x

    @property
    def labels(self) -> torch.Tensor:
        return self.y

    def subset(self, indices: torch.Tensor) -> "TensorEnv":
        return TensorEnv(self.x[indices], self.y[indices],
                         None if self.factors is None else self.factors[indices],
                         None if self.groups is None else self.groups[indices],
                         self.factor_names, self.transform)


class SubsetEnv(EnvDataset):
    """A view on some indices of an environment, metadata included."""

    def __init__(self, parent: EnvDataset, indices: torch.Tensor):
        self.parent, self.indices = parent, indices
        self.factors = None if parent.factors is None else parent.factors[indices]
        self.groups = None if parent.groups is None else parent.groups[indices]
        self.factor_names = parent.factor_names

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.parent[int(self.indices[i])]

    def batch(self, indices: torch.Tensor):
        return self.parent.batch(self.indices[indices])

    @property
    def labels(self) -> torch.Tensor:
        return self.parent.labels[self.indices]


@dataclass
class OfficialSplits:
    """A benchmark's own splits (WILDS' protocol): the training domains an algorithm trains on, and
    the evaluation splits by their official names, each in the benchmark's row order."""

    train_envs: list[EnvDataset]
    eval_splits: dict[str, EnvDataset]


class MultiEnvDataset:
    """A dataset made of environments (domains).

    Class attributes a dataset declares:
      ENVIRONMENTS   names of the environments, in index order
      INPUT_SHAPE    shape of one x
      NUM_CLASSES    classes of the primary label y
      METRICS        what it reports besides accuracy: "wg_acc" (has groups), "disentanglement"
                     (has factors: DCI and MCC), "fewshot"
      N_STEPS, CHECKPOINT_FREQ   defaults for ``harness.train``
      HPARAMS        the dataset's hparams (``{"name": harness.hparams.HP(default, sampler, domain)}``),
                     overriding the common ones (backbone, lr, batch size, ...)
      TEST_ENV_SETS  the test-environment sets a sweep runs (default: each environment in turn)
      FEWSHOT        with "fewshot" in METRICS: episode settings for ``metrics.fewshot``
                     (n_way, k_shot, n_query, n_episodes), and ``fewshot_env()`` returns the
                     environment of novel classes the episodes are drawn from
    Construction: ``Dataset(data_dir, test_envs, hparams)``; ``test_envs`` lets the dataset
    switch augmentation off for them.

    Protocol: DomainBed's by default (a random ``holdout_fraction`` of every environment is its
    'out' split). A dataset with official splits (WILDS) returns them from ``official_splits`` and
    declares ``OFFICIAL_METRICS`` (what ``split_metrics`` computes per split, named as the benchmark
    names them) and ``SELECT_ON`` (``"split/metric"``, the validation score that selects models).
    """

    ENVIRONMENTS: list[str] = []
    INPUT_SHAPE: tuple[int, ...] = ()
    NUM_CLASSES: int = 2
    METRICS: tuple[str, ...] = ()
    N_STEPS: int = 1000
    CHECKPOINT_FREQ: int = 100
    TEST_ENV_SETS: list[list[int]] | None = None
    FEWSHOT: dict = {"n_way": 5, "k_shot": 5, "n_query": 15, "n_episodes": 600}
    HPARAMS: dict = {}
    OFFICIAL_METRICS: tuple[str, ...] = ()
    SELECT_ON: str | None = None

    def __init__(self, data_dir: str | None, test_envs: Sequence[int], hparams: dict):
        self.data_dir = data_dir
        self.test_envs = list(test_envs)
        # the class's declared defaults under what was given: subclasses read self.hparams[name], declared once
        self.hparams = {**{k: v.default for k, v in type(self).HPARAMS.items()}, **hparams}
        self.datasets: list[EnvDataset] = []

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.INPUT_SHAPE)

    @property
    def num_classes(self) -> int:
        return self.NUM_CLASSES

    def __getitem__(self, i: int) -> EnvDataset:
        return self.datasets[i]

    def __len__(self) -> int:
        return len(self.datasets)

    def official_splits(self) -> OfficialSplits | None:
        """The benchmark's own train and evaluation splits; None: DomainBed's random holdout."""
        return None

    def split_metrics(self, split: str, y_pred: torch.Tensor, env: EnvDataset) -> dict[str, float]:
        """``OFFICIAL_METRICS`` of predicted labels ``y_pred`` on the evaluation split ``split`` (``env``)."""
        raise NotImplementedError(f"{type(self).__name__} declares no official metrics")

    def fewshot_env(self) -> EnvDataset:
        raise NotImplementedError(f"{type(self).__name__} declares no few-shot split")

    def task_sampler(self, envs: Sequence[EnvDataset], hparams: dict, seed: int, split: str = "train"):
        """Episodes for meta-learners drawn from ``envs`` (the training splits).

        Default: binary factor tasks where the dataset has factors (``split`` ``ood`` draws the
        held-out factor combinations instead, see ``FactorTaskSampler``), else N-way K-shot
        class tasks within one environment. Datasets may override.
        """
        from harness.datasets.tasks import ClassTaskSampler, FactorTaskSampler

        if all(env.factors is not None for env in envs):
            return FactorTaskSampler(envs, hparams, seed, split)
        if split != "train":
            raise ValueError(f"{type(self).__name__} has no factors, hence no {split!r} tasks")
        return ClassTaskSampler(envs, hparams, seed)
