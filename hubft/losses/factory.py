"""Build a loss module from whatever names it: a registry name, a user function or class, a dotted path, or a
weighted combination of those."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import torch
from torch import nn

from hubft.errors import ConfigError
from hubft.losses.registry import get_loss_info
from hubft.losses.wrappers import FunctionLoss, WeightedSumLoss, callable_name
from hubft.registry import import_object

LossSpec = Union[
    str,
    Callable[..., torch.Tensor],
    type[nn.Module],
    nn.Module,
    Mapping[str, Any],
    Sequence[tuple[Any, Any]],
]

_FORMS = (
    "a registered name (see list_losses()), 'package.module:attr', a loss function f(output, target), an "
    "nn.Module subclass or instance, a mapping {spec: weight}, or a list of (spec, weight) pairs"
)


def create_loss(spec: LossSpec, **kwargs: Any) -> nn.Module:
    """Build the loss module that ``spec`` names, with ``kwargs`` as its options.

    ``spec`` may be:

    * a registered name (``"focal"``, case-insensitive, ``-`` read as ``_``): ``kwargs`` override the record's
      ``defaults``, which override the factory's own;
    * a loss function ``f(output, target, **kwargs) -> Tensor``: wrapped in :class:`FunctionLoss`, ``kwargs``
      bound to every call;
    * an ``nn.Module`` subclass: instantiated with ``kwargs``; an instance: returned as is (no ``kwargs``);
    * ``"package.module:attr"`` (``attr`` may be dotted): imported, then treated as one of the two forms above,
      so YAML and the CLI can name user code;
    * a weighted combination, a :class:`WeightedSumLoss` summing ``weight * component``: a mapping
      ``{spec: weight_or_options}`` (string specs, as in YAML) or a list of ``(spec, weight_or_options)`` pairs
      (any spec, repeats allowed). ``weight_or_options`` is a positive number, or a mapping whose ``"weight"``
      key (default 1.0) is the weight and whose other keys are that component's options, e.g.
      ``{"cross_entropy": 1.0, "focal": {"weight": 0.5, "gamma": 2}}``. Options go per component, so
      ``kwargs`` are refused for a combination: no option has one meaning for every component.

    A registered or user class is checked against its signature before it is built, so a misspelt option is a
    ConfigError naming the valid ones rather than a TypeError.

    Args:
        spec: What to build, as above.
        **kwargs: Options for the loss.

    Returns:
        The loss module; call it as ``loss(output, target)``.

    Raises:
        ConfigError: The name is unknown (close matches listed), the dotted path cannot be imported or lacks the
            attribute, an option is unknown or invalid, ``kwargs`` were given for an instance or a combination,
            a combination is empty or has a bad weight, or ``spec`` is none of the forms above.

    Examples:
        >>> create_loss("focal", gamma=1.0)
        FocalLoss(mode='multiclass', gamma=1.0, reduction='mean')
        >>> create_loss({"cross_entropy": 1.0, "dice": {"weight": 0.5, "smooth": 0.1}})
        WeightedSumLoss(
          cross_entropy: 1, dice: 0.5
          ...
        >>> create_loss("torch.nn:SmoothL1Loss", beta=0.5)
        SmoothL1Loss()
    """
    if isinstance(spec, nn.Module):
        _refuse_kwargs(kwargs, f"the loss instance {callable_name(spec)}", "pass options when building it")
        return spec
    if isinstance(spec, str):
        if ":" in spec:
            return _from_object(import_object(spec, what="loss"), kwargs, spec)
        info = get_loss_info(spec)
        return _build(info.factory, {**info.defaults, **kwargs}, f"loss {info.name!r}")
    if isinstance(spec, Mapping):
        _refuse_kwargs(kwargs, "a weighted combination", "put options per component: {spec: {weight: w, ...}}")
        if not all(isinstance(key, str) for key in spec):
            raise ConfigError(
                f"a weighted loss mapping needs string keys; got {list(spec)!r}",
                fix="use a list of (spec, weight) pairs for functions, classes or instances",
            )
        return _combination(list(spec.items()))
    if isinstance(spec, (list, tuple)):
        _refuse_kwargs(kwargs, "a weighted combination", "put options per component: (spec, {weight: w, ...})")
        pairs = []
        for item in spec:
            if isinstance(item, str) or not isinstance(item, (list, tuple)) or len(item) != 2:
                raise ConfigError(
                    f"a weighted loss list needs (spec, weight) pairs; got item {item!r}",
                    fix="e.g. [('cross_entropy', 1.0), ('dice', 0.5)]",
                )
            pairs.append((item[0], item[1]))
        return _combination(pairs)
    if callable(spec):
        return _from_object(spec, kwargs, callable_name(spec))
    raise ConfigError(f"cannot make a loss from {spec!r} ({type(spec).__name__})", fix=f"give {_FORMS}")


def _refuse_kwargs(kwargs: Mapping[str, Any], what: str, fix: str) -> None:
    if kwargs:
        raise ConfigError(f"options {sorted(kwargs)} cannot be applied to {what}", fix=fix)


def _from_object(obj: Any, kwargs: dict[str, Any], label: str) -> nn.Module:
    if isinstance(obj, nn.Module):
        _refuse_kwargs(kwargs, f"the loss instance {label!r}", "point at the class instead, or drop the options")
        return obj
    if inspect.isclass(obj):
        if not issubclass(obj, nn.Module):
            raise ConfigError(
                f"{label!r} is a class but not an nn.Module subclass",
                fix="subclass torch.nn.Module with forward(output, target), or point at a loss function",
            )
        return _build(obj, kwargs, f"loss class {label!r}")
    if callable(obj):
        return FunctionLoss(obj, **kwargs)
    raise ConfigError(f"{label!r} is a {type(obj).__name__}, not a loss", fix=f"give {_FORMS}")


def _build(factory: Callable[..., nn.Module], kwargs: dict[str, Any], label: str) -> nn.Module:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError as error:
            valid = [
                name
                for name, p in signature.parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
            unknown = [key for key in kwargs if key not in valid]
            close = [m for key in unknown for m in difflib.get_close_matches(key, valid, n=1)]
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            raise ConfigError(
                f"{label} does not take the options {sorted(kwargs)}: {error}",
                fix=f"{hint}valid options: {', '.join(valid) or 'none'}",
            ) from error
    module = factory(**kwargs)
    if not isinstance(module, nn.Module):
        raise ConfigError(
            f"{label} built a {type(module).__name__}, not an nn.Module",
            fix="register an nn.Module subclass, or functools.partial(FunctionLoss, fn) for a function",
        )
    return module


def _combination(pairs: list[tuple[Any, Any]]) -> WeightedSumLoss:
    if not pairs:
        raise ConfigError("a weighted loss needs at least one component", fix="e.g. {cross_entropy: 1.0}")
    components = []
    for spec, value in pairs:
        name = spec if isinstance(spec, str) else callable_name(spec)
        if isinstance(value, Mapping):
            options = dict(value)
            weight = options.pop("weight", 1.0)
        else:
            weight, options = value, {}
        components.append((name, create_loss(spec, **options), weight))
    return WeightedSumLoss(components)


def with_default_options(spec: LossSpec, options: Mapping[str, Any],
                         defaults: Mapping[str, Any]) -> tuple[LossSpec, dict[str, Any]]:
    """``(spec, options)`` with ``defaults`` added for every registered loss in ``spec`` whose factory takes them.

    For a registered name they join ``options`` (which win); in a mapping of registered names each component's
    own options win over them. Other specs (functions, modules, ``module:attr`` paths, lists) are returned as they
    are: their options are the user's business.

    Examples:
        >>> with_default_options({"cross_entropy": 1.0, "dice": {"weight": 0.5}}, {}, {"ignore_index": 255})[0]
        {'cross_entropy': {'ignore_index': 255, 'weight': 1.0}, 'dice': {'ignore_index': 255, 'weight': 0.5}}
    """
    options = dict(options)
    if not defaults:
        return spec, options
    if isinstance(spec, str):
        return spec, {**_taken(spec, defaults), **options}
    if not isinstance(spec, Mapping) or not all(isinstance(key, str) for key in spec):
        return spec, options
    out: dict[str, Any] = {}
    for name, value in spec.items():
        own = dict(value) if isinstance(value, Mapping) else {"weight": value}
        out[name] = {**_taken(name, defaults), **own}
    return out, options


def _taken(name: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
    if ":" in name:
        return {}
    try:
        parameters = inspect.signature(get_loss_info(name).factory).parameters
    except (ConfigError, TypeError, ValueError):
        return {}
    return {key: value for key, value in defaults.items() if key in parameters}
