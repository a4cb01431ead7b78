"""Tiny synthetic image-classification datasets for smoke tests.

Each class has its own colour (evenly spaced hues) plus per-pixel noise, so a small model learns the task in a few
steps, while no two images are identical. Everything is a function of ``seed``.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from hubft.errors import ConfigError

__all__ = ["make_synthetic_image_dataset", "synthetic_class_names", "write_image_folder"]

_NOISE = 24  # +- per channel: visible variation, yet far smaller than the gap between class colours


def synthetic_class_names(num_classes: int) -> list[str]:
    """Names of the synthetic classes: ``class_0``, ``class_1``, ... zero-padded so that string order is index order.

    Examples:
        >>> synthetic_class_names(3)
        ['class_0', 'class_1', 'class_2']
        >>> synthetic_class_names(11)[:2]
        ['class_00', 'class_01']
    """
    _check_positive(num_classes=num_classes)
    width = len(str(num_classes - 1))
    return [f"class_{i:0{width}d}" for i in range(num_classes)]


def _class_colours(num_classes: int) -> np.ndarray:
    hues = [colorsys.hsv_to_rgb(i / num_classes, 0.85, 0.9) for i in range(num_classes)]
    return (np.array(hues) * 255).astype(np.int16)


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive int, got {value!r}", fix=f"pass {key}=1 or more")


def _draw(rng: np.random.Generator, colours: np.ndarray, classes: Sequence[int], size: int) -> np.ndarray:
    # one vertical stripe per class present, so multi-label images show every one of their classes
    pixels = np.empty((size, size, 3), dtype=np.int16)
    bounds = np.linspace(0, size, len(classes) + 1).round().astype(int)
    for cls, left, right in zip(classes, bounds[:-1], bounds[1:]):
        pixels[:, left:right] = colours[cls]
    pixels += rng.integers(-_NOISE, _NOISE + 1, size=pixels.shape, dtype=np.int16)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _examples(
    num_classes: int, per_class: int, size: int, seed: int, multi_label: bool
) -> list[tuple[np.ndarray, list[int]]]:
    _check_positive(num_classes=num_classes, per_class=per_class, size=size)
    rng = np.random.default_rng(seed)
    colours = _class_colours(num_classes)
    examples = []
    for cls in range(num_classes):
        for _ in range(per_class):
            classes = [cls]
            if multi_label and num_classes > 1 and rng.random() < 0.5:
                classes.append(int((cls + rng.integers(1, num_classes)) % num_classes))
            examples.append((_draw(rng, colours, classes, size), sorted(classes)))
    return examples


def make_synthetic_image_dataset(
    num_classes: int = 3,
    per_class: int = 8,
    size: int = 16,
    seed: int = 0,
    *,
    multi_label: bool = False,
):
    """Build an in-memory ``datasets.Dataset`` of coloured RGB images, ``per_class`` images per class.

    Columns: ``image`` (``datasets.Image``) and ``label``: a ``ClassLabel`` named by :func:`synthetic_class_names`,
    or with ``multi_label=True`` a list of such labels (about half the images get a second class, drawn as a
    second stripe). Rows are grouped by class, in class order. The same arguments give the same pixels.

    Raises:
        ConfigError: ``num_classes``, ``per_class`` or ``size`` is not a positive int.

    Examples:
        >>> ds = make_synthetic_image_dataset(num_classes=2, per_class=3, size=8)
        >>> len(ds), ds.features["label"].names, ds[0]["image"].size
        (6, ['class_0', 'class_1'], (8, 8))
    """
    import datasets

    examples = _examples(num_classes, per_class, size, seed, multi_label)
    label = datasets.ClassLabel(names=synthetic_class_names(num_classes))
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.List(label) if multi_label else label}
    )
    return datasets.Dataset.from_dict(
        {
            "image": [Image.fromarray(pixels) for pixels, _ in examples],
            "label": [classes if multi_label else classes[0] for _, classes in examples],
        },
        features=features,
    )


def write_image_folder(
    root: str | Path,
    num_classes: int = 3,
    per_class: int = 4,
    size: int = 16,
    seed: int = 0,
    *,
    splits: Sequence[str] | None = None,
    modes: Sequence[str] = ("RGB",),
    image_format: str = "png",
) -> Path:
    """Write a class-per-folder image tree, the layout ``datasets``' ``imagefolder`` builder reads.

    Files go to ``root/<class name>/<index>.<image_format>``, or with ``splits`` to
    ``root/<split>/<class name>/<index>.<image_format>`` with ``per_class`` images per class in every split (each
    split drawn with its own seed). Image ``i`` of a class is saved in PIL mode ``modes[i % len(modes)]``, so
    ``modes=("RGB", "L", "RGBA", "P")`` gives grayscale, alpha and palette files next to RGB ones. Lossy formats
    (``"jpg"``) cannot store alpha or palettes; use ``"png"`` with such modes.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: a count is not a positive int, or ``modes`` is empty.

    Examples:
        >>> import tempfile
        >>> root = write_image_folder(tempfile.mkdtemp(), num_classes=2, per_class=1, splits=["train", "test"])
        >>> sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
        ['test/class_0/0.png', 'test/class_1/0.png', 'train/class_0/0.png', 'train/class_1/0.png']
    """
    if not modes:
        raise ConfigError("modes is empty", fix='pass at least one PIL mode, e.g. modes=("RGB",)')
    root = Path(root)
    names = synthetic_class_names(num_classes)
    for offset, split in enumerate(splits or [None]):
        base = root / split if split is not None else root
        examples = _examples(num_classes, per_class, size, seed + offset, multi_label=False)
        for index, (pixels, classes) in enumerate(examples):
            folder = base / names[classes[0]]
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(pixels).convert(modes[(index % per_class) % len(modes)])
            image.save(folder / f"{index % per_class}.{image_format}")
    return root
