"""Reading and writing weights as safetensors (never pickle), strictly and atomically."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from hubft.errors import WeightsError
from hubft.files import atomic_write

__all__ = ["ADAPTER_CONFIG_NAME", "ADAPTER_WEIGHTS_NAME", "WEIGHTS_NAME", "CONFIG_NAME", "PICKLE_SUFFIXES",
           "load_strict", "read_safetensors", "write_safetensors"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# A peft adapter's files (hubft.models._adapters): a source that holds these instead of config.json is an adapter.
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
# Weight files that hold pickles: unpickling can run arbitrary code, so they are refused, not loaded.
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".pth.tar", ".ckpt", ".pkl")
# How many offending keys an error message lists per kind before "(+N more)".
_MAX_LISTED = 6


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file onto the CPU.

    Raises:
        WeightsError: The file is missing, unreadable, truncated or not a safetensors file (the path is named).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist",
                           fix="point at a directory holding model.safetensors, or pass pretrained=False")
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except (SafetensorError, OSError) as err:
        raise WeightsError(f"weights file {str(path)!r} is truncated or not a safetensors file ({err})",
                           fix="download or save it again (save_pretrained writes complete files atomically)"
                           ) from None


def load_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str, skip: Collection[str] = ()
) -> None:
    """Load ``state_dict`` into ``model``, requiring every key and shape to match.

    Args:
        model: The model, built with the architecture and class count the weights were saved with.
        state_dict: The weights.
        source: What the weights are (a file or repo), for error messages.
        skip: Keys that are left out on both sides (the head that is about to be replaced). Every other key
            must be present on both sides with the same shape.

    Raises:
        WeightsError: Keys are missing, unexpected or of another shape; the message names them with both shapes.
    """
    expected = {key: value for key, value in model.state_dict().items() if key not in skip}
    given = {key: value for key, value in state_dict.items() if key not in skip}
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    mismatched = [f"{key} {tuple(given[key].shape)} in the file vs {tuple(expected[key].shape)} in the model"
                  for key in expected.keys() & given.keys() if given[key].shape != expected[key].shape]
    problems = [f"{kind}: {_listing(items)}" for kind, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", sorted(mismatched)))
                if items]
    if problems:
        raise WeightsError(f"weights from {source} do not fit {type(model).__name__}: {'; '.join(problems)}",
                           fix="load them with the architecture and arguments they were saved with (drop "
                               "size-changing model arguments such as img_size or in_chans), or pass "
                               "pretrained=False")
    result = model.load_state_dict(given, strict=False)
    if set(result.missing_keys) - set(skip) or result.unexpected_keys:
        raise WeightsError(f"weights from {source} did not load: {result}")


def write_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a state dict as safetensors (``metadata={"format": "pt"}``), atomically.

    Tensors are detached, moved to the CPU and made contiguous; tensors that share memory (tied weights) are
    stored as separate copies, which safetensors requires.
    """
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in state_dict.items():
        value = value.detach().to("cpu").contiguous()
        storage = (value.untyped_storage().data_ptr(), value.untyped_storage().nbytes())
        if value.numel() and storage in seen:
            value = value.clone()
        seen.add(storage)
        tensors[key] = value
    atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata={"format": "pt"}))


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")

