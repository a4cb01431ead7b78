"""Tiny on-disk and in-memory image datasets shared by the data tests."""

from __future__ import annotations

import csv
from pathlib import Path

import datasets
import pytest

from hubft.data import make_synthetic_image_dataset, synthetic_class_names, write_image_folder

# A model-like preprocessing config: small, with mean/std far from timm's defaults so that a test
# can tell whether they were used.
TINY_CFG = {
    "input_size": (3, 24, 24),
    "interpolation": "bilinear",
    "mean": (0.25, 0.5, 0.75),
    "std": (0.1, 0.2, 0.3),
    "crop_pct": 0.75,
    "crop_mode": "center",
}
MODES = ("RGB", "L", "RGBA", "P")


@pytest.fixture
def tiny_cfg() -> dict:
    return dict(TINY_CFG)


@pytest.fixture
def synthetic() -> datasets.Dataset:
    return make_synthetic_image_dataset(num_classes=3, per_class=10, size=16, seed=0)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """3 classes x 4 images, cycling through RGB, grayscale, RGBA and palette PNGs."""
    return write_image_folder(tmp_path / "folder", num_classes=3, per_class=4, size=16, modes=MODES)


def _rows(folder: Path) -> list[dict]:
    """One row per image of ``folder``: path relative to ``folder.parent`` and the class name as a string label."""
    return [
        {"file_name": path.relative_to(folder.parent).as_posix(), "label": path.parent.name}
        for path in sorted(folder.rglob("*.png"))
    ]


@pytest.fixture
def csv_file(image_folder: Path) -> Path:
    path = image_folder.parent / "labels.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "label"])
        writer.writeheader()
        writer.writerows(_rows(image_folder))
    return path


@pytest.fixture
def parquet_file(image_folder: Path) -> Path:
    path = image_folder.parent / "labels.parquet"
    rows = _rows(image_folder)
    datasets.Dataset.from_dict({key: [row[key] for row in rows] for key in ("file_name", "label")}).to_parquet(path)
    return path


@pytest.fixture
def class_names() -> list[str]:
    return synthetic_class_names(3)
