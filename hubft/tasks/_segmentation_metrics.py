"""Semantic-segmentation metrics from a confusion matrix of pixels.

Conventions:

- Pixels whose target is ``ignore_index`` (255) count nowhere.
- A class absent from both the predictions and the targets of the whole split (no true positive, false positive or
  false negative pixel) has no IoU or Dice: ``None`` in the per-class results, left out of the means (the
  convention of ``evaluate``'s ``mean_iou`` and mmsegmentation, which skip NaN classes).
- ``mean_iou``: the mean over the other classes of ``TP / (TP + FP + FN)``; ``mean_dice``: of
  ``2 TP / (2 TP + FP + FN)``; ``pixel_accuracy``: correct pixels / counted pixels.

Evaluation gathers one confusion matrix per image (:func:`confusion_matrices`), so a split's logits never have to
be held at once; the metrics come from their sum (:func:`metrics_from_confusion`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported when a metric is computed: importing hubft.tasks stays light
    import torch

__all__ = ["confusion_matrices", "metrics_from_confusion", "segmentation_metrics"]


def confusion_matrices(output: torch.Tensor, target: torch.Tensor, num_classes: int,
                       ignore_index: int = 255) -> torch.Tensor:
    """One ``[C, C]`` pixel confusion matrix per image (rows: target, columns: prediction), int64 ``[B, C, C]``.

    ``output`` is logits ``[B, C, H, W]`` (argmax taken; resized bilinearly to the target's size if they differ)
    or class ids ``[B, H, W]``.
    """
    import torch
    if output.is_floating_point():
        if output.shape[-2:] != target.shape[-2:]:
            output = torch.nn.functional.interpolate(output, size=target.shape[-2:], mode="bilinear",
                                                     align_corners=False)
        output = output.argmax(1)
    batch = target.shape[0]
    target, output = target.reshape(batch, -1).long(), output.reshape(batch, -1).long()
    valid = (target != ignore_index) & (target >= 0) & (target < num_classes)
    offsets = torch.arange(batch, device=target.device).unsqueeze(1) * num_classes * num_classes
    index = (offsets + target * num_classes + output)[valid]
    counts = torch.bincount(index, minlength=batch * num_classes * num_classes)
    return counts.reshape(batch, num_classes, num_classes)


def metrics_from_confusion(confusion: torch.Tensor, label_names: Sequence[str]) -> dict:
    """``mean_iou``, ``mean_dice``, ``pixel_accuracy``, ``per_class_iou``, ``per_class_dice`` and the
    ``confusion_matrix`` (as lists) from a summed ``[C, C]`` matrix; see the module's conventions."""
    import torch
    cm = confusion.double()
    tp = cm.diagonal()
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    present = (tp + fp + fn) > 0
    iou = torch.where(present, tp / (tp + fp + fn).clamp_min(1), torch.nan)
    dice = torch.where(present, 2 * tp / (2 * tp + fp + fn).clamp_min(1), torch.nan)
    total = cm.sum()

    def mean(values: torch.Tensor) -> float | None:
        return float(values[present].mean()) if bool(present.any()) else None

    def per_class(values: torch.Tensor) -> dict[str, float | None]:
        return {n: (float(v) if ok else None) for n, v, ok in zip(label_names, values.tolist(), present.tolist())}

    return {
        "mean_iou": mean(iou),
        "mean_dice": mean(dice),
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else None,
        "per_class_iou": per_class(iou),
        "per_class_dice": per_class(dice),
        "confusion_matrix": confusion.long().tolist(),
    }


def segmentation_metrics(output: torch.Tensor, target: torch.Tensor, label_names: Sequence[str],
                         ignore_index: int = 255) -> dict:
    """The metrics of logits ``[N, C, H, W]`` (or class ids ``[N, H, W]``) against target masks ``[N, H, W]``.

    Examples:
        >>> import torch
        >>> m = segmentation_metrics(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 255]]]), ["bg", "fg"])
        >>> m["mean_iou"], m["per_class_iou"]
        (1.0, {'bg': 1.0, 'fg': None})
    """
    return metrics_from_confusion(confusion_matrices(output, target, len(label_names), ignore_index).sum(0),
                                  label_names)
