"""Label handling: one ``ClassLabel`` vocabulary for every split, class subsets, few-shot caps, eval carve-out.

Labels are rewritten with ``remove_columns`` + ``add_column`` rather than ``Dataset.map``: ``map`` writes every
column again, images included, while this only builds the small label column. Rows are dropped with ``select``,
which keeps an index mapping instead of copying data.
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Sequence

import datasets
import numpy as np

from hubft.errors import ConfigError, DataError

Splits = dict[str, datasets.Dataset]
_SUPPORTED = "ClassLabel, int or str labels, or lists of those for multi-label"


def _element_feature(feature: object) -> tuple[object, bool]:
    if isinstance(feature, (datasets.List, datasets.LargeList)):
        return feature.feature, True
    return feature, False


def _kind(feature: object, column: str, split: str) -> tuple[str, bool]:
    element, multi = _element_feature(feature)
    if isinstance(element, datasets.ClassLabel):
        return "classlabel", multi
    if isinstance(element, datasets.Value) and element.dtype.startswith(("int", "uint")):
        return "int", multi
    if isinstance(element, datasets.Value) and element.dtype in ("string", "large_string"):
        return "str", multi
    raise DataError(
        f"label column {column!r} of split {split!r} has type {feature}, which hubft cannot use as labels",
        fix=f"use {_SUPPORTED}, or pass label_column= naming another column",
    )


def _values(dataset: datasets.Dataset, column: str) -> list:
    return dataset.with_format("arrow")[column].to_pylist()


def _rows_as_lists(values: list, multi: bool, column: str, split: str) -> list[list]:
    """Every row as a list of labels; a missing label (``None``) is an error rather than a silent drop."""
    rows = values if multi else [[value] for value in values]
    for row, labels in enumerate(rows):
        if labels is None or any(label is None for label in labels):
            raise DataError(
                f"row {row} of split {split!r} has no label in column {column!r}",
                fix="drop unlabelled rows (e.g. dataset.filter) before loading",
            )
    return rows


def encode_labels(splits: Splits, column: str) -> tuple[list[str], bool, dict[str, list[list[int]]]]:
    """Map the labels of every split onto one vocabulary.

    Names come from the train split's ``ClassLabel`` when it has one (every other split is matched to it by name);
    string labels get the sorted set of strings seen in any split; integer labels without a ``ClassLabel`` get
    ``"0" .. "N-1"`` with N one more than the largest label seen in any split.

    Returns:
        ``(label_names, multi_label, {split: [[class index, ...] per row]})``.

    Raises:
        DataError: unsupported label type, a split's label type differs from train's, a missing label, a label
            outside ``0 .. len(names) - 1``, or a split with class names train does not know.
    """
    train_name = next(iter(splits))
    kind, multi = _kind(splits[train_name].features[column], column, train_name)
    rows = {}
    for split, dataset in splits.items():
        split_kind, split_multi = _kind(dataset.features[column], column, split)
        if (split_kind == "str") != (kind == "str") or split_multi != multi:
            raise DataError(
                f"label column {column!r} of split {split!r} has type {dataset.features[column]}, but the train "
                f"split has {splits[train_name].features[column]}",
                fix="give every split the same label type",
            )
        rows[split] = _rows_as_lists(_values(dataset, column), multi, column, split)

    if kind == "classlabel":
        names = list(_element_feature(splits[train_name].features[column])[0].names)
    elif kind == "str":
        names = sorted({label for split_rows in rows.values() for labels in split_rows for label in labels})
    else:
        largest = max((label for split_rows in rows.values() for labels in split_rows for label in labels), default=-1)
        names = [str(i) for i in range(largest + 1)]

    encoded = {}
    for split, split_rows in rows.items():
        feature, _ = _element_feature(splits[split].features[column])
        if kind == "str":
            index = {name: i for i, name in enumerate(names)}
            split_rows = [[index[label] for label in labels] for labels in split_rows]
        elif isinstance(feature, datasets.ClassLabel) and list(feature.names) != names:
            split_rows = _match_names(split_rows, list(feature.names), names, column, split)
        _check_range(split_rows, len(names), column, split)
        encoded[split] = split_rows
    return names, multi, encoded


def _match_names(rows: list[list[int]], own: list[str], names: list[str], column: str, split: str) -> list[list[int]]:
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(own) - set(index))
    if unknown:
        raise DataError(
            f"split {split!r} has classes the train split lacks: {unknown[:5]}",
            fix=f"make the {column!r} ClassLabel names of every split the same",
        )
    _check_range(rows, len(own), column, split)
    return [[index[own[label]] for label in labels] for labels in rows]


def _check_range(rows: list[list[int]], num_classes: int, column: str, split: str) -> None:
    for row, labels in enumerate(rows):
        for label in labels:
            if not 0 <= label < num_classes:
                raise DataError(
                    f"label {label} in row {row} of split {split!r} is out of range: column {column!r} has "
                    f"{num_classes} classes (0 .. {num_classes - 1})",
                    fix="fix or drop rows with labels outside the class list (-1 marks an unlabelled row)",
                )


def select_classes(
    names: list[str], encoded: dict[str, list[list[int]]], classes: Sequence[str | int]
) -> tuple[list[str], dict[str, list[list[int]]]]:
    """Keep only ``classes`` (names, or indices into ``names``), re-indexed ``0 .. k-1`` in the order given.

    A single-label row whose class is dropped becomes ``[]``; a multi-label row keeps its remaining classes. Rows
    left with no class are removed later by :func:`apply_labels`.

    Raises:
        ConfigError: ``classes`` is empty, repeats a class, or mixes in something other than str / int.
        DataError: a name is unknown (close matches are suggested) or an index is out of range.
    """
    if isinstance(classes, (str, int)) or len(classes) == 0:
        raise ConfigError(f"classes must be a non-empty list of class names or indices, got {classes!r}",
                          fix="pass e.g. classes=['cat', 'dog']")
    picked = []
    for item in classes:
        if isinstance(item, bool) or not isinstance(item, (str, int, np.integer)):
            raise ConfigError(f"classes entries must be class names or indices, got {item!r}",
                              fix="pass e.g. classes=['cat', 'dog'] or classes=[0, 3]")
        if isinstance(item, str):
            if item not in names:
                close = difflib.get_close_matches(item, names, n=3)
                hint = f"did you mean {close}?" if close else f"the classes are: {names[:20]}"
                raise DataError(f"unknown class {item!r} in classes", fix=hint)
            picked.append(names.index(item))
        else:
            if not 0 <= int(item) < len(names):
                raise DataError(f"class index {item} in classes is out of range (0 .. {len(names) - 1})",
                                fix="pass class indices of the dataset's label names, or the names themselves")
            picked.append(int(item))
    if len(set(picked)) != len(picked):
        raise ConfigError(f"classes names a class twice: {list(classes)!r}", fix="list each class once")
    new_index = {old: new for new, old in enumerate(picked)}
    remapped = {
        split: [[new_index[label] for label in labels if label in new_index] for labels in rows]
        for split, rows in encoded.items()
    }
    return [names[i] for i in picked], remapped


def apply_labels(
    dataset: datasets.Dataset, column: str, rows: list[list[int]], names: list[str], multi: bool
) -> datasets.Dataset:
    """Replace ``column`` by ``rows`` as a ``ClassLabel`` (or list of ``ClassLabel``) and drop rows with no class."""
    label = datasets.ClassLabel(names=names)
    feature = datasets.List(label) if multi else label
    # same feature means same names in the same order, hence unchanged values: no rewrite needed
    if dataset.features[column] != feature:
        values = rows if multi else [labels[0] if labels else -1 for labels in rows]
        dataset = dataset.remove_columns([column]).add_column(column, values, feature=feature)
    keep = [row for row, labels in enumerate(rows) if labels]
    return dataset if len(keep) == len(rows) else dataset.select(keep)


def carve_eval(
    train: datasets.Dataset, column: str, fraction: float, seed: int, multi: bool
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split ``fraction`` of ``train`` off as the eval split, seeded, stratified by label when single-label.

    Stratification needs at least two rows of every class and at least one row per class on each side; when the
    data cannot give that, the split falls back to a plain seeded random split with a warning.

    Raises:
        DataError: ``train`` is too small to leave a row on both sides.
    """
    n_eval = math.ceil(fraction * len(train))
    if len(train) < 2 or n_eval >= len(train):
        raise DataError(
            f"the train split has {len(train)} row(s): too few to carve out an eval split of {fraction:.0%}",
            fix="add examples, lower eval_fraction, or pass eval_split= naming an existing split",
        )
    if not multi:
        try:
            parts = train.train_test_split(test_size=fraction, seed=seed, stratify_by_column=column)
            return parts["train"], parts["test"]
        except ValueError as error:
            warnings.warn(f"eval split not stratified ({error}); using a random split", stacklevel=3)
    parts = train.train_test_split(test_size=fraction, seed=seed)
    return parts["train"], parts["test"]


def cap_per_class(train: datasets.Dataset, column: str, max_per_class: int, seed: int, multi: bool) -> datasets.Dataset:
    """Keep at most ``max_per_class`` rows of each class, chosen in a ``seed``-shuffled order; rows keep their order.

    Multi-label rows are visited in that order and kept while any of their classes is still under the cap, so a
    class that co-occurs with others may end up with more than ``max_per_class`` rows.
    """
    values = _values(train, column)
    rows = values if multi else [[value] for value in values]
    counts: dict[int, int] = {}
    keep = []
    for row in np.random.default_rng(seed).permutation(len(rows)).tolist():
        if any(counts.get(label, 0) < max_per_class for label in rows[row]):
            keep.append(row)
            for label in rows[row]:
                counts[label] = counts.get(label, 0) + 1
    return train if len(keep) == len(rows) else train.select(sorted(keep))
