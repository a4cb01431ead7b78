"""A small trained classifier saved as a run would save it, and data to evaluate it on."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def eval_data():
    """4 colour classes x 8 images of 16 px (the synthetic set every training test learns)."""
    from hubft.data import make_synthetic_image_dataset

    return make_synthetic_image_dataset(num_classes=4, per_class=8, size=16, seed=0)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, eval_data):
    """A resnet10t fine-tuned for a few updates on ``eval_data`` (so its predictions are not all one class)."""
    import hubft
    from hubft.testing import reset_process_state

    out = tmp_path_factory.mktemp("trained") / "run"
    config = {
        "model": {"name": "resnet10t", "pretrained": False},
        "data": {"image_size": 32, "eval_fraction": 0.25, "hflip": 0.0},
        "optim": {"lr": 0.01, "weight_decay": 0.0},
        "train": {"epochs": 2, "batch_size": 8, "output_dir": str(out), "cpu": True},
    }
    try:
        hubft.finetune(config, dataset=eval_data)
    finally:
        reset_process_state()
    return out
