"""Bad input to load_data: each case raises a HubftError that names the bad value and says what to do."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
from PIL import Image

from hubft.data import load_data
from hubft.errors import ConfigError, DataError

BLANK = Image.new("RGB", (4, 4))


def _ds(columns: dict, features: dict | None = None) -> datasets.Dataset:
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features) if features else None)


def _images(n: int) -> dict:
    return {"image": [BLANK] * n}


IMAGE = {"image": datasets.Image()}


def _out_of_range_classlabel() -> datasets.Dataset:
    # -1 is datasets' "no label" marker, which a ClassLabel column accepts
    return _ds({**_images(4), "label": [0, 1, -1, 0]}, {**IMAGE, "label": datasets.ClassLabel(names=["a", "b"])})


def _eval_emptied_by_classes() -> datasets.DatasetDict:
    label = datasets.ClassLabel(names=["a", "b", "c"])
    train = _ds({**_images(4), "label": [0, 1, 0, 1]}, {**IMAGE, "label": label})
    return datasets.DatasetDict({"train": train, "validation": _ds({**_images(2), "label": [2, 2]},
                                                                    {**IMAGE, "label": label})})


def _eval_with_unknown_class() -> datasets.DatasetDict:
    train = _ds({**_images(2), "label": [0, 1]}, {**IMAGE, "label": datasets.ClassLabel(names=["a", "b"])})
    val = _ds({**_images(2), "label": [0, 1]}, {**IMAGE, "label": datasets.ClassLabel(names=["a", "zebra"])})
    return datasets.DatasetDict({"train": train, "validation": val})


# (id, load_data kwargs, error type, words the message must contain)
CASES = [
    ("no-label-column", lambda tmp: dict(dataset=_ds({**_images(2), "caption": ["x", "y"]})), DataError,
     ["no label column", "caption (string)", "label_column="]),
    ("label-column-override-missing", lambda tmp: dict(dataset=_ds({**_images(2), "label": [0, 1]}),
                                                       label_column="tag"), DataError, ["'tag' not found", "label"]),
    ("no-image-column", lambda tmp: dict(dataset=_ds({"text": ["a", "b"], "label": [0, 1]})), DataError,
     ["no image column", "text (string)", "image_column="]),
    ("image-column-override-missing", lambda tmp: dict(dataset=_ds({**_images(2), "label": [0, 1]}),
                                                       image_column="pixels"), DataError, ["'pixels' not found"]),
    ("image-column-not-images", lambda tmp: dict(dataset=_ds({"x": [1, 2], "label": [0, 1]}), image_column="x"),
     DataError, ["'x'", "int64", "not images"]),
    ("negative-int-label", lambda tmp: dict(dataset=_ds({**_images(3), "label": [0, -2, 1]})), DataError,
     ["label -2 in row 1", "out of range"]),
    ("classlabel-minus-one", lambda tmp: dict(dataset=_out_of_range_classlabel()), DataError,
     ["label -1 in row 2", "2 classes"]),
    ("missing-label-value", lambda tmp: dict(dataset=_ds({**_images(2), "label": ["a", None]})), DataError,
     ["row 1", "no label"]),
    ("float-labels", lambda tmp: dict(dataset=_ds({**_images(2), "label": [0.5, 1.0]})), DataError,
     ["'label'", "float", "cannot use"]),
    ("empty-dataset", lambda tmp: dict(dataset=_ds({"image": [], "label": []},
                                                   {**IMAGE, "label": datasets.Value("int64")})), DataError,
     ["split 'train' is empty"]),
    ("empty-after-classes", lambda tmp: dict(dataset=_eval_emptied_by_classes(), classes=["a"]), DataError,
     ["'validation' is empty after keeping only the classes"]),
    ("eval-class-unknown-to-train", lambda tmp: dict(dataset=_eval_with_unknown_class()), DataError,
     ["'validation'", "zebra"]),
    ("unknown-class-name", lambda tmp: dict(dataset=_ds({**_images(2), "label": ["cat", "dog"]}),
                                            classes=["cat", "dgo"]), DataError, ["'dgo'", "did you mean ['dog']"]),
    ("class-index-out-of-range", lambda tmp: dict(dataset=_ds({**_images(2), "label": ["cat", "dog"]}),
                                                  classes=[0, 2]), DataError, ["index 2", "0 .. 1"]),
    ("path-not-found", lambda tmp: dict(path=tmp / "nowhere"), DataError, ["nowhere", "not found"]),
    ("unsupported-file", lambda tmp: dict(path=_touch(tmp / "labels.txt")), DataError,
     ["unsupported file type '.txt'", ".csv"]),
    ("empty-folder", lambda tmp: dict(path=_mkdir(tmp / "empty")), DataError, ["could not read", "imagefolder"]),
    ("missing-image-file", lambda tmp: dict(path=_csv(tmp, ["a.png", "gone.png"])), DataError,
     ["1 image file(s)", "row 1", "gone.png"]),
    ("unknown-split", lambda tmp: dict(dataset=datasets.DatasetDict({"train": _ds({**_images(2), "label": [0, 1]})}),
                                       eval_split="dev"), DataError, ["split 'dev' not found", "['train']"]),
    ("too-small-to-carve", lambda tmp: dict(dataset=_ds({**_images(1), "label": [0]})), DataError,
     ["1 row(s)", "eval_split="]),
    ("no-source", lambda tmp: dict(), ConfigError, ["exactly one of name, path or dataset", "none"]),
    ("two-sources", lambda tmp: dict(name="a/b", path=tmp), ConfigError, ["got name, path"]),
    ("revision-without-name", lambda tmp: dict(path=tmp, revision="v1"), ConfigError, ["revision"]),
    ("eval-fraction", lambda tmp: dict(path=tmp, eval_fraction=1.0), ConfigError, ["eval_fraction", "1.0"]),
    ("max-per-class", lambda tmp: dict(path=tmp, max_per_class=0), ConfigError, ["max_per_class", "0"]),
    ("classes-empty", lambda tmp: dict(dataset=_ds({**_images(2), "label": [0, 1]}), classes=[]), ConfigError,
     ["non-empty list"]),
    ("classes-repeated", lambda tmp: dict(dataset=_ds({**_images(2), "label": [0, 1]}), classes=["1", 1]),
     ConfigError, ["twice"]),
    ("same-split-twice", lambda tmp: dict(dataset=_ds({**_images(2), "label": [0, 1]}), eval_split="train"),
     ConfigError, ["both 'train'"]),
    ("not-a-dataset", lambda tmp: dict(dataset=[1, 2]), ConfigError, ["list", "datasets.Dataset"]),
]


def _touch(path: Path) -> Path:
    path.write_text("x")
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _csv(tmp: Path, names: list[str]) -> Path:
    BLANK.save(tmp / names[0])
    path = tmp / "table.csv"
    path.write_text("file_name,label\n" + "".join(f"{name},x\n" for name in names))
    return path


@pytest.mark.parametrize(("kwargs", "error", "words"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_raises_a_clear_error(tmp_path, kwargs, error, words):
    with pytest.raises(error) as info:
        load_data(**kwargs(tmp_path))
    message = str(info.value)
    for word in words:
        assert word in message
    assert "Fix:" in message
