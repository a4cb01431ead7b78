"""``load_data``: one entry point for Hub datasets, image folders, CSV/parquet files and in-memory datasets."""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

from hubft.data._columns import as_image_column, check_columns, find_image_column, find_label_column
from hubft.data._hosts import disable_datasets_extra_hosts
from hubft.data._labels import apply_labels, cap_per_class, carve_eval, encode_labels, select_classes
from hubft.errors import ConfigError, DataError, HubError

__all__ = ["DataBundle", "DataSource", "DataSplit", "load_data", "load_split"]

# Tried in order when eval_split is not given. "test" is deliberately absent: choosing checkpoints on the test
# split would leak it, so without a validation split an eval split is carved out of train instead.
EVAL_SPLIT_NAMES = ("validation", "valid", "val", "eval")
_FILE_BUILDERS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class DataSource:
    """Where a :class:`DataBundle` came from, for logs and the model card.

    Attributes:
        kind: ``"hub"``, ``"imagefolder"``, ``"csv"``, ``"parquet"`` or ``"python"`` (a dataset object passed in).
        dataset: The Hub dataset id or the local path; ``None`` for a dataset object.
        revision: The revision asked for (Hub only).
        revision_sha: The commit the Hub data was read at, when it could be determined.
        train_split: The split used for training.
        eval_split: The split used for evaluation, or ``None`` when it was carved out of the train split.
        eval_fraction: The fraction of train carved out for evaluation, or ``None`` when ``eval_split`` was used.
        num_train: Rows in the final train split.
        num_eval: Rows in the final eval split.
        streaming: Whether the train split is streamed (then ``num_train`` is the size the Hub records for it, or
            ``None`` when it records none).
    """

    kind: str
    dataset: str | None
    revision: str | None
    revision_sha: str | None
    train_split: str
    eval_split: str | None
    eval_fraction: float | None
    num_train: int | None
    num_eval: int
    streaming: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON/YAML-serialisable)."""
        return dataclasses.asdict(self)


@dataclass
class DataBundle:
    """Train and eval splits ready for :class:`~hubft.data.ImageClassificationDataset`, with their label vocabulary.

    Both splits hold exactly two columns: ``image_column`` (a decoding ``datasets.Image``) and ``label_column``
    (a ``ClassLabel`` over ``label_names``, or a list of them when ``multi_label``). A streamed bundle
    (:func:`~hubft.data.load_stream`, ``source.streaming``) has a ``datasets.IterableDataset`` as ``train``, whose
    images are not decoded.
    """

    train: datasets.Dataset | datasets.IterableDataset
    eval: datasets.Dataset
    label_names: list[str]
    image_column: str
    label_column: str
    multi_label: bool
    source: DataSource

    @property
    def num_classes(self) -> int:
        """``len(label_names)``."""
        return len(self.label_names)

    @property
    def id2label(self) -> dict[int, str]:
        """Class index to name, the mapping model configs store."""
        return dict(enumerate(self.label_names))


def _check_options(
    name: str | None,
    path: str | Path | None,
    dataset: object,
    revision: str | None,
    eval_fraction: float,
    max_per_class: int | None,
    seed: int,
) -> None:
    given = [key for key, value in (("name", name), ("path", path), ("dataset", dataset)) if value is not None]
    if len(given) != 1:
        raise ConfigError(
            f"pass exactly one of name, path or dataset (got {', '.join(given) or 'none'})",
            fix="name= for a Hub dataset id, path= for a local folder/CSV/parquet, dataset= for a datasets object",
        )
    if revision is not None and name is None:
        raise ConfigError("revision only applies to Hub datasets (name=)", fix="drop revision=")
    if isinstance(eval_fraction, bool) or not isinstance(eval_fraction, (int, float)) or not 0 < eval_fraction < 1:
        raise ConfigError(f"eval_fraction must be between 0 and 1 (exclusive), got {eval_fraction!r}",
                          fix="pass e.g. eval_fraction=0.2")
    if max_per_class is not None and (
        isinstance(max_per_class, bool) or not isinstance(max_per_class, int) or max_per_class < 1
    ):
        raise ConfigError(f"max_per_class must be a positive int, got {max_per_class!r}",
                          fix="pass e.g. max_per_class=16, or None to keep every example")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an int, got {seed!r}", fix="pass e.g. seed=0")


def _revision_sha(loaded: datasets.DatasetDict, name: str, revision: str | None) -> str | None:
    # datasets keys its Arrow cache of a Hub dataset by commit: .../{config}/0.0.0/{sha}/...arrow, so the folder
    # says which commit was actually read, even when a cache fallback served something other than what was asked
    cached = None
    for split in loaded.values():
        for cache_file in split.cache_files:
            shas = [part for part in Path(cache_file["filename"]).parts if _SHA.match(part)]
            cached = cached or (shas[-1] if shas else None)
    requested = revision if revision is not None and _SHA.match(revision) else None
    if requested and cached and requested != cached:
        warnings.warn(f"asked for {name}@{requested} but datasets returned its cached copy of commit {cached} "
                      "(it does so offline or when the Hub cannot be reached)", stacklevel=4)
    return cached or requested


@contextmanager
def hub_errors(name: str) -> Iterator[None]:
    """Turn the errors of reading Hub dataset ``name`` (with ``datasets`` or ``huggingface_hub``) into hubft's."""
    try:
        yield
    except (datasets.exceptions.DatasetNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as error:
        # which of these surfaces depends on what the local caches hold (hub-protocol.md 10.5)
        raise DataError(f"Hub dataset {name!r} not found ({error})",
                        fix="check the dataset id and revision, and HF_TOKEN for private datasets") from error
    except ConnectionError as error:
        raise HubError(f"could not reach the Hub to load dataset {name!r} ({error})",
                       fix="check HF_ENDPOINT and the network, or set HF_HUB_OFFLINE=1 to use the cache") from error
    except HfHubHTTPError as error:
        raise HubError(f"the Hub refused to serve dataset {name!r} ({error})",
                       fix="check HF_TOKEN and HF_ENDPOINT") from error
    except (ValueError, FileNotFoundError) as error:
        raise DataError(f"could not load Hub dataset {name!r}: {error}",
                        fix="check the dataset id; datasets with several configs are not supported yet") from error


def _from_hub(name: str, revision: str | None) -> tuple[datasets.DatasetDict, str | None]:
    disable_datasets_extra_hosts()
    if revision is not None and datasets.config.HF_HUB_OFFLINE:
        warnings.warn(f"offline, datasets ignores revision={revision!r} and loads the newest cached copy of {name}",
                      stacklevel=3)
    with hub_errors(name):
        loaded = datasets.load_dataset(name, revision=revision)
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded, _revision_sha(loaded, name, revision)


def _from_path(path: str | Path) -> tuple[datasets.DatasetDict, str, Path]:
    local = Path(path).expanduser()
    if not local.exists():
        raise DataError(f"path {str(path)!r} not found",
                        fix="pass an image folder (one subfolder per class) or a .csv/.parquet file")
    if local.is_dir():
        builder, kwargs, base_dir = "imagefolder", {"data_dir": str(local)}, local
    elif local.suffix.lower() in _FILE_BUILDERS:
        builder, kwargs, base_dir = _FILE_BUILDERS[local.suffix.lower()], {"data_files": str(local)}, local.parent
    else:
        raise DataError(f"unsupported file type {local.suffix or '(none)'!r} for {str(local)!r}",
                        fix=f"pass a folder of images or a file ending in {', '.join(_FILE_BUILDERS)}")
    try:
        loaded = datasets.load_dataset(builder, **kwargs)
    except (ValueError, FileNotFoundError, datasets.exceptions.DatasetGenerationError) as error:
        fix = ("put the images in one subfolder per class, optionally under split folders (train/, validation/)"
               if builder == "imagefolder" else f"check that the file is valid {builder} with a header of column names")
        raise DataError(f"could not read {str(local)!r} as {builder}: {error}", fix=fix) from error
    return loaded, builder, base_dir


def pick_splits(available: Sequence[str], train_split: str, eval_split: str | None) -> tuple[str, str | None]:
    for wanted, option in ((train_split, "train_split"), (eval_split, "eval_split")):
        if wanted is not None and wanted not in available:
            raise DataError(f"split {wanted!r} not found; the splits are: {list(available)}",
                            fix=f"pass {option}= one of those splits")
    if eval_split is None:
        eval_split = next((s for s in EVAL_SPLIT_NAMES if s in available and s != train_split), None)
    if eval_split == train_split:
        raise ConfigError(f"train_split and eval_split are both {train_split!r}",
                          fix="pass a different eval_split, or leave it out to carve one out of train")
    return train_split, eval_split


def choose_split(available: Sequence[str], split: str | None) -> str:
    """The split to evaluate: ``split``, else the first of ``validation``, ``valid``, ``val``, ``eval``, ``test``
    and ``train`` that exists (else the first split).

    Raises:
        DataError: ``split`` is not one of ``available`` (they are listed).
    """
    if split is None:
        return next((s for s in (*EVAL_SPLIT_NAMES, "test", "train") if s in available), available[0])
    if split not in available:
        raise DataError(f"split {split!r} not found; the splits are: {list(available)}",
                        fix="pass one of those splits (--data.eval_split)")
    return split


def _check_not_empty(split: str, dataset: datasets.Dataset, after: str) -> None:
    if len(dataset) == 0:
        raise DataError(f"split {split!r} is empty{after}",
                        fix="check the data source, classes= and max_per_class=, or pass another split")


def _read_source(name: str | None, path: str | Path | None, dataset: Any, revision: str | None,
                 train_split: str) -> tuple[datasets.DatasetDict, str, str | None, str | None, Path | None]:
    """The source as a ``DatasetDict``, with its kind, origin, the Hub commit read and the folder of a file's paths."""
    if name is not None:
        loaded, revision_sha = _from_hub(name, revision)
        return loaded, "hub", name, revision_sha, None
    if path is not None:
        loaded, kind, base_dir = _from_path(path)
        return loaded, kind, str(path), None, base_dir
    if isinstance(dataset, datasets.DatasetDict):
        return dataset, "python", None, None, None
    if isinstance(dataset, datasets.Dataset):
        return datasets.DatasetDict({train_split: dataset}), "python", None, None, None
    raise ConfigError(f"dataset must be a datasets.Dataset or DatasetDict, got {type(dataset).__name__}",
                      fix="load it with datasets.load_dataset(...) without streaming=True")


def load_data(
    *,
    name: str | None = None,
    path: str | Path | None = None,
    dataset: datasets.Dataset | datasets.DatasetDict | None = None,
    revision: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    train_split: str = "train",
    eval_split: str | None = None,
    eval_fraction: float = 0.2,
    classes: Sequence[str | int] | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
) -> DataBundle:
    """Load an image-classification dataset and return train/eval splits with one label vocabulary.

    Sources (exactly one):

    - ``name``: a Hub dataset id, read with ``datasets.load_dataset(name, revision=revision)`` after
      :func:`disable_datasets_extra_hosts`. The commit read is recorded in ``source.revision_sha`` when known.
    - ``path``: a folder (``imagefolder`` layout: one subfolder per class, optionally under split folders), or a
      ``.csv`` / ``.parquet`` file with a column of image paths (relative paths are resolved against the file's
      folder) or of images.
    - ``dataset``: a ``datasets.Dataset`` (taken as the train split) or ``datasets.DatasetDict``.

    Columns: ``image_column`` defaults to the first ``datasets.Image`` column, else a string column of paths named
    ``image``, ``path``, ``file_name``, ...; ``label_column`` defaults to the first ``ClassLabel`` column, else a
    column named ``label``, ``labels``, ``target`` or ``class``. Other columns are dropped.

    Labels: names come from the ``ClassLabel``; string labels get their sorted unique values; integer labels
    without one get ``"0" .. "N-1"``. A label column of lists makes a multi-label bundle (``multi_label=True``).

    Splits, in this order:

    1. ``classes`` keeps only those classes (names, or indices into the original names), re-indexed ``0 .. k-1``
       in the order given; rows left with no class are dropped (from every split).
    2. Eval is ``eval_split``; when that is ``None``, the first of ``validation``, ``valid``, ``val``, ``eval``
       present; when there is none, ``eval_fraction`` of train is carved out, seeded by ``seed`` and stratified by
       label (single-label; multi-label splits are random).
    3. ``max_per_class`` keeps at most that many train rows per class, chosen by ``seed`` (eval is never capped).

    Returns:
        A :class:`DataBundle`.

    Raises:
        ConfigError: not exactly one source, ``revision`` without ``name``, or a bad option value.
        DataError: path not found or of an unsupported type, unknown dataset or split, image or label column
            missing, labels out of range, unknown names in ``classes``, or a split empty after filtering.
        HubError: the Hub could not be reached, or answered with an error other than "not found".

    Examples:
        >>> from hubft.data import make_synthetic_image_dataset
        >>> bundle = load_data(dataset=make_synthetic_image_dataset(num_classes=3, per_class=10), seed=0)
        >>> bundle.label_names, len(bundle.train), len(bundle.eval), bundle.source.eval_fraction
        (['class_0', 'class_1', 'class_2'], 24, 6, 0.2)
    """
    _check_options(name, path, dataset, revision, eval_fraction, max_per_class, seed)
    loaded, kind, origin, revision_sha, base_dir = _read_source(name, path, dataset, revision, train_split)
    train_split, eval_split = pick_splits(list(loaded), train_split, eval_split)
    splits = {train_split: loaded[train_split]}
    if eval_split is not None:
        splits[eval_split] = loaded[eval_split]
    train_features = splits[train_split].features
    image_column = find_image_column(train_features, image_column)
    label_column = find_label_column(train_features, label_column, image_column)
    if image_column == label_column:
        raise ConfigError(f"image_column and label_column are both {image_column!r}", fix="name two different columns")
    for split, data in splits.items():
        check_columns(split, data, [image_column, label_column])
        _check_not_empty(split, data, "")
        data = data.select_columns([image_column, label_column])
        splits[split] = as_image_column(data, image_column, base_dir, split)

    label_names, multi_label, encoded = encode_labels(splits, label_column)
    if classes is not None:
        label_names, encoded = select_classes(label_names, encoded, classes)
    for split, data in splits.items():
        splits[split] = apply_labels(data, label_column, encoded[split], label_names, multi_label)
        _check_not_empty(split, splits[split], " after keeping only the classes asked for" if classes else "")

    train, evaluation = splits[train_split], splits.get(eval_split)
    if evaluation is None:
        train, evaluation = carve_eval(train, label_column, eval_fraction, seed, multi_label)
    if max_per_class is not None:
        train = cap_per_class(train, label_column, max_per_class, seed, multi_label)

    source = DataSource(
        kind=kind,
        dataset=origin,
        revision=revision,
        revision_sha=revision_sha,
        train_split=train_split,
        eval_split=eval_split,
        eval_fraction=None if eval_split is not None else float(eval_fraction),
        num_train=len(train),
        num_eval=len(evaluation),
    )
    return DataBundle(train, evaluation, label_names, image_column, label_column, multi_label, source)


@dataclass(frozen=True)
class DataSplit:
    """One split of a dataset, for evaluating or running a trained model (:func:`load_split`).

    Attributes:
        data: The rows: ``image_column`` (a decoding ``datasets.Image``) and, when labels were asked for,
            ``label_column`` (encoded over ``label_names``, lists of them when ``multi_label``).
        image_column: The image column.
        label_column: The label column, or None when labels were not asked for.
        label_names: The dataset's label vocabulary (empty without labels).
        multi_label: Whether each row has a list of labels.
        source: Where the rows came from (``eval_split`` names the split).
    """

    data: datasets.Dataset
    image_column: str
    label_column: str | None
    label_names: list[str]
    multi_label: bool
    source: DataSource


def load_split(
    *,
    name: str | None = None,
    path: str | Path | None = None,
    dataset: datasets.Dataset | datasets.DatasetDict | None = None,
    split: str | None = None,
    revision: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    labels: bool = True,
) -> DataSplit:
    """One split of a dataset, whole, for evaluation or prediction (nothing is carved out or capped).

    The sources and column detection are :func:`load_data`'s. The split is ``split``; by default the first of
    ``validation``, ``valid``, ``val``, ``eval`` and ``test`` that exists, else ``train`` (an image folder without
    split folders is all ``train``).

    Args:
        labels: Find and encode the label column (evaluation); False reads only the images (prediction).

    Raises:
        ConfigError: Not exactly one source, or ``revision`` without ``name``.
        DataError: The split, the image column or (with ``labels``) the label column is missing, or the split is
            empty; as :func:`load_data` for the source itself.
        HubError: The Hub could not be reached, or refused.
    """
    _check_options(name, path, dataset, revision, 0.2, None, 0)
    loaded, kind, origin, revision_sha, base_dir = _read_source(name, path, dataset, revision, split or "train")
    split = choose_split(list(loaded), split)
    data = loaded[split]
    image_column = find_image_column(data.features, image_column)
    columns = [image_column]
    if labels:
        label_column = find_label_column(data.features, label_column, image_column)
        columns.append(label_column)
    check_columns(split, data, columns)
    _check_not_empty(split, data, "")
    data = as_image_column(data.select_columns(columns), image_column, base_dir, split)
    names, multi_label = [], False
    if labels:
        names, multi_label, encoded = encode_labels({split: data}, label_column)
        data = apply_labels(data, label_column, encoded[split], names, multi_label)
    source = DataSource(kind=kind, dataset=origin, revision=revision, revision_sha=revision_sha, train_split=split,
                        eval_split=split, eval_fraction=None, num_train=0, num_eval=len(data))
    return DataSplit(data, image_column, label_column if labels else None, names, multi_label, source)
