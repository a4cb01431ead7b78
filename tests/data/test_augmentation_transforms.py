"""timm's auto-augment policies run at every magnitude, on the cached and the uncached path."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from hubft.data import ImageClassificationDataset, create_transforms

# Policies that ask Pillow to keep 0 bits when posterizing: PosterizeIncreasing at magnitude 10 (always at m10,
# now and then at m9 with a magnitude std), and the original Posterize at low magnitudes in policy v0.
EXTREME_POLICIES = ["rand-m10-inc1", "rand-m9-mstd0.5-inc1", "rand-m0", "v0"]


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.mark.parametrize("policy", EXTREME_POLICIES)
def test_policies_run_at_extreme_magnitudes(tiny_cfg, policy):
    tf = create_transforms(tiny_cfg, training=True, auto_augment=policy)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8))
    for seed in range(300):
        _seed_all(seed)
        assert tf(image).shape == (3, 24, 24)


@pytest.mark.parametrize("cache", [False, True])
def test_the_cached_path_runs_extreme_policies_too(synthetic, tiny_cfg, cache):
    tf = create_transforms(tiny_cfg, training=True, auto_augment="rand-m10-n3-inc1")
    data = ImageClassificationDataset(synthetic, tf, image_column="image", label_column="label", cache=cache)
    for seed in range(10):
        _seed_all(seed)
        assert all(data[i][0].shape == (3, 24, 24) for i in range(len(data)))


def test_posterize_to_zero_bits_is_a_black_image(tiny_cfg):
    from timm.data.auto_augment import RandAugment

    tf = create_transforms(tiny_cfg, training=True, auto_augment="rand-m10-inc1")
    policy = next(t for t in tf.transform.transforms if isinstance(t, RandAugment))
    posterize = next(op for op in policy.ops if op.name == "PosterizeIncreasing")
    assert posterize.aug_fn(Image.new("RGB", (4, 4), (200, 100, 50)), 0).getextrema() == ((0, 0),) * 3
    assert posterize.aug_fn(Image.new("RGB", (4, 4), (200, 100, 50)), 1).getpixel((0, 0)) == (128, 0, 0)
