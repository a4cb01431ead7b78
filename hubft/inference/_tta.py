"""Test-time augmentation: the model's outputs averaged over flipped and rescaled copies of each batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from hubft.errors import ConfigError

__all__ = ["TTA_MODES", "parse_tta", "run_with_tta"]

TTA_MODES = ("hflip", "multiscale")
"""``hflip``: the image and its mirror; ``multiscale``: the image at 0.875, 1 and 1.125 times its size."""

_SCALES = (0.875, 1.0, 1.125)


def parse_tta(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"hflip,multiscale"`` (or a list, or None for none) as a tuple of modes.

    Raises:
        ConfigError: An unknown mode (the known ones listed).
    """
    if not value:
        return ()
    modes = tuple(m.strip() for m in (value.split(",") if isinstance(value, str) else value) if m.strip())
    unknown = [m for m in modes if m not in TTA_MODES]
    if unknown:
        raise ConfigError(f"unknown test-time augmentation {unknown[0]!r}", fix=f"use {', '.join(TTA_MODES)}")
    return modes


def run_with_tta(model: torch.nn.Module, x: torch.Tensor, modes: Sequence[str], *,
                 fixed_input_size: bool = False) -> torch.Tensor:
    """The model's outputs (logits) for the batch ``x``, averaged over the views ``modes`` ask for.

    Raises:
        ConfigError: ``multiscale`` for a model that takes only one input size.
    """
    if "multiscale" in modes and fixed_input_size:
        raise ConfigError("multiscale test-time augmentation needs a model that takes other input sizes, and this "
                          "one's config says fixed_input_size", fix="use --tta hflip")
    sizes = [round(x.shape[-1] * s) for s in _SCALES] if "multiscale" in modes else [x.shape[-1]]
    outputs = []
    for size in sizes:
        view = x if size == x.shape[-1] else F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                                           align_corners=False)
        outputs.append(model(view))
        if "hflip" in modes:
            outputs.append(model(view.flip(-1)))
    return torch.stack(outputs).mean(0)
