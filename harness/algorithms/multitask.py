"""MultiTask: the dense multi-task baseline of SparseShared's ablations (arXiv 2304.07939)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.algorithms.base import Algorithm
from harness.algorithms.episodic import feature_norm, head_logits, task_features
from harness.hparams import HP, above, at_least, log_uniform, one_of
from harness.registry import ALGORITHMS


@ALGORITHMS.register("MultiTask")
class MultiTask(Algorithm):
    """One linear head per task, trained jointly with the backbone by gradient descent.

    Same tasks, normalisation and logit scale as SparseShared, but no sparsity and no
    sharing: each head starts at zero and takes ``head_steps`` gradient steps on its support
    loss (differentiably), and the backbone is trained on the query loss through them.
    """

    HPARAMS = {"feature_norm": HP("batchnorm", domain=one_of("batchnorm", "layernorm", "none")),
               "init_scale": HP(5.0, domain=above(0)), "head_steps": HP(10, domain=at_least(1)),
               "head_lr": HP(0.5, log_uniform(-1.5, 0.5), above(0)), "weight_decay": HP(0.0)}

    EPISODIC = True

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.norm = feature_norm(hparams["feature_norm"], self.featurizer.n_outputs)
        self.log_scale = nn.Parameter(torch.tensor(math.log(hparams["init_scale"])))
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=hparams["lr"], weight_decay=hparams["weight_decay"])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.featurizer(x))

    def fit_heads(self, zs: torch.Tensor, ys: torch.Tensor, n_classes: int, steps: int, differentiable: bool):
        T, _, d = zs.shape
        K = 1 if n_classes == 2 else n_classes
        W = zs.new_zeros(T, d, K, requires_grad=True)
        b = zs.new_zeros(T, K, requires_grad=True)
        with torch.enable_grad():
            for _ in range(steps):
                loss = F.cross_entropy(head_logits(zs, W, b).flatten(0, 1), ys.flatten()) * T
                gW, gb = torch.autograd.grad(loss, (W, b), create_graph=differentiable)
                W, b = W - self.hparams["head_lr"] * gW, b - self.hparams["head_lr"] * gb
        return (W, b) if differentiable else (W.detach(), b.detach())

    def update(self, tasks) -> dict[str, float]:
        zs, zq = task_features(self.features, tasks)
        W, b = self.fit_heads(zs, tasks.support_y, tasks.n_classes, self.hparams["head_steps"], True)
        logits = self.log_scale.exp() * head_logits(zq, W, b)
        loss = F.cross_entropy(logits.flatten(0, 1), tasks.query_y.flatten())
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    def adapt(self, support_x, support_y, num_classes=None):
        was_training = self.training
        self.eval()
        with torch.no_grad():
            zs = self.features(support_x)[None]
        W, b = self.fit_heads(zs, support_y[None], num_classes or int(support_y.max()) + 1,
                              4 * self.hparams["head_steps"], False)
        self.train(was_training)
        return lambda x: head_logits(self.features(x), W[0], b[0])
