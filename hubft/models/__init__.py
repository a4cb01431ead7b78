"""Backbones: create a timm model from timm, the Hub or disk with a head for your labels; freeze; save; load."""

from hubft.models._factory import create_model, from_pretrained
from hubft.models._freeze import FrozenParts, body_groups, freeze, frozen_parts, unfreeze
from hubft.models._head import HEAD_INIT_STD, head_module_names, head_parameter_names
from hubft.models._save import save_pretrained
from hubft.models._source import ModelSource, parse_source

__all__ = [
    "HEAD_INIT_STD",
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
