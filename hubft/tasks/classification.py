"""Image classification, the first task: one class per image, or several (multi-label data).

The head is timm's classifier, reset for the data's labels (:func:`hubft.create_model`). A single-label target is a
class index; a multi-label target is a multi-hot row of the output's shape, so every loss over same-shaped targets
fits it: ``bce`` (the default), ``focal`` / ``dice`` in their binary modes, and the dense losses (``mse``, ``l1``,
``huber``, ``smooth_l1`` as Brier-style scores of each label's output; ``sobolev`` also compares neighbouring labels,
which suits ordered labels such as ordinal grades encoded as cumulative multi-hot rows). The best epoch is the one with the
highest top-1 accuracy, or mean average precision for multi-label data. How each metric treats ties, classes absent
from the eval targets and classes never predicted, and which scikit-learn call it equals, is listed in
:mod:`hubft.tasks._classification_metrics`.
"""

from __future__ import annotations

from typing import Any

from hubft.tasks._classification_metrics import classification_metrics, multilabel_metrics
from hubft.tasks._task import CardMetric, Task, register_task

__all__ = ["IMAGE_CLASSIFICATION"]


def _create_classifier(*args: Any, **kwargs: Any) -> Any:
    from hubft.models import create_model

    return create_model(*args, **kwargs)


_MULTI_LABEL = Task(
    name="image-classification",
    description="Image classification: several labels per image (multi-hot targets, sigmoid per label).",
    target="a multi-hot row with one 0/1 entry per label",
    create_model=_create_classifier,
    compute_metrics=multilabel_metrics,
    primary_metric="map",
    default_loss="bce",
    loss_targets=("class", "binary", "dense"),
    min_labels=1,
    batch_mixing=True,
    pipeline_tag="image-classification",
    title="Image Classification",
    card_metrics=(
        CardMetric("f1_macro", "f1", "Macro F1", (("average", "macro"),)),
        CardMetric("f1_micro", "f1", "Micro F1", (("average", "micro"),)),
        CardMetric("map", "mean_average_precision", "Mean average precision"),
    ),
    per_class=("per_class_ap", "Per-class average precision", "AP"),
    summary="multi-label image classifier",
    tags=("image-classification", "multi-label"),
    activation="sigmoid",
)

IMAGE_CLASSIFICATION = register_task(Task(
    name="image-classification",
    description="Image classification: one class per image (softmax over the classes); multi-label data too.",
    target="a class index",
    create_model=_create_classifier,
    compute_metrics=classification_metrics,
    primary_metric="accuracy",
    default_loss="cross_entropy",
    loss_targets=("class", "binary"),
    min_labels=2,
    batch_mixing=True,
    pipeline_tag="image-classification",
    title="Image Classification",
    card_metrics=(
        CardMetric("accuracy", "accuracy", "Top-1 accuracy"),
        CardMetric("top5", "top_5_accuracy", "Top-5 accuracy"),
        CardMetric("f1_macro", "f1", "Macro F1", (("average", "macro"),)),
    ),
    per_class=("per_class_accuracy", "Per-class accuracy", "accuracy"),
    summary="image classifier",
    tags=("image-classification",),
    multi_label=_MULTI_LABEL,
))
