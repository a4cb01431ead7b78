"""Numbers the loop computes, checked against their definitions: gradient clipping against torch's
``clip_grad_norm_``, the EMA against its formula step by step, and bf16 mixed precision on the CPU."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

import hubft


def _set_up(config: dict, dataset) -> hubft.Finetuner:
    ft = hubft.Finetuner(config, dataset=dataset)
    ft.setup()
    return ft


def test_gradients_are_clipped_to_exactly_what_torch_clip_grad_norm_gives(tmp_path, tiny_dataset, make_config):
    max_norm = 0.05  # far below the norm of a fresh head's gradients, so every update is clipped
    ft = _set_up(make_config(tmp_path / "run", optim={"clip_grad_norm": max_norm},
                             train={"epochs": 1, "max_updates": 3}), tiny_dataset)
    from hubft.train.finite import inner_optimizer

    acc, optimizer = ft.accelerator, inner_optimizer(ft.parts.optimizer)  # the loop steps torch's optimizer
    before, after = [], []
    clip, step = acc.clip_grad_norm_, optimizer.step

    def clip_and_record(parameters, norm, *args, **kwargs):
        parameters = list(parameters)
        before.append([p.grad.detach().clone() if p.grad is not None else None for p in parameters])
        return clip(parameters, norm, *args, **kwargs)

    def step_and_record(*args, **kwargs):
        after.append([p.grad.detach().clone() if p.grad is not None else None for p in ft.parts.model.parameters()])
        return step(*args, **kwargs)

    acc.clip_grad_norm_, optimizer.step = clip_and_record, step_and_record
    try:
        ft.loop.train_epoch(0)
    finally:
        ft.close()
    assert len(before) == len(after) == 3
    for raw, clipped in zip(before, after):
        expected = [torch.nn.Parameter(g.clone()) for g in raw if g is not None]
        for p, g in zip(expected, (g for g in raw if g is not None)):
            p.grad = g.clone()
        total = torch.nn.utils.clip_grad_norm_(expected, max_norm)
        assert float(total) > max_norm  # the update was clipped
        got = [g for g in clipped if g is not None]
        assert len(got) == len(expected)
        for p, g in zip(expected, got):
            assert torch.equal(p.grad, g)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in got]))
        assert float(norm) == pytest.approx(max_norm, rel=1e-4)


def test_the_ema_follows_its_formula_at_every_update(tmp_path, tiny_dataset, make_config):
    """The EMA is the weights after the first update, then ``ema = d * ema + (1 - d) * w`` after every later one
    (timm's ModelEmaV3 given the update count: decay 0 at the first update, no other warmup)."""
    decay = 0.9
    ft = _set_up(make_config(tmp_path / "run", train={"epochs": 1, "max_updates": 4, "ema": True,
                                                      "ema_decay": decay}), tiny_dataset)
    ema = ft.parts.ema
    update, checked = ema.update, []

    def update_and_check(model, step=None):
        old = {k: v.detach().clone() for k, v in ema.module.named_parameters()}
        weights = {k: v.detach().clone() for k, v in model.named_parameters()}
        update(model, step=step)
        d = 0.0 if step == 1 else decay
        for name, value in ema.module.named_parameters():
            expected = d * old[name] + (1 - d) * weights[name]
            torch.testing.assert_close(value.detach(), expected, atol=1e-6, rtol=1e-5)
        checked.append(step)

    ema.update = update_and_check
    try:
        ft.loop.train_epoch(0)
    finally:
        ft.close()
    assert checked == [1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet10t", "test_vit"])
def test_bf16_mixed_precision_trains_on_the_cpu(tmp_path, tiny_dataset, make_config, model):
    config = make_config(tmp_path / "run", model={"name": model, "pretrained": False},
                         data={"image_size": 32, "eval_fraction": 0.25, "hflip": 0.0},
                         train={"epochs": 3, "mixed_precision": "bf16"})
    result = hubft.finetune(copy.deepcopy(config), dataset=tiny_dataset)
    steps = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in steps if r["type"] == "step"]
    assert all(math.isfinite(v) for v in losses) and result.steps == len(losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    facts = json.loads((tmp_path / "run" / "metrics.json").read_text())["run"]
    assert facts["mixed_precision"] == "bf16"
