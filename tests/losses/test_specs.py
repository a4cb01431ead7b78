"""Every way of naming a loss (function, class, instance, dotted path, weighted combination) trains a model."""

from __future__ import annotations

import dataclasses
import functools
import uuid

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hubft.losses.registry as registry
from hubft.errors import ConfigError
from hubft.losses import (
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    FunctionLoss,
    WeightedSumLoss,
    accepts_soft_targets,
    create_loss,
    get_loss_info,
    list_losses,
    register_loss,
    require_soft_targets,
)


def squared_hinge(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    margins = output - output.gather(1, target[:, None]) + 1.0
    margins = margins.scatter(1, target[:, None], 0.0)
    return margins.clamp_min(0).square().sum(1).mean()


class ScaledCrossEntropy(nn.Module):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.scale * F.cross_entropy(output, target)


USER_MODULE = '''
import torch
import torch.nn.functional as F
from torch import nn


def margin_loss(output, target, margin=1.0):
    return F.multi_margin_loss(output, target, margin=margin)


margin_loss.accepts_soft_targets = False


class LogCosh(nn.Module):
    accepts_soft_targets = False

    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale

    def forward(self, output, target):
        return self.scale * torch.log(torch.cosh(output - target)).mean()


class Smoothed(nn.Module):
    accepts_soft_targets = True

    def forward(self, output, target):
        return F.cross_entropy(output, target, label_smoothing=0.1)


INSTANCE = Smoothed()
NOT_A_LOSS = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    """Name of a freshly written, importable user module holding loss functions and classes."""
    name = f"hubft_user_losses_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _lowers(history: list[float]) -> bool:
    return history[-1] < 0.8 * history[0]


# --- the forms ----------------------------------------------------------------------------------------------------


def test_function_form_trains(train):
    loss = create_loss(squared_hinge)
    assert isinstance(loss, FunctionLoss)
    assert _lowers(train(loss, "class"))


def test_function_form_binds_options_to_every_call():
    loss = create_loss(F.cross_entropy, label_smoothing=0.2)
    output, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    torch.testing.assert_close(loss(output, target), F.cross_entropy(output, target, label_smoothing=0.2))


def test_class_form_is_instantiated_with_options(train):
    loss = create_loss(ScaledCrossEntropy, scale=2.0)
    assert isinstance(loss, ScaledCrossEntropy) and loss.scale == 2.0
    assert _lowers(train(loss, "class"))


def test_instance_form_is_returned_as_is():
    loss = ScaledCrossEntropy()
    assert create_loss(loss) is loss
    with pytest.raises(ConfigError, match="scale"):
        create_loss(loss, scale=2.0)


def test_dotted_paths_to_user_code_train(user_module, train):
    function_loss = create_loss(f"{user_module}:margin_loss", margin=0.5)
    assert function_loss.options == {"margin": 0.5}
    assert _lowers(train(function_loss, "class"))
    class_loss = create_loss(f"{user_module}:LogCosh", scale=2.0)
    assert class_loss.scale == 2.0
    assert _lowers(train(class_loss, "dense"))
    instance = create_loss(f"{user_module}:INSTANCE")
    assert type(instance).__name__ == "Smoothed"
    assert _lowers(train(instance, "class"))


def test_dotted_path_to_a_torch_class_trains(train):
    loss = create_loss("torch.nn:SmoothL1Loss", beta=0.5)
    assert isinstance(loss, nn.SmoothL1Loss) and loss.beta == 0.5
    assert _lowers(train(loss, "dense"))


def test_weighted_mapping_sums_weighted_components(train):
    loss = create_loss({"cross_entropy": 1.0, "dice": 0.5, "focal": {"weight": 0.25, "gamma": 1.0}})
    assert isinstance(loss, WeightedSumLoss)
    assert loss.names == ("cross_entropy", "dice", "focal")
    assert loss.weights == (1.0, 0.5, 0.25)
    output, target = torch.randn(6, 3), torch.randint(0, 3, (6,))
    expected = (
        CrossEntropyLoss()(output, target)
        + 0.5 * DiceLoss()(output, target)
        + 0.25 * FocalLoss(gamma=1.0)(output, target)
    )
    torch.testing.assert_close(loss(output, target), expected)
    assert _lowers(train(loss, "class"))


def test_weighted_list_takes_any_spec(user_module, train):
    loss = create_loss(
        [
            (squared_hinge, 1.0),
            (ScaledCrossEntropy, {"weight": 0.5, "scale": 3.0}),
            (f"{user_module}:margin_loss", {"margin": 0.5}),
            ("cross_entropy", 2.0),
            ("cross_entropy", {"weight": 1.0, "label_smoothing": 0.1}),
        ]
    )
    assert loss.weights == (1.0, 0.5, 1.0, 2.0, 1.0)
    assert loss.losses[1].scale == 3.0
    assert _lowers(train(loss, "class"))


def test_combinations_nest_and_move_their_buffers():
    loss = create_loss([({"cross_entropy": {"class_weights": [1.0, 2.0, 3.0]}}, 0.5), ("bce", 1.0)])
    assert isinstance(loss.losses[0], WeightedSumLoss)
    loss.to(torch.float64)
    assert loss.losses[0].losses[0].class_weights.dtype == torch.float64


# --- soft targets -------------------------------------------------------------------------------------------------


def _soft_function(output, target):
    return F.cross_entropy(output, target)


_soft_function.accepts_soft_targets = True


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("soft_target_cross_entropy", True),
        ("bce", True),
        ("cross_entropy", True),
        ("mse", False),
        (squared_hinge, False),
        (_soft_function, True),
        (ScaledCrossEntropy, False),
        (nn.CrossEntropyLoss(), True),
        (nn.BCEWithLogitsLoss(), True),
        (nn.MSELoss(), False),
        (nn.MultiMarginLoss(), False),
        ({"soft_target_cross_entropy": 1.0, "dice": 0.5}, True),
        ({"soft_target_cross_entropy": 1.0, "mse": 0.5}, False),
    ],
)
def test_accepts_soft_targets(spec, expected):
    assert accepts_soft_targets(create_loss(spec)) is expected


def test_accepts_soft_targets_reads_user_attributes(user_module):
    assert accepts_soft_targets(create_loss(f"{user_module}:INSTANCE")) is True
    assert accepts_soft_targets(create_loss(f"{user_module}:LogCosh")) is False
    assert accepts_soft_targets(create_loss(f"{user_module}:margin_loss")) is False


def test_require_soft_targets_names_the_losses_that_do():
    require_soft_targets(create_loss("soft_target_cross_entropy"))
    with pytest.raises(ConfigError, match="cutmix.*MSELoss.*Fix: use loss 'soft_target_cross_entropy'.*'bce'"):
        require_soft_targets(create_loss("mse"), feature="cutmix")


def test_zero_dim_tensor_options_count_as_numbers():
    assert create_loss("bce", pos_weight=torch.tensor(2.0)).pos_weight.tolist() == [2.0]
    assert create_loss("focal", mode="binary", alpha=torch.tensor(0.5)).alpha.tolist() == [0.5]


# --- the registry -------------------------------------------------------------------------------------------------


@pytest.fixture
def scratch_registry(monkeypatch):
    """Let a test register losses without leaking them into other tests."""
    monkeypatch.setattr(registry, "_LOSSES", registry._LOSSES.copy())


def test_registered_loss_is_listed_built_and_uses_its_defaults(scratch_registry, train):
    info = register_loss(
        "binary_focal",
        FocalLoss,
        description="Lin et al.'s sigmoid focal loss",
        target="binary",
        soft_targets=True,
        defaults={"mode": "binary", "alpha": 0.25},
    )
    assert "binary_focal" in list_losses() and "binary_focal" in list_losses(target="binary")
    assert "binary_focal" not in list_losses(target="dense")
    with pytest.raises(ConfigError, match="target='segmentation'"):
        list_losses(target="segmentation")
    assert get_loss_info("Binary-Focal") is info
    assert info.options() == {"mode": "binary", "alpha": 0.25, "gamma": 2.0, "reduction": "mean",
                             "ignore_index": None}
    loss = create_loss("binary_focal", gamma=1.0)
    assert (loss.mode, loss.gamma, float(loss.alpha)) == ("binary", 1.0, 0.25)
    assert _lowers(train(loss, "binary"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        info.defaults["gamma"] = 3.0  # type: ignore[index]


def test_a_registered_function_loss_works_through_functionloss(scratch_registry):
    register_loss("squared_hinge", functools.partial(FunctionLoss, squared_hinge))
    loss = create_loss("squared_hinge")
    output, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    torch.testing.assert_close(loss(output, target), squared_hinge(output, target))


@pytest.mark.parametrize(
    ("name", "factory", "options", "match"),
    [
        ("dice", DiceLoss, {}, "already registered"),
        ("Not a name", DiceLoss, {}, "not valid"),
        ("", DiceLoss, {}, "not valid"),
        ("new_loss", "DiceLoss", {}, "not callable"),
        ("new_loss", DiceLoss, {"target": "segmentation"}, "target"),
        ("new_loss", DiceLoss, {"unreduced": "pixel"}, "unreduced"),
        ("new_loss", DiceLoss, {"reductions": ("mean", "avg")}, "reductions"),
        ("new_loss", DiceLoss, {"defaults": {"smoth": 1.0}}, "smoth"),
    ],
)
def test_register_loss_rejects_bad_records(scratch_registry, name, factory, options, match):
    with pytest.raises(ConfigError, match=match):
        register_loss(name, factory, **options)


def test_register_loss_can_overwrite(scratch_registry):
    register_loss("dice", DiceLoss, defaults={"mode": "binary"}, overwrite=True)
    assert create_loss("dice").mode == "binary"
