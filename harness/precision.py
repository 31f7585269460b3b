"""Mixed precision: the ``precision`` hparam (``fp32`` | ``bf16``).

``bf16`` runs the backbone's forward passes (training and evaluation) under ``torch.autocast`` with
bfloat16 and hands its features on as float32 (:func:`autocast_forward`, applied by
``harness.backbones.build_backbone``). Heads, losses, inner solvers, their backward passes and the
optimizer stay in float32 with autocast off, so algorithms need no change; the backbone's backward
runs in the dtypes its forward used. No loss scaling is needed for bfloat16 (it has float32's exponent
range). float16 is not offered: it would need a gradient scaler inside every algorithm's update.

The inner solvers of the episodic algorithms (SparseShared's sparse heads and their implicit gradient,
MetaOptNet's SVM, R2D2's ridge) are also wrapped in :func:`full_precision`, for callers that run them
under an autocast of their own: with bfloat16's 8-bit mantissa SparseShared's solver stopped at its
iteration cap with a KKT residual 13x its tolerance. The wrapper covers the forward computation (and
SparseShared's implicit backward, itself wrapped); the autograd backward of R2D2's and MetaOptNet's
heads follows the autocast state in which ``backward()`` is called.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

PRECISIONS = ("fp32", "bf16")

Fn = TypeVar("Fn", bound=Callable[..., Any])


def check_precision(device, precision: str) -> None:
    """A one-line error for an unknown precision, or bf16 on a GPU without native bfloat16."""
    import torch

    from harness.errors import UserError

    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r} (hparam \"precision\": {' | '.join(PRECISIONS)})")
    device = torch.device(device)
    if precision == "bf16" and device.type == "cuda" and not _native_bf16(device):
        raise UserError(f"precision bf16 asked for, but {torch.cuda.get_device_name(device)} has no native "
                        "bfloat16 (use \"precision\": \"fp32\")")


def _native_bf16(device) -> bool:
    import torch

    with torch.cuda.device(device):
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.5 has no emulation argument (and reports native support only)
            return torch.cuda.is_bf16_supported()


def autocast_forward(module):
    """Make ``module``'s forward run under bfloat16 autocast on its input's device and return float32
    (floating outputs only). The module's parameters, buffers and ``state_dict`` are unchanged."""
    import torch

    forward = module.forward

    @functools.wraps(forward)
    def wrapper(x, *args, **kwargs):
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = forward(x, *args, **kwargs)
        return out.float() if out.is_floating_point() else out

    module.forward = wrapper
    return module


def full_precision(fn: Fn) -> Fn:
    """Run ``fn`` with autocast off on the device of its tensors and its float16/bfloat16 tensor arguments
    cast to float32 (a cast autograd differentiates through, so gradients reach the caller's tensors in
    their own dtype)."""
    import torch

    half = (torch.float16, torch.bfloat16)

    def cast(v):
        return v.float() if isinstance(v, torch.Tensor) and v.dtype in half else v

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
        if not tensors:
            return fn(*args, **kwargs)
        floating = [t for t in tensors if t.is_floating_point()] or tensors
        with torch.autocast(floating[0].device.type, enabled=False):
            return fn(*map(cast, args), **{k: cast(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]
