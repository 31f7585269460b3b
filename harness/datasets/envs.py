"""An environment (domain) of a dataset: ``EnvDataset``, the in-memory ``TensorEnv`` and ``SubsetEnv``, a view on
some of its indices. An environment yields ``(x, y)`` and may carry metadata aligned with its indices:
``factors`` (N x K ground-truth factors) and ``groups`` (N group ids)."""

from __future__ import annotations

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
