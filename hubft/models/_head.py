"""The classifier ("head") of a timm model: which modules it is, and how a new one is made."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext

import torch
from timm.utils import unwrap_model
from torch import nn

from hubft.errors import ModelError

__all__ = [
    "HEAD_INIT_STD",
    "head_module_names",
    "head_parameter_names",
    "is_head_key",
    "reset_head",
]

# timm's own initialisation for new linear heads (ViT, ConvNeXt, ...): trunc_normal_(std=.02), zero bias.
HEAD_INIT_STD = 0.02


def head_module_names(model: nn.Module) -> tuple[str, ...]:
    """Name the classifier module(s) of a timm model.

    Read from ``model.pretrained_cfg["classifier"]`` (a name, or a tuple such as ``("head", "head_dist")`` for
    distilled models); when that field is missing or names no module, the modules returned by timm's
    ``model.get_classifier()`` are looked up instead. Wrappers (DDP, ``torch.compile``, EMA) are unwrapped.

    Raises:
        ModelError: Neither way identifies the head (the model is not a timm classifier).

    Examples:
        >>> import timm
        >>> head_module_names(timm.create_model("deit_tiny_distilled_patch16_224"))
        ('head', 'head_dist')
    """
    model = unwrap_model(model)
    modules = dict(model.named_modules())
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    names = (names,) if isinstance(names, str) else tuple(names or ())
    if names and all(name in modules for name in names):
        return names
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        heads = get_classifier()
        heads = heads if isinstance(heads, tuple) else (heads,)
        name_of = {id(module): name for name, module in modules.items()}
        found = tuple(name_of[id(head)] for head in heads if id(head) in name_of)
        if found and len(found) == len(heads):
            return found
    raise ModelError(f"cannot find the classifier of {type(model).__name__}: pretrained_cfg['classifier'] is "
                     f"{names or None!r} and get_classifier() names no submodule",
                     fix="use a timm classification model, or set model.pretrained_cfg['classifier']")


def is_head_key(key: str, heads: Iterable[str]) -> bool:
    """Whether a state-dict or parameter name lies under one of the head module names."""
    return any(key == head or key.startswith(head + ".") for head in heads)


def head_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that belong to the head, in ``named_parameters()`` order."""
    heads = head_module_names(model)
    return [name for name, _ in unwrap_model(model).named_parameters() if is_head_key(name, heads)]


def reset_head(model: nn.Module, num_classes: int, *, seed: int | None = None) -> None:
    """Replace the classifier with a freshly initialised one for ``num_classes`` outputs, in place.

    Uses timm's ``model.reset_classifier(num_classes)``, which keeps the pooling and, for every kind of timm head
    (linear, 1x1 conv, ViT and distilled heads, heads after pre-logits or a norm), replaces only what depends on
    the class count. Some models rebuild slightly more than the classifier (LeViT's ``NormLinear`` rebuilds its
    BatchNorm): every tensor outside the head modules that survives with the same shape gets its old value back,
    so the body stays bit-identical.

    Initialisation (timm's ``"timm"`` scheme for new heads): weights with 2+ dims ``trunc_normal_(std=0.02)``,
    biases zero, other 1-dim weights (norm scales) one. Values are drawn in float32 on the CPU and copied in, so
    a ``seed`` gives the same head on every device and dtype, whatever the global RNG state, and leaves the
    global RNG untouched; without a seed, the global torch RNG is used.

    Args:
        model: A timm classification model (not wrapped).
        num_classes: Number of outputs; 0 leaves no classifier (pooled features out).
        seed: Seed for the head initialisation.

    Raises:
        ModelError: The model has no ``reset_classifier``, or its head cannot be found.
    """
    if not callable(getattr(model, "reset_classifier", None)):
        raise ModelError(f"{type(model).__name__} has no reset_classifier(), so its head cannot be replaced",
                         fix="use a timm classification model")
    heads = head_module_names(model)
    body_before = {key: value for key, value in model.state_dict().items() if not is_head_key(key, heads)}
    reference = next((p for key, p in model.named_parameters() if not is_head_key(key, heads)), None)
    # reset_classifier draws torch's default init from the global RNG; that draw is overwritten below, so
    # with a seed it must not advance the caller's RNG either.
    with torch.random.fork_rng(devices=[]) if seed is not None else nullcontext():
        model.reset_classifier(num_classes)
    heads = head_module_names(model)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            old = body_before.get(key)
            if old is not None and old.shape == value.shape and old.data_ptr() != value.data_ptr():
                value.copy_(old)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for head in heads:
            module = model.get_submodule(head)
            if reference is not None:
                module.to(reference.device)
                if reference.is_floating_point():
                    module.to(reference.dtype)
            for name, param in module.named_parameters():
                param.copy_(_initial_value(name, param, generator))


def _initial_value(name: str, param: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if name.rsplit(".", 1)[-1] == "bias":
        return torch.zeros(param.shape)
    if param.ndim >= 2:
        return nn.init.trunc_normal_(torch.empty(param.shape), std=HEAD_INIT_STD, generator=generator)
    return torch.ones(param.shape)
