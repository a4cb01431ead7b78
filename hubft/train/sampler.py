"""A sampler whose order and per-sample randomness are pure functions of (seed, epoch).

Exact resume needs the data order and every augmentation to be reproducible without replaying the run: the sampler
yields ``(index, sample_seed)`` pairs, and :class:`SeededDataset` seeds the RNGs from ``sample_seed`` before
transforming that one sample. The result does not depend on the number of workers, on which process loads the
sample, or on whether the run was interrupted.
"""

from __future__ import annotations

import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["mix_seed", "seed_sample_rngs", "EpochSampler", "SeededDataset"]

_MASK = (1 << 63) - 1


def mix_seed(*parts: int) -> int:
    """Combine integers into one well-spread 63-bit seed (splitmix64 steps), stable across runs and platforms."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x & _MASK


def seed_sample_rngs(seed: int) -> None:
    """Seed the RNGs timm's transforms draw from (torch's CPU generator, Python's, NumPy's) for one sample."""
    # Only the CPU generator: torch.manual_seed would also re-seed every accelerator's generator, for each item.
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)


class EpochSampler(Sampler):
    """Yields ``(index, sample_seed)`` for every example once per epoch, shuffled by ``(seed, epoch)``.

    Args:
        num_samples: Dataset length.
        seed: Run seed.
        shuffle: Shuffle (training) or keep order (evaluation).

    Call :meth:`set_epoch` before iterating each epoch.
    """

    def __init__(self, num_samples: int, *, seed: int, shuffle: bool = True) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = range(self.num_samples)
        for i in order:
            yield i, mix_seed(self.seed, self.epoch, i)


class SeededDataset(Dataset):
    """Wraps a map-style dataset so that ``ds[(index, seed)]`` transforms with RNGs seeded from ``seed``.

    Each item seeds torch's CPU generator, Python's and NumPy's global RNGs from its own ``seed``, so the item is
    the same whichever process, worker or batch reads it. The calling process's RNG states are restored afterwards,
    so loading data in the training process (``num_workers=0``) does not disturb dropout or any other randomness of
    the model. A DataLoader reads a batch through :meth:`__getitems__`, which saves and restores those states once
    per batch instead of once per item (the per-item save/restore cost as much as augmenting a small image).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list) -> list:
        from hubft.data import preserve_global_rngs

        with preserve_global_rngs():
            return [self._item(key) for key in keys]

    def _item(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        seed_sample_rngs(seed)  # timm's transforms draw from all three RNGs (torch, random, numpy)
        return self.dataset[index]
