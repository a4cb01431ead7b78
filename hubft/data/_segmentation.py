"""Semantic-segmentation data: image / mask pairs from a folder, the Hub or a ``datasets`` object; paired transforms.

A mask is an image of class ids, one per pixel, of its image's size; ``255`` marks pixels to ignore (void).
Class names come from ``label_names`` or the data's ``id2label.json`` (``{"0": "background", ...}``, the Hub's
convention). Geometric transforms (random resized crop, flip, resize) are drawn once and applied to image and mask
alike, through torchvision's ``transforms.v2`` (masks resampled nearest-neighbour); colour jitter and
normalisation touch the image only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from hubft.data._columns import find_image_column
from hubft.data._sources import DataBundle, DataSource, DataSplit, _from_hub, choose_split, pick_splits
from hubft.errors import ConfigError, DataError

__all__ = ["IGNORE_INDEX", "MASK_COLUMNS", "OUTSIDE", "SegmentationDataset", "SegmentationTransform",
           "collate_masks", "load_segmentation_data", "load_segmentation_split"]

#: Mask value of pixels that count in no loss or metric.
IGNORE_INDEX = 255
#: Mask value of the padding :func:`collate_masks` adds below and right of a smaller mask (no pixel of any image).
OUTSIDE = -1
#: Mask columns tried, in order, when ``mask_column`` is not given (the column must hold images).
MASK_COLUMNS = ("mask", "annotation", "label", "segmentation", "semantic_map")
ID2LABEL = "id2label.json"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def load_segmentation_data(
    *,
    name: str | None = None,
    path: str | Path | None = None,
    dataset: datasets.Dataset | datasets.DatasetDict | None = None,
    revision: str | None = None,
    image_column: str | None = None,
    mask_column: str | None = None,
    label_names: Sequence[str] | None = None,
    train_split: str = "train",
    eval_split: str | None = None,
    eval_fraction: float = 0.2,
    seed: int = 0,
) -> DataBundle:
    """Load image / mask pairs into a :class:`DataBundle` whose ``label_column`` is the mask column.

    Sources (exactly one): ``path``, a folder ``DIR/{train,validation}/images/*`` with ``masks/*`` of the same
    file stems (and ``DIR/id2label.json``); ``name``, a Hub dataset with an image column and a mask column (and
    ``id2label.json`` in the dataset repo); ``dataset``, a ``datasets`` object. The mask column is ``mask_column``,
    else the first of :data:`MASK_COLUMNS` holding images. The eval split is ``eval_split``, else ``validation`` /
    ``valid`` / ``val`` / ``eval``, else ``eval_fraction`` of train carved out at random (seeded by ``seed``).

    Raises:
        ConfigError: Not exactly one source.
        DataError: The folder layout is wrong or an image has no mask; no mask column; no class names
            (neither ``label_names`` nor ``id2label.json``), or malformed ones.
        HubError: The Hub could not be reached.
    """
    loaded, kind, origin, revision_sha = _read_source(name, path, dataset, revision, train_split)
    names = _label_names(label_names, path, name, revision_sha or revision)
    train_split, eval_split = pick_splits(list(loaded), train_split, eval_split)
    features = loaded[train_split].features
    image_column = find_image_column(features, image_column)
    mask_column = find_mask_column(features, mask_column, image_column)
    train = _pairs(loaded[train_split], image_column, mask_column)
    if eval_split is not None:
        evaluation = _pairs(loaded[eval_split], image_column, mask_column)
    else:
        parts = train.train_test_split(test_size=eval_fraction, seed=seed)
        train, evaluation = parts["train"], parts["test"]
    source = DataSource(kind=kind, dataset=origin, revision=revision, revision_sha=revision_sha,
                        train_split=train_split, eval_split=eval_split,
                        eval_fraction=None if eval_split is not None else float(eval_fraction),
                        num_train=len(train), num_eval=len(evaluation))
    return DataBundle(train, evaluation, names, image_column, mask_column, False, source)


def load_segmentation_split(
    *,
    name: str | None = None,
    path: str | Path | None = None,
    dataset: datasets.Dataset | datasets.DatasetDict | None = None,
    split: str | None = None,
    revision: str | None = None,
    image_column: str | None = None,
    mask_column: str | None = None,
    label_names: Sequence[str] | None = None,
) -> DataSplit:
    """One split of image / mask pairs, whole, for evaluating a trained model (``label_column`` is the mask column).

    Sources and columns as :func:`load_segmentation_data`; the split is ``split``, by default the first of
    ``validation``, ``valid``, ``val``, ``eval`` and ``test`` that exists, else ``train``. ``label_names`` (the
    model's) name the mask's class ids when given, else the data's ``id2label.json``.

    Raises:
        ConfigError: Not exactly one source.
        DataError: As :func:`load_segmentation_data`, or the split is missing (the splits are listed).
        HubError: The Hub could not be reached.
    """
    loaded, kind, origin, revision_sha = _read_source(name, path, dataset, revision, split or "train")
    split = choose_split(list(loaded), split)
    names = _label_names(label_names, path, name, revision_sha or revision)
    features = loaded[split].features
    image_column = find_image_column(features, image_column)
    mask_column = find_mask_column(features, mask_column, image_column)
    data = _pairs(loaded[split], image_column, mask_column)
    source = DataSource(kind=kind, dataset=origin, revision=revision, revision_sha=revision_sha, train_split=split,
                        eval_split=split, eval_fraction=None, num_train=0, num_eval=len(data))
    return DataSplit(data, image_column, mask_column, names, False, source)


def _read_source(name: str | None, path: str | Path | None, dataset: Any, revision: str | None,
                 default_split: str) -> tuple[datasets.DatasetDict, str, str | None, str | None]:
    """The source as a ``DatasetDict``, with its kind, origin and the Hub commit read."""
    given = [k for k, v in (("name", name), ("path", path), ("dataset", dataset)) if v is not None]
    if len(given) != 1:
        raise ConfigError(f"pass exactly one of name, path or dataset (got {', '.join(given) or 'none'})",
                          fix="data.name for a Hub dataset, data.path for a local folder")
    if path is not None:
        return _read_folder(Path(path).expanduser()), "segmentation-folder", str(path), None
    if name is not None:
        loaded, revision_sha = _from_hub(name, revision)
        return loaded, "hub", name, revision_sha
    if isinstance(dataset, datasets.DatasetDict):
        return dataset, "python", None, None
    return datasets.DatasetDict({default_split: dataset}), "python", None, None


def find_mask_column(features: datasets.Features, requested: str | None, image_column: str) -> str:
    """``requested``, or the first of :data:`MASK_COLUMNS` whose feature is an image.

    Raises:
        DataError: ``requested`` is missing or holds no images, or no column qualifies; the columns are listed.
    """
    described = ", ".join(f"{k} ({type(v).__name__})" for k, v in features.items())
    if requested is not None:
        if requested not in features or not isinstance(features[requested], datasets.Image):
            raise DataError(f"mask column {requested!r} is not an image column; the columns are: {described}",
                            fix="set data.mask_column to the column of mask images")
        return requested
    for candidate in MASK_COLUMNS:
        if candidate != image_column and isinstance(features.get(candidate), datasets.Image):
            return candidate
    raise DataError(f"no mask column found (tried {', '.join(MASK_COLUMNS)}); the columns are: {described}",
                    fix="set data.mask_column to the column of mask images")


def _pairs(split: datasets.Dataset, image_column: str, mask_column: str) -> datasets.Dataset:
    if len(split) == 0:
        raise DataError("a split of the segmentation data is empty", fix="check the data source")
    return split.select_columns([image_column, mask_column]).cast_column(image_column, datasets.Image())


def _read_folder(root: Path) -> datasets.DatasetDict:
    if not root.is_dir():
        raise DataError(f"path {str(root)!r} is not a folder",
                        fix="pass a folder DIR with DIR/train/images, DIR/train/masks (and validation/)")
    splits = {}
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        images_dir, masks_dir = split_dir / "images", split_dir / "masks"
        if not images_dir.is_dir():
            continue
        masks = {p.stem: p for p in masks_dir.glob("*") if p.suffix.lower() in _IMAGE_SUFFIXES} \
            if masks_dir.is_dir() else {}
        images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        missing = [p.name for p in images if p.stem not in masks]
        if missing:
            raise DataError(f"{len(missing)} image(s) in {images_dir} have no mask of the same stem in {masks_dir} "
                            f"(first: {missing[0]})", fix="add a PNG mask per image, with the image's file stem")
        splits[split_dir.name] = datasets.Dataset.from_dict(
            {"image": [str(p) for p in images], "mask": [str(masks[p.stem]) for p in images]},
            features=datasets.Features({"image": datasets.Image(), "mask": datasets.Image()}))
    if not splits:
        raise DataError(f"{str(root)!r} has no SPLIT/images folder",
                        fix="lay the data out as DIR/train/images, DIR/train/masks (and DIR/validation/...)")
    return datasets.DatasetDict(splits)


def _label_names(given: Sequence[str] | None, path: str | Path | None, name: str | None,
                 revision: str | None) -> list[str]:
    if given is not None:
        names = [str(n) for n in given]
    else:
        text = _read_id2label(path, name, revision)
        try:
            mapping = json.loads(text)
            names = [str(mapping[str(i)]) for i in range(len(mapping))]
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{ID2LABEL} is not a JSON object with keys \"0\" .. \"N-1\"",
                            fix='write it as {"0": "background", "1": "..."}') from None
    if len(names) < 2 or len(set(names)) != len(names) or len(names) > IGNORE_INDEX:
        raise DataError(f"the class names {names} are not 2 to 255 unique names",
                        fix="give each class id a unique name in id2label.json or data.label_names")
    return names


def _read_id2label(path: str | Path | None, name: str | None, revision: str | None) -> str:
    fix = f"add {ID2LABEL} ({{\"0\": \"background\", ...}}) to the data, or set data.label_names"
    if path is not None:
        file = Path(path).expanduser() / ID2LABEL
        if not file.is_file():
            raise DataError(f"the segmentation folder {str(path)!r} has no {ID2LABEL}, so its classes have no names",
                            fix=fix)
        return file.read_text(encoding="utf-8")
    if name is None:
        raise DataError("a dataset passed in Python needs its class names", fix="set data.label_names")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(name, ID2LABEL, repo_type="dataset", revision=revision)).read_text("utf-8")
    except EntryNotFoundError:
        raise DataError(f"the Hub dataset {name!r} has no {ID2LABEL}, so its classes have no names",
                        fix=fix) from None


class SegmentationTransform:
    """Paired transform of a PIL image and its mask into a uint8 ``[3, H, W]`` image and an int64 ``[H, W]`` mask.

    Training: a random resized crop (``scale``, ``ratio``) to ``size`` and a horizontal flip with probability
    ``hflip``, both drawn once for the pair, then colour jitter (``color_jitter``, image only); masks are resampled
    nearest-neighbour, so they keep their class ids (and 255). Evaluation: the image is resized to ``size`` and the
    mask kept at its own resolution, which evaluation scores at (see :func:`collate_masks`). Randomness comes from
    torch's RNG (torchvision's v2 transforms). :meth:`normalize` turns a uint8 batch into the model's input on its
    device.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], *, training: bool,
                 scale: Sequence[float] = (0.5, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3), hflip: float = 0.5,
                 color_jitter: float | None = None) -> None:
        from torchvision.transforms import v2

        self.size, self.training = int(size), training
        self.mean, self.std = tuple(mean), tuple(std)
        if training:
            steps = [v2.RandomResizedCrop(self.size, scale=tuple(scale), ratio=tuple(ratio), antialias=True)]
            steps += [v2.RandomHorizontalFlip(hflip)] if hflip else []
            steps += [v2.ColorJitter(*(color_jitter,) * 3)] if color_jitter else []
        else:
            steps = [v2.Resize((self.size, self.size), antialias=True)]
        self._steps = v2.Compose(steps)

    @classmethod
    def for_model(cls, pretrained_cfg: dict, *, size: int | None = None, training: bool = False,
                  **augmentation: Any) -> SegmentationTransform:
        """The transform for a model: ``size`` (default: its ``input_size``) and its own mean / std (timm's ImageNet
        defaults when it has none); ``augmentation`` as ``__init__`` takes it (training only)."""
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        return cls(size or pretrained_cfg["input_size"][-1], pretrained_cfg.get("mean", IMAGENET_DEFAULT_MEAN),
                   pretrained_cfg.get("std", IMAGENET_DEFAULT_STD), training=training, **augmentation)

    def __call__(self, image: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as F

        pixels = tv_tensors.Image(F.pil_to_tensor(image.convert("RGB")))
        labels = tv_tensors.Mask(torch.from_numpy(np.asarray(mask, dtype=np.uint8).copy()))
        pixels, labels = self._steps(pixels, labels) if self.training else (self._steps(pixels), labels)
        return pixels.as_subclass(torch.Tensor).contiguous(), labels.as_subclass(torch.Tensor).long()

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """A uint8 batch ``[B, 3, H, W]`` (any device) as normalised float32."""
        mean = torch.tensor(self.mean, device=pixels.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=pixels.device).view(-1, 1, 1)
        return pixels.to(torch.float32).div_(255.0).sub_(mean).div_(std)


class SegmentationDataset(torch.utils.data.Dataset):
    """Items ``(uint8 image [3, H, W], int64 mask [H, W])`` from a split with an image and a mask column.

    Every mask is read once here and checked: its size must be its image's, and its values class ids below
    ``num_classes`` or 255 (ignored).

    Raises:
        DataError: A mask's size differs from its image's, or it holds a class id outside the labels; the split,
            row and value are named.
    """

    def __init__(self, hf_dataset: datasets.Dataset, transform: SegmentationTransform, image_column: str,
                 mask_column: str, num_classes: int, *, split: str | None = None) -> None:
        self.data, self.transform = hf_dataset.with_format(None), transform
        self.image_column, self.mask_column, self.num_classes = image_column, mask_column, num_classes
        self.split = split or "data"
        for row in range(len(self.data)):
            self._check(row)

    def __len__(self) -> int:
        return len(self.data)

    def _pair(self, row: int) -> tuple[Any, Any]:
        item = self.data[row]
        return item[self.image_column], item[self.mask_column]

    def _check(self, row: int) -> None:
        image, mask = self._pair(row)
        where = f"row {row} of the {self.split} split"
        if image.size != mask.size:
            raise DataError(f"the mask in {where} is {mask.size[0]}x{mask.size[1]} px but its image is "
                            f"{image.size[0]}x{image.size[1]}", fix="give every image a mask of its own size")
        values = np.unique(np.asarray(mask))
        bad = values[(values >= self.num_classes) & (values != IGNORE_INDEX)]
        if mask.mode not in ("L", "P", "I", "I;16", "1") or bad.size:
            found = f"class id {int(bad[0])}" if bad.size else f"a {mask.mode} image"
            raise DataError(f"the mask in {where} holds {found}, but there are {self.num_classes} classes "
                            f"(ids 0..{self.num_classes - 1}, 255 = ignore)",
                            fix="fix the mask, or name every class in id2label.json / data.label_names")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(*self._pair(index))


def collate_masks(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image, mask)`` items whose masks may differ in size: images ``[B, 3, H, W]`` (one size) and masks
    ``[B, H', W']`` padded below and right to the largest with :data:`OUTSIDE`, from which each mask's own size is
    read back (``hubft.tasks.segmentation`` brings the logits to it)."""
    images = torch.stack([image for image, _ in batch])
    masks = [mask for _, mask in batch]
    height, width = max(m.shape[0] for m in masks), max(m.shape[1] for m in masks)
    out = torch.full((len(masks), height, width), OUTSIDE, dtype=torch.long)
    for canvas, mask in zip(out, masks):
        canvas[:mask.shape[0], :mask.shape[1]] = mask
    return images, out
