"""Segmentation models: a timm backbone's multi-scale features and a light FPN decoder (:mod:`._fpn`).

The backbone is any timm model with ``forward_intermediates`` (CNNs, ConvNeXt, plain ViTs...). It is created by
:func:`~hubft.models.create_model` with no classifier, so its weights load with the same strict-except-head rules
as a classifier's; layers after the last feature map used are pruned (timm's ``prune_intermediate_layers``), so
every parameter takes part in the loss. The decoder is the fresh part (``pretrained_cfg["classifier"]`` names
it, so head learning rates, freezing and adapters' ``modules_to_save`` treat it as the head).

Saved as ``model.safetensors`` (every weight, ``encoder.*`` and ``decoder.*``) and timm's ``config.json`` of the
backbone with a ``hubft.decoder`` block (decoder name, width, feature indices, scales, classes, label names), from
which :func:`~hubft.models.create_model` / ``from_pretrained`` rebuild the whole model.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hubft.errors import ConfigError, ModelError
from hubft.models._config import SourceConfig, read_config, write_config
from hubft.models._fetch import SourceFiles, fetch_source_files
from hubft.models._fpn import FPNDecoder
from hubft.models._source import ModelSource, parse_source
from hubft.models._weights import CONFIG_NAME, WEIGHTS_NAME, load_strict, read_safetensors, write_safetensors

__all__ = ["SegmentationModel", "create_segmentation_model", "is_segmentation_config", "load_segmentation_model",
           "save_segmentation_model"]

DECODER_KEY = "decoder"
_VIT_STRIDES = (4, 8, 16, 32)  # the pyramid built from a plain ViT's single-stride maps


class SegmentationModel(nn.Module):
    """A backbone (``encoder``) and an :class:`~hubft.models._fpn.FPNDecoder` (``decoder``).

    ``forward(x)`` returns logits ``[B, num_classes, H, W]`` at the input's size; :meth:`predict_masks` the
    class-id masks. Carries ``label_names`` and a ``pretrained_cfg`` (the backbone's preprocessing, with
    ``classifier: "decoder"``) like a classifier from :func:`~hubft.models.create_model`.
    """

    def __init__(self, encoder: nn.Module, feature_indices: Sequence[int], scales: Sequence[float],
                 num_classes: int, channels: int, label_names: Sequence[str] | None) -> None:
        super().__init__()
        info = getattr(encoder, "feature_info", None)
        if not callable(getattr(encoder, "forward_intermediates", None)) or not info:
            raise ModelError(f"{type(encoder).__name__} has no forward_intermediates / feature_info, so its "
                             "multi-scale features cannot be read", fix="use a timm backbone that has them "
                             "(ResNet, ConvNeXt, ViT, EfficientNet...)")
        self.feature_indices = [int(i) for i in feature_indices]
        channels_in = [info[i]["num_chs"] for i in self.feature_indices]
        encoder.prune_intermediate_layers(self.feature_indices, prune_norm=True, prune_head=True)
        self.encoder = encoder
        self.decoder = FPNDecoder(channels_in, scales, num_classes, channels)
        self.channels = channels
        self.label_names = list(label_names) if label_names else None
        self.pretrained_cfg = {**encoder.pretrained_cfg, "classifier": DECODER_KEY, "num_classes": num_classes,
                               "label_names": tuple(label_names) if label_names else None}

    @property
    def num_classes(self) -> int:
        """Logits per pixel."""
        return self.decoder.classifier.out_channels

    @property
    def default_cfg(self) -> dict:
        return self.pretrained_cfg

    def get_classifier(self) -> nn.Module:
        """The decoder: the part trained from scratch."""
        return self.decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder.forward_intermediates(x, indices=self.feature_indices, intermediates_only=True)
        return self.decoder(features, x.shape[-2:])

    @torch.no_grad()
    def predict_masks(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Class ids ``[B, H, W]`` (int64) of a normalised batch, at ``size`` (default: the input's size)."""
        logits = self(x)
        if size is not None and tuple(size) != tuple(logits.shape[-2:]):
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        return logits.argmax(1)

    def reset_classifier(self, num_classes: int, seed: int | None = None) -> None:
        """A fresh last 1x1 conv for ``num_classes`` (seeded without touching the global RNG when ``seed``)."""
        with _seeded(seed):
            self.decoder.classifier = nn.Conv2d(self.channels, num_classes, 1)
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes}

    def decoder_record(self) -> dict[str, Any]:
        """What ``config.json`` records to rebuild the decoder."""
        return {"name": "fpn", "channels": self.channels, "feature_indices": self.feature_indices,
                "scales": list(self.decoder.scales), "num_classes": self.num_classes,
                "label_names": self.label_names}


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _pyramid(encoder: nn.Module) -> tuple[list[int], list[float]]:
    """The feature maps used (at most four, fine to coarse) and each one's resampling factor."""
    info = list(getattr(encoder, "feature_info", None) or [])
    if not info:
        raise ModelError(f"{type(encoder).__name__} has no feature_info", fix="use a timm backbone that has one")
    reductions = [f["reduction"] for f in info]
    if len(set(reductions)) == 1:  # a plain ViT: every block at the patch stride; resample four of them
        n = len(info)
        indices = sorted({max(0, n * k // 4 - 1) for k in (1, 2, 3, 4)})
        strides = _VIT_STRIDES[-len(indices):]
        return indices, [reductions[0] / s for s in strides]
    indices = list(range(len(info)))[-4:]
    return indices, [1.0] * len(indices)


def create_segmentation_model(
    source: str | os.PathLike[str],
    *,
    label_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    pretrained: bool = True,
    revision: str | None = None,
    head_init_seed: int | None = None,
    decoder_channels: int = 64,
    **timm_kwargs: Any,
) -> SegmentationModel:
    """A segmentation model: ``source``'s backbone (loaded strictly, its classifier dropped) and a fresh decoder.

    ``source`` is anything :func:`~hubft.models.create_model` takes. A saved segmentation model is rebuilt whole,
    keeping its decoder when the labels are its own, else with a fresh last layer for ``label_names``; a saved
    segmentation adapter is loaded on its backbone and decoder (:func:`~hubft.models._adapters.load_adapter`), with
    its own labels only. ``head_init_seed`` makes the decoder's initialisation identical across runs without
    touching the global RNG.

    Raises:
        ConfigError: Neither ``label_names`` nor ``num_classes``, or they disagree; other labels for an adapter; as
            ``create_model`` otherwise.
        ModelError: The backbone has no multi-scale features; ``source`` is a classifier's adapter.
    """
    from hubft.models._factory import create_model
    from hubft.models._labels import resolve_labels

    spec = parse_source(source, revision=revision)
    if spec.kind != "timm":
        files = fetch_source_files(spec, weights=False, cache_dir=timm_kwargs.get("cache_dir"))
        if files.adapter:
            _check_segmentation_adapter(files)
            return create_model(source, revision=revision, label_names=label_names, num_classes=num_classes,
                                pretrained=pretrained, **timm_kwargs)
        if is_segmentation_config(read_config(files)):
            return create_model(source, revision=revision, label_names=label_names, num_classes=num_classes,
                                pretrained=pretrained, head_init_seed=head_init_seed, **timm_kwargs)
    classes, names = resolve_labels(num_classes, label_names)
    if not classes:
        raise ConfigError("a segmentation model needs its classes", fix="pass label_names= (or num_classes=)")
    encoder = create_model(source, num_classes=0, pretrained=pretrained, revision=revision, **timm_kwargs)
    indices, scales = _pyramid(encoder)
    with _seeded(head_init_seed):
        model = SegmentationModel(encoder, indices, scales, classes, decoder_channels, names)
    model.hubft_source = {**encoder.hubft_source, "head_reset": True, "head_init_seed": head_init_seed}
    return model


def _check_segmentation_adapter(files: SourceFiles) -> None:
    """Refuse a classifier's adapter, whose backbone only exists with the adapter merged into it."""
    from hubft.models._adapters import read_adapter_record

    _, record = read_adapter_record(files.config, files.where)
    # An older hubft's segmentation adapter has no decoder record: load_adapter says so.
    older = (record.get("pretrained_cfg") or {}).get("classifier") == DECODER_KEY
    if not isinstance(record.get(DECODER_KEY), dict) and not older:
        raise ModelError(f"{files.where} is a classifier's adapter, not a segmentation model's",
                         fix="merge it first (hubft merge), then build the segmentation model on the merged model")


def is_segmentation_config(config: SourceConfig) -> bool:
    """Whether a source's ``config.json`` describes a saved segmentation model (it has a ``hubft.decoder``)."""
    return isinstance((config.hubft or {}).get(DECODER_KEY), dict)


def load_segmentation_model(spec: ModelSource, config: SourceConfig, files: SourceFiles, *,
                            label_names: Sequence[str] | None, head_init_seed: int | None, cache_dir: str | None,
                            kwargs: dict[str, Any]) -> SegmentationModel:
    """Rebuild a saved segmentation model (``create_model`` calls this for a source with a ``hubft.decoder``).

    Raises:
        WeightsError: The weights do not fit the recorded backbone and decoder.
    """
    from hubft.models._factory import _build_from_config

    record = config.hubft[DECODER_KEY]
    encoder = _build_from_config(spec, config, dataclasses.replace(files, weights=None), keep_head=True,
                                 cache_dir=cache_dir, kwargs=kwargs)
    saved_names = record.get("label_names")
    model = SegmentationModel(encoder, record["feature_indices"], record["scales"], record["num_classes"],
                              record["channels"], saved_names)
    if files.weights is not None:
        load_strict(model, read_safetensors(files.weights), source=f"{files.weights.name} of {files.where}")
    keep = label_names is None or list(label_names) == list(saved_names or ())
    if not keep:
        model.reset_classifier(len(label_names), seed=head_init_seed)
        model.label_names = list(label_names)
        model.pretrained_cfg["label_names"] = tuple(label_names)
    base = config.hubft.get("source")
    model.hubft_source = {"source": spec.spec, "kind": spec.kind, "architecture": config.architecture,
                          "pretrained": files.weights is not None, "tag": None, "repo_id": spec.repo_id,
                          "revision": files.commit_sha, "requested_revision": spec.revision,
                          "path": os.path.abspath(spec.path) if spec.path else None,
                          "source_num_classes": record["num_classes"], "head_reset": not keep,
                          "head_init_seed": None if keep else head_init_seed, "base": base}
    if keep and isinstance(config.hubft.get("task"), dict):
        model.hubft_task = config.hubft["task"]
    return model


def save_segmentation_model(model: SegmentationModel, directory: Path, hubft: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and the backbone's ``config.json`` with ``hubft`` and the decoder record."""
    encoder = model.encoder
    preprocessing = {k: v for k, v in model.pretrained_cfg.items() if k not in ("classifier", "num_classes",
                                                                                  "label_names")}
    saved_cfg = encoder.pretrained_cfg
    encoder.pretrained_cfg = {**saved_cfg, **preprocessing}
    try:
        write_safetensors(model.state_dict(), directory / WEIGHTS_NAME)
        write_config(encoder, directory / CONFIG_NAME, label_names=None,
                     hubft={**hubft, DECODER_KEY: model.decoder_record()})
    finally:
        encoder.pretrained_cfg = saved_cfg
    return directory
