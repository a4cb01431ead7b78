"""save_pretrained: a model as ``model.safetensors`` + timm's ``config.json``, loadable by hubft and by timm."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from timm.utils import unwrap_model
import torch
from torch import nn

from hubft.errors import ModelError
from hubft.models._config import write_config
from hubft.models._head import head_module_names
from hubft.models._labels import resolve_labels
from hubft.models._weights import CONFIG_NAME, WEIGHTS_NAME, write_safetensors

__all__ = ["save_pretrained"]


def save_pretrained(model: nn.Module, directory: str | os.PathLike,
                    state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Save a timm model to ``directory`` as ``model.safetensors`` and ``config.json``.

    ``model.safetensors`` holds the full state dict (CPU, contiguous, ``metadata={"format": "pt"}``).
    ``config.json`` is timm's format (``architecture``, ``num_classes``, ``num_features``, ``global_pool``,
    ``label_names``, ``model_args``, ``pretrained_cfg`` with timm's fields only), plus a top-level ``hubft`` block
    (``format``, ``hubft_version``, ``source``: the model's ``hubft_source``, ``task``: its ``hubft_task``, the
    task it was fine-tuned for, when a run set one, and ``adapter``: the settings of an adapter merged into it). The same file loads with transformers' ``TimmWrapper``
    (``AutoModelForImageClassification``), which is why ``model_args`` holds no ``num_classes``. Each file is written to a
    temporary file in ``directory`` and moved into place, so a crash never leaves a half-written file; other
    files in ``directory`` are left alone.

    The result loads back bit for bit with :func:`from_pretrained` (head and labels kept) and with
    ``timm.create_model("local-dir:DIR", pretrained=True)`` (labels in ``model.pretrained_cfg["label_names"]``).
    Wrapped models (DDP, ``torch.compile``, EMA) are unwrapped first. Frozen models save the same as unfrozen. A
    segmentation model is saved as its backbone's config with a ``hubft.decoder`` block (see
    :mod:`hubft.models._segmentation`). A model with adapters (:func:`add_adapter`) is saved as its adapter
    instead, by :func:`save_adapter`
    (``adapter_model.safetensors`` + ``adapter_config.json``, no base weights).

    Args:
        model: A timm model, e.g. from :func:`create_model`.
        directory: Created if missing.
        state_dict: The weights to write instead of ``model.state_dict()`` (the consolidated weights of a sharded
            model).

    Returns:
        The directory.

    Raises:
        ModelError: The model has no timm ``pretrained_cfg`` / architecture, its head cannot be found, or
            ``directory`` is a file.
        ConfigError: ``model.label_names`` do not fit its head (count or duplicates).

    Examples:
        >>> save_pretrained(model, "runs/pets/best")  # doctest: +SKIP
    """
    from hubft.models._adapters import is_adapter_model, save_adapter
    from hubft.models._segmentation import SegmentationModel, save_segmentation_model

    if is_adapter_model(model):
        return save_adapter(model, directory)
    model = unwrap_model(model)
    if isinstance(model, SegmentationModel):
        directory = _make_directory(directory)
        return save_segmentation_model(model, directory, _hubft_block(model))
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, dict) or not cfg.get("architecture"):
        raise ModelError(f"{type(model).__name__} has no timm pretrained_cfg with an 'architecture'",
                         fix="create the model with hubft.models.create_model or timm.create_model")
    head_module_names(model)  # fails early, before anything is written, for a model timm cannot reload
    label_names = getattr(model, "label_names", None)
    if label_names is not None:
        resolve_labels(model.num_classes, label_names)
    directory = _make_directory(directory)
    write_safetensors(model.state_dict() if state_dict is None else state_dict, directory / WEIGHTS_NAME)
    write_config(model, directory / CONFIG_NAME, label_names=label_names, hubft=_hubft_block(model))
    return directory


def _make_directory(directory: str | os.PathLike) -> Path:
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ModelError(f"cannot save into {str(directory)!r}: it is a file", fix="choose a directory path")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _hubft_block(model: nn.Module) -> dict:
    adapter = getattr(model, "hubft_adapter", None)
    return {
        "format": 1,
        "hubft_version": _hubft_version(),
        "source": getattr(model, "hubft_source", None),
        "task": getattr(model, "hubft_task", None),
        **({"adapter": adapter} if adapter else {}),
    }


def _hubft_version() -> str | None:
    try:
        return version("hubft")
    except PackageNotFoundError:
        return None

