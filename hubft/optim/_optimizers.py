"""Optimizers by name: torch's classes verbatim and timm's optimizer registry, as one registry of plain records.

Two families share the registry, told apart by case (an exact name wins; see :mod:`hubft.registry`):

- ``"SGD"``, ``"AdamW"``, ``"RMSprop"``, ...: the ``torch.optim`` class of that name with torch's own defaults.
- ``"sgd"``, ``"adamw"``, ``"lamb"``, ``"lion"``, ...: timm's registry entries (``timm.optim.list_optimizers()``)
  with timm's defaults, including timm's ``momentum=0.9`` for optimizers that take a momentum (so ``"sgd"`` is
  Nesterov SGD with momentum 0.9 while ``"SGD"`` is torch's plain SGD).

Left out, because they cannot train hubft's parameter groups as they are: ``LBFGS`` (needs a closure and one
group), ``SparseAdam`` (sparse gradients only), torch's ``Muon`` (2-D parameters only; timm's ``"muon"`` falls
back to AdamW for the rest), and timm's apex / bitsandbytes entries (optional CUDA packages; add one with
:func:`register_optimizer` where it is installed).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import timm.optim
import torch
from torch import nn

from hubft.errors import ConfigError
from hubft.optim._param_groups import param_groups
from hubft.optim._kwargs import accepted_kwargs, check_kwargs
from hubft.registry import Registry, import_object

_TORCH_LEFT_OUT = ("LBFGS", "SparseAdam", "Muon")
# torch classes with a fused kernel on both CPU and CUDA (Adagrad's is CPU-only): one pass over each parameter per
# update instead of about ten elementwise passes (AdamW on a 2-core CPU, resnet18: 27 ms -> 5 ms per update).
_FUSED_CLASSES = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)
# What "auto" fuses. Not SGD: torch's fused SGD starts the momentum of a whole group at once, and fails when some of
# the group's parameters have momentum and others none yet (a body unfrozen by a freeze schedule).
_AUTO_FUSED_CLASSES = (torch.optim.Adam, torch.optim.AdamW)
# Options that choose an implementation already: "auto" leaves them to the caller.
_IMPLEMENTATION_OPTIONS = ("fused", "foreach", "differentiable", "capturable")


@dataclass(frozen=True)
class OptimizerInfo:
    """One optimizer that :func:`create_optimizer` can build by name.

    Attributes:
        name: Registry key (case-sensitive).
        optimizer_class: A ``torch.optim.Optimizer`` subclass, called as ``optimizer_class(groups, **kwargs)``.
        description: One line for listings.
        defaults: Keyword arguments applied before the caller's (the caller's win).
        second_order: The optimizer needs ``loss.backward(create_graph=True)`` (e.g. AdaHessian).
    """

    name: str
    optimizer_class: type[torch.optim.Optimizer]
    description: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    second_order: bool = False

    def accepted_kwargs(self) -> tuple[str, ...] | None:
        """Keyword arguments the class accepts besides ``params``; ``None`` if it takes ``**kwargs``."""
        return accepted_kwargs(self.optimizer_class)


_REGISTRY: Registry[OptimizerInfo] = Registry(
    "optimizer", "list_optimizers", hint="or name a torch.optim.Optimizer subclass as 'package.module:attr'")


def register_optimizer(info: OptimizerInfo, *, overwrite: bool = False) -> OptimizerInfo:
    """Add an optimizer record so that :func:`create_optimizer` can build it by ``info.name``.

    Raises:
        ConfigError: The name is already taken and ``overwrite`` is false.

    Examples:
        >>> from timm.optim import Lion
        >>> _ = register_optimizer(OptimizerInfo("lion_b95", Lion, "Lion, beta2 0.95", {"betas": (0.9, 0.95)}))
    """
    if not (isinstance(info.optimizer_class, type) and issubclass(info.optimizer_class, torch.optim.Optimizer)):
        raise ConfigError(
            f"optimizer {info.name!r}: {info.optimizer_class!r} is not a torch.optim.Optimizer subclass",
            fix="register an Optimizer class",
        )
    return _REGISTRY.register(info, overwrite=overwrite)


def list_optimizers(pattern: str | None = None) -> list[str]:
    """Names of the registered optimizers, sorted; ``pattern`` filters with shell wildcards, ignoring case
    (``"*adam*"``)."""
    return _REGISTRY.names(pattern)


def get_optimizer_info(name: str) -> OptimizerInfo:
    """The record that ``name`` denotes: a registered name, or ``"package.module:attr"`` naming a
    ``torch.optim.Optimizer`` subclass (a one-off record without defaults).

    Raises:
        ConfigError: Unknown name (the message lists the closest names), or a path that does not import or does
            not name an optimizer class.
    """
    if isinstance(name, str) and ":" in name:
        cls = import_object(name, what="optimizer")
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            raise ConfigError(f"optimizer {name!r} is not a torch.optim.Optimizer subclass",
                              fix="point at an Optimizer class")
        return OptimizerInfo(name, cls, f"user optimizer {cls.__qualname__}")
    return _REGISTRY.get(name)


def create_optimizer(
    model_or_groups: nn.Module | Iterable[Any],
    name: str = "adamw",
    *,
    lr: float | None = None,
    weight_decay: float | None = None,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Build the optimizer called ``name`` over a model or parameter groups.

    Precedence of settings, lowest first: the record's ``defaults``, then ``lr`` / ``weight_decay`` / ``kwargs``
    as optimizer-wide defaults, then each group's own ``lr`` and ``weight_decay`` (groups from
    :func:`param_groups` carry both, so ``lr`` and ``weight_decay`` only fill groups that lack them). The groups
    are copied, so the caller's dicts are not modified.

    Args:
        model_or_groups: A model (grouped with :func:`param_groups` using ``lr`` and ``weight_decay``, default
            0.05), a list of group dicts, or an iterable of tensors.
        name: A name from :func:`list_optimizers`.
        lr: Default LR; required when a model is given.
        weight_decay: Default weight decay.
        **kwargs: The optimizer's own keyword arguments (e.g. ``betas``, ``momentum``, ``eps``).

    Returns:
        The optimizer.

    Raises:
        ConfigError: Unknown name (with close matches); a keyword the optimizer does not take (naming the ones it
            does); a model without ``lr``; no parameters; non-zero weight decay for an optimizer without it; or a
            value the optimizer rejects.

    Examples:
        >>> import timm
        >>> model = timm.create_model("resnet10t", pretrained=False, num_classes=3)
        >>> opt = create_optimizer(param_groups(model, lr=1e-3, head_lr=1e-2), "adamw", betas=(0.9, 0.99))
        >>> sorted({g["lr"] for g in opt.param_groups})
        [0.001, 0.01]
    """
    info = get_optimizer_info(name)
    accepted = info.accepted_kwargs()
    check_kwargs(kwargs, accepted, f"optimizer {name!r} ({info.optimizer_class.__name__})")
    if isinstance(model_or_groups, nn.Module):
        if lr is None:
            raise ConfigError(f"create_optimizer({type(model_or_groups).__name__}, ...) needs lr",
                              fix="pass lr=..., or pass param_groups(model, lr=...)")
        groups: list[Any] = param_groups(
            model_or_groups, lr=lr, weight_decay=0.05 if weight_decay is None else weight_decay
        )
    else:
        groups = [dict(g) if isinstance(g, Mapping) else g for g in model_or_groups]
    if not groups:
        raise ConfigError(f"optimizer {name!r} got no parameters", fix="check which parameters are trainable")

    options = {**info.defaults, **kwargs}
    if lr is not None:
        options["lr"] = lr
    if weight_decay is not None:
        options["weight_decay"] = weight_decay
    if accepted is not None and "weight_decay" not in accepted:
        # Torch keeps unknown group keys silently, so a decay the optimizer cannot apply would just vanish.
        if options.pop("weight_decay", 0) or any(isinstance(g, dict) and g.get("weight_decay") for g in groups):
            raise ConfigError(
                f"optimizer {name!r} has no weight decay but the groups ask for some",
                fix="use weight_decay=0 for this optimizer, or pick one with weight decay (e.g. adamw)",
            )
    try:
        return info.optimizer_class(groups, **options)
    except (TypeError, ValueError, RuntimeError) as error:  # torch raises RuntimeError for fused + foreach
        raise ConfigError(
            f"optimizer {name!r} rejected its arguments {_short(options)}: {error}",
            fix=f"check the values against {info.optimizer_class.__module__}.{info.optimizer_class.__name__}",
        ) from error


def fused_options(name: str, fused: bool | str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` for optimizer ``name`` with torch's fused implementation chosen as ``fused`` says.

    ``"auto"`` adds ``fused=True`` for torch's Adam and AdamW (also under timm's names ``"adamw"``, ``"adam"``)
    unless ``options`` already choose an implementation (``fused``, ``foreach``, ``differentiable`` or
    ``capturable``); the fused kernels update each parameter in one pass, on CPU and CUDA alike, with the same
    arithmetic. ``True`` asks for ``fused=True`` (Adam, AdamW and SGD; torch's fused SGD cannot start the momentum
    of parameters that a freeze schedule unfreezes later) and ``False`` leaves ``options`` as they are (torch's
    default implementation).

    Raises:
        ConfigError: ``fused`` is true for an optimizer without a fused kernel, or is not a bool or ``"auto"``.

    Examples:
        >>> fused_options("adamw", "auto", {"betas": (0.9, 0.99)})
        {'betas': (0.9, 0.99), 'fused': True}
        >>> fused_options("adamw", "auto", {"foreach": True})
        {'foreach': True}
    """
    if fused not in (True, False, "auto"):
        raise ConfigError(f"optim.fused must be true, false or 'auto', got {fused!r}", fix="set optim.fused: auto")
    out = dict(options)
    info = get_optimizer_info(name)
    accepted = info.accepted_kwargs()
    takes_fused = accepted is None or "fused" in accepted  # a subclass may not pass `fused` on
    has_kernel = issubclass(info.optimizer_class, _FUSED_CLASSES) and takes_fused
    if fused is True:
        if not has_kernel:
            raise ConfigError(
                f"optimizer {name!r} has no fused implementation in hubft's list (torch's Adam, AdamW and SGD)",
                fix="set optim.fused: auto (or false), or pick adamw / adam / sgd")
        out["fused"] = True
    elif fused == "auto" and has_kernel and issubclass(info.optimizer_class, _AUTO_FUSED_CLASSES) \
            and not any(key in out for key in _IMPLEMENTATION_OPTIONS):
        out["fused"] = True
    return out


def _short(options: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v!r}" for k, v in options.items()) + "}"


def _register_builtin() -> None:
    for cls_name in torch.optim.__all__:
        cls = getattr(torch.optim, cls_name)
        if (
            isinstance(cls, type)
            and issubclass(cls, torch.optim.Optimizer)
            and cls is not torch.optim.Optimizer
            and cls_name not in _TORCH_LEFT_OUT
        ):
            summary = (inspect.getdoc(cls) or "").strip().splitlines()[0:1]
            _REGISTRY.register(OptimizerInfo(
                cls_name, cls, f"torch.optim.{cls_name} with torch's defaults. {''.join(summary)}".strip()
            ))
    for timm_name in timm.optim.list_optimizers():
        timm_info = timm.optim.get_optimizer_info(timm_name)
        if isinstance(timm_info.opt_class, str):  # lazily imported apex / bitsandbytes classes
            continue
        defaults = dict(timm_info.defaults or {})
        if timm_info.has_momentum:
            # timm's create_optimizer_v2 defaults momentum to 0.9; keep that so "sgd" means what it means in timm.
            defaults.setdefault("momentum", 0.9)
        _REGISTRY.register(OptimizerInfo(
            timm_name, timm_info.opt_class, f"timm: {timm_info.description}", defaults, timm_info.second_order
        ))


_register_builtin()
