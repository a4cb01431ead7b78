"""One registry shape for every pluggable family: losses, optimizers, schedules and tasks.

Each family is a :class:`Registry` of small frozen records (``LossInfo``, ``OptimizerInfo``, ``SchedulerInfo``,
``Task``), each with a ``name``. Adding an entry is adding a record.

How a name is looked up, the same in every family:

1. the exact name (``"SGD"`` is torch's plain SGD, ``"sgd"`` timm's Nesterov SGD: both exist);
2. otherwise the name with case folded and ``-`` read as ``_`` (``"Focal"``, ``"Cosine"``, ``"cross-entropy"``),
   when that matches exactly one record; when it matches several (``"Sgd"``), the error lists them;
3. otherwise a :class:`~hubft.errors.ConfigError` naming the close matches.

User code is named as ``"package.module:attr"`` (:func:`import_object`), in configs and on the command line alike.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import re
from collections.abc import Iterator
from typing import Any, Generic, Protocol, TypeVar

from hubft.errors import ConfigError

__all__ = ["Registry", "import_object", "normalize_name"]

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
# Up to this many names, an unknown-name error lists them all; beyond it, it names the lister.
_LISTED = 30


class _Named(Protocol):
    @property
    def name(self) -> str: ...


R = TypeVar("R", bound=_Named)


def normalize_name(name: str) -> str:
    """The form names are compared in when the exact name is not registered: stripped, lower case, ``-`` as ``_``.

    Examples:
        >>> normalize_name(" Cross-Entropy ")
        'cross_entropy'
    """
    return name.strip().lower().replace("-", "_")


class Registry(Generic[R]):
    """Records of one family, looked up by name as the module docstring says.

    Args:
        kind: What one record is ("loss", "optimizer", "schedule", "task"), for messages.
        plural: ``kind``'s plural; default ``kind + "s"``.
        lister: The public function that lists the names (``"list_losses"``), named in messages.
        hint: Appended to the fix of an unknown-name error (e.g. how to name user code).
    """

    def __init__(self, kind: str, lister: str, *, plural: str | None = None, hint: str = "") -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.lister = lister
        self.hint = hint
        self._records: dict[str, R] = {}

    def register(self, record: R, *, overwrite: bool = False) -> R:
        """Add ``record`` under ``record.name`` and return it.

        Raises:
            ConfigError: The name is not a letter followed by letters, digits, ``_``, ``-`` or ``.`` (``:`` marks
                ``module:attr`` paths), or is taken and ``overwrite`` is false.
        """
        name = record.name
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(f"{self.kind} name {name!r} is not valid",
                              fix="use a letter followed by letters, digits, '_', '-' or '.'")
        if name in self._records and not overwrite:
            raise ConfigError(f"{self.kind} {name!r} is already registered",
                              fix="pick another name or pass overwrite=True")
        self._records[name] = record
        return record

    def resolve(self, name: str) -> str:
        """The registered name that ``name`` denotes (exact, else case- and dash-insensitive when unambiguous).

        Raises:
            ConfigError: No record, or several, match; the message names the close matches.
        """
        if isinstance(name, str) and name in self._records:
            return name
        text = name if isinstance(name, str) else str(name)
        folded = [n for n in self._records if normalize_name(n) == normalize_name(text)]
        if len(folded) == 1:
            return folded[0]
        if folded:
            raise ConfigError(f"{self.kind} {name!r} is ambiguous: it could be any of {_quoted(sorted(folded))}",
                              fix="write the name with its exact case")
        raise self._unknown(text)

    def get(self, name: str) -> R:
        """The record that ``name`` denotes (see :meth:`resolve`).

        Raises:
            ConfigError: No record, or several, match; the message names the close matches.
        """
        return self._records[self.resolve(name)]

    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted names; with ``pattern``, only those matching the shell-style pattern, ignoring case (``"*adam*"``)."""
        if not pattern:
            return sorted(self._records)
        folded = pattern.lower()
        return sorted(n for n in self._records if fnmatch.fnmatchcase(n.lower(), folded))

    def copy(self) -> "Registry[R]":
        """A registry with the same records (for tests that register entries they must not leak)."""
        other: Registry[R] = Registry(self.kind, self.lister, plural=self.plural, hint=self.hint)
        other._records = dict(self._records)
        return other

    def __contains__(self, name: object) -> bool:
        return name in self._records

    def __iter__(self) -> Iterator[R]:
        return iter([self._records[n] for n in sorted(self._records)])

    def __len__(self) -> int:
        return len(self._records)

    def _unknown(self, text: str) -> ConfigError:
        names = sorted(self._records)
        by_key = {normalize_name(n): n for n in names}
        close = [n for n in names if n.lower() == text.lower()]
        close += [by_key[k] for k in difflib.get_close_matches(normalize_name(text), by_key, n=3, cutoff=0.6)
                  if by_key[k] not in close]
        mean = f"did you mean {' or '.join(repr(n) for n in close)}? " if close else ""
        listing = (f"registered {self.plural}: {', '.join(names)}" if len(names) <= _LISTED
                   else f"{self.lister}() lists all {len(names)} names")
        return ConfigError(f"unknown {self.kind} {text!r}", fix=mean + listing + (f"; {self.hint}" if self.hint else ""))


def import_object(path: str, *, what: str = "object") -> Any:
    """Import ``"package.module:attr"`` (``attr`` may be dotted, e.g. ``"pkg.mod:Class.method"``).

    Args:
        path: The dotted path.
        what: What the object is for ("loss", "schedule", ...), for messages.

    Raises:
        ConfigError: The path is malformed, the module cannot be imported (missing, or raising on import), or it
            has no such attribute (close matches listed).

    Examples:
        >>> import_object("torch.nn:SmoothL1Loss", what="loss").__name__
        'SmoothL1Loss'
    """
    module_name, sep, attr = path.partition(":") if isinstance(path, str) else ("", "", "")
    if not sep or not module_name or not attr or ":" in attr:
        raise ConfigError(f"{what} path {path!r} is not of the form 'package.module:attr'",
                          fix="e.g. 'my_package.my_module:my_function'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ConfigError(
            f"cannot import module {module_name!r} for {what} {path!r}: {error}",
            fix="check the spelling, and that the package is installed or its folder is on sys.path / PYTHONPATH",
        ) from error
    except Exception as error:  # user code failing at import: name the file's error rather than crash
        raise ConfigError(f"importing module {module_name!r} for {what} {path!r} failed with "
                          f"{type(error).__name__}: {error}", fix=f"fix the error in {module_name}") from error
    obj: Any = module
    for depth, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            owner = ".".join([module_name, *attr.split(".")[:depth]])
            close = difflib.get_close_matches(part, [n for n in dir(obj) if not n.startswith("_")], n=3)
            mean = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
            raise ConfigError(f"{owner!r} has no attribute {part!r} ({what} {path!r})",
                              fix=f"{mean}check the name after ':'")
        obj = getattr(obj, part)
    return obj


def _quoted(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names)
