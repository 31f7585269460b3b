"""Episodic algorithms: a backbone meta-trained through a head fitted per task on the support set.

:class:`EpisodicAlgorithm` is the one base of ProtoNet, R2D2, MetaOptNet, MultiTask and SparseShared: an
episodic algorithm is "fit a head on the support set, score the query set" (``fit_head``) and nothing else.
Also the pieces such heads share (feature normalisation, logits of linear heads, one backbone pass).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from harness.algorithms.base import Algorithm, eval_mode
from harness.errors import UserError

Head = Callable[[torch.Tensor], torch.Tensor]  # (T, Q, d) query features -> (T, Q, C) logits


class EpisodicAlgorithm(Algorithm):
    """A backbone meta-trained through a head fitted per task on the support set.

    Subclasses implement ``fit_head(zs, ys, n_classes, adapting) -> head`` on batched support features
    ``zs`` (T, S, d) and labels ``ys`` (T, S); the head maps query features (T, Q, d) to logits (T, Q, C).
    ``adapting`` is True when the head is for a new task on frozen features (``adapt``: evaluation heads,
    new tasks, few-shot), False in training. ``update`` takes one optimizer step on the query
    cross-entropy and logs ``step_logs``; create ``self.optimizer`` in ``__init__`` (:meth:`make_optimizer`).
    """

    EPISODIC = True

    def make_optimizer(self) -> None:
        """Adam on every parameter; call at the end of the subclass ``__init__``, once all parameters exist."""
        self.optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams["lr"],
                                          weight_decay=self.hparams["weight_decay"])

    def fit_head(self, zs: torch.Tensor, ys: torch.Tensor, n_classes: int, adapting: bool = False) -> Head:
        raise NotImplementedError

    def update(self, tasks) -> dict[str, float]:
        zs, zq = task_features(self.features, tasks)
        logits = self.fit_head(zs, tasks.support_y, tasks.n_classes)(zq)
        loss = F.cross_entropy(logits.flatten(0, 1), tasks.query_y.flatten())
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), **self.step_logs(logits, tasks)}

    def step_logs(self, logits: torch.Tensor, tasks) -> dict[str, float]:
        """Values to log after a step besides the loss (default: the query accuracy)."""
        return {"query_acc": (logits.argmax(-1) == tasks.query_y).float().mean().item()}

    @torch.no_grad()
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, num_classes: int | None = None):
        """The algorithm's own head fitted on ``(support_x, support_y)`` with frozen features: ``x -> logits``."""
        with eval_mode(self):
            head = self.fit_head(self.features(support_x)[None], support_y[None],
                                 num_classes or int(support_y.max()) + 1, adapting=True)

        def predict(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return head(self.features(x)[None])[0]

        return predict


def feature_norm(kind: str, d: int) -> nn.Module:
    """A normalisation without learned scale, so a penalty on head weights cannot be escaped by inflating features."""
    if kind == "batchnorm":
        return nn.BatchNorm1d(d, affine=False)
    if kind == "layernorm":
        return nn.LayerNorm(d, elementwise_affine=False)
    if kind == "none":
        return nn.Identity()
    raise UserError(f"unknown feature_norm '{kind}' (batchnorm | layernorm | none)")


def head_logits(z: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., n, d) features and (..., d, K) heads -> (..., n, C) logits; binary heads (K=1) give [0, l]."""
    out = z @ W + b.unsqueeze(-2)
    return torch.cat([torch.zeros_like(out), out], -1) if W.shape[-1] == 1 else out


def require_finite(z: torch.Tensor, what: str = "support features") -> None:
    """Raise FloatingPointError when ``z`` holds a NaN or an infinity: an iterative head solver would
    otherwise fail deep inside a factorisation; the trainer reports it as a diverged run."""
    if not bool(torch.isfinite(z).all()):
        raise FloatingPointError(f"{what} are not finite")


def task_features(features, tasks) -> tuple[torch.Tensor, torch.Tensor]:
    """Support (T, S, d) and query (T, Q, d) features from one backbone pass over both sets
    (so normalisation statistics cover the whole batch)."""
    T, S = tasks.support_y.shape
    x = torch.cat([tasks.support_x.flatten(0, 1), tasks.query_x.flatten(0, 1)])
    z = features(x)
    return z[: T * S].view(T, S, -1), z[T * S :].view(T, tasks.query_y.shape[1], -1)
