"""Which modules of a timm backbone get low-rank adapters by default: one record per model family.

Each family picks modules by timm's own names and module types. The head is never a target (it is trained fully,
see :func:`hubft.models.add_adapter`), nor is the stem (timm's ``group_matcher()["stem"]``, e.g. a ViT's patch
embedding, whose ``proj`` would otherwise look like an attention projection). The families are tried in order and
the first that finds modules wins.

Depthwise convolutions are left out everywhere: a rank-r update of a ``groups == channels`` 7x7 convolution has more
parameters than the layer itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from timm.utils import unwrap_model
from torch import nn

from hubft.errors import ConfigError
from hubft.models._head import head_module_names, is_head_key

__all__ = ["TARGET_FAMILIES", "TargetFamily", "adaptable_modules", "default_targets", "describe_candidates",
           "target_pattern"]

# The attention projections of timm's transformer blocks (ViT, DeiT, Swin, BEiT, EVA, ...) and the two linears of
# an MLP block.
_ATTENTION = ("attn.qkv", "attn.q", "attn.k", "attn.v", "attn.kv", "attn.q_proj", "attn.k_proj", "attn.v_proj",
              "attn.proj")
_MLP = ("mlp.fc1", "mlp.fc2")


@dataclass(frozen=True)
class TargetFamily:
    """A model family's default adapter targets.

    Attributes:
        name: Short name, recorded with the adapter (``vit``, ``convnext``, ``conv``).
        description: What is targeted, in words (the card and errors show it).
        select: From the adaptable modules (name -> module, in model order), the names to target; empty when the
            family does not apply.
    """

    name: str
    description: str
    select: Callable[[dict[str, nn.Module]], list[str]]


def _ends(name: str, suffixes: Sequence[str]) -> bool:
    return any(name == s or name.endswith("." + s) for s in suffixes)


def _pointwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1
                                             and tuple(module.kernel_size) == (1, 1))


def _transformer(modules: dict[str, nn.Module]) -> list[str]:
    if not any(isinstance(m, nn.Linear) and _ends(n, _ATTENTION) for n, m in modules.items()):
        return []
    return [n for n, m in modules.items() if isinstance(m, nn.Linear) and _ends(n, _ATTENTION + _MLP)]


def _mlp(modules: dict[str, nn.Module]) -> list[str]:
    return [n for n, m in modules.items() if _pointwise(m) and _ends(n, _MLP)]


def _convolutions(modules: dict[str, nn.Module]) -> list[str]:
    return [n for n, m in modules.items() if isinstance(m, nn.Conv2d) and m.groups == 1
            and tuple(m.kernel_size) in ((1, 1), (3, 3))]


TARGET_FAMILIES: tuple[TargetFamily, ...] = (
    TargetFamily("vit", "the attention (qkv, proj) and MLP (fc1, fc2) linears of transformer blocks", _transformer),
    TargetFamily("convnext", "the MLP linears (fc1, fc2) of ConvNeXt-style blocks, not the depthwise convolutions",
                 _mlp),
    TargetFamily("conv", "the 3x3 and 1x1 convolutions of ResNet-style blocks (not depthwise, not the stem)",
                 _convolutions),
)
"""The families, in the order they are tried."""


def adaptable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules peft can adapt (linears and convolutions), outside the stem and the head, in model order."""
    model = unwrap_model(model)
    heads = head_module_names(model)
    stem = _stem_pattern(model)
    return {name: module for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv2d)) and not is_head_key(name, heads)
            and not (stem is not None and stem.match(name))}


def _stem_pattern(model: nn.Module) -> re.Pattern | None:
    """timm's regex for the stem's parameters (``group_matcher(coarse=True)["stem"]``), or None."""
    matcher = getattr(model, "group_matcher", None)
    stem = matcher(coarse=True).get("stem") if callable(matcher) else None
    if isinstance(stem, str):
        return re.compile(stem)
    if isinstance(stem, (list, tuple)) and stem:
        return re.compile("|".join(f"(?:{entry[0] if isinstance(entry, tuple) else entry})" for entry in stem))
    return None


def default_targets(model: nn.Module) -> tuple[TargetFamily, list[str]]:
    """The first family of :data:`TARGET_FAMILIES` that finds modules in ``model``, and the module names it found.

    Raises:
        ConfigError: No family applies; the message lists the modules that could be targeted instead.

    Examples:
        >>> import timm
        >>> family, names = default_targets(timm.create_model("test_vit", img_size=32))
        >>> family.name, names[:2]
        ('vit', ['blocks.0.attn.qkv', 'blocks.0.attn.proj'])
    """
    modules = adaptable_modules(model)
    for family in TARGET_FAMILIES:
        names = family.select(modules)
        if names:
            return family, names
    raise ConfigError(f"no default adapter targets for {type(unwrap_model(model)).__name__}: it has none of "
                      + "; ".join(f.description for f in TARGET_FAMILIES),
                      fix=f"name them in model.adapter_options.target_modules, e.g. from {describe_candidates(model)}")


def describe_candidates(model: nn.Module, limit: int = 12) -> str:
    """The adaptable modules of ``model``, block indices folded (``blocks.*.attn.qkv``), for error messages."""
    folded: dict[str, None] = {}
    for name, module in adaptable_modules(model).items():
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            continue  # depthwise: never worth a low-rank update
        folded.setdefault(re.sub(r"(?<=\.)\d+(?=\.)|^\d+(?=\.)", "*", name))
    names = list(folded)
    shown = ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")
    return shown or "(none: the model has no linear or convolution layers outside its stem and head)"


def target_pattern(names: Sequence[str], model: nn.Module) -> str | list[str]:
    """peft's ``target_modules`` for exactly ``names``: a short regex with block indices folded, when it matches
    those modules and no other module of ``model``; else the list of names.

    Examples:
        >>> import timm
        >>> print(target_pattern(["blocks.0.attn.qkv", "blocks.1.attn.qkv"], timm.create_model("test_vit", depth=2)))
        blocks\\.\\d+\\.attn\\.qkv
    """
    parts = dict.fromkeys(r"\.".join(r"\d+" if p.isdigit() else re.escape(p) for p in n.split(".")) for n in names)
    pattern = "|".join(parts)
    every = [n for n, _ in unwrap_model(model).named_modules() if n]
    if sorted(n for n in every if re.fullmatch(pattern, n)) == sorted(names):
        return pattern
    return list(names)

