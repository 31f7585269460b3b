"""Backbones: ``name -> nn.Module`` with an ``n_outputs`` attribute (the feature width d).

A backbone entry is a factory ``f(input_shape, hparams) -> nn.Module``; register one with
``@BACKBONES.register("Name")``. ``build_backbone`` is what algorithms call; with the hparam
``"precision": "bf16"`` it makes the backbone run under bfloat16 autocast (harness/precision.py).
"""

from __future__ import annotations

from harness.registry import BACKBONES


def build_backbone(name: str, input_shape: tuple[int, ...], hparams: dict):
    net = BACKBONES.get(name)(tuple(input_shape), hparams)
    assert hasattr(net, "n_outputs"), f"backbone {name} must set n_outputs"
    if hparams.get("precision", "fp32") == "bf16":
        from harness.precision import autocast_forward

        autocast_forward(net)
    return net


__all__ = ["BACKBONES", "build_backbone"]
