"""Find the image and label columns of a dataset, and turn a column of image paths into images."""

from __future__ import annotations

import os
from pathlib import Path

import datasets

from hubft.errors import DataError

# Names tried, in order, when no column has the datasets.Image feature and the images are given as file paths.
IMAGE_PATH_COLUMNS = ("image", "image_path", "img", "path", "file", "file_name", "filename", "filepath", "file_path")
LABEL_COLUMNS = ("label", "labels", "target", "class")


def _describe(features: datasets.Features) -> str:
    return ", ".join(f"{name} ({_feature_name(feature)})" for name, feature in features.items()) or "none"


def _feature_name(feature: object) -> str:
    if isinstance(feature, (datasets.List, datasets.LargeList)):
        return f"list of {_feature_name(feature.feature)}"
    if isinstance(feature, datasets.Value):
        return feature.dtype
    return type(feature).__name__


def is_class_label(feature: object) -> bool:
    """True for a ``ClassLabel`` or a list of them (the multi-label form)."""
    if isinstance(feature, (datasets.List, datasets.LargeList)):
        feature = feature.feature
    return isinstance(feature, datasets.ClassLabel)


def find_image_column(features: datasets.Features, requested: str | None) -> str:
    """The column holding the images: ``requested`` if given, else the first ``datasets.Image`` feature, else the
    first string column named like a path (:data:`IMAGE_PATH_COLUMNS`).

    Raises:
        DataError: ``requested`` is not a column, or nothing looks like an image column. Lists the columns.
    """
    if requested is not None:
        if requested not in features:
            raise DataError(
                f"image column {requested!r} not found; the columns are: {_describe(features)}",
                fix="pass image_column= one of those columns",
            )
        return requested
    for name, feature in features.items():
        if isinstance(feature, datasets.Image):
            return name
    for candidate in IMAGE_PATH_COLUMNS:
        for name, feature in features.items():
            if name.lower() == candidate and _is_string(feature):
                return name
    raise DataError(
        f"no image column found; the columns are: {_describe(features)}",
        fix="pass image_column= naming the column of images or image file paths",
    )


def find_label_column(features: datasets.Features, requested: str | None, image_column: str) -> str:
    """The column holding the labels: ``requested`` if given, else the first ``ClassLabel`` (or list of
    ``ClassLabel``) feature, else the first column named one of :data:`LABEL_COLUMNS` (case-insensitive).

    Raises:
        DataError: ``requested`` is not a column, or no column looks like labels. Lists the columns.
    """
    if requested is not None:
        if requested not in features:
            raise DataError(
                f"label column {requested!r} not found; the columns are: {_describe(features)}",
                fix="pass label_column= one of those columns",
            )
        return requested
    for name, feature in features.items():
        if name != image_column and is_class_label(feature):
            return name
    for candidate in LABEL_COLUMNS:
        for name in features:
            if name != image_column and name.lower() == candidate:
                return name
    raise DataError(
        f"no label column found; the columns are: {_describe(features)}",
        fix="pass label_column= naming the column of class labels",
    )


def _is_string(feature: object) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def check_columns(split: str, dataset: datasets.Dataset, columns: list[str]) -> None:
    """Raise :class:`DataError` when ``split`` lacks one of ``columns`` (found on the train split)."""
    missing = [column for column in columns if column not in dataset.features]
    if missing:
        raise DataError(
            f"split {split!r} has no column {missing[0]!r}; its columns are: {_describe(dataset.features)}",
            fix="give every split the same image and label columns",
        )


def as_image_column(dataset: datasets.Dataset, column: str, base_dir: Path | None, split: str) -> datasets.Dataset:
    """Return ``dataset`` with ``column`` as a decoding ``datasets.Image`` feature.

    A string column is taken as file paths: relative ones are resolved against ``base_dir`` (the directory of the
    CSV/parquet file they came from; the working directory when ``None``), every file must exist, and the column is
    then cast to ``datasets.Image()``. Files are not opened here; a corrupt file is reported when it is decoded.

    Raises:
        DataError: the column is neither images nor strings, a path is empty, or a file does not exist (the first
            few are named, with their rows).
    """
    feature = dataset.features[column]
    if isinstance(feature, datasets.Image):
        return dataset if feature.decode else dataset.cast_column(column, datasets.Image())
    if not _is_string(feature):
        raise DataError(
            f"column {column!r} of split {split!r} holds {_feature_name(feature)}, not images or image paths",
            fix="pass image_column= naming a column of images or of image file paths",
        )
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    paths = [
        None if value in (None, "") else os.path.normpath(base / os.path.expanduser(value))
        for value in dataset.with_format("arrow")[column].to_pylist()
    ]
    missing = [(row, path) for row, path in enumerate(paths) if path is None or not os.path.isfile(path)]
    if missing:
        shown = "; ".join(f"row {row}: {path or '<empty>'}" for row, path in missing[:3])
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise DataError(
            f"{len(missing)} image file(s) of split {split!r} not found: {shown}{more}",
            fix=f"fix the paths in column {column!r}; relative paths are resolved against {base}",
        )
    dataset = dataset.remove_columns([column]).add_column(column, paths, feature=datasets.Value("string"))
    return dataset.cast_column(column, datasets.Image())
