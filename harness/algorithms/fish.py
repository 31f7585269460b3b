"""Fish: gradient matching through an inner loop over environments."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from harness.algorithms.base import Algorithm
from harness.hparams import HP, choice, in_range
from harness.registry import ALGORITHMS


@ALGORITHMS.register("Fish")
class Fish(Algorithm):
    """Fish (Shi et al. 2021, arXiv 2104.09937), as DomainBed.

    Each update copies the network into ``inner``, takes one Adam step per training environment
    on it (in the given order), then moves the network toward the result:
    ``theta <- theta + meta_lr * (theta_inner - theta)``. The inner Adam keeps its moments across
    updates (DomainBed reloads its state each time); it is an attribute, so ``state_dict`` saves
    it. ``inner`` is a submodule and is saved too, consistently, though each update overwrites it.
    """

    HPARAMS = {"meta_lr": HP(0.5, choice(0.05, 0.1, 0.5), in_range(0, 1, open_lo=True))}  # DomainBed's default and range

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.inner = nn.ModuleDict({"featurizer": copy.deepcopy(self.featurizer),
                                    "classifier": copy.deepcopy(self.classifier)})
        self.inner_optimizer = torch.optim.Adam(self.inner.parameters(), lr=hparams["lr"],
                                                weight_decay=hparams["weight_decay"])

    def _pairs(self):
        """(meta, inner) tensors: every parameter and buffer of featurizer and classifier."""
        for name in ("featurizer", "classifier"):
            meta, inner = getattr(self, name).state_dict(keep_vars=True), self.inner[name].state_dict(keep_vars=True)
            for key in meta:
                yield meta[key], inner[key]

    def update(self, minibatches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        with torch.no_grad():
            for meta, inner in self._pairs():
                inner.copy_(meta)
        for x, y in minibatches:
            loss = F.cross_entropy(self.inner["classifier"](self.inner["featurizer"](x)), y)
            self.inner_optimizer.zero_grad()
            loss.backward()
            self.inner_optimizer.step()
        with torch.no_grad():  # the meta step
            for meta, inner in self._pairs():
                if meta.is_floating_point():
                    meta.add_(self.hparams["meta_lr"] * (inner - meta))
                else:
                    meta.copy_(inner)
        return {"loss": loss.item()}
