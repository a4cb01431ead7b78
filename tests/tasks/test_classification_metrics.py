"""The published evaluation metrics equal scikit-learn's, as the module docstring of
``hubft.tasks._classification_metrics`` promises: on random logits over seeds and shapes (distinct scores, scores
rounded to one decimal, and integer scores with many ties), and on adversarial inputs (all-equal logits, a class
never predicted, a class absent from the targets, one example, saturated logits). Where scikit-learn warns, ours
follow the documented conventions, and our functions never warn (every call runs with warnings as errors)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import expit
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    recall_score,
    top_k_accuracy_score,
)

from hubft.tasks import classification_metrics, multilabel_metrics

TOL = 1e-9  # both sides compute in float64 from the same counts; only the summation order differs
CASES = [(n, c, seed) for n in (1, 7, 64) for c in (2, 5, 10) for seed in range(3)]
CASE_IDS = [f"n{n}-c{c}-seed{seed}" for n, c, seed in CASES]
MULTILABEL_CASES = CASES + [(n, 1, seed) for n in (1, 7, 64) for seed in range(3)]  # one label is a valid task
MULTILABEL_IDS = [f"n{n}-c{c}-seed{seed}" for n, c, seed in MULTILABEL_CASES]
SCORES = ("distinct", "rounded", "integer")


def _names(num_classes: int) -> list[str]:
    return [f"class{i}" for i in range(num_classes)]


def _logits(n: int, num_classes: int, seed: int, scores: str) -> torch.Tensor:
    x = torch.randn(n, num_classes, generator=torch.Generator().manual_seed(seed)) * 2
    if scores == "rounded":
        return torch.round(x * 10) / 10
    if scores == "integer":
        return torch.round(x).clamp(-2, 2)
    return x


def _ours(metrics_fn, logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """Our metrics, with every warning an error: a convention decides each case scikit-learn warns about."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return metrics_fn(logits, targets, _names(logits.shape[1]))


# ---------------------------------------------------------------- single-label


def _assert_single_label_matches_sklearn(logits: torch.Tensor, y: torch.Tensor) -> dict:
    ours = _ours(classification_metrics, logits, y)
    scores, y_np = logits.double().numpy(), y.numpy()
    n, num_classes = scores.shape
    labels = np.arange(num_classes)
    pred = np.argmax(scores, axis=1)  # numpy's argmax also takes the first maximum
    present = sorted(set(y_np.tolist()))

    assert ours["num_samples"] == n
    assert ours["accuracy"] == pytest.approx(accuracy_score(y_np, pred), abs=TOL)
    if num_classes > 5:
        # scikit-learn ranks the higher index first among ties; reversing the class order flips that rule to ours
        flipped = top_k_accuracy_score(num_classes - 1 - y_np, scores[:, ::-1], k=5, labels=labels)
        assert ours["top5"] == pytest.approx(flipped, abs=TOL)
        assert ours["top5"] >= ours["accuracy"]
    else:
        assert "top5" not in ours
    f1 = f1_score(y_np, pred, labels=present, average="macro", zero_division=0)
    assert ours["f1_macro"] == pytest.approx(f1, abs=TOL)
    recall = recall_score(y_np, pred, labels=labels, average=None, zero_division=0)
    expected_per_class = {name: recall[c] if c in present else None for c, name in enumerate(_names(num_classes))}
    assert ours["per_class_accuracy"] == pytest.approx(expected_per_class, abs=TOL)
    assert ours["confusion_matrix"] == confusion_matrix(y_np, pred, labels=labels).tolist()
    assert sum(map(sum, ours["confusion_matrix"])) == n
    return ours


@pytest.mark.parametrize("scores", SCORES)
@pytest.mark.parametrize(("n", "num_classes", "seed"), CASES, ids=CASE_IDS)
def test_single_label_metrics_equal_sklearn(n, num_classes, seed, scores):
    logits = _logits(n, num_classes, seed, scores)
    y = torch.randint(num_classes, (n,), generator=torch.Generator().manual_seed(seed + 100))
    ours = _assert_single_label_matches_sklearn(logits, y)
    if scores == "distinct" and num_classes > 5:
        assert all(len(set(row)) == num_classes for row in logits.tolist())  # no ties, so no tie rule applies
        direct = top_k_accuracy_score(y.numpy(), logits.double().numpy(), k=5, labels=np.arange(num_classes))
        assert ours["top5"] == pytest.approx(direct, abs=TOL)


def test_all_equal_logits_rank_the_lower_class_index_first():
    y = torch.tensor([0, 1, 9])
    logits = torch.zeros(3, 10)
    ours = _assert_single_label_matches_sklearn(logits, y)
    assert ours["accuracy"] == pytest.approx(1 / 3)  # every prediction is class 0
    assert ours["top5"] == pytest.approx(2 / 3)  # classes 0-4 are the top 5: 0 and 1 are in, 9 is not
    # scikit-learn's own rule (higher index first) puts 9..5 in the top 5: only the example of class 9 counts
    assert top_k_accuracy_score(y.numpy(), logits.numpy(), k=5, labels=np.arange(10)) == pytest.approx(1 / 3)
    assert ours["confusion_matrix"][1] == [1] + [0] * 9
    assert ours["f1_macro"] == pytest.approx((2 * 1 / (1 + 3) + 0 + 0) / 3)  # over the present classes 0, 1, 9


def test_the_top5_cut_among_tied_classes_keeps_the_lower_indices():
    # Ten tied classes: 0-4 are the top 5, whatever order topk would have returned them in.
    ours = _assert_single_label_matches_sklearn(torch.ones(2, 10), torch.tensor([4, 5]))
    assert ours["top5"] == 0.5


def test_a_class_never_predicted_scores_f1_zero():
    y = torch.tensor([0, 1, 2, 2])
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 2.0, 1.0], [2.0, 0.0, 1.0], [0.0, 2.0, 1.0]])  # never class 2
    ours = _assert_single_label_matches_sklearn(logits, y)
    assert ours["per_class_accuracy"]["class2"] == 0.0
    assert ours["f1_macro"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)


def test_a_class_predicted_but_absent_from_the_targets_is_not_averaged():
    y = torch.tensor([0, 0, 1])
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # predicts 0, 2, 1
    ours = _assert_single_label_matches_sklearn(logits, y)
    assert ours["per_class_accuracy"] == {"class0": 0.5, "class1": 1.0, "class2": None}
    assert ours["f1_macro"] == pytest.approx((2 / 3 + 1) / 2)  # class 2 costs class 0 a miss, no F1 of its own
    everywhere = f1_score(y.numpy(), [0, 2, 1], labels=[0, 1, 2], average="macro", zero_division=0)
    assert everywhere == pytest.approx((2 / 3 + 1 + 0) / 3)  # the other convention, which ours is not


@pytest.mark.parametrize("target", [0, 3, 9])
def test_a_single_example(target):
    logits = torch.arange(10.0)[None].flip(1)  # class 0 scores highest
    ours = _assert_single_label_matches_sklearn(logits, torch.tensor([target]))
    assert ours["accuracy"] == float(target == 0)
    assert ours["top5"] == float(target < 5)
    assert ours["f1_macro"] == float(target == 0)


def test_no_examples_score_zero():
    ours = _ours(classification_metrics, torch.zeros(0, 6), torch.zeros(0, dtype=torch.long))
    assert (ours["accuracy"], ours["top5"], ours["f1_macro"], ours["num_samples"]) == (0.0, 0.0, 0.0, 0)
    assert set(ours["per_class_accuracy"].values()) == {None}


# ---------------------------------------------------------------- multi-label


def _assert_multilabel_matches_sklearn(logits: torch.Tensor, targets: torch.Tensor) -> dict:
    ours = _ours(multilabel_metrics, logits, targets)
    scores, pos = logits.double().numpy(), (targets.numpy() > 0.5).astype(int)
    pred = (expit(scores) > 0.5).astype(int)
    expected_ap = {
        name: average_precision_score(pos[:, c], scores[:, c]) if pos[:, c].any() else None
        for c, name in enumerate(_names(scores.shape[1]))
    }
    measured = [ap for ap in expected_ap.values() if ap is not None]

    assert ours["num_samples"] == scores.shape[0]
    assert ours["per_class_ap"] == pytest.approx(expected_ap, abs=TOL)
    assert ours["map"] == pytest.approx(float(np.mean(measured)) if measured else 0.0, abs=TOL)
    if scores.shape[1] == 1:  # scikit-learn reads one column as binary targets: F1 of the positive class
        f1 = f1_score(pos[:, 0], pred[:, 0], average="binary", zero_division=1)
        assert ours["f1_micro"] == pytest.approx(f1, abs=TOL) and ours["f1_macro"] == pytest.approx(f1, abs=TOL)
    else:
        assert ours["f1_micro"] == pytest.approx(f1_score(pos, pred, average="micro", zero_division=1), abs=TOL)
        assert ours["f1_macro"] == pytest.approx(f1_score(pos, pred, average="macro", zero_division=1), abs=TOL)
    return ours


@pytest.mark.parametrize("scores", SCORES)
@pytest.mark.parametrize(("n", "num_classes", "seed"), MULTILABEL_CASES, ids=MULTILABEL_IDS)
def test_multilabel_metrics_equal_sklearn(n, num_classes, seed, scores):
    logits = _logits(n, num_classes, seed, scores)
    targets = (torch.rand(n, num_classes, generator=torch.Generator().manual_seed(seed + 100)) < 0.3).float()
    _assert_multilabel_matches_sklearn(logits, targets)


@pytest.mark.parametrize("positive", [0, 1], ids=["tie-positive-first", "tie-positive-second"])
def test_tied_scores_are_one_threshold_whatever_their_order(positive):
    logits = torch.tensor([[0.5], [0.5], [0.1]])
    targets = torch.zeros(3, 1)
    targets[positive] = 1
    ours = _assert_multilabel_matches_sklearn(logits, targets)
    assert ours["per_class_ap"]["class0"] == 0.5  # one threshold takes both tied examples: precision 1/2, recall 1


def test_heavy_ties_match_sklearn_per_label():
    logits = torch.round(torch.randn(200, 4, generator=torch.Generator().manual_seed(7)) * 10) / 10
    targets = (torch.rand(200, 4, generator=torch.Generator().manual_seed(8)) < 0.4).float()
    assert all(len(set(col)) < 100 for col in logits.T.tolist())  # more than half of each label's scores are ties
    _assert_multilabel_matches_sklearn(logits, targets)


def test_average_precision_ranks_by_logit_where_float32_probabilities_tie():
    logits = torch.tensor([[30.0], [20.0], [0.0]])
    assert torch.sigmoid(logits[0]) == torch.sigmoid(logits[1]) == 1.0  # the tie ranking by probability would see
    ours = _assert_multilabel_matches_sklearn(logits, torch.tensor([[1.0], [0.0], [0.0]]))
    assert ours["per_class_ap"]["class0"] == 1.0


def test_labels_without_positives_have_no_ap_and_f1_by_prediction():
    logits = torch.tensor([[2.0, -1.0, 1.0], [-1.0, -1.0, -1.0], [1.0, -2.0, -1.0], [0.0, -1.0, -1.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    ours = _assert_multilabel_matches_sklearn(logits, targets)
    assert ours["per_class_ap"] == {"class0": pytest.approx(5 / 6), "class1": None, "class2": None}
    assert ours["map"] == pytest.approx(5 / 6)  # the labels without positives are left out of the mean
    # class0: logit 0 is not a prediction (probability exactly 0.5), so tp 1, fp 1, fn 1; class1: nothing to find
    # and nothing found, 1.0; class2: one false positive, 0.0
    assert ours["f1_macro"] == pytest.approx((2 / 4 + 1.0 + 0.0) / 3)
    assert ours["f1_micro"] == pytest.approx(2 / (2 + 3))


def test_nothing_to_find_and_nothing_found_scores_one():
    ours = _assert_multilabel_matches_sklearn(-torch.ones(3, 2), torch.zeros(3, 2))
    assert (ours["map"], ours["f1_micro"], ours["f1_macro"]) == (0.0, 1.0, 1.0)
    assert ours["per_class_ap"] == {"class0": None, "class1": None}


# ---------------------------------------------------------------- where scikit-learn warns


def test_top5_is_left_out_where_sklearn_calls_it_meaningless():
    y, logits = torch.tensor([0, 4]), torch.randn(2, 5)
    with pytest.warns(UndefinedMetricWarning, match="meaningless"):
        assert top_k_accuracy_score(y.numpy(), logits.numpy(), k=5, labels=np.arange(5)) == 1.0
    assert "top5" not in _ours(classification_metrics, logits, y)


def test_accuracy_of_a_class_absent_from_the_targets_is_none_where_sklearn_warns():
    y, pred = np.array([0, 0, 1]), np.array([0, 2, 1])
    with pytest.warns(UndefinedMetricWarning, match="Recall is ill-defined"):
        assert recall_score(y, pred, labels=[0, 1, 2], average=None)[2] == 0.0
    ours = _ours(classification_metrics, torch.eye(3)[pred], torch.from_numpy(y))
    assert ours["per_class_accuracy"]["class2"] is None


def test_ap_of_a_label_without_positives_is_none_where_sklearn_warns_and_scores_zero():
    with pytest.warns(UserWarning, match="No positive class found"):
        assert average_precision_score([0, 0, 0], [0.9, 0.1, 0.5]) == 0.0
    logits, targets = torch.tensor([[0.9, 1.0], [0.1, -1.0], [0.5, 0.0]]), torch.tensor([[0, 1], [0, 0], [0, 0]])
    ours = _ours(multilabel_metrics, logits, targets)
    assert ours["per_class_ap"] == {"class0": None, "class1": 1.0} and ours["map"] == 1.0


def test_f1_of_a_label_neither_present_nor_predicted_is_one_where_sklearn_warns():
    pos, pred = np.array([[1, 0], [0, 0]]), np.array([[1, 0], [0, 0]])
    with pytest.warns(UndefinedMetricWarning, match="F-score is ill-defined"):
        assert f1_score(pos, pred, average="macro") == 0.5
    ours = _ours(multilabel_metrics, torch.tensor([[1.0, -1.0], [-1.0, -1.0]]), torch.from_numpy(pos))
    assert ours["f1_macro"] == 1.0


# ---------------------------------------------------------------- import cost


def test_the_metrics_import_torch_only_when_called():
    code = "import sys, hubft.tasks; print('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[2]  # this checkout's hubft, not an installed one
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
