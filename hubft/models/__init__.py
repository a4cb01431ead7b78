"""Backbones: create a timm model from timm, the Hub or disk with a head for your labels; freeze; add adapters;
save; load; merge."""

from hubft.models._adapter_targets import TARGET_FAMILIES, TargetFamily, default_targets
from hubft.models._adapters import (adapter_base, adapter_option_names, add_adapter, is_adapter_model, lora_config,
                                    merge_adapter, save_adapter, trainable_parameters)
from hubft.models._factory import create_model, from_pretrained
from hubft.models._freeze import FrozenParts, body_groups, freeze, frozen_parts, unfreeze
from hubft.models._head import HEAD_INIT_STD, head_module_names, head_parameter_names
from hubft.models._fpn import FPNDecoder
from hubft.models._save import save_pretrained
from hubft.models._segmentation import SegmentationModel, create_segmentation_model
from hubft.models._source import ModelSource, parse_source

__all__ = [
    "FPNDecoder",
    "SegmentationModel",
    "create_segmentation_model",
    "HEAD_INIT_STD",
    "TARGET_FAMILIES",
    "TargetFamily",
    "adapter_base",
    "adapter_option_names",
    "add_adapter",
    "default_targets",
    "is_adapter_model",
    "lora_config",
    "merge_adapter",
    "save_adapter",
    "trainable_parameters",
    "FrozenParts",
    "ModelSource",
    "body_groups",
    "create_model",
    "freeze",
    "from_pretrained",
    "frozen_parts",
    "head_module_names",
    "head_parameter_names",
    "parse_source",
    "save_pretrained",
    "unfreeze",
]
