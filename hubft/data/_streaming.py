"""``load_stream``: a Hub dataset's train split as a ``datasets.IterableDataset``, its eval split read once, bounded."""

from __future__ import annotations

from typing import Any

import datasets
from huggingface_hub import HfApi

from hubft.data._columns import find_image_column, find_label_column, is_class_label
from hubft.data._hosts import disable_datasets_extra_hosts
from hubft.data._sources import DataBundle, DataSource, hub_errors, pick_splits
from hubft.errors import DataError

__all__ = ["load_stream"]


def load_stream(
    *,
    name: str,
    revision: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    train_split: str = "train",
    eval_split: str | None = None,
    max_eval_examples: int | None = None,
) -> DataBundle:
    """Open Hub dataset ``name`` as a stream: nothing is downloaded whole.

    The revision is resolved to its commit first and every file is read at that commit
    (``source.revision_sha``), so processes that open the stream separately read the same data even if the repo
    changes meanwhile. ``bundle.train`` is the train split as a ``datasets.IterableDataset`` (its image column not
    decoded: ``{"bytes", "path"}`` values), neither split across processes nor shuffled: the trainer does both.
    ``bundle.eval`` is the eval split, streamed once and kept in memory as a ``datasets.Dataset``: its first
    ``max_eval_examples`` rows, or all of them.

    Columns are found as :func:`~hubft.data.load_data` finds them, but a stream cannot be scanned for its label
    values first: the label column must be a ``ClassLabel`` (or a list of them: multi-label), whose names are the
    labels, and the image column a ``datasets.Image``. The eval split is ``eval_split``, else the first of
    ``validation``, ``valid``, ``val``, ``eval``; a stream cannot have one carved out of it.
    ``source.num_train`` is the train split's size as the Hub records it (the dataset card's ``dataset_info``), or
    ``None`` when it records none.

    Raises:
        DataError: Unknown dataset or split, no eval split, a column missing or of the wrong kind, an eval split
            whose class names differ from train's, or an empty eval split.
        HubError: The Hub could not be reached, or refused.

    Examples:
        >>> bundle = load_stream(name="owner/images", max_eval_examples=500)  # doctest: +SKIP
        >>> bundle.source.streaming, bundle.train.num_shards  # doctest: +SKIP
        (True, 8)
    """
    disable_datasets_extra_hosts()
    with hub_errors(name):
        sha = HfApi().dataset_info(name, revision=revision).sha
        loaded = datasets.load_dataset(name, revision=sha or revision, streaming=True)
    if not isinstance(loaded, datasets.IterableDatasetDict):
        loaded = datasets.IterableDatasetDict({"train": loaded})
    train_split, eval_split = pick_splits(list(loaded), train_split, eval_split)
    if eval_split is None:
        raise DataError(f"Hub dataset {name!r} has no eval split (its splits are {list(loaded)}), and a stream cannot "
                        "have one carved out of it", fix="pass data.eval_split naming one of its splits")
    features = loaded[train_split].features
    if features is None:
        raise DataError(f"the features of Hub dataset {name!r} are not recorded",
                        fix="publish it with datasets' push_to_hub (or parquet files written by datasets)")
    image_column = find_image_column(features, image_column)
    label_column = find_label_column(features, label_column, image_column)
    _check_kinds(name, train_split, features, image_column, label_column)
    label_names, multi_label = _label_names(features[label_column])
    columns = [image_column, label_column]
    train = loaded[train_split].select_columns(columns).cast_column(image_column, datasets.Image(decode=False))
    evaluation = _read_eval(loaded[eval_split], eval_split, columns, label_names, max_eval_examples)
    splits = loaded[train_split].info.splits or {}
    num_train = splits[train_split].num_examples if train_split in splits else None
    source = DataSource(kind="hub", dataset=name, revision=revision, revision_sha=sha, train_split=train_split,
                        eval_split=eval_split, eval_fraction=None, num_train=num_train or None,
                        num_eval=len(evaluation), streaming=True)
    return DataBundle(train, evaluation, label_names, image_column, label_column, multi_label, source)


def _check_kinds(name: str, split: str, features: datasets.Features, image_column: str, label_column: str) -> None:
    if image_column == label_column:
        raise DataError(f"image_column and label_column are both {image_column!r}", fix="name two different columns")
    if not isinstance(features[image_column], datasets.Image):
        raise DataError(f"column {image_column!r} of the streamed split {split!r} of {name!r} holds "
                        f"{features[image_column]}, not images", fix="stream a dataset whose images are embedded "
                        "(datasets.Image), or drop data.streaming")
    if not is_class_label(features[label_column]):
        raise DataError(f"column {label_column!r} of the streamed split {split!r} of {name!r} is "
                        f"{features[label_column]}, not a ClassLabel: a stream cannot be scanned for its label values",
                        fix="publish the labels as a datasets.ClassLabel (class_encode_column), or drop "
                            "data.streaming")


def _label_names(feature: Any) -> tuple[list[str], bool]:
    multi = isinstance(feature, (datasets.List, datasets.LargeList))
    return list((feature.feature if multi else feature).names), multi


def _read_eval(stream: datasets.IterableDataset, split: str, columns: list[str], label_names: list[str],
               limit: int | None) -> datasets.Dataset:
    image_column, label_column = columns
    features = stream.features
    if features is None or any(c not in features for c in columns):
        raise DataError(f"eval split {split!r} lacks a column of {columns}", fix="give every split the same columns")
    names, _ = _label_names(features[label_column]) if is_class_label(features[label_column]) else (None, None)
    if names != label_names:
        raise DataError(f"the labels of eval split {split!r} ({features[label_column]}) differ from the train "
                        f"split's ClassLabel names {label_names[:10]}",
                        fix="make the ClassLabel names of every split the same")
    stream = stream.select_columns(columns).cast_column(image_column, datasets.Image(decode=False))
    if limit is not None:
        stream = stream.take(limit)
    rows = list(stream)
    if not rows:
        raise DataError(f"eval split {split!r} is empty", fix="pass data.eval_split naming a split with examples")
    kept = datasets.Features({image_column: datasets.Image(), label_column: features[label_column]})
    return datasets.Dataset.from_list(rows, features=kept)
