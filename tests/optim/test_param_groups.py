import functools
import re

import pytest
import timm
import torch
from timm.models import group_parameters
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn

from hubft.errors import ConfigError
from hubft.optim import format_param_groups, param_groups

ARCHS = {
    "resnet10t": {},
    "test_vit": {"img_size": 32},
    "mobilenetv3_small_050": {},
    "convnext_atto": {},
    "efficientnet_b0": {},
    "test_convnext": {},
}
SETTINGS = [
    {},
    {"head_lr": 1e-2},
    {"layer_decay": 0.7},
    {"head_lr": 5e-3, "layer_decay": 0.8, "weight_decay": 0.1},
]


@functools.cache
def _model(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(arch, pretrained=False, num_classes=7, **ARCHS[arch])


def _head_names(model: nn.Module) -> set[str]:
    classifier = model.pretrained_cfg["classifier"]
    prefixes = (classifier,) if isinstance(classifier, str) else classifier
    return {n for n, _ in model.named_parameters() if any(n == p or n.startswith(p + ".") for p in prefixes)}


def _layer(group: dict) -> int:
    return int(re.fullmatch(r"layer_(\d+)\.(no_)?decay", group["name"]).group(1))


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(s) or "plain")
@pytest.mark.parametrize("arch", ARCHS)
def test_partition_lrs_and_decay(arch, settings):
    model = _model(arch)
    lr = 1e-3
    groups = param_groups(model, lr=lr, **settings)
    names = {id(p): n for n, p in model.named_parameters()}

    # Every parameter in exactly one group; names unique and readable.
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(names) and len(ids) == len(set(ids))
    assert len({g["name"] for g in groups}) == len(groups)
    assert all(set(g) == {"name", "params", "lr", "weight_decay"} for g in groups)

    head = _head_names(model)
    exempt = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    wd = settings.get("weight_decay", 0.05)
    for group in groups:
        params = [names[id(p)] for p in group["params"]]
        is_head = group["name"].startswith("head.")
        assert all((n in head) == is_head for n in params), group["name"]
        if is_head:
            assert group["lr"] == settings.get("head_lr", lr)
        # No decay on norms / biases (ndim <= 1) or the model's no_weight_decay() names; decay elsewhere.
        for p, n in zip(group["params"], params):
            assert group["weight_decay"] == (0.0 if p.ndim <= 1 or n in exempt else wd), n
        assert group["name"].endswith(".no_decay") == (group["weight_decay"] == 0.0)

    body = [g for g in groups if not g["name"].startswith("head.")]
    if "layer_decay" in settings:
        # Deeper (lower) layers get less LR; the LR is lr * decay ** (distance from the top).
        by_layer = sorted(body, key=_layer)
        lrs = [g["lr"] for g in by_layer]
        assert lrs == sorted(lrs) and lrs[0] < lrs[-1]
        top = max(group_parameters(model, model.group_matcher(coarse=False), reverse=True).values())
        for g in body:
            assert g["lr"] == pytest.approx(lr * settings["layer_decay"] ** (top - _layer(g)))
    else:
        assert {g["name"] for g in body} <= {"body.decay", "body.no_decay"}
        assert all(g["lr"] == lr for g in body)


def _per_parameter(groups: list[dict], key: str) -> dict[int, float]:
    """``id(param) -> group[key]`` for every parameter of every group."""
    return {id(p): g[key] for g in groups for p in g["params"]}


# A CNN, a ViT and a ConvNeXt: three of timm's group_matcher() shapes (stem regex, blocks with the final norm folded
# into the last block, stages with downsample layers and a norm inside the head module).
@pytest.mark.parametrize("settings", [
    {"layer_decay": 0.7},
    {"layer_decay": 0.8, "head_lr": 5e-3, "weight_decay": 0.1},
    {"head_lr": 1e-2},
], ids=lambda s: ",".join(s))
@pytest.mark.parametrize("arch", ["resnet10t", "test_vit", "test_convnext"])
def test_every_parameter_gets_the_lr_and_decay_timm_assigns_it(arch, settings):
    model = _model(arch)
    lr, wd, decay = 1e-3, settings.get("weight_decay", 0.05), settings.get("layer_decay")
    head_lr = settings.get("head_lr", lr)
    groups = param_groups(model, lr=lr, **settings)
    got_lr, got_wd = _per_parameter(groups, "lr"), _per_parameter(groups, "weight_decay")

    # The oracle is timm alone: its layer ids, its classifier module, its weight-decay split and its LR scales.
    layer_of = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    top = max(layer_of.values())
    head = {id(p) for p in model.get_classifier().parameters()}
    exempt = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    timm_wd = _per_parameter(param_groups_weight_decay(model, wd, no_weight_decay_list=exempt), "weight_decay")
    timm_scale = _per_parameter(
        param_groups_layer_decay(model, wd, no_weight_decay_list=exempt, layer_decay=decay or 1.0), "lr_scale")

    named = list(model.named_parameters())
    assert len(got_lr) == len(named) and head and len(set(layer_of.values())) > 3
    assert {got_wd[id(p)] for _, p in named} == {0.0, wd}  # both kinds occur, so the split is really checked
    for name, p in named:
        if id(p) in head:
            assert got_lr[id(p)] == head_lr, name
        elif decay is not None:
            assert got_lr[id(p)] == lr * decay ** (top - layer_of[name]), name
            assert got_lr[id(p)] == lr * timm_scale[id(p)], name
        else:
            assert got_lr[id(p)] == lr, name
        assert got_wd[id(p)] == timm_wd[id(p)], name
    if decay is not None:  # the decay really reaches down: the stem trains slower than the top of the body
        assert min(got_lr.values()) == lr * decay**top


@pytest.mark.parametrize("arch", ["resnet10t", "test_vit"])
def test_frozen_parameters_are_left_out_unless_asked(arch):
    model = timm.create_model(arch, pretrained=False, num_classes=3, **ARCHS[arch])
    head = _head_names(model)
    for name, p in model.named_parameters():
        p.requires_grad = name in head
    groups = param_groups(model, lr=1e-3, head_lr=1e-2, layer_decay=0.75)
    assert {g["name"] for g in groups} == {"head.decay", "head.no_decay"}
    assert sum(len(g["params"]) for g in groups) == len(head)

    everything = param_groups(model, lr=1e-3, head_lr=1e-2, layer_decay=0.75, include_frozen=True)
    ids = [id(p) for g in everything for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(ids) == len(set(ids))
    # The trainable head keeps the same grouping either way.
    assert [g for g in everything if g["name"].startswith("head.")] == groups


def test_no_weight_decay_patterns_and_zero_decay():
    model = _model("resnet10t")
    groups = param_groups(model, lr=1e-3, no_weight_decay=("conv1.*",))
    no_decay = {n for g in groups if g["weight_decay"] == 0 for n, p in model.named_parameters()
                if any(p is q for q in g["params"])}
    assert {n for n, _ in model.named_parameters() if n.startswith("conv1.")} <= no_decay
    assert "layer1.0.conv1.weight" not in no_decay  # shell patterns match whole names

    groups = param_groups(model, lr=1e-3, weight_decay=0.0)
    assert [g["name"] for g in groups] == ["body.no_decay", "head.no_decay"]


def test_groups_plain_model_without_head():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    groups = param_groups(model, lr=0.1)
    assert [(g["name"], len(g["params"])) for g in groups] == [("body.decay", 2), ("body.no_decay", 4)]
    with pytest.raises(ConfigError, match="head_lr"):
        param_groups(model, lr=0.1, head_lr=1.0)
    with pytest.raises(ConfigError, match="layer_decay"):
        param_groups(model, lr=0.1, layer_decay=0.5)
    # A classifier name is enough for timm's automatic layer grouping.
    model.pretrained_cfg = {"classifier": "2"}
    groups = param_groups(model, lr=0.1, head_lr=1.0, layer_decay=0.5)
    assert [g["name"] for g in groups][-2:] == ["head.decay", "head.no_decay"]
    assert all(g["lr"] == 1.0 for g in groups[-2:])


@pytest.mark.parametrize(
    "kwargs, option",
    [
        ({"lr": 0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": 1e-3, "head_lr": 0}, "head_lr"),
        ({"lr": 1e-3, "weight_decay": -0.1}, "weight_decay"),
        ({"lr": 1e-3, "layer_decay": 1.5}, "layer_decay"),
        ({"lr": 1e-3, "layer_decay": 0}, "layer_decay"),
        ({"lr": "1e-3"}, "lr"),
    ],
)
def test_bad_values_raise_config_error(kwargs, option):
    with pytest.raises(ConfigError, match=option):
        param_groups(_model("resnet10t"), **kwargs)


def test_format_param_groups_table():
    model = _model("resnet10t")
    groups = param_groups(model, lr=1e-3, head_lr=1e-2)
    table = format_param_groups(groups)
    lines = table.splitlines()
    assert lines[0].split() == ["group", "tensors", "parameters", "lr", "weight_decay"]
    assert [line.split()[0] for line in lines[1:]] == [g["name"] for g in groups] + ["total"]
    total = sum(p.numel() for p in model.parameters())
    assert lines[-1].split() == ["total", str(len(list(model.parameters()))), f"{total:,}"]
    assert "0.01" in lines[-2] and "0.001" in lines[1]
