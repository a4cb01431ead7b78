"""Every registered loss, built with its defaults, keeps the registry's contract.

Parametrised over ``list_losses()``, so a newly registered loss is covered without touching this file.
"""

from __future__ import annotations

import math

import pytest
import torch

from hubft.errors import ConfigError
from hubft.losses import accepts_soft_targets, create_loss, get_loss_info, list_losses

SHAPES = {
    "class": [(4, 3), (2, 3, 4, 4)],
    "binary": [(4, 3), (2, 3, 4, 4)],
    "dense": [(4, 3, 5), (2, 2, 4, 4)],
}

# Non-default configurations of the built-ins, checked like the defaults: (name, options, target kind).
VARIANTS = [
    ("cross_entropy", {"class_weights": [1.0, 2.0, 0.5], "label_smoothing": 0.1}, "class"),
    ("bce", {"pos_weight": [1.0, 2.0, 3.0], "smoothing": 0.1}, "binary"),
    ("focal", {"mode": "binary", "alpha": 0.25}, "binary"),
    ("focal", {"mode": "multilabel", "alpha": [0.2, 0.5, 0.8], "gamma": 0.5}, "binary"),
    ("focal", {"mode": "multiclass", "alpha": [1.0, 2.0, 0.5], "gamma": 1.5}, "class"),
    ("dice", {"mode": "binary", "per_sample": True}, "binary"),
    ("dice", {"mode": "multilabel", "smooth": 0.5}, "binary"),
    ("dice", {"mode": "multiclass", "per_sample": True}, "class"),
    ("huber", {"delta": 0.5}, "dense"),
    ("smooth_l1", {"beta": 0.5}, "dense"),
    ("sobolev", {"weights": [0.5, 1.0, 0.25]}, "dense"),
]
REGISTERED = [(name, {}, get_loss_info(name).target) for name in list_losses()]


def _unreduced_shape(unreduced: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return {
        "element": shape,
        "position": (shape[0], *shape[2:]),
        "sample": (shape[0],),
        "class": (shape[1],),
    }[unreduced]


@pytest.mark.parametrize("name", list_losses())
@pytest.mark.parametrize("shape_index", [0, 1])
def test_reductions_keep_the_contract(name, shape_index, make_inputs):
    info = get_loss_info(name)
    shape = SHAPES[info.target][shape_index]
    output, target = make_inputs(info.target, shape)
    if not info.reductions:
        assert create_loss(name)(output, target).shape == ()
        return
    values = {r: create_loss(name, reduction=r)(output, target) for r in info.reductions}
    for reduction, value in values.items():
        assert torch.isfinite(value).all(), reduction
        assert value.dtype == torch.float32
    if "none" in values:
        assert tuple(values["none"].shape) == _unreduced_shape(info.unreduced, shape)
        if "mean" in values:
            torch.testing.assert_close(values["mean"], values["none"].mean())
        if "sum" in values:
            torch.testing.assert_close(values["sum"], values["none"].sum())
    for reduction in set(values) & {"mean", "sum"}:
        assert values[reduction].shape == ()


@pytest.mark.parametrize("name", list_losses())
def test_unsupported_reduction_is_refused(name):
    # A loss without a reduction option refuses it as an unknown option, which names it too.
    with pytest.raises(ConfigError, match="reduction"):
        create_loss(name, reduction="avg")


@pytest.mark.parametrize("name", list_losses())
def test_record_matches_module(name, make_inputs):
    info = get_loss_info(name)
    loss = create_loss(name)
    assert accepts_soft_targets(loss) is info.soft_targets
    assert set(info.options()) >= set(info.defaults)
    if info.soft_targets and info.target == "class":
        output, target = make_inputs("class", (4, 3), soft=True)
        assert torch.isfinite(loss(output, target))


@pytest.mark.parametrize(("name", "options", "kind"), REGISTERED + VARIANTS)
def test_gradcheck_float64(name, options, kind, make_inputs):
    shape = {"dense": (2, 2, 5)}.get(kind, (3, 3))
    output, target = make_inputs(kind, shape, dtype=torch.float64)
    output.requires_grad_(True)
    loss = create_loss(name, **options)
    assert torch.autograd.gradcheck(lambda o: loss(o, target), (output,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize(("name", "options", "kind"), REGISTERED + VARIANTS)
@pytest.mark.parametrize("no_positives", [False, True])
def test_extreme_outputs_give_finite_values_and_gradients(name, options, kind, no_positives, make_inputs):
    output, target = make_inputs(kind, (4, 3))
    if no_positives:
        target = torch.zeros_like(target)  # binary: no positive at all; class: classes 1 and 2 absent
    output = (1e4 * torch.sign(output)).requires_grad_(True)
    value = create_loss(name, **options)(output, target)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(output.grad).all()


@pytest.mark.parametrize(("name", "options", "kind"), REGISTERED + VARIANTS)
def test_bf16_autocast_on_cpu_computes_in_float32(name, options, kind, make_inputs):
    shape = {"dense": (4, 2, 5)}.get(kind, (4, 3))
    features = torch.randn(*shape[:1], *shape[2:], 8) if kind == "dense" else torch.randn(4, 8)
    layer = torch.nn.Linear(8, shape[1])
    _, target = make_inputs(kind, shape)
    loss = create_loss(name, **options)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = layer(features)
        if kind == "dense":
            output = output.movedim(-1, 1)
        value = loss(output, target)
    assert output.dtype == torch.bfloat16
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, loss(output.float(), target))
    value.backward()
    assert torch.isfinite(layer.weight.grad).all()


@pytest.mark.parametrize("name", list_losses())
def test_training_a_linear_layer_lowers_the_loss(name, train):
    history = train(create_loss(name), get_loss_info(name).target)
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < 0.8 * history[0]


@pytest.mark.parametrize(
    ("name", "options", "buffer"),
    [
        ("cross_entropy", {"class_weights": [1.0, 2.0, 3.0]}, "class_weights"),
        ("bce", {"pos_weight": [1.0, 2.0, 3.0]}, "pos_weight"),
        ("focal", {"alpha": [1.0, 2.0, 3.0]}, "alpha"),
        ("focal", {"mode": "binary", "alpha": 0.25}, "alpha"),
    ],
)
def test_tensor_options_are_buffers_that_move_with_the_module(name, options, buffer, make_inputs):
    loss = create_loss(name, **options)
    assert buffer in dict(loss.named_buffers())
    assert buffer in loss.state_dict()
    loss.to(torch.float64)
    assert dict(loss.named_buffers())[buffer].dtype == torch.float64
    kind = "binary" if options.get("mode") == "binary" else "class"
    output, target = make_inputs(kind, (4, 3), dtype=torch.float64)
    assert loss(output, target).dtype == torch.float64
