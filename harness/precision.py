"""Mixed precision: the ``precision`` hparam (``fp32`` | ``bf16``).

``bf16`` runs each training step (``algorithm.update``) under ``torch.autocast`` with bfloat16 on the
run's device; parameters, optimizer state and evaluation stay in float32. No loss scaling is needed
for bfloat16 (it has float32's exponent range), so algorithms need no change. float16 is not offered:
it would need a gradient scaler inside every algorithm's optimizer step.

The inner solvers of the episodic algorithms (SparseShared's sparse heads and their implicit gradient,
MetaOptNet's SVM, R2D2's ridge) are wrapped in :func:`full_precision`: with bfloat16's 8-bit mantissa
an iterative solver cannot reach its tolerance (SparseShared's stopped at its iteration cap with a KKT
residual 13x its tolerance) and a linear solve loses most of its digits.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, TypeVar

PRECISIONS = ("fp32", "bf16")

Fn = TypeVar("Fn", bound=Callable[..., Any])


def autocast(device, precision: str):
    """The context a training step runs in: nothing for ``fp32``, bfloat16 autocast for ``bf16``."""
    import torch

    from harness.errors import UserError

    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r} (hparam \"precision\": {' | '.join(PRECISIONS)})")
    if precision == "fp32":
        return contextlib.nullcontext()
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"precision bf16 asked for, but {torch.cuda.get_device_name(device)} has no bfloat16 "
                        "support (use \"precision\": \"fp32\")")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def full_precision(fn: Fn) -> Fn:
    """Run ``fn`` with autocast off and its float16/bfloat16 tensor arguments cast to float32 (a cast
    autograd differentiates through, so gradients reach the caller's tensors in their own dtype)."""
    import torch

    half = (torch.float16, torch.bfloat16)

    def cast(v):
        return v.float() if isinstance(v, torch.Tensor) and v.dtype in half else v

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
        if not tensors:
            return fn(*args, **kwargs)
        with torch.autocast(tensors[0].device.type, enabled=False):
            return fn(*map(cast, args), **{k: cast(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]
