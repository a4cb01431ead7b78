"""Built-in losses against values computed by hand from their formulas (with ``math``, not the implementation),
and against torch where they should agree."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hubft.losses import create_loss

LOGITS = [[1.0, 2.0, 3.0], [0.5, 0.5, -1.0]]
LABELS = [2, 0]


def _log_softmax(row: list[float]) -> list[float]:
    lse = math.log(sum(math.exp(v) for v in row))
    return [v - lse for v in row]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _bce(x: float, t: float, pos_weight: float = 1.0) -> float:
    return -(pos_weight * t * math.log(_sigmoid(x)) + (1 - t) * math.log(1 - _sigmoid(x)))


def _close(value: torch.Tensor, expected: float) -> None:
    assert value.shape == ()
    assert value.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def _run(name: str, output, target, **options) -> torch.Tensor:
    target = torch.tensor(target)
    return create_loss(name, **options)(torch.tensor(output), target)


# --- cross-entropy ------------------------------------------------------------------------------------------------

NLL = [-_log_softmax(row)[y] for row, y in zip(LOGITS, LABELS)]


def test_cross_entropy_is_the_mean_negative_log_softmax():
    _close(_run("cross_entropy", LOGITS, LABELS), sum(NLL) / 2)
    _close(_run("cross_entropy", LOGITS, LABELS, reduction="sum"), sum(NLL))


def test_cross_entropy_class_weights_take_a_weighted_mean():
    weights = [1.0, 2.0, 3.0]
    expected = (weights[2] * NLL[0] + weights[0] * NLL[1]) / (weights[2] + weights[0])
    _close(_run("cross_entropy", LOGITS, LABELS, class_weights=weights), expected)


def test_cross_entropy_ignore_index_drops_positions():
    _close(_run("cross_entropy", LOGITS, [2, -100]), NLL[0])
    _close(_run("cross_entropy", LOGITS, [2, 7], ignore_index=7), NLL[0])


def test_label_smoothed_cross_entropy_matches_the_formula_and_torch():
    eps = 0.1
    expected = sum(
        (1 - eps) * nll - eps * sum(_log_softmax(row)) / 3 for row, nll in zip(LOGITS, NLL)
    ) / 2
    value = _run("cross_entropy", LOGITS, LABELS, label_smoothing=eps)
    _close(value, expected)
    torch.testing.assert_close(value, F.cross_entropy(torch.tensor(LOGITS), torch.tensor(LABELS), label_smoothing=eps))


def test_cross_entropy_takes_probability_targets():
    probs = [[0.2, 0.3, 0.5], [0.6, 0.4, 0.0]]
    expected = sum(-sum(t * lp for t, lp in zip(p, _log_softmax(row))) for row, p in zip(LOGITS, probs)) / 2
    _close(_run("cross_entropy", LOGITS, probs), expected)


# --- soft-target cross-entropy ------------------------------------------------------------------------------------


def test_soft_target_cross_entropy_matches_the_formula():
    probs = [[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]
    per_row = [-sum(t * lp for t, lp in zip(p, _log_softmax(row))) for row, p in zip(LOGITS, probs)]
    _close(_run("soft_target_cross_entropy", LOGITS, probs), sum(per_row) / 2)
    none = _run("soft_target_cross_entropy", LOGITS, probs, reduction="none")
    torch.testing.assert_close(none, torch.tensor(per_row))


def test_soft_target_cross_entropy_one_hot_encodes_class_indices():
    _close(_run("soft_target_cross_entropy", LOGITS, LABELS), sum(NLL) / 2)


# --- binary cross-entropy -----------------------------------------------------------------------------------------

X2 = [[2.0, -1.0], [0.0, 3.0]]
T2 = [[1.0, 0.0], [0.0, 1.0]]


def test_bce_is_the_mean_elementwise_binary_cross_entropy():
    expected = sum(_bce(x, t) for xr, tr in zip(X2, T2) for x, t in zip(xr, tr)) / 4
    _close(_run("bce", X2, T2), expected)


def test_bce_pos_weight_scales_the_positive_term_per_class():
    pos = [1.0, 4.0]
    expected = sum(_bce(x, t, pos[c]) for xr, tr in zip(X2, T2) for c, (x, t) in enumerate(zip(xr, tr))) / 4
    _close(_run("bce", X2, T2, pos_weight=pos), expected)
    single = sum(_bce(x, t, 3.0) for xr, tr in zip(X2, T2) for x, t in zip(xr, tr)) / 4
    _close(_run("bce", X2, T2, pos_weight=3.0), single)


def test_bce_smoothing_moves_targets_towards_one_half():
    s, x, t = 0.2, [[2.0, -1.0, 0.5]], [[1.0, 0.0, 0.0]]  # three classes: s / 2 differs from s / C
    expected = sum(_bce(v, u * (1 - s) + s / 2) for v, u in zip(x[0], t[0])) / 3
    _close(_run("bce", x, t, smoothing=s), expected)


def test_bce_pos_weight_follows_the_channel_dim_of_dense_outputs():
    # [B=1, C=2, H=1, W=3]: pos_weight must scale channels, not broadcast along the last (W) dim
    x = [[[[0.5, -1.0, 2.0]], [[1.0, 0.0, -0.5]]]]
    t = [[[[1.0, 0.0, 1.0]], [[1.0, 1.0, 0.0]]]]
    pos = [2.0, 5.0]
    expected = sum(_bce(v, u, pos[c]) for c in range(2) for v, u in zip(x[0][c][0], t[0][c][0])) / 6
    _close(_run("bce", x, t, pos_weight=pos), expected)


def test_bce_one_hot_encodes_class_indices():
    torch.testing.assert_close(_run("bce", X2, [0, 1]), _run("bce", X2, T2))


# --- focal --------------------------------------------------------------------------------------------------------


def test_binary_focal_is_lin_et_al():
    xs, ts, alpha, gamma = [0.5, -1.0, 2.0], [1.0, 0.0, 1.0], 0.25, 2.0
    terms = []
    for x, t in zip(xs, ts):
        p = _sigmoid(x)
        if t == 1.0:
            terms.append(-alpha * (1 - p) ** gamma * math.log(p))
        else:
            terms.append(-(1 - alpha) * p**gamma * math.log(1 - p))
    _close(_run("focal", xs, ts, mode="binary", alpha=alpha, gamma=gamma), sum(terms) / 3)


def test_sigmoid_focal_keeps_its_relative_precision_for_confident_predictions():
    # 1 - p is ~2e-9 here: in float32, 1 - sigmoid(20) and x + softplus(-x) both round to 0, and the loss with them.
    one_minus_p = 1.0 / (1.0 + math.exp(20.0))
    expected = -(one_minus_p**2) * math.log1p(-one_minus_p)
    value = _run("focal", [20.0, -20.0], [1.0, 0.0], mode="binary", reduction="none")
    torch.testing.assert_close(value, torch.tensor([expected, expected]), rtol=1e-4, atol=0.0)


def test_multiclass_focal_weights_by_class_alpha_and_confidence():
    alpha, gamma = [1.0, 2.0, 3.0], 2.0
    terms = []
    for row, y in zip(LOGITS, LABELS):
        log_p = _log_softmax(row)[y]
        terms.append(-alpha[y] * (1 - math.exp(log_p)) ** gamma * log_p)
    _close(_run("focal", LOGITS, LABELS, alpha=alpha, gamma=gamma), sum(terms) / 2)


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_focal_without_focusing_or_alpha_is_bce(mode):
    value = _run("focal", X2, T2, mode=mode, gamma=0.0)
    torch.testing.assert_close(value, F.binary_cross_entropy_with_logits(torch.tensor(X2), torch.tensor(T2)))


def test_multiclass_focal_without_focusing_or_alpha_is_cross_entropy():
    value = _run("focal", LOGITS, LABELS, gamma=0.0)
    torch.testing.assert_close(value, F.cross_entropy(torch.tensor(LOGITS), torch.tensor(LABELS)))


def test_multilabel_focal_one_hot_encodes_class_indices():
    torch.testing.assert_close(
        _run("focal", X2, [0, 1], mode="multilabel"), _run("focal", X2, T2, mode="multilabel")
    )


def test_binary_focal_accepts_a_target_without_the_channel_dim():
    torch.testing.assert_close(
        _run("focal", [[0.5], [-1.0]], [1, 0], mode="binary"),
        _run("focal", [[0.5], [-1.0]], [[1.0], [0.0]], mode="binary"),
    )


# --- dice ---------------------------------------------------------------------------------------------------------


def _dice(p: list[float], t: list[float], smooth: float = 1.0) -> float:
    inter = sum(a * b for a, b in zip(p, t))
    return 1 - (2 * inter + smooth) / (sum(p) + sum(t) + smooth)


def test_binary_dice_with_defaults_is_the_formula_over_the_whole_batch():
    x, t = [[0.5, -1.0], [2.0, 0.0]], [[1.0, 0.0], [1.0, 1.0]]
    p = [_sigmoid(v) for row in x for v in row]
    _close(_run("dice", x, t, mode="binary"), _dice(p, [v for row in t for v in row]))


def test_binary_dice_per_sample_averages_the_samples():
    x, t = [[0.5, -1.0], [2.0, 0.0]], [[1.0, 0.0], [1.0, 1.0]]
    scores = [_dice([_sigmoid(v) for v in xr], tr) for xr, tr in zip(x, t)]
    _close(_run("dice", x, t, mode="binary", per_sample=True), sum(scores) / 2)


def test_multiclass_dice_averages_the_class_scores():
    probs = [[math.exp(v) for v in _log_softmax(row)] for row in LOGITS]
    one_hot = [[1.0 if c == y else 0.0 for c in range(3)] for y in LABELS]
    scores = [_dice([r[c] for r in probs], [r[c] for r in one_hot], smooth=0.5) for c in range(3)]
    _close(_run("dice", LOGITS, LABELS, smooth=0.5), sum(scores) / 3)
    none = _run("dice", LOGITS, LABELS, smooth=0.5, reduction="none")
    torch.testing.assert_close(none, torch.tensor(scores))


def test_multilabel_dice_scores_each_class_with_a_sigmoid():
    scores = [_dice([_sigmoid(r[c]) for r in X2], [r[c] for r in T2]) for c in range(2)]
    _close(_run("dice", X2, T2, mode="multilabel"), sum(scores) / 2)


def test_dice_of_identical_binary_masks_is_zero():
    mask = [[[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 1.0]]]
    _close(_run("dice", mask, mask, mode="binary", from_logits=False), 0.0)
    _close(_run("dice", mask, mask, mode="binary", from_logits=False, per_sample=True), 0.0)


def test_dice_of_an_empty_prediction_against_an_empty_target_is_zero():
    empty = [[0.0, 0.0], [0.0, 0.0]]
    _close(_run("dice", empty, empty, mode="binary", from_logits=False), 0.0)


# --- regression ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("mse", {}, (0.5**2 + 3.0**2) / 2),
        ("l1", {}, (0.5 + 3.0) / 2),
        ("huber", {}, (0.5 * 0.5**2 + 1.0 * (3.0 - 0.5)) / 2),
        ("huber", {"delta": 2.0}, (0.5 * 0.5**2 + 2.0 * (3.0 - 1.0)) / 2),
        ("smooth_l1", {"beta": 2.0}, (0.5 * 0.5**2 / 2.0 + (3.0 - 1.0)) / 2),
        ("smooth_l1", {"beta": 0.0}, (0.5 + 3.0) / 2),
    ],
)
def test_elementwise_regression_losses(name, options, expected):
    _close(_run(name, [1.5, -2.0], [1.0, 1.0], **options), expected)
    _close(_run(name, [1.5, -2.0], [1.0, 1.0], reduction="sum", **options), 2 * expected)


def test_sobolev_adds_the_squared_first_differences_of_a_sequence():
    # residual [0, 1, 0]: mean(r^2) = 1/3, first differences [1, -1]: mean 1
    _close(_run("sobolev", [[0.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]]), 1 / 3 + 1.0)
    _close(_run("sobolev", [[0.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]], weights=[2.0, 0.5]), 2 / 3 + 0.5)


def test_sobolev_sums_the_difference_terms_over_spatial_dims():
    residual = [[[[1.0, 2.0], [3.0, 4.0]]]]  # [B=1, C=1, H=2, W=2]
    values = 30 / 4
    along_h = (2.0**2 + 2.0**2) / 2
    along_w = (1.0**2 + 1.0**2) / 2
    zeros = [[[[0.0, 0.0], [0.0, 0.0]]]]
    _close(_run("sobolev", residual, zeros), values + along_h + along_w)
    _close(_run("sobolev", residual, zeros, dims=[3]), values + along_w)


def test_sobolev_higher_orders_and_per_sample_reduction():
    # residual [0, 1, 4]: second difference [2]
    _close(_run("sobolev", [[0.0, 1.0, 4.0]], [[0.0, 0.0, 0.0]], weights=[0.0, 0.0, 1.0]), 4.0)
    none = _run("sobolev", [[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]], [[0.0] * 3] * 2, reduction="none")
    torch.testing.assert_close(none, torch.tensor([1 / 3 + 1.0, 1.0]))
