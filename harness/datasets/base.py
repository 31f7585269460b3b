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

from harness.datasets.envs import EnvDataset, SubsetEnv, TensorEnv  # noqa: F401 (the protocol's names, in one place)
from harness.datasets.tasks import ClassTaskSampler, FactorTaskSampler


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
        if all(env.factors is not None for env in envs):
            return FactorTaskSampler(envs, hparams, seed, split)
        if split != "train":
            raise ValueError(f"{type(self).__name__} has no factors, hence no {split!r} tasks")
        return ClassTaskSampler(envs, hparams, seed)
