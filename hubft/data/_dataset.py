"""A torch map-style dataset over a ``datasets.Dataset`` of images, with an optional decoded-once cache."""

from __future__ import annotations

import io
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Callable, Literal

import datasets
import numpy as np
import torch
from datasets.utils.file_utils import is_local_path
from PIL import Image

from hubft.data._transforms import ImageTransform
from hubft.errors import ConfigError, DataError

if TYPE_CHECKING:
    from hubft.data._sources import DataBundle

__all__ = ["ImageClassificationDataset", "preserve_global_rngs"]

# cache="auto" decodes up front only when the uint8 cache stays under this size.
CACHE_AUTO_MAX_BYTES = 512 * 2**20
# Rows per Arrow batch read by ImageClassificationDataset.check_images (bounds the image bytes held at once).
_CHECK_BATCH_ROWS = 256


_preserving = threading.local()


@contextmanager
def preserve_global_rngs() -> Iterator[None]:
    """Save torch's CPU, Python's and NumPy's global RNG states on entry and restore them on exit.

    Loading data in the training process (``num_workers=0``) must not disturb the model's own randomness. Saving
    and restoring NumPy's state costs ~50 us, so a loader that reads a whole batch wraps the batch in this once;
    items read inside it skip their own per-item save/restore. Nests (only the outermost level restores).
    """
    if getattr(_preserving, "active", False):
        yield
        return
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()
    _preserving.active = True
    try:
        yield
    finally:
        _preserving.active = False
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])


@contextmanager
def _python_and_numpy_follow_torch() -> Iterator[None]:
    """Seed ``random`` and ``numpy.random`` from torch's RNG for one item.

    timm's crops and policies draw from Python's and NumPy's global RNGs, which DataLoader re-seeds per worker
    but nothing re-seeds in the main process; drawing their seed from torch makes every augmentation a function
    of torch's RNG state alone, in workers and in the main process alike. In the main process the previous states
    are restored afterwards (unless an enclosing :func:`preserve_global_rngs` does it once for a whole batch), so
    callers' own use of ``random`` is undisturbed; a worker's RNGs are its own, and skipping the save/restore there
    keeps the per-item overhead small.
    """
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    restore = torch.utils.data.get_worker_info() is None and not getattr(_preserving, "active", False)
    if restore:
        python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        if restore:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class ImageClassificationDataset(torch.utils.data.Dataset):
    """Items ``(image_tensor, target)`` from a ``datasets.Dataset`` with an image column and a label column.

    ``target`` is the class index (an ``int``; the default collate makes it ``int64``) or, with ``multi_label``, a
    float32 multi-hot vector of length ``num_classes``. ``num_classes`` defaults to the size of the label column's
    ``ClassLabel``. Images are decoded and transformed in ``__getitem__``; the dataset pickles, so it works with
    DataLoader workers. When the transform is random (``transform.training``, or any non-:class:`ImageTransform`
    callable) Python's and NumPy's RNGs are seeded from torch's for each item, so the output depends only on
    torch's RNG state (per worker: DataLoader seeds each one from its generator).

    Cache: with ``cache=True`` every image is decoded once, here, into an in-memory uint8 tensor through
    ``transform.cache_prepare`` (eval: the final resize and crop; train: a shrink to the eval resize size), and
    ``__getitem__`` only runs ``transform.cache_finish`` (tensor augmentation and normalisation). For an eval
    transform the items are bit-identical to the uncached ones; for a train transform the random crop works on
    the shrunken image. ``cache="auto"`` caches when ``transform`` is an :class:`ImageTransform` and the cache
    would take at most 512 MiB (``CACHE_AUTO_MAX_BYTES``); ``False`` never caches. Without the cache every image
    is still checked here, cheaply, by :meth:`check_images`, so that an unreadable file stops a run before it
    writes anything rather than at the first batch that reads it.

    ``normalize=False`` lets a cached dataset return the uint8 image before its float conversion and
    normalisation when the transform allows it (:attr:`ImageTransform.defers_normalize`: no random erasing after
    those steps); :attr:`normalized` says which items come out, and ``transform.normalize`` turns a batch of them
    into exactly the normalised images. hubft's training loop normalises on the device this way.

    ``split`` names the split in error messages only (``"row 3 of the train split"``).

    Raises:
        ConfigError: ``cache=True`` with a transform that is not an :class:`ImageTransform`, a bad ``cache`` value,
            or labels whose shape does not match ``multi_label``, or a multi-label dataset without
            ``num_classes``.
        DataError: a column is missing or not an image column, a label is out of range, or an image file cannot
            be decoded: here (by the cache, else by :meth:`check_images`), except an image whose header and
            chunks are sound but whose pixel data is not (a truncated JPEG), met when the item is read. The split,
            row and file are named.

    Examples:
        >>> from hubft.data import create_transforms, make_synthetic_image_dataset
        >>> cfg = {"input_size": (3, 16, 16), "crop_pct": 1.0}
        >>> ds = ImageClassificationDataset(make_synthetic_image_dataset(), create_transforms(cfg, training=False),
        ...                                 "image", "label")
        >>> image, target = ds[0]
        >>> image.shape, target, ds.cached
        (torch.Size([3, 16, 16]), 0, True)
    """

    def __init__(
        self,
        hf_dataset: datasets.Dataset,
        transform: Callable[[Image.Image], torch.Tensor],
        image_column: str,
        label_column: str,
        multi_label: bool = False,
        num_classes: int | None = None,
        *,
        cache: bool | Literal["auto"] = "auto",
        split: str | None = None,
        normalize: bool = True,
    ) -> None:
        for column in (image_column, label_column):
            if column not in hf_dataset.features:
                raise DataError(f"column {column!r} not found; the columns are: {list(hf_dataset.features)}",
                                fix="pass the image_column and label_column of the dataset (see load_data)")
        if not isinstance(hf_dataset.features[image_column], datasets.Image):
            raise DataError(f"column {image_column!r} is {hf_dataset.features[image_column]}, not datasets.Image",
                            fix="load the data with hubft.data.load_data, or cast_column(column, datasets.Image())")
        if cache not in ("auto", True, False):
            raise ConfigError(f"cache must be 'auto', True or False, got {cache!r}", fix="pass cache='auto'")
        self.transform = transform
        self.image_column = image_column
        self.label_column = label_column
        self.multi_label = multi_label
        self.split = split
        self.num_classes = num_classes if num_classes is not None else _class_count(hf_dataset.features[label_column])
        self.labels = self._read_labels(hf_dataset)
        # a format or set_transform left on the dataset would change what indexing returns; items are ours to make
        images = hf_dataset.select_columns([image_column]).cast_column(image_column, datasets.Image())
        self._images = images.with_format(None)
        self._stochastic = transform.training if isinstance(transform, ImageTransform) else True
        self._cache: torch.Tensor | list[torch.Tensor] | None = None
        if self._wants_cache(cache):
            self._cache = self._build_cache()
            #: Whether items are normalised float tensors (else uint8 images for ``transform.normalize``).
            self.normalized = normalize or not transform.defers_normalize
        else:
            self.normalized = True
            # Data small enough to cache is decoded once to check it (what building the cache would cost); larger
            # data gets the cheap check of every file's header and chunks.
            self.check_images(decode=self._wants_cache("auto"))

    @classmethod
    def from_bundle(
        cls,
        bundle: DataBundle,
        split: Literal["train", "eval"],
        transform: Callable[[Image.Image], torch.Tensor],
        *,
        cache: bool | Literal["auto"] = "auto",
    ) -> ImageClassificationDataset:
        """The dataset for ``bundle.train`` or ``bundle.eval``, with the bundle's columns and classes."""
        if split not in ("train", "eval"):
            raise ConfigError(f"split must be 'train' or 'eval', got {split!r}", fix="pass split='train' or 'eval'")
        return cls(getattr(bundle, split), transform, bundle.image_column, bundle.label_column,
                   bundle.multi_label, bundle.num_classes, cache=cache, split=split)

    @property
    def cached(self) -> bool:
        """Whether the images were decoded into the in-memory cache."""
        return self._cache is not None

    def __len__(self) -> int:
        return len(self.labels)

    def check_images(self, decode: bool = False) -> None:
        """Check that every image can be read; ``__init__`` calls it when not caching.

        With ``decode`` every image is decoded in full, as ``__getitem__`` would (``__init__`` asks for this when
        the data would fit the cache budget of ``cache="auto"``, so it costs what building the cache would).
        Otherwise each image is opened with PIL and ``Image.verify()``-ed: the format is identified and the header parsed;
        for PNG every chunk is also read and its CRC checked, so a garbage, empty, text, missing or truncated PNG
        file is found. For JPEG and most other formats ``verify`` parses the header only, so a JPEG cut short in
        its pixel data passes and fails when its item is read. An image that fails is decoded in full, as
        ``__getitem__`` would, before it is reported: a file that ``verify`` is stricter about than decoding (a
        PNG without its end chunk) is accepted, as training would accept it. Files at non-local paths (URLs) are
        not fetched here; they are checked when read.

        Cost: one open and read of every file, no pixel decoding: about 20 us per 32 px PNG and 60 us per 224 px
        PNG from the page cache (decoding the latter costs ~550 us), plus the disk read when the files are cold.

        Raises:
            DataError: An image cannot be decoded; the split, row and file (or "embedded image bytes") are named,
                with the fix.
        """
        if decode:
            for row in range(len(self)):
                self._decode(row)
            return
        row = 0
        for batch in self._images.with_format("arrow").iter(batch_size=_CHECK_BATCH_ROWS):
            for value in batch.column(self.image_column).to_pylist():
                data, path = (value["bytes"], value["path"]) if value is not None else (None, None)
                if data is not None or (path is not None and is_local_path(path)):
                    try:
                        with Image.open(io.BytesIO(data) if data is not None else path) as image:
                            image.verify()
                    except Exception:  # PIL raises OSError, SyntaxError, ValueError... depending on the damage
                        self._decode(row)  # raises the DataError training would meet, if training would meet one
                elif path is None:
                    self._decode(row)  # no image at all: raises its DataError
                row += 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        if self._cache is not None:
            source = self._cache[index]
            apply = self.transform.cache_finish if self.normalized else self._finish_uint8
        else:
            source, apply = self._decode(index), self.transform
        with _python_and_numpy_follow_torch() if self._stochastic else nullcontext():
            image = apply(source)
        return image, self._target(index)

    def _finish_uint8(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.transform.cache_finish(pixels, normalize=False)

    def _read_labels(self, hf_dataset: datasets.Dataset) -> list:
        labels = hf_dataset.with_format("arrow")[self.label_column].to_pylist()
        if any(isinstance(label, list) != self.multi_label for label in labels):
            raise ConfigError(
                f"label column {self.label_column!r} holds {'ints' if self.multi_label else 'lists'}, "
                f"but multi_label={self.multi_label}",
                fix=f"pass multi_label={not self.multi_label}")
        if self.multi_label and self.num_classes is None:
            raise ConfigError("multi_label needs num_classes (the label column is not a list of ClassLabel)",
                              fix="pass num_classes=")
        for row, label in enumerate(labels):
            for value in label if self.multi_label else [label]:
                if value is None or value < 0 or (self.num_classes is not None and value >= self.num_classes):
                    raise DataError(f"label {value} in row {row} is out of range for {self.num_classes} classes",
                                    fix="load the data with hubft.data.load_data, which checks and encodes labels")
        return labels

    def _target(self, index: int) -> Any:
        if not self.multi_label:
            return self.labels[index]
        target = torch.zeros(self.num_classes, dtype=torch.float32)
        target[self.labels[index]] = 1.0
        return target

    def _decode(self, index: int) -> Image.Image:
        try:
            image = self._images[index][self.image_column]
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... depending on the damage
            raw = self._images.cast_column(self.image_column, datasets.Image(decode=False))[index][self.image_column]
            where = raw.get("path") or "embedded image bytes"
            # PIL names an in-memory file by its repr, a memory address: say what the error means instead
            cause = "not an image format PIL recognises" if isinstance(error, Image.UnidentifiedImageError) \
                else str(error)
            raise DataError(
                f"cannot decode the image in {self._row_name(index)} ({where}): {type(error).__name__}: {cause}",
                fix="replace or remove the unreadable image file, or filter that row out of the dataset") from error
        if image is None:  # a null cell: datasets returns None, which the transform would fail on
            raise DataError(f"the image in {self._row_name(index)} is missing (null)",
                            fix="remove the rows without an image, or filter them out of the dataset")
        return image

    def _row_name(self, index: int) -> str:
        return f"row {index} of the {self.split} split" if self.split else f"row {index}"

    def _wants_cache(self, cache: bool | str) -> bool:
        if cache is False:
            return False
        if not isinstance(self.transform, ImageTransform):
            if cache is True:
                raise ConfigError("cache=True needs a transform made by hubft.data.create_transforms",
                                  fix="build the transform with create_transforms, or pass cache=False")
            return False
        height, width = self.transform.cache_size
        return cache is True or len(self) * 3 * height * width <= CACHE_AUTO_MAX_BYTES

    def _build_cache(self) -> torch.Tensor | list[torch.Tensor]:
        """Every image through ``cache_prepare``: one preallocated ``(n, 3, h, w)`` uint8 tensor while the images
        share a size (a single buffer that workers share for free, filled in place: no second copy, as stacking a
        list would hold at its peak), else a list of tensors from the first image of another size on."""
        if len(self) == 0:
            return []
        first = self.transform.cache_prepare(self._decode(0))
        cache = torch.empty((len(self), *first.shape), dtype=torch.uint8)
        cache[0] = first
        for index in range(1, len(self)):
            image = self.transform.cache_prepare(self._decode(index))
            if image.shape != first.shape:
                images = [cache[i].clone() for i in range(index)]
                del cache
                images.append(image)
                images += [self.transform.cache_prepare(self._decode(i)) for i in range(index + 1, len(self))]
                return images
            cache[index] = image
        return cache


def _class_count(feature: object) -> int | None:
    if isinstance(feature, (datasets.List, datasets.LargeList)):
        feature = feature.feature
    return feature.num_classes if isinstance(feature, datasets.ClassLabel) else None
