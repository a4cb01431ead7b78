"""Argument checks, input dtypes and reductions shared by hubft's losses.

Every check raises :class:`~hubft.errors.ConfigError` (a ``ValueError``) naming the loss, the option and the bad
value, so that a typo in a YAML file reads as a configuration problem rather than a traceback from inside torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import torch

from hubft.errors import ConfigError

REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")


def check_choice(value: Any, choices: Sequence[str], option: str, loss: str) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise raise ConfigError listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{loss}: {option}={value!r} is not supported", fix=f"use one of: {', '.join(choices)}")
    return value


def check_reduction(reduction: Any, loss: str) -> str:
    """Return ``reduction`` if it is one of ``mean``, ``sum``, ``none``."""
    return check_choice(reduction, REDUCTIONS, "reduction", loss)


def check_flag(value: Any, option: str, loss: str) -> bool:
    """Return ``value`` if it is a boolean (not merely truthy: ``"false"`` from a hand-edited config is rejected)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{loss}: {option}={value!r} is not a boolean", fix=f"give {option} as true or false")
    return value


def check_number(
    value: Any,
    option: str,
    loss: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Return ``value`` as a float after checking it is a finite real number inside the given bounds.

    Raises:
        ConfigError: ``value`` is not a real number (booleans included), not finite, or outside the bounds.
    """
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ConfigError(f"{loss}: {option}={value!r} is not a finite number", fix=f"give {option} as a number")
    value = float(value)
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high:
        left = "(-inf" if low is None else ("[" if low_inclusive else "(") + f"{low:g}"
        right = "inf)" if high is None else f"{high:g}" + ("]" if high_inclusive else ")")
        raise ConfigError(
            f"{loss}: {option}={value:g} is outside {left}, {right}", fix=f"choose {option} in that range"
        )
    return value


def is_scalar(value: Any) -> bool:
    """Whether ``value`` is one number (a Python / NumPy real or a 0-d tensor) rather than a per-class vector."""
    return isinstance(value, Real) or (isinstance(value, torch.Tensor) and value.ndim == 0)


def check_vector(
    value: Any, option: str, loss: str, *, low: float = 0.0, high: float | None = None
) -> torch.Tensor:
    """Return a non-empty 1-D float32 tensor of finite values in ``[low, high]`` built from a sequence or tensor.

    Raises:
        ConfigError: ``value`` is not a flat sequence of numbers, is empty, or holds a value out of range.
    """
    try:
        tensor = torch.as_tensor(value, dtype=torch.float32).detach().clone()
    except (TypeError, ValueError, RuntimeError) as error:
        raise ConfigError(
            f"{loss}: {option}={value!r} is not a sequence of numbers", fix=f"give {option} as a list of numbers"
        ) from error
    if tensor.ndim != 1 or tensor.numel() == 0:
        raise ConfigError(
            f"{loss}: {option} must be a non-empty 1-D sequence (one value per class); got shape {list(tensor.shape)}",
            fix=f"give {option} as a flat list of numbers",
        )
    bad = ~torch.isfinite(tensor) | (tensor < low)
    if high is not None:
        bad |= tensor > high
    if bool(bad.any()):
        bound = f"[{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise ConfigError(
            f"{loss}: {option} holds {tensor[bad][0].item():g}, but every value must be finite and {bound}",
            fix=f"correct {option}",
        )
    return tensor


def as_float(tensor: torch.Tensor) -> torch.Tensor:
    """Upcast half-precision tensors to float32; float32 and float64 pass through unchanged.

    Losses call this first so that bf16 / fp16 outputs (autocast) are reduced in float32: exponentials, logs and
    long sums lose too much precision in 8-bit or 11-bit mantissas.
    """
    if tensor.dtype in (torch.float16, torch.bfloat16):
        return tensor.float()
    return tensor


def reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply ``mean``, ``sum`` or ``none`` to a tensor of per-item losses."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def channel_view(vector: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a per-class vector so that it broadcasts along dim 1 of an ``ndim``-dimensional tensor."""
    return vector.reshape(-1, *([1] * max(ndim - 2, 0)))
