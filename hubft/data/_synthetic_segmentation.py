"""A tiny synthetic semantic-segmentation set: coloured shapes on a textured background, for tests and the tour.

Class 0 is the background (a random stripe texture); class 1 squares, class 2 discs, class 3 triangles, each
with its own colour plus noise. A thin ring of 255 ("ignore") pixels borders every shape, as annotation tools
leave around uncertain edges. Everything is a function of ``seed``.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from hubft.errors import ConfigError

__all__ = ["SHAPE_CLASSES", "make_synthetic_segmentation_dataset", "write_segmentation_folder"]

SHAPE_CLASSES = ("background", "square", "disc", "triangle")
_COLOURS = np.array([(0, 0, 0), (220, 60, 60), (60, 200, 80), (70, 90, 230)], dtype=np.int16)


def _shape_mask(kind: int, size: int, cy: float, cx: float, r: float) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == 1:
        return (np.abs(y - cy) <= r) & (np.abs(x - cx) <= r)
    if kind == 2:
        return (y - cy) ** 2 + (x - cx) ** 2 <= r * r
    return (y >= cy - r) & (y <= cy + r) & (np.abs(x - cx) <= (y - (cy - r)) / 2)


def _example(rng: np.random.Generator, size: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    period = rng.integers(3, 7)
    stripes = ((np.arange(size)[None, :] + np.arange(size)[:, None] * rng.integers(0, 2)) // period) % 2
    pixels = (90 + 50 * stripes[..., None] + rng.integers(-20, 21, (size, size, 3))).astype(np.int16)
    mask = np.zeros((size, size), dtype=np.uint8)
    for _ in range(rng.integers(1, 4)):
        kind = int(rng.integers(1, num_classes))
        r = rng.uniform(size * 0.12, size * 0.25)
        cy, cx = rng.uniform(r, size - r, 2)
        inside = _shape_mask(kind, size, cy, cx, r)
        ring = _shape_mask(kind, size, cy, cx, r + 1.0) & ~inside
        pixels[inside] = _COLOURS[kind] + rng.integers(-25, 26, (int(inside.sum()), 3))
        mask[inside], mask[ring] = kind, 255
    return np.clip(pixels, 0, 255).astype(np.uint8), mask


def make_synthetic_segmentation_dataset(num_examples: int = 32, size: int = 32, num_classes: int = 4,
                                        seed: int = 0) -> datasets.Dataset:
    """``num_examples`` rows of ``image`` (RGB) and ``mask`` (class ids, 255 on shape borders), ``size`` px square.

    Raises:
        ConfigError: ``num_classes`` is not 2 to 4, or a count is not positive.
    """
    if not 2 <= num_classes <= len(SHAPE_CLASSES) or num_examples < 1 or size < 8:
        raise ConfigError(f"num_classes={num_classes}, num_examples={num_examples}, size={size} out of range",
                          fix="use 2 to 4 classes, at least 1 example and 8 px")
    rng = np.random.default_rng(seed)
    rows = [_example(rng, size, num_classes) for _ in range(num_examples)]
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p) for p, _ in rows], "mask": [Image.fromarray(m, mode="L") for _, m in rows]},
        features=datasets.Features({"image": datasets.Image(), "mask": datasets.Image()}))


def write_segmentation_folder(root: str | Path, *, train: int = 24, validation: int = 8, size: int = 32,
                              num_classes: int = 4, seed: int = 0) -> Path:
    """Write ``root/{train,validation}/{images,masks}/NNN.png`` and ``root/id2label.json``; returns ``root``."""
    root = Path(root)
    for offset, (split, count) in enumerate((("train", train), ("validation", validation))):
        data = make_synthetic_segmentation_dataset(count, size, num_classes, seed + offset)
        for kind in ("images", "masks"):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
        for i, row in enumerate(data):
            row["image"].save(root / split / "images" / f"{i:03d}.png")
            row["mask"].save(root / split / "masks" / f"{i:03d}.png")
    (root / "id2label.json").write_text(json.dumps({str(i): n for i, n in enumerate(SHAPE_CLASSES[:num_classes])}))
    return root
