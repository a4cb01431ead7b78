"""Validation of the class count and class names asked for a new head."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from hubft.errors import ConfigError

__all__ = ["resolve_labels", "labels_from_config"]


def resolve_labels(
    num_classes: int | None, label_names: Sequence[str] | None
) -> tuple[int | None, tuple[str, ...] | None]:
    """Check ``num_classes`` and ``label_names`` against each other.

    Args:
        num_classes: Number of outputs of the new head (0 for a headless backbone), or None to take it from
            ``label_names`` or, when both are None, from the source.
        label_names: One unique, non-empty string per output, in output order.

    Returns:
        ``(num_classes, label_names)`` with ``num_classes`` filled in from the names when only they were given.

    Raises:
        ConfigError: ``num_classes`` is not an int >= 0; ``label_names`` is a bare string, holds a non-string,
            an empty string or a duplicate (named); or the two disagree (both counts named).
    """
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 0):
        raise ConfigError(f"num_classes={num_classes!r} is not an integer >= 0",
                          fix="pass the number of classes, or label_names")
    if label_names is None:
        return num_classes, None
    if isinstance(label_names, (str, bytes)) or not isinstance(label_names, Sequence):
        raise ConfigError(f"label_names={label_names!r} is not a list of strings",
                          fix="pass one name per class, e.g. label_names=['cat', 'dog']")
    names = tuple(label_names)
    bad = [name for name in names if not isinstance(name, str) or not name.strip()]
    if bad:
        raise ConfigError(f"label_names holds {bad[0]!r}, which is not a non-empty string",
                          fix="give every class a non-empty string name")
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ConfigError(f"label_names has duplicate labels: {', '.join(map(repr, duplicates))}",
                          fix="give every class a unique name")
    if not names:
        raise ConfigError("label_names is empty", fix="pass at least one name, or num_classes=0 for no head")
    if num_classes is not None and num_classes != len(names):
        raise ConfigError(f"num_classes={num_classes} disagrees with the {len(names)} label_names",
                          fix="drop num_classes (it is taken from label_names) or make the two agree")
    return len(names), names


def labels_from_config(value: Any, num_classes: int) -> tuple[str, ...] | None:
    """Read label names stored by timm or hubft: a list, or a ``{index: name}`` mapping without gaps.

    Returns None when there are none, or when they cannot name every output of a ``num_classes`` head (a mapping
    with gaps, or a list of another length): such names describe a different head and are not carried over.
    """
    if isinstance(value, Mapping):
        try:
            by_index = {int(key): name for key, name in value.items()}
        except (TypeError, ValueError):
            return None
        if sorted(by_index) != list(range(len(by_index))):
            return None
        value = [by_index[i] for i in range(len(by_index))]
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or len(value) != num_classes:
        return None
    names = tuple(str(name) for name in value)
    return names if names and len(set(names)) == len(names) else None
