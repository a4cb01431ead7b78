"""EpochSampler + SeededDataset: every item is a pure function of (seed, epoch, index), read singly or in batches."""

import random

import numpy as np
import pytest
import torch

from hubft.data import ImageClassificationDataset, create_transforms, make_synthetic_image_dataset
from hubft.train.sampler import EpochSampler, SeededDataset

CFG = {"input_size": (3, 32, 32), "crop_pct": 0.875, "interpolation": "bilinear", "mean": (0.5,) * 3,
       "std": (0.5,) * 3}


def rng_states():
    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()


def same_states(a, b) -> bool:
    return torch.equal(a[0], b[0]) and a[1] == b[1] and np.array_equal(a[2], b[2])


@pytest.fixture(scope="module")
def images():
    return make_synthetic_image_dataset(3, 4, 40, 0)


@pytest.mark.parametrize("auto_augment", [None, "rand-m9-mstd0.5"])
@pytest.mark.parametrize("cache", [True, False])
def test_items_do_not_depend_on_batching_and_leave_global_rngs_alone(images, auto_augment, cache):
    transform = create_transforms(CFG, training=True, auto_augment=auto_augment, re_prob=0.5)
    ds = SeededDataset(ImageClassificationDataset(images, transform, "image", "label", cache=cache))
    keys = list(EpochSampler(len(ds), seed=7))
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    before = rng_states()
    batch = ds.__getitems__(keys)
    singles = [ds[key] for key in reversed(keys)][::-1]
    assert same_states(before, rng_states())
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(batch, singles))
    # A different batch composition (halves, through a real DataLoader) gives the same items.
    loader = torch.utils.data.DataLoader(ds, batch_size=len(keys) // 2, sampler=keys)
    stacked = torch.cat([x for x, _ in loader])
    assert torch.equal(stacked, torch.stack([x for x, _ in batch]))
    # The seed is what matters: another epoch's seeds give other augmentations.
    other = ds.__getitems__([(i, s + 1) for i, s in keys])
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(batch, other))


def test_plain_indices_pass_through(images):
    ds = SeededDataset(ImageClassificationDataset(images, create_transforms(CFG, training=False), "image", "label"))
    assert torch.equal(ds[2][0], ds.dataset[2][0])
    assert [t for _, t in ds.__getitems__([0, 1])] == [ds.dataset[0][1], ds.dataset[1][1]]


def test_sampler_order_is_a_function_of_seed_and_epoch():
    sampler = EpochSampler(20, seed=5)
    first = list(sampler)
    assert sorted(i for i, _ in first) == list(range(20))
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(EpochSampler(20, seed=5, shuffle=False))[3][0] == 3
