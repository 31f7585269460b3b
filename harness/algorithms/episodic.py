"""Pieces shared by episodic algorithms that fit a linear head per task."""

from __future__ import annotations

import torch
from torch import nn

from harness.errors import UserError


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
