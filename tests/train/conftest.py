"""Shared fixtures for training tests: a tiny learnable dataset and a tiny, fast config."""

from __future__ import annotations

import copy

import pytest


@pytest.fixture(autouse=True)
def _fresh_process_state():
    """Accelerate keeps process-wide singletons; each in-process run starts from a clean one."""
    from hubft.testing import reset_process_state

    reset_process_state()
    yield
    reset_process_state()


@pytest.fixture(scope="session")
def tiny_dataset():
    """4 colour classes x 12 images of 16 px: learnable in a handful of updates."""
    from hubft.data import make_synthetic_image_dataset

    return make_synthetic_image_dataset(num_classes=4, per_class=12, size=16, seed=0)


def tiny_config(output_dir, **sections) -> dict:
    """A config that trains resnet10t from scratch on 16 px inputs in a few seconds."""
    base = {
        "model": {"name": "resnet10t", "pretrained": False},
        "data": {"image_size": 16, "eval_fraction": 0.25, "hflip": 0.0},
        "optim": {"lr": 0.01, "weight_decay": 0.0},
        "schedule": {"name": "cosine", "warmup_steps": 2},
        "train": {"epochs": 2, "batch_size": 8, "output_dir": str(output_dir), "log_every": 1, "cpu": True},
    }
    out = copy.deepcopy(base)
    for section, values in sections.items():
        out.setdefault(section, {}).update(values)
    return out


@pytest.fixture
def make_config():
    return tiny_config
