"""Losses for fine-tuning: a registry of built-ins, and :func:`create_loss` for anything a config can name."""

from hubft.losses._targets import LossInputError, class_range_checked_upstream
from hubft.losses.classification import BinaryCrossEntropyLoss, CrossEntropyLoss, SoftTargetCrossEntropyLoss
from hubft.losses.dice import DiceLoss
from hubft.losses.factory import LossSpec, create_loss, with_default_options
from hubft.losses.focal import FocalLoss
from hubft.losses.registry import LossInfo, get_loss_info, list_losses, register_loss
from hubft.losses.regression import HuberLoss, L1Loss, MSELoss, SmoothL1Loss
from hubft.losses.sobolev import SobolevLoss
from hubft.losses.soft_targets import accepts_soft_targets, require_soft_targets
from hubft.losses.wrappers import FunctionLoss, WeightedSumLoss
from hubft.registry import import_object

__all__ = [
    "with_default_options",
    "create_loss",
    "list_losses",
    "register_loss",
    "get_loss_info",
    "LossInfo",
    "LossSpec",
    "accepts_soft_targets",
    "require_soft_targets",
    "import_object",
    "LossInputError",
    "class_range_checked_upstream",
    "CrossEntropyLoss",
    "SoftTargetCrossEntropyLoss",
    "BinaryCrossEntropyLoss",
    "FocalLoss",
    "DiceLoss",
    "MSELoss",
    "L1Loss",
    "HuberLoss",
    "SmoothL1Loss",
    "SobolevLoss",
    "FunctionLoss",
    "WeightedSumLoss",
]
