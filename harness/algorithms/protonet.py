"""Prototypical networks, and the per-task-head base shared by R2D2 and MetaOptNet."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from harness.algorithms.base import Algorithm
from harness.algorithms.episodic import task_features
from harness.registry import ALGORITHMS

Head = Callable[[torch.Tensor], torch.Tensor]  # (T, Q, d) query features -> (T, Q, C) logits


class EpisodicHeadAlgorithm(Algorithm):
    """A backbone meta-trained through a head fitted per task on the support set.

    Subclasses implement ``fit_head(zs, ys, n_classes) -> head`` on batched support features
    ``zs`` (T, S, d) and labels ``ys`` (T, S); the head maps query features (T, Q, d) to logits.
    ``update`` minimises the query cross-entropy; ``adapt`` fits the same head on frozen features.
    """

    EPISODIC = True

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)

    def make_optimizer(self) -> None:
        """Call at the end of the subclass ``__init__``, once all parameters exist."""
        self.optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams["lr"],
                                          weight_decay=self.hparams["weight_decay"])

    def fit_head(self, zs: torch.Tensor, ys: torch.Tensor, n_classes: int) -> Head:
        raise NotImplementedError

    def update(self, tasks) -> dict[str, float]:
        zs, zq = task_features(self.features, tasks)
        logits = self.fit_head(zs, tasks.support_y, tasks.n_classes)(zq)
        loss = F.cross_entropy(logits.flatten(0, 1), tasks.query_y.flatten())
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        acc = (logits.argmax(-1) == tasks.query_y).float().mean()
        return {"loss": loss.item(), "query_acc": acc.item()}

    @torch.no_grad()
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, num_classes: int | None = None):
        """The algorithm's own head fitted on ``(support_x, support_y)`` (frozen features): ``x -> logits``."""
        was_training = self.training
        self.eval()
        n_classes = num_classes or int(support_y.max()) + 1
        head = self.fit_head(self.features(support_x)[None], support_y[None], n_classes)
        self.train(was_training)

        def predict(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return head(self.features(x)[None])[0]

        return predict

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} is episodic and has no fixed classifier: fit one on a labelled "
                        "support set with adapt(support_x, support_y) and call the predictor it returns")


def class_centroids(zs: torch.Tensor, ys: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(T, S, d), (T, S) -> (T, C, d) per-class means (a class absent from the support gets 0)."""
    onehot = F.one_hot(ys, n_classes).to(zs.dtype)  # (T, S, C)
    counts = onehot.sum(1).clamp_min(1.0)  # (T, C)
    return onehot.transpose(1, 2) @ zs / counts.unsqueeze(-1)


@ALGORITHMS.register("ProtoNet")
class ProtoNet(EpisodicHeadAlgorithm):
    """Prototypical networks (Snell et al. 2017, arXiv 1703.05175).

    The head of a task is its class centroids in feature space; logits are the negative squared
    Euclidean distances to them.
    """

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.make_optimizer()

    def fit_head(self, zs: torch.Tensor, ys: torch.Tensor, n_classes: int) -> Head:
        centroids = class_centroids(zs, ys, n_classes)
        return lambda zq: -sq_distances(zq, centroids)


def sq_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(T, Q, d), (T, C, d) -> (T, Q, C) squared Euclidean distances (no sqrt, so no NaN gradient at 0)."""
    return (a.square().sum(-1, keepdim=True) - 2 * a @ b.transpose(1, 2) + b.square().sum(-1).unsqueeze(1)).clamp_min(0)
