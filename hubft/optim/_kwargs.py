"""Shared by the optimizer and scheduler records: which keyword arguments a torch class takes, checked up front."""

from __future__ import annotations

import inspect
from collections.abc import Collection, Mapping
from typing import Any

from hubft.errors import ConfigError


def accepted_kwargs(cls: type, exclude: Collection[str] = ()) -> tuple[str, ...] | None:
    """Keyword arguments of ``cls(first, ...)`` after its first argument; ``None`` if it takes ``**kwargs``."""
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, params / optimizer
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in params if p.kind in keyword and p.name not in exclude)


def check_kwargs(kwargs: Mapping[str, Any], accepted: tuple[str, ...] | None, label: str) -> None:
    """Raise ConfigError naming the first kwarg not in ``accepted`` and listing those that are.

    ``label`` names what takes them, e.g. ``"optimizer 'adamw' (AdamW)"``.
    """
    unknown = [] if accepted is None else [k for k in kwargs if k not in accepted]
    if unknown:
        raise ConfigError(f"{label} takes no argument {unknown[0]!r}",
                          fix=f"use only: {', '.join(accepted or ()) or 'no arguments'}")
