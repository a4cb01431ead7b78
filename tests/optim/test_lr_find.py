"""The LR range test: a sensible answer where the best LR is known, the group ratios kept at every step, and
nothing left behind (weights, BatchNorm statistics, optimizer state, schedule and RNG states bit-exact)."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
import torch

import hubft
from hubft.errors import ConfigError
from hubft.optim import create_scheduler, find_lr, steepest_lr, valley_lr


def _regression():
    """A linear least-squares problem: for SGD on it the best LR is 1 / lambda_max of the Hessian, and the loss
    diverges above 2 / lambda_max."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g) * torch.linspace(0.5, 2.0, 8)
    y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(512, 1, generator=g)
    hessian = 2 * x.T @ x / len(x)
    return x, y, float(torch.linalg.eigvalsh(hessian).max())


def _regression_step(model, optimizer, x, y):
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    taken = [0]

    def step() -> float:
        idx = order[(taken[0] % 8) * 64:(taken[0] % 8 + 1) * 64]
        taken[0] += 1
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def test_a_problem_with_a_known_best_lr_gets_its_minimum_and_suggestions_in_sensible_places():
    x, y, lam = _regression()
    best, diverges = 1 / lam, 2 / lam
    model = torch.nn.Linear(8, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    result = find_lr(opt, _regression_step(model, opt, x, y), start=1e-4, end=10, num_steps=100, model=model)
    assert result.stopped_early and result.lrs[-1] < 10  # it diverged, and the sweep stopped there
    lowest = result.lrs[int(np.argmin(result.losses))]
    assert best / 2 <= lowest <= 2 * diverges  # the loss is lowest near the best LR, before it blows up
    for suggestion in (result.steepest, result.valley):
        assert best / 30 <= suggestion < diverges  # below divergence, within ~1.5 decades of the best LR


def _hashes(model, optimizer, schedule) -> dict:
    def digest(t: torch.Tensor) -> str:
        return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()

    state = optimizer.state_dict()
    return {
        "model": {k: digest(v) for k, v in model.state_dict().items()},
        "grads": [digest(p.grad) if p.grad is not None else None for p in model.parameters()],
        "optimizer": {i: {k: digest(v) if torch.is_tensor(v) else v for k, v in s.items()}
                      for i, s in state["state"].items()},
        "groups": [{k: v for k, v in g.items() if k != "params"} for g in state["param_groups"]],
        "schedule": repr(schedule.state_dict()),
        "rng": (digest(torch.get_rng_state()), hashlib.sha256(repr(np.random.get_state()).encode()).hexdigest(),
                hash(random.getstate())),
    }


def test_nothing_is_left_behind_and_every_step_keeps_the_group_ratios():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 2))
    model.pretrained_cfg = {"classifier": "3"}
    groups = hubft.param_groups(model, lr=1e-3, head_lr=1e-2, weight_decay=0.01)
    opt = torch.optim.AdamW(groups)
    schedule = create_scheduler(opt, "cosine", warmup_steps=2, total_updates=50)
    data = torch.randn(16, 3, 8, 8), torch.randint(2, (16,))

    def update() -> float:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(data[0]), data[1])
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(3):  # a run in progress: optimizer state, moved BatchNorm statistics, a schedule, gradients
        update()
        schedule.step()
    update()  # gradients of an update in flight
    torch.manual_seed(123)
    np.random.seed(7)
    random.seed(5)
    before = _hashes(model, opt, schedule)
    own_lrs = {g["name"]: g["initial_lr"] for g in opt.param_groups}  # the groups' LRs, before the schedule's factor
    ratios = []

    def step() -> float:
        ratios.append([g["lr"] / opt.param_groups[0]["lr"] for g in opt.param_groups])
        torch.rand(1), np.random.rand(), random.random()  # the sweep draws from every global RNG
        return update()

    result = find_lr(opt, step, reference_lr=1e-3, start=1e-6, end=1.0, num_steps=30, model=model,
                     schedule=schedule, group_names=[g["name"] for g in groups])
    assert _hashes(model, opt, schedule) == before
    expected = [lr / own_lrs["body.decay"] for lr in own_lrs.values()]
    assert len(ratios) >= len(result.lrs) >= 5  # a step whose loss was not finite is not on the curve
    assert all(r == pytest.approx(expected, rel=1e-12) for r in ratios)
    assert result.group_lrs(1e-3) == pytest.approx(own_lrs)
    assert {"head.decay", "head.no_decay"} <= set(result.group_names)


def test_a_non_finite_loss_stops_the_sweep_and_the_curve_stays_finite():
    w = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([w], lr=1.0)
    losses = iter([1.0, 0.9, 0.8, 0.7, float("nan"), 0.1])
    result = find_lr(opt, lambda: next(losses), start=1e-3, end=1.0, num_steps=6)
    assert result.stopped_early and result.losses == (1.0, 0.9, 0.8, 0.7)
    assert opt.param_groups[0]["lr"] == 1.0


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"start": 1.0, "end": 0.1}, "0 < start < end"), ({"start": 0.0}, "0 < start < end"),
    ({"num_steps": 3}, "num_steps"), ({"smoothing": 1.0}, "smoothing"), ({"diverge": 1.0}, "diverge"),
])
def test_bad_sweep_settings_are_config_errors(kwargs, match):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    with pytest.raises(ConfigError, match=match):
        find_lr(opt, lambda: 1.0, **kwargs)


def test_the_suggestion_rules_on_curves_written_out():
    lrs = [10.0 ** e for e in range(-6, 2)]
    falling_then_blowing_up = [3.0, 2.9, 2.5, 1.5, 0.6, 0.5, 0.55, 4.0]
    assert steepest_lr(lrs, falling_then_blowing_up) == 1e-3  # the biggest drop per decade: 2.5 -> 1.5 -> 0.6
    assert valley_lr(lrs, falling_then_blowing_up) == 1e-4  # falls over steps 0-5: the middle is step 2
    assert steepest_lr(lrs[:4], falling_then_blowing_up[:4]) is None and valley_lr(lrs[:4], [1, 2, 3, 4]) is None
