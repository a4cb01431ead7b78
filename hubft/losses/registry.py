"""The registry of named losses: one frozen :class:`LossInfo` record per name, built-ins included.

Adding a loss is adding a record (:func:`register_loss`); :func:`~hubft.losses.create_loss` looks names up
here, and the tests run every registered loss through the same contract checks.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

from torch import nn

from hubft.errors import ConfigError
from hubft.registry import Registry
from hubft.losses._checks import REDUCTIONS
from hubft.losses.classification import BinaryCrossEntropyLoss, CrossEntropyLoss, SoftTargetCrossEntropyLoss
from hubft.losses.dice import DiceLoss
from hubft.losses.focal import FocalLoss
from hubft.losses.regression import HuberLoss, L1Loss, MSELoss, SmoothL1Loss
from hubft.losses.sobolev import SobolevLoss

TargetKind = Literal["class", "binary", "dense"]
Unreduced = Literal["element", "position", "sample", "class"]


@dataclass(frozen=True)
class LossInfo:
    """What hubft knows about a registered loss.

    Attributes:
        name: Registry name (see :mod:`hubft.registry` for how names are looked up).
        factory: Builds the loss module from keyword options (usually the ``nn.Module`` subclass itself).
        description: One line for listings.
        target: The targets the loss is built for, for an output ``[B, C, *S]``: ``class``: integer class indices
            ``[B, *S]`` (and probabilities of the output's shape if ``soft_targets``); ``binary``: 0/1 labels of
            the output's shape (class indices are one-hot encoded); ``dense``: real values of the output's shape.
        soft_targets: Whether the loss, built with its defaults, is right for class-probability targets
            (what :func:`~hubft.losses.accepts_soft_targets` says of it).
        reductions: The values its ``reduction`` option accepts; empty if it has no such option and returns a
            0-d tensor.
        unreduced: What ``reduction="none"`` returns, with its defaults: ``element``: the output's shape;
            ``position``: ``[B, *S]``; ``sample``: ``[B]``; ``class``: ``[C]``. ``mean`` / ``sum`` are the mean /
            sum of that tensor (cross-entropy with ``class_weights`` or ignored positions takes a weighted mean,
            as torch does).
        defaults: Options :func:`~hubft.losses.create_loss` passes to ``factory`` unless the caller overrides
            them (a registered variant, e.g. ``{"mode": "binary", "alpha": 0.25}``).
    """

    name: str
    factory: Callable[..., nn.Module]
    description: str = ""
    target: TargetKind = "class"
    soft_targets: bool = False
    reductions: tuple[str, ...] = REDUCTIONS
    unreduced: Unreduced = "element"
    defaults: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))
        object.__setattr__(self, "reductions", tuple(self.reductions))

    def options(self) -> dict[str, Any]:
        """The options the factory runs with by default: its signature's defaults, overlaid with ``defaults``."""
        try:
            parameters = inspect.signature(self.factory).parameters.values()
        except (TypeError, ValueError):
            parameters = ()
        found = {
            p.name: p.default
            for p in parameters
            if p.default is not inspect.Parameter.empty and p.kind is not inspect.Parameter.VAR_KEYWORD
        }
        return {**found, **self.defaults}


_LOSSES: Registry[LossInfo] = Registry("loss", "list_losses", plural="losses", hint="or name your own as 'package.module:attr'")


def _check_choice(value: Any, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ConfigError(f"register_loss: {what}={value!r} is not one of {', '.join(choices)}")


def register_loss(
    name: str,
    factory: Callable[..., nn.Module],
    *,
    description: str = "",
    target: TargetKind = "class",
    soft_targets: bool = False,
    reductions: tuple[str, ...] = REDUCTIONS,
    unreduced: Unreduced = "element",
    defaults: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> LossInfo:
    """Add a loss to the registry under ``name``, so that configs and the CLI can name it.

    Args:
        name: Registry name: a letter, then letters, digits, ``_``, ``-`` or ``.``.
        factory: Builds the module from keyword options: an ``nn.Module`` subclass or a function returning one.
            To register a plain loss function ``f(output, target)``, pass ``functools.partial(FunctionLoss, f)``.
        description, target, soft_targets, reductions, unreduced, defaults: See :class:`LossInfo`.
        overwrite: Replace an existing record of that name instead of raising.

    Returns:
        The new record.

    Raises:
        ConfigError: The name is malformed or taken (without ``overwrite``), the factory is not callable, a
            contract field is not one of its allowed values, or ``defaults`` names an option the factory lacks.

    Examples:
        >>> register_loss("binary_focal", FocalLoss, description="Lin et al.'s sigmoid focal loss",
        ...               target="binary", soft_targets=True, defaults={"mode": "binary", "alpha": 0.25}).name
        'binary_focal'
        >>> from hubft.losses import create_loss
        >>> create_loss("binary_focal", gamma=1.0)
        FocalLoss(mode='binary', gamma=1.0, reduction='mean')
    """
    key = name
    if not callable(factory):
        raise ConfigError(f"register_loss: factory {factory!r} for {key!r} is not callable")
    _check_choice(target, get_args(TargetKind), "target")
    _check_choice(unreduced, get_args(Unreduced), "unreduced")
    for reduction in reductions:
        _check_choice(reduction, REDUCTIONS, "reductions entry")
    defaults = dict(defaults or {})
    try:
        inspect.signature(factory).bind_partial(**defaults)
    except TypeError as error:
        raise ConfigError(f"register_loss: defaults {defaults} do not fit {factory!r}: {error}") from error
    except ValueError:  # no introspectable signature: the first create_loss call will tell
        pass
    info = LossInfo(key, factory, description, target, bool(soft_targets), tuple(reductions), unreduced, defaults)
    return _LOSSES.register(info, overwrite=overwrite)


def get_loss_info(name: str) -> LossInfo:
    """Return the record registered under ``name`` (looked up as :mod:`hubft.registry` says).

    Raises:
        ConfigError: No loss has that name; the message lists the close matches and all names.
    """
    return _LOSSES.get(name)


def list_losses(pattern: str | None = None, *, target: TargetKind | None = None) -> list[str]:
    """Names of the registered losses, sorted; only those matching the shell-style ``pattern`` (case ignored) and
    built for ``target`` targets, when given.

    Raises:
        ConfigError: ``target`` is not ``class``, ``binary``, ``dense`` or None.
    """
    if target is not None and target not in get_args(TargetKind):
        raise ConfigError(f"list_losses: target={target!r} is not one of {', '.join(get_args(TargetKind))}")
    return [n for n in _LOSSES.names(pattern) if target is None or _LOSSES.get(n).target == target]


register_loss(
    "cross_entropy",
    CrossEntropyLoss,
    description="Softmax cross-entropy; label_smoothing, class_weights, ignore_index; takes probabilities too.",
    target="class",
    soft_targets=True,
    unreduced="position",
)
register_loss(
    "soft_target_cross_entropy",
    SoftTargetCrossEntropyLoss,
    description="Cross-entropy against class probabilities (mixup/cutmix); one-hot encodes class indices.",
    target="class",
    soft_targets=True,
    unreduced="position",
)
register_loss(
    "bce",
    BinaryCrossEntropyLoss,
    description="Sigmoid binary cross-entropy per class (multi-label); pos_weight, smoothing.",
    target="binary",
    soft_targets=True,
    unreduced="element",
)
register_loss(
    "focal",
    FocalLoss,
    description="Focal loss, (1 - p_t)^gamma-weighted cross-entropy; mode binary/multilabel/multiclass, alpha.",
    target="class",
    soft_targets=True,
    unreduced="position",
)
register_loss(
    "dice",
    DiceLoss,
    description="1 - Dice coefficient per class; mode auto/binary/multilabel/multiclass, smooth, ignore_index.",
    target="class",
    soft_targets=True,
    unreduced="class",
)
register_loss("mse", MSELoss, description="Mean squared error.", target="dense")
register_loss("l1", L1Loss, description="Mean absolute error.", target="dense")
register_loss("huber", HuberLoss, description="Huber loss: quadratic within delta, linear beyond.", target="dense")
register_loss(
    "smooth_l1", SmoothL1Loss, description="Smooth L1: Huber divided by beta (L1 when beta=0).", target="dense"
)
register_loss(
    "sobolev",
    SobolevLoss,
    description="Squared error of values and finite differences along spatial/sequence dims (dense heads).",
    target="dense",
    unreduced="sample",
)
