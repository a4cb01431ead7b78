"""Shared by the optimizer and scheduler registries: lookup by name, and checking a class's keyword arguments."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Collection, Mapping
from typing import Any, Generic, Protocol, TypeVar

from hubft.errors import ConfigError


class _Named(Protocol):
    @property
    def name(self) -> str: ...


R = TypeVar("R", bound=_Named)


class Registry(Generic[R]):
    """Records keyed by their exact (case-sensitive) ``name``.

    Names are case-sensitive on purpose: torch class names (``"SGD"``, ``"StepLR"``) mean torch's own defaults,
    while lower-case names are hubft's or timm's recipes (``"sgd"`` is timm's Nesterov SGD).

    Args:
        kind: What the records are ("optimizer", "schedule"), used in error messages.
        lister: The public function that lists the names, named in error messages.
    """

    def __init__(self, kind: str, lister: str) -> None:
        self.kind = kind
        self.lister = lister
        self._records: dict[str, R] = {}

    def register(self, record: R, *, overwrite: bool = False) -> R:
        """Add ``record`` under ``record.name`` and return it.

        Raises:
            ConfigError: The name is empty, not a string, or already taken and ``overwrite`` is false.
        """
        name = record.name
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{self.kind} name {name!r} is not a non-empty string", fix="give the record a name")
        if name in self._records and not overwrite:
            raise ConfigError(
                f"{self.kind} {name!r} is already registered", fix="pick another name or pass overwrite=True"
            )
        self._records[name] = record
        return record

    def get(self, name: str) -> R:
        """Return the record called ``name``.

        Raises:
            ConfigError: No record has that name; the message lists the closest names.
        """
        if isinstance(name, str) and name in self._records:
            return self._records[name]
        names = sorted(self._records)
        text = str(name)
        # Case-insensitive hits first: "adamW" should point at "AdamW" and "adamw" before fuzzy neighbours.
        close = [n for n in names if n.lower() == text.lower()]
        close += [n for n in difflib.get_close_matches(text, names, n=5, cutoff=0.6) if n not in close]
        hint = f"did you mean {', '.join(repr(n) for n in close)}? " if close else ""
        raise ConfigError(f"unknown {self.kind} {name!r}", fix=f"{hint}{self.lister}() lists all {len(names)} names")

    def names(self, pattern: str = "") -> list[str]:
        """Sorted names, optionally only those matching the shell-style ``pattern`` (e.g. ``"*adam*"``)."""
        return sorted(n for n in self._records if not pattern or fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._records


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
