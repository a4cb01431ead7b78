"""Fixtures for the loss tests: inputs that fit a registry record's target kind, and a tiny training run."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

InputMaker = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _make_inputs(
    kind: str, shape: tuple[int, ...], *, dtype: torch.dtype = torch.float32, soft: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    output = torch.randn(shape, dtype=dtype)
    batch, classes, spatial = shape[0], shape[1], shape[2:]
    if kind == "class":
        if soft:
            target = torch.softmax(torch.randn(shape, dtype=dtype), dim=1)
        else:
            target = torch.randint(0, classes, (batch, *spatial))
    elif kind == "binary":
        target = torch.bernoulli(torch.full(shape, 0.5, dtype=dtype))
    elif kind == "dense":
        target = torch.randn(shape, dtype=dtype)
    else:
        raise ValueError(f"unknown target kind {kind!r}")
    return output, target


@pytest.fixture
def make_inputs() -> InputMaker:
    """``make_inputs(kind, shape, dtype=..., soft=...) -> (output, target)`` for a target kind of LossInfo."""
    return _make_inputs


def _train(loss: nn.Module, task: str, steps: int = 25) -> list[float]:
    """Fit a Linear layer on separable (class / binary) or linear (dense) data; return the loss per step."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 8, generator=generator)
    if task in ("class", "binary"):
        labels = torch.randint(0, 3, (64,), generator=generator)
        inputs = inputs + 3.0 * torch.randn(3, 8, generator=generator)[labels]
        target = labels if task == "class" else F.one_hot(labels, 3).float()
        model: nn.Module = nn.Linear(8, 3)
    elif task == "dense":
        target = (inputs @ torch.randn(8, 12, generator=generator)).reshape(64, 2, 6)
        model = nn.Sequential(nn.Linear(8, 12), nn.Unflatten(1, (2, 6)))
    else:
        raise ValueError(f"unknown task {task!r}")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    history = []
    for _ in range(steps):
        optimizer.zero_grad()
        value = loss(model(inputs), target)
        value.backward()
        optimizer.step()
        history.append(value.item())
    return history


@pytest.fixture
def train() -> Callable[..., list[float]]:
    """``train(loss, task) -> losses per step`` with task ``class``, ``binary`` or ``dense``."""
    return _train
