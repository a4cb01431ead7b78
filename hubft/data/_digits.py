"""The real data hubft's demo and end-to-end checks use offline: scikit-learn's bundled UCI handwritten digits."""

from __future__ import annotations

import numpy as np

from hubft.errors import ConfigError

__all__ = ["load_digits_dataset"]


def load_digits_dataset(size: int = 32, *, test_size: float = 0.3, seed: int = 0):
    """scikit-learn's UCI handwritten digits (1,797 images, 8x8, values 0..16) as a ``datasets.DatasetDict``.

    Each image becomes a grayscale PIL image scaled to 0..255 and resized to ``size`` px (bilinear); labels are a
    ``ClassLabel`` named ``"0"`` .. ``"9"``. The ``train`` / ``test`` split is stratified by label and seeded by
    ``seed``, so the same arguments always give the same splits.

    Raises:
        ConfigError: scikit-learn is not installed (it ships the data).

    Examples:
        >>> data = load_digits_dataset()  # doctest: +SKIP
        >>> data["train"].features["label"].names[:3]  # doctest: +SKIP
        ['0', '1', '2']
    """
    import datasets
    from PIL import Image

    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError("the digits data ships with scikit-learn, which is not installed",
                          fix="pip install scikit-learn (or install hubft with its [dev] extra)") from None
    raw = load_digits()
    images = [Image.fromarray((img * 255 / 16).astype(np.uint8), mode="L").resize((size, size), Image.BILINEAR)
              for img in raw.images]
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[str(d) for d in range(10)])})
    full = datasets.Dataset.from_dict({"image": images, "label": raw.target.tolist()}, features=features)
    return full.train_test_split(test_size=test_size, seed=seed, stratify_by_column="label")
