"""The synthetic datasets are deterministic, learnable, and written in the layout the loaders expect."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from PIL import Image

from hubft.data import make_synthetic_image_dataset, synthetic_class_names, write_image_folder
from hubft.errors import ConfigError


def _pixels(ds: datasets.Dataset) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.float32) for image in ds["image"]])


def test_same_seed_same_pixels():
    first, again = make_synthetic_image_dataset(seed=3), make_synthetic_image_dataset(seed=3)
    other = make_synthetic_image_dataset(seed=4)
    assert np.array_equal(_pixels(first), _pixels(again)) and not np.array_equal(_pixels(first), _pixels(other))
    assert list(first["label"]) == [0] * 8 + [1] * 8 + [2] * 8


def test_colour_alone_separates_the_classes():
    ds = make_synthetic_image_dataset(num_classes=6, per_class=5, size=12, seed=0)
    means = _pixels(ds).mean(axis=(1, 2))  # (N, 3) mean colour per image
    labels = np.array(ds["label"])
    centroids = np.stack([means[labels == c].mean(axis=0) for c in range(6)])
    nearest = np.argmin(((means[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert np.array_equal(nearest, labels)
    assert len({image.tobytes() for image in ds["image"]}) == len(ds)  # noise: no two images alike


def test_multi_label_images_show_each_class():
    ds = make_synthetic_image_dataset(num_classes=3, per_class=6, size=12, multi_label=True, seed=1)
    assert ds.features["label"] == datasets.List(datasets.ClassLabel(names=synthetic_class_names(3)))
    lengths = [len(labels) for labels in ds["label"]]
    assert set(lengths) == {1, 2}
    assert all(i // 6 in row for i, row in enumerate(ds["label"]))  # rows are grouped by primary class


def test_class_names_sort_in_index_order():
    names = synthetic_class_names(12)
    assert names == sorted(names) and names[0] == "class_00" and names[11] == "class_11"


def test_image_folder_layout_and_modes(tmp_path):
    root = write_image_folder(tmp_path, num_classes=2, per_class=4, size=10, modes=("RGB", "L", "RGBA", "P"),
                              splits=["train", "test"])
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert len(files) == 16 and files[0] == "test/class_0/0.png"
    modes = [Image.open(root / "train" / "class_0" / f"{i}.png").mode for i in range(4)]
    assert modes == ["RGB", "L", "RGBA", "P"]
    train = np.asarray(Image.open(root / "train" / "class_0" / "0.png"))
    test = np.asarray(Image.open(root / "test" / "class_0" / "0.png"))
    assert not np.array_equal(train, test)  # each split gets its own draw


@pytest.mark.parametrize("kwargs", [dict(num_classes=0), dict(per_class=-1), dict(size=2.5)])
def test_bad_sizes_raise_config_error(kwargs):
    with pytest.raises(ConfigError, match="positive int"):
        make_synthetic_image_dataset(**kwargs)
