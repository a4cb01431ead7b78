"""freeze / unfreeze: what trains, BatchNorm statistics that stay put, and what the freeze survives."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from hubft.errors import ConfigError, ModelError
from hubft.models import (
    body_groups,
    create_model,
    freeze,
    frozen_parts,
    head_parameter_names,
    save_pretrained,
    unfreeze,
)


def _trainable(model):
    return {name for name, param in model.named_parameters() if param.requires_grad}


def _norms(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, _NormBase) and m.track_running_stats}


def _buffers(model):
    return {name: b.clone() for name, b in model.named_buffers()}


def _train_step(model, batch):
    model.train()
    model(batch).sum().backward()


def test_linear_probe_trains_only_the_head_and_keeps_batchnorm_statistics(source, batch):
    model = create_model(source.spec, num_classes=3, head_init_seed=0)
    before = _buffers(model)
    parts = freeze(model)
    assert frozen_parts(model) == parts and parts.stages is None
    assert _trainable(model) == set(head_parameter_names(model))
    assert set(parts.norm_modules) == set(_norms(model))  # no head here holds a BatchNorm

    _train_step(model, batch)
    assert all(not m.training for m in _norms(model).values())
    assert all(model.get_submodule(n).training for n, m in model.named_modules() if n not in _norms(model))
    assert all(torch.equal(b, before[n]) for n, b in model.named_buffers())
    assert all((p.grad is not None) == (n in _trainable(model)) for n, p in model.named_parameters())

    unfreeze(model)
    assert frozen_parts(model) is None
    assert _trainable(model) == {name for name, _ in model.named_parameters()}
    assert all(m.training and "train" not in vars(m) for m in _norms(model).values())
    model.eval()
    assert not any(m.training for m in model.modules())


def test_stages_freeze_the_first_groups_and_allow_gradual_unfreezing(resnet_source, batch):
    model = create_model(resnet_source.spec, num_classes=3)
    groups = body_groups(model)
    assert [g[0].split(".")[0] for g in groups] == ["conv1", "layer1", "layer2", "layer3", "layer4"]

    freeze(model, stages=2)
    assert _trainable(model) == {n for g in groups[2:] for n in g} | set(head_parameter_names(model))
    _train_step(model, batch)
    assert not model.layer1[0].bn1.training and not model.bn1.training
    assert model.layer2[0].bn1.training

    parts = freeze(model, stages=1)
    assert parts.stages == 1 and "layer1.0.conv1.weight" in _trainable(model)
    model.train()
    assert model.layer1[0].bn1.training and not model.bn1.training

    with pytest.raises(ConfigError, match="stages=6 but ResNet has 5 groups"):
        freeze(model, stages=6)


def test_unfreeze_restores_exactly_what_was_there(resnet_source):
    model = create_model(resnet_source.spec, num_classes=3)
    model.layer4[0].conv1.weight.requires_grad_(False)  # the user's own choice
    model.eval()
    freeze(model)
    unfreeze(model)
    assert _trainable(model) == {n for n, _ in model.named_parameters()} - {"layer4.0.conv1.weight"}
    assert not any(m.training for m in model.modules())
    unfreeze(model)  # not frozen: a no-op


def test_freeze_survives_deepcopy_and_pickle_and_saves_like_an_unfrozen_model(resnet_source, batch, tmp_path):
    model = create_model(resnet_source.spec, num_classes=3)
    keys = set(model.state_dict())
    freeze(model)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        before = _buffers(clone)
        _train_step(clone, batch)
        assert not clone.layer1[0].bn1.training
        assert all(torch.equal(b, before[n]) for n, b in clone.named_buffers())
        assert frozen_parts(clone) == frozen_parts(model)
        unfreeze(clone)
        assert clone.train().layer1[0].bn1.training
    assert set(model.state_dict()) == keys
    save_pretrained(model, tmp_path)
    assert not model.layer1[0].bn1.train().training


def test_freeze_survives_ddp_wrapping(resnet_source, batch, tmp_path):
    model = create_model(resnet_source.spec, num_classes=3)
    freeze(model)
    before = _buffers(model)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(model)
        _train_step(wrapped, batch)
        assert not model.layer1[0].bn1.training and model.layer1.training
        assert all(torch.equal(b, before[n]) for n, b in model.named_buffers())
        assert model.fc.weight.grad is not None and model.conv1[0].weight.grad is None
        assert frozen_parts(wrapped) is not None
        with pytest.raises(ModelError, match="before accelerator.prepare"):
            unfreeze(wrapped)
    finally:
        if owns_group:
            dist.destroy_process_group()


def test_freeze_needs_an_identifiable_head():
    with pytest.raises(ModelError, match="cannot find the classifier"):
        freeze(nn.Sequential(nn.Linear(2, 2)))
