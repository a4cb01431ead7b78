"""Bad specs, options and tensors fail early with a HubftError that names the problem and the fix."""

from __future__ import annotations

import uuid

import pytest
import torch

from hubft.errors import ConfigError, HubftError
from hubft.losses import LossInputError, create_loss

# --- specs --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "close"),
    [("dcie", "dice"), ("focall", "focal"), ("cross_entropie", "cross_entropy"), ("soft_target_ce", "")],
)
def test_unknown_name_lists_close_matches(name, close):
    with pytest.raises(ConfigError) as info:
        create_loss(name)
    message = str(info.value)
    assert f"unknown loss {name!r}" in message
    assert "registered losses: bce, cross_entropy" in message  # the full list, so the fix is always visible
    if close:
        assert f"did you mean {close!r}" in message


def test_names_are_normalised():
    assert type(create_loss("Soft-Target-Cross-Entropy")).__name__ == "SoftTargetCrossEntropyLoss"


@pytest.fixture
def broken_module(tmp_path, monkeypatch) -> str:
    name = f"hubft_broken_losses_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("no_such_package_xyz.losses:dice", "cannot import module 'no_such_package_xyz.losses'"),
        ("torch.nn:SmoothL1Los", "has no attribute 'SmoothL1Los'.*did you mean 'SmoothL1Loss'"),
        ("torch.nn:functional.l1_los", "'torch.nn.functional' has no attribute 'l1_los'"),
        ("torch.nn:", "not of the form 'package.module:attr'"),
        (":SmoothL1Loss", "not of the form"),
        ("torch.nn:a:b", "not of the form"),
        ("math:pi", "'math:pi' is a float, not a loss"),
        ("collections:OrderedDict", "not an nn.Module subclass"),
    ],
)
def test_bad_dotted_paths_name_the_path(spec, match):
    with pytest.raises(ConfigError, match=match):
        create_loss(spec)


def test_a_module_failing_at_import_is_reported(broken_module):
    with pytest.raises(ConfigError, match="failed with RuntimeError: boom at import"):
        create_loss(f"{broken_module}:loss")


@pytest.mark.parametrize(
    ("spec", "kwargs", "match"),
    [
        (None, {}, "cannot make a loss from None"),
        (3, {}, "cannot make a loss from 3"),
        ({}, {}, "at least one component"),
        ([], {}, "at least one component"),
        ({"cross_entropy": 1.0}, {"label_smoothing": 0.1}, "cannot be applied to a weighted combination"),
        ({"cross_entropy": 0.0}, {}, "weight of 'cross_entropy'=0 is outside"),
        ({"cross_entropy": -1.0}, {}, "outside"),
        ({"cross_entropy": float("nan")}, {}, "not a finite number"),
        ({"cross_entropy": "heavy"}, {}, "not a finite number"),
        ({"cross_entropy": {"weight": 1.0, "gama": 2}}, {}, "does not take the options"),
        ({1: 1.0}, {}, "string keys"),
        (["cross_entropy", "dice"], {}, r"\(spec, weight\) pairs"),
        ([("cross_entropy", 1.0, 2.0)], {}, r"\(spec, weight\) pairs"),
        ("focal", {"gama": 2.0}, "did you mean 'gamma'"),
        ("mse", {"delta": 1.0}, "valid options: reduction"),
        (torch.nn.SmoothL1Loss, {"betta": 0.5}, "did you mean 'beta'"),
        (torch.nn.functional.l1_loss, {"margin": 1.0}, "cannot be called as f\\(output, target, margin=...\\)"),
        (lambda output: output.sum(), {}, "cannot be called as f\\(output, target\\)"),
        (dict, {}, "not an nn.Module subclass"),
    ],
)
def test_bad_specs_and_options(spec, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_loss(spec, **kwargs)


def test_a_function_returning_a_non_tensor_is_reported():
    loss = create_loss(lambda output, target: 1.0)
    with pytest.raises(ConfigError, match="returned float, not a tensor"):
        loss(torch.zeros(2), torch.zeros(2))


# --- options (validated in __init__) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("cross_entropy", {"label_smoothing": 1.0}, "label_smoothing=1 is outside \\[0, 1\\)"),
        ("cross_entropy", {"label_smoothing": -0.1}, "label_smoothing"),
        ("cross_entropy", {"class_weights": [[1.0, 2.0]]}, "1-D sequence"),
        ("cross_entropy", {"class_weights": []}, "non-empty"),
        ("cross_entropy", {"class_weights": [1.0, -1.0]}, "holds -1"),
        ("cross_entropy", {"class_weights": [1.0, float("inf")]}, "finite"),
        ("cross_entropy", {"class_weights": "heavy"}, "not a sequence of numbers"),
        ("cross_entropy", {"ignore_index": 1.5}, "ignore_index=1.5 is not an integer"),
        ("soft_target_cross_entropy", {"reduction": "avg"}, "reduction='avg'"),
        ("bce", {"smoothing": 1.0}, "smoothing"),
        ("bce", {"smoothing": -0.1}, "smoothing"),
        ("bce", {"pos_weight": -1.0}, "pos_weight=-1 is outside"),
        ("bce", {"pos_weight": [[1.0, 2.0]]}, "1-D sequence"),
        ("focal", {"gamma": -1.0}, "gamma=-1 is outside"),
        ("focal", {"gamma": float("nan")}, "not a finite number"),
        ("focal", {"gamma": True}, "not a finite number"),
        ("focal", {"mode": "softmax"}, "mode='softmax' is not supported.*binary, multilabel, multiclass"),
        ("focal", {"alpha": 0.25}, "mode='multiclass' weights each class"),
        ("focal", {"mode": "binary", "alpha": 1.5}, "alpha=1.5 is outside"),
        ("focal", {"mode": "binary", "alpha": [0.2, 0.8]}, "one number in \\[0, 1\\]"),
        ("focal", {"mode": "multilabel", "alpha": [0.2, 1.8]}, "holds 1.8"),
        ("focal", {"alpha": [1.0, -2.0]}, "holds -2"),
        ("dice", {"mode": "semantic"}, "mode='semantic'"),
        ("dice", {"smooth": -1.0}, "smooth=-1 is outside"),
        ("dice", {"from_logits": "no"}, "from_logits='no' is not a boolean"),
        ("dice", {"per_sample": 1}, "per_sample=1 is not a boolean"),
        ("mse", {"reduction": "avg"}, "reduction='avg'"),
        ("l1", {"reduction": None}, "reduction=None"),
        ("huber", {"delta": 0.0}, "delta=0 is outside \\(0, inf\\)"),
        ("smooth_l1", {"beta": -1.0}, "beta=-1 is outside"),
        ("sobolev", {"weights": []}, "non-empty list"),
        ("sobolev", {"weights": "11"}, "non-empty list"),
        ("sobolev", {"weights": [1.0, -1.0]}, "weights\\[1\\]=-1 is outside"),
        ("sobolev", {"weights": [0.0, 0.0]}, "every weight is 0"),
        ("sobolev", {"dims": [0]}, "other than 0"),
        ("sobolev", {"dims": [2, 2]}, "distinct"),
        ("sobolev", {"dims": [1.5]}, "distinct dims"),
    ],
)
def test_invalid_options_raise_configerror(name, options, match):
    with pytest.raises(ConfigError, match=match) as info:
        create_loss(name, **options)
    assert isinstance(info.value, ValueError) and "Fix:" in str(info.value)


# --- tensors (checked in forward) ---------------------------------------------------------------------------------

LOGITS = torch.zeros(4, 3)
INDICES = torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize(
    ("name", "options", "output", "target", "match"),
    [
        ("mse", {}, torch.zeros(4, 1), torch.zeros(4), r"output's shape \[4, 1\]; got target float32 \[4\]"),
        ("l1", {}, torch.zeros(4, 3), INDICES, r"output's shape \[4, 3\]; got target int64 \[4\]"),
        ("cross_entropy", {}, LOGITS, torch.tensor([0, 1, 2, 0, 1]), r"indices of shape \[4\].*got target int64 \[5\]"),
        ("cross_entropy", {}, torch.zeros(4), INDICES, r"expected output of shape \[B, C, ...\]"),
        ("cross_entropy", {}, LOGITS, INDICES.float(), "class indices must be integers"),
        ("cross_entropy", {}, LOGITS.long(), INDICES, r"floating-point output tensor .*; got int64"),
        ("cross_entropy", {}, LOGITS, INDICES + 1, "class index 3, but the output has 3 classes"),
        ("cross_entropy", {}, LOGITS, INDICES - 1, "class index -1"),
        ("cross_entropy", {"class_weights": [1.0, 2.0]}, LOGITS, INDICES, "class_weights has 2 values but .* 3"),
        ("soft_target_cross_entropy", {}, LOGITS, torch.zeros(4, 2), r"output's shape \[4, 3\]"),
        ("bce", {}, LOGITS, INDICES + 5, "class index 5"),
        ("bce", {"pos_weight": [1.0, 2.0]}, LOGITS, INDICES, "pos_weight has 2 values"),
        ("focal", {}, LOGITS, torch.zeros(4, 3, dtype=torch.complex64), "real-valued target"),
        ("focal", {"alpha": [1.0, 2.0]}, LOGITS, INDICES, "alpha has 2 values"),
        ("focal", {"mode": "binary"}, LOGITS, INDICES, "use mode='multiclass' or 'multilabel'"),
        ("dice", {"mode": "binary"}, LOGITS, INDICES, r"binary targets of the output's shape \[4, 3\]"),
        ("dice", {}, LOGITS, INDICES.float(), "class indices must be integers"),
        ("sobolev", {}, torch.zeros(4), torch.zeros(4), "a 1-D output has no dim to difference along"),
        ("sobolev", {"weights": [1.0, 1.0, 1.0]}, torch.zeros(4, 2), torch.zeros(4, 2), "dim 1 has size 2"),
        ("sobolev", {"dims": [3]}, torch.zeros(4, 2, 5), torch.zeros(4, 2, 5), "do not exist in a 3-D output"),
        ("mse", {}, torch.zeros(2, 3), torch.zeros(2, 3, device="meta"), "target is on meta but the output is on cpu"),
        ("sobolev", {"dims": [2, -1]}, torch.zeros(4, 2, 5), torch.zeros(4, 2, 5), "one dim twice"),
    ],
)
def test_mismatched_tensors_raise_lossinputerror(name, options, output, target, match):
    with pytest.raises(LossInputError, match=match) as info:
        create_loss(name, **options)(output, target)
    assert isinstance(info.value, (ConfigError, HubftError, ValueError))


def test_weighted_components_of_different_shapes_are_refused():
    loss = create_loss([("mse", {"reduction": "none"}), ("l1", 1.0)])
    with pytest.raises(LossInputError, match="'l1' returned shape \\[\\] but 'mse' returned \\[4, 3\\]"):
        loss(LOGITS, torch.ones(4, 3))


def test_class_range_check_is_skipped_only_off_cpu_inside_the_upstream_block():
    from hubft.losses import class_range_checked_upstream, create_loss

    loss = create_loss("cross_entropy")
    with class_range_checked_upstream():
        # On CPU the check always runs.
        with pytest.raises(LossInputError, match="class index 7"):
            loss(torch.zeros(2, 3), torch.tensor([0, 7]))
        # Off CPU (meta tensors stand in for a GPU here) the host sync is skipped: nothing reads the values.
        loss(torch.zeros(2, 3, device="meta"), torch.zeros(2, dtype=torch.long, device="meta"))
    # Outside the block the check reads the values again, which a meta tensor cannot give.
    with pytest.raises(RuntimeError, match="meta"):
        loss(torch.zeros(2, 3, device="meta"), torch.zeros(2, dtype=torch.long, device="meta"))


@pytest.mark.parametrize("spec", [("dice", {"mode": "multiclass"}), ("focal", {}), ("cross_entropy", {})])
def test_a_softmax_over_one_channel_is_refused(spec):
    from hubft.losses import LossInputError, create_loss

    with pytest.raises(LossInputError, match="single channel"):
        create_loss(spec[0], **spec[1])(torch.randn(2, 1, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))


def test_dice_auto_is_binary_for_one_channel_and_trains():
    from hubft.losses import create_loss

    logits = torch.zeros(2, 1, 4, 4, requires_grad=True)
    target = torch.ones(2, 4, 4, dtype=torch.long)
    loss = create_loss("dice")
    assert loss.mode == "auto"
    loss(logits, target).backward()
    assert logits.grad.abs().sum() > 0  # a sigmoid, not a constant softmax
