"""MultiTask: the dense multi-task baseline of SparseShared's ablations (arXiv 2304.07939)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.algorithms.episodic import EpisodicAlgorithm, Head, feature_norm, head_logits
from harness.hparams import HP, above, at_least, log_uniform, one_of
from harness.registry import ALGORITHMS


@ALGORITHMS.register("MultiTask")
class MultiTask(EpisodicAlgorithm):
    """One linear head per task, trained jointly with the backbone by gradient descent.

    Same tasks, normalisation and logit scale as SparseShared, but no sparsity and no
    sharing: each head starts at zero and takes ``head_steps`` gradient steps on its support
    loss (differentiably), and the backbone is trained on the query loss through them.
    """

    HPARAMS = {"feature_norm": HP("batchnorm", domain=one_of("batchnorm", "layernorm", "none")),
               "init_scale": HP(5.0, domain=above(0)), "head_steps": HP(10, domain=at_least(1)),
               "head_lr": HP(0.5, log_uniform(-1.5, 0.5), above(0)), "weight_decay": HP(0.0)}

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.norm = feature_norm(hparams["feature_norm"], self.featurizer.n_outputs)
        self.log_scale = nn.Parameter(torch.tensor(math.log(hparams["init_scale"])))
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=hparams["lr"], weight_decay=hparams["weight_decay"])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.featurizer(x))

    def fit_heads(self, zs: torch.Tensor, ys: torch.Tensor, n_classes: int, steps: int, differentiable: bool,
                  lr: float | torch.Tensor):
        """``steps`` gradient steps from zero heads; ``lr`` one step size, or one per task (T,)."""
        T, _, d = zs.shape
        lr = torch.as_tensor(lr, dtype=zs.dtype, device=zs.device).expand(T)
        K = 1 if n_classes == 2 else n_classes
        W = zs.new_zeros(T, d, K, requires_grad=True)
        b = zs.new_zeros(T, K, requires_grad=True)
        with torch.enable_grad():
            for _ in range(steps):
                loss = F.cross_entropy(head_logits(zs, W, b).flatten(0, 1), ys.flatten()) * T
                gW, gb = torch.autograd.grad(loss, (W, b), create_graph=differentiable)
                W, b = W - lr[:, None, None] * gW, b - lr[:, None] * gb
        return (W, b) if differentiable else (W.detach(), b.detach())

    def fit_head(self, zs: torch.Tensor, ys: torch.Tensor, n_classes: int, adapting: bool = False) -> Head:
        """Training: ``head_steps`` differentiable steps of ``head_lr``, logits times the learned scale; a new
        task: 4x the steps on frozen features, each no longer than :func:`stable_step` allows."""
        lr = self.hparams["head_lr"]
        if adapting:
            lr = torch.clamp(stable_step(zs, n_classes), max=lr)
            W, b = self.fit_heads(zs, ys, n_classes, 4 * self.hparams["head_steps"], False, lr)
            return lambda zq: head_logits(zq, W, b)
        W, b = self.fit_heads(zs, ys, n_classes, self.hparams["head_steps"], True, lr)
        return lambda zq: self.log_scale.exp() * head_logits(zq, W, b)

    def step_logs(self, logits, tasks) -> dict[str, float]:
        return {}


def stable_step(zs: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Per task of ``zs`` (T, S, d), 1 / L: L bounds the curvature of the task's mean cross-entropy in (W, b),
    so gradient steps no longer than this never raise the loss (the descent lemma). L is the largest
    eigenvalue of the second moment of [z, 1] times the largest curvature of the loss in the logits: 1/4 for
    a binary head, 1/2 for a softmax. Nearly rank-one features (an eigenvalue near d) make a fixed
    ``head_lr`` of 0.5 cycle instead of converging (docs/real_images.md)."""
    z1 = torch.cat([zs, zs.new_ones(*zs.shape[:-1], 1)], -1).float()  # no SVD in half precision
    second_moment = torch.linalg.matrix_norm(z1, ord=2) ** 2 / zs.shape[-2]
    return (4.0 if n_classes == 2 else 2.0) / second_moment
