"""Segmentation metrics against scikit-learn's confusion matrix, with ignored pixels and absent classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix

from hubft.tasks import SEMANTIC_SEGMENTATION, confusion_matrices, segmentation_metrics

NAMES = ["bg", "a", "b", "c", "never"]  # "never" is in no target and no prediction


def _reference(pred: np.ndarray, target: np.ndarray) -> dict:
    keep = target != 255
    cm = confusion_matrix(target[keep], pred[keep], labels=list(range(len(NAMES))))
    tp, fp, fn = np.diag(cm), cm.sum(0) - np.diag(cm), cm.sum(1) - np.diag(cm)
    present = tp + fp + fn > 0
    iou, dice = tp[present] / (tp + fp + fn)[present], 2 * tp[present] / (2 * tp + fp + fn)[present]
    return {"cm": cm, "mean_iou": iou.mean(), "mean_dice": dice.mean(), "pixel_accuracy": tp.sum() / cm.sum()}


@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_match_sklearn(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, len(NAMES), 7, 9, generator=g)
    logits[:, 4] = -10  # "never" is never predicted
    target = torch.randint(4, (6, 7, 9), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = 255
    got = segmentation_metrics(logits, target, NAMES)
    ref = _reference(logits.argmax(1).numpy().ravel(), target.numpy().ravel())
    assert np.array_equal(np.array(got["confusion_matrix"]), ref["cm"])
    for key in ("mean_iou", "mean_dice", "pixel_accuracy"):
        assert got[key] == pytest.approx(ref[key]), key
    assert got["per_class_iou"]["never"] is None  # absent from both: no IoU, out of the mean


def test_per_image_matrices_sum_to_the_split_matrix_and_the_task_reads_them():
    g = torch.Generator().manual_seed(2)
    logits, target = torch.randn(3, 5, 4, 4, generator=g), torch.randint(5, (3, 4, 4), generator=g)
    per_image = confusion_matrices(logits, target, 5)
    assert per_image.shape == (3, 5, 5) and per_image[1].sum() == 16
    assert SEMANTIC_SEGMENTATION.compute_metrics(per_image, None, NAMES) == segmentation_metrics(logits, target,
                                                                                                 NAMES)
