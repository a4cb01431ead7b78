"""Parameter groups: which parameters get which learning rate and weight decay.

Groups are plain ``list[dict]`` from a pure function, ready for any ``torch.optim`` optimizer. Every multiplier
(head LR, layer decay) is baked into each group's own ``lr``, so every torch scheduler honours it: timm's side key
``lr_scale`` is read only by timm's own schedulers and silently ignored by torch's (timm PR #2532).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Collection, Sequence
from typing import Any

from torch import nn
from timm.models._manipulate import group_with_matcher
from timm.optim import auto_group_layers

from hubft.errors import ConfigError

HEAD = "head"


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.05,
    head_lr: float | None = None,
    layer_decay: float | None = None,
    no_weight_decay: Collection[str] = (),
    include_frozen: bool = False,
) -> list[dict[str, Any]]:
    """Split a model's parameters into named optimizer groups.

    Each group is ``{"name", "params", "lr", "weight_decay"}``. Names read ``<part>.<decay>``: the part is
    ``head`` (parameters under the module prefixes of ``model.pretrained_cfg["classifier"]``), ``body`` (everything
    else) or, with ``layer_decay``, ``layer_<i>`` (timm's layer id, 0 = stem); the decay is ``decay`` or
    ``no_decay``. Groups are ordered body (bottom to top) then head; empty groups are left out.

    Rules:
        - Every trainable parameter is in exactly one group. Frozen parameters (``requires_grad=False``) are in
          none, unless ``include_frozen``: then they join the group they would have if trainable, so that a freeze
          schedule can unfreeze the body later without rebuilding the optimizer.
        - The head's LR is ``head_lr`` (default ``lr``).
        - With ``layer_decay``, a body parameter in timm layer ``i`` gets ``lr * layer_decay ** (top - i)``, where
          ``top`` is the highest layer id of the model (the head's, or shared with the final norm); layers come
          from the model's ``group_matcher()`` (timm's ``group_parameters``) or, without one, timm's
          ``auto_group_layers``. This matches timm's ``param_groups_layer_decay``, with the head split out.
        - No weight decay for parameters with ``ndim <= 1`` (norms, biases), for names in
          ``model.no_weight_decay()`` (e.g. ViT's ``pos_embed``) and for names matching ``no_weight_decay``
          (exact names or shell patterns such as ``"*.gamma"``). With ``weight_decay=0`` every group is
          ``no_decay``.
        - A peft model (:func:`hubft.add_adapter`) is split as the timm model inside it, each parameter under its
          :func:`plain_parameter_name`: the trained copy of the head is the head, an adapter of a layer sits in
          that layer's group (``lora_A`` / ``lora_B`` decay like the weight they adapt; DoRA's magnitude vectors,
          per-channel gains like a norm's, never do).

    Args:
        model: The network, usually a timm model whose ``pretrained_cfg["classifier"]`` names its head.
        lr: LR of the body's top layer, before any multiplier.
        weight_decay: Weight decay of the ``decay`` groups.
        head_lr: LR of the head; ``None`` means ``lr``.
        layer_decay: Per-layer LR multiplier from the top, in ``(0, 1]`` (e.g. 0.75); ``None`` disables it.
        no_weight_decay: Extra parameter names or patterns without weight decay.
        include_frozen: Put frozen parameters in groups too.

    Returns:
        The groups, each with its absolute ``lr``.

    Raises:
        ConfigError: A value is out of range, ``head_lr`` is given but the model has no head parameters, or
            ``layer_decay`` is given for a model with neither ``group_matcher()`` nor a classifier name.

    Examples:
        >>> import timm
        >>> model = timm.create_model("resnet10t", pretrained=False, num_classes=3)
        >>> [g["name"] for g in param_groups(model, lr=1e-3, head_lr=1e-2)]
        ['body.decay', 'body.no_decay', 'head.decay', 'head.no_decay']
    """
    _check_positive(lr, "lr")
    if head_lr is not None:
        _check_positive(head_lr, "head_lr")
    if not _is_number(weight_decay) or weight_decay < 0:
        raise ConfigError(f"weight_decay={weight_decay!r} is not a number >= 0", fix="use e.g. weight_decay=0.05")
    if layer_decay is not None and not (_is_number(layer_decay) and 0 < layer_decay <= 1):
        raise ConfigError(f"layer_decay={layer_decay!r} is not in (0, 1]", fix="use e.g. layer_decay=0.75 or None")

    model = _inside_adapters(model)
    every = [(plain_parameter_name(n), p) for n, p in model.named_parameters()]
    heads = head_prefixes(model)
    named = [(n, p) for n, p in every if p.requires_grad or include_frozen]
    in_head = {n: _under(n, heads) for n, _ in named}
    if head_lr is not None and not any(_under(n, heads) for n, _ in every):
        raise ConfigError(
            f"head_lr={head_lr} was given but the model has no head parameters "
            f"(pretrained_cfg['classifier'] = {heads or None!r})",
            fix="drop head_lr, or set model.pretrained_cfg['classifier'] to the classifier's module name",
        )
    layer_of, top = _layer_ids(model, every, heads) if layer_decay is not None else ({}, 0)
    exempt = {*no_weight_decay, *_model_no_weight_decay(model), *_GAINS}

    groups: dict[tuple, dict[str, Any]] = {}
    for name, param in named:
        decays = weight_decay > 0 and param.ndim > 1 and not any(fnmatch.fnmatchcase(name, e) for e in exempt)
        if in_head[name]:
            part, order, group_lr = HEAD, math.inf, head_lr if head_lr is not None else lr
        elif layer_decay is not None:
            layer = layer_of.get(name, top)
            part, order, group_lr = f"layer_{layer}", layer, lr * layer_decay ** (top - layer)
        else:
            part, order, group_lr = "body", -1, lr
        key = (order, part, not decays)
        if key not in groups:
            groups[key] = {
                "name": f"{part}.{'decay' if decays else 'no_decay'}",
                "params": [],
                "lr": float(group_lr),
                "weight_decay": float(weight_decay) if decays else 0.0,
            }
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Module prefixes of the classifier from ``model.pretrained_cfg["classifier"]`` (empty if unknown)."""
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if not classifier:
        return ()
    return (classifier,) if isinstance(classifier, str) else tuple(c for c in classifier if c)


def format_param_groups(groups: Sequence[dict[str, Any]]) -> str:
    """A small table of the groups: name, tensors, parameters (trainable / all when some are frozen), lr, wd.

    Examples:
        >>> import torch
        >>> weight = torch.zeros(2, 3, requires_grad=True)
        >>> print(format_param_groups([{"name": "body", "params": [weight], "lr": 1e-3, "weight_decay": 0.05}]))
        group  tensors  parameters     lr  weight_decay
        body         1           6  0.001          0.05
        total        1           6
    """
    rows = [("group", "tensors", "parameters", "lr", "weight_decay")]
    total_tensors = total_params = 0
    for i, group in enumerate(groups):
        params = list(group["params"])
        count = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        shown = f"{count:,}" if trainable == count else f"{trainable:,} / {count:,}"
        lr = group.get("lr")
        rows.append((
            str(group.get("name", f"group_{i}")),
            str(len(params)),
            shown,
            "default" if lr is None else f"{lr:.3g}",
            f"{group.get('weight_decay', 0.0):g}",
        ))
        total_tensors += len(params)
        total_params += count
    rows.append(("total", str(total_tensors), f"{total_params:,}", "", ""))
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    lines = [
        "  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


# The modules peft puts between a layer and its parameters, and the adapter name after a peft layer's prefix:
# "blocks.0.attn.qkv.base_layer.weight" -> "blocks.0.attn.qkv.weight", "head.modules_to_save.default.weight" ->
# "head.weight", "blocks.0.attn.qkv.lora_A.default.weight" -> "blocks.0.attn.qkv.lora_A.weight".
_PEFT_SEGMENTS = re.compile(r"\.(?:base_layer|original_module|modules_to_save\.[^.]+)(?=\.)")
_PEFT_ADAPTER_NAME = re.compile(r"(\.lora_[A-Za-z_]+)\.[^.]+(?=\.)")


# Per-channel gains that are not 1-dim everywhere: DoRA's magnitude of a convolution is [1, C, 1, 1].
_GAINS = ("*.lora_magnitude_vector.*",)


def plain_parameter_name(name: str) -> str:
    """A parameter's name as the timm model inside peft's wrappers calls it (a plain model's names unchanged).

    Examples:
        >>> plain_parameter_name("head.modules_to_save.default.weight")
        'head.weight'
        >>> plain_parameter_name("blocks.0.attn.qkv.lora_A.default.weight")
        'blocks.0.attn.qkv.lora_A.weight'
    """
    return _PEFT_ADAPTER_NAME.sub(r"\1", _PEFT_SEGMENTS.sub("", name))


def _inside_adapters(model: nn.Module) -> nn.Module:
    """The timm model inside a peft model (whose parameter names carry peft's prefix), else the model."""
    get_base_model = getattr(type(model), "get_base_model", None)
    return model.get_base_model() if callable(get_base_model) else model


def _layer_ids(model: nn.Module, named: list[tuple[str, nn.Parameter]],
               heads: tuple[str, ...]) -> tuple[dict[str, int], int]:
    """timm's layer id of every (plain) parameter name, and the top id."""
    if hasattr(model, "group_matcher"):
        layer_of = group_with_matcher(named, model.group_matcher(coarse=False), reverse=True)
    elif heads:
        layer_of = {plain_parameter_name(n): i for n, i in auto_group_layers(model).items()}
    else:
        raise ConfigError(
            f"layer_decay needs to know the depth of each layer, but {type(model).__name__} has neither "
            "group_matcher() nor pretrained_cfg['classifier']",
            fix="use a timm model, set model.pretrained_cfg['classifier'], or drop layer_decay",
        )
    return layer_of, max(layer_of.values(), default=0)


def _model_no_weight_decay(model: nn.Module) -> set[str]:
    names = getattr(model, "no_weight_decay", None)
    return set(names()) if callable(names) else set()


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_positive(value: Any, option: str) -> None:
    if not _is_number(value) or value <= 0:
        raise ConfigError(f"{option}={value!r} is not a number > 0", fix=f"give {option} as a positive number")
