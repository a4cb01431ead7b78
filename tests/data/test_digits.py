"""load_digits_dataset: scikit-learn's real digits as a stratified, seeded DatasetDict of grayscale images."""

import builtins
from collections import Counter

import pytest

from hubft.data import load_digits_dataset
from hubft.errors import ConfigError


def test_digits_are_grayscale_images_with_named_classes_and_a_stratified_split():
    data = load_digits_dataset(16)
    train, test = data["train"], data["test"]
    assert len(train) + len(test) == 1797 and abs(len(test) / 1797 - 0.3) < 0.01
    assert train.features["label"].names == [str(d) for d in range(10)]
    image = train[0]["image"]
    assert image.mode == "L" and image.size == (16, 16)
    shares = {c: n / len(test) for c, n in Counter(test["label"]).items()}
    assert set(shares) == set(range(10)) and all(0.08 < s < 0.12 for s in shares.values())
    again = load_digits_dataset(16)
    assert again["test"]["label"] == test["label"]
    assert load_digits_dataset(16, seed=1)["test"]["label"] != test["label"]


def test_a_missing_scikit_learn_says_how_to_install_it(monkeypatch):
    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(ConfigError, match="pip install scikit-learn"):
        load_digits_dataset()
