"""Semantic segmentation: one class per pixel, 255 = ignore.

The model is the backbone's multi-scale features and a light FPN decoder
(:func:`hubft.models.create_segmentation_model`); logits are ``[B, C, H, W]`` at the input's size. Targets are
class-id masks ``[B, H, W]``. The losses are the class losses over dense outputs (``cross_entropy``, ``dice``,
``focal``, any weighted mix), each given ``ignore_index: 255`` unless the config says otherwise; the default is
``{cross_entropy: 1.0, dice: 1.0}``. Data comes from :func:`hubft.data.load_segmentation_data` through paired
transforms; evaluation scores each image at its mask's own resolution (the logits upsampled to it), gathers one
pixel confusion matrix per image, and the best epoch is the one with the highest mean IoU (conventions in
:mod:`hubft.tasks._segmentation_metrics`).
"""

from __future__ import annotations

from typing import Any

from hubft.tasks._segmentation_metrics import confusion_matrices, metrics_from_confusion
from hubft.tasks._task import CardMetric, Task, register_task

__all__ = ["SEMANTIC_SEGMENTATION"]

IGNORE_INDEX = 255
SAMPLE_PLOT = "segmentation_sample.png"  # listed in hubft.hub.card.SAMPLE_PLOTS: the card shows it


def _create_model(*args: Any, **kwargs: Any) -> Any:
    from hubft.models import create_segmentation_model

    return create_segmentation_model(*args, **kwargs)


def _load_data(data: Any, dataset: Any, seed: int) -> Any:
    from hubft.data import load_segmentation_data
    from hubft.errors import ConfigError

    unused = [f"data.{k}" for k in ("classes", "max_per_class", "auto_augment", "re_prob") if getattr(data, k)]
    if unused:
        raise ConfigError(f"{', '.join(unused)} do not apply to model.task semantic-segmentation",
                          fix=f"remove {', '.join(unused)} (masks are transformed with their images: crop, flip, "
                              "colour jitter)")

    return load_segmentation_data(
        name=data.name, path=data.path, dataset=dataset, revision=data.revision, image_column=data.image_column,
        mask_column=data.mask_column, label_names=data.label_names, train_split=data.train_split,
        eval_split=data.eval_split, eval_fraction=data.eval_fraction, seed=seed)


def _create_datasets(data: Any, bundle: Any, pretrained_cfg: dict) -> tuple[Any, Any, Any, Any]:
    from hubft.data import SegmentationDataset, SegmentationTransform

    train_tf = SegmentationTransform.for_model(pretrained_cfg, size=data.image_size, training=True,
                                               scale=data.scale or (0.5, 1.0), ratio=data.ratio or (3 / 4, 4 / 3),
                                               hflip=data.hflip, color_jitter=data.color_jitter)
    eval_tf = SegmentationTransform.for_model(pretrained_cfg, size=data.image_size)
    columns = (bundle.image_column, bundle.label_column, len(bundle.label_names))
    return (SegmentationDataset(bundle.train, train_tf, *columns, split="train"),
            SegmentationDataset(bundle.eval, eval_tf, *columns, split="eval"), train_tf.normalize, eval_tf.normalize)


def _collate(batch: Any) -> Any:
    from hubft.data import collate_masks

    return collate_masks(batch)


def _to_mask_resolution(outputs: Any, targets: Any) -> tuple[Any, Any]:
    """Logits at the model's input size brought to each mask's own size (bilinear, as the decoder upsamples);
    the padding :func:`~hubft.data.collate_masks` added is ignored."""
    import torch.nn.functional as F

    from hubft.data import OUTSIDE

    outside = targets == OUTSIDE
    if not outside.any():
        if outputs.shape[-2:] == targets.shape[-2:]:
            return outputs, targets
        return F.interpolate(outputs, size=targets.shape[-2:], mode="bilinear", align_corners=False), targets
    resized = outputs.new_zeros((*outputs.shape[:2], *targets.shape[-2:]))
    for logits, inside, canvas in zip(outputs, ~outside, resized):
        height, width = int(inside[:, 0].sum()), int(inside[0].sum())
        canvas[:, :height, :width] = F.interpolate(logits[None], size=(height, width), mode="bilinear",
                                                   align_corners=False)[0]
    return resized, targets.masked_fill(outside, IGNORE_INDEX)


def _statistics(outputs: Any, targets: Any, num_labels: int) -> Any:
    return confusion_matrices(outputs, targets, num_labels, IGNORE_INDEX)


def _compute_metrics(statistics: Any, _targets: Any, label_names: Any) -> dict:
    return metrics_from_confusion(statistics.sum(0), label_names)


def _sample_plot(model: Any, dataset: Any, normalize: Any, label_names: Any, out_dir: Any) -> Any:
    from hubft.tasks.plots import plot_segmentation_sample

    return plot_segmentation_sample(model, dataset, normalize, label_names, out_dir / SAMPLE_PLOT)


SEMANTIC_SEGMENTATION = register_task(Task(
    name="semantic-segmentation",
    description="Semantic segmentation: one class per pixel (FPN decoder on the backbone's features).",
    target="a mask of class ids per pixel (255 = ignore)",
    create_model=_create_model,
    compute_metrics=_compute_metrics,
    primary_metric="mean_iou",
    default_loss={"cross_entropy": 1.0, "dice": 1.0},
    loss_targets=("class",),
    min_labels=2,
    batch_mixing=False,
    pipeline_tag="image-segmentation",
    title="Semantic Segmentation",
    card_metrics=(
        CardMetric("mean_iou", "mean_iou", "Mean IoU"),
        CardMetric("mean_dice", "dice", "Mean Dice"),
        CardMetric("pixel_accuracy", "accuracy", "Pixel accuracy"),
    ),
    per_class=("per_class_iou", "Per-class IoU", "IoU"),
    summary="semantic segmentation model",
    tags=("image-segmentation", "semantic-segmentation"),
    load_data=_load_data,
    create_datasets=_create_datasets,
    eval_statistics=_statistics,
    eval_collate=_collate,
    eval_outputs=_to_mask_resolution,
    loss_defaults=(("ignore_index", IGNORE_INDEX),),
    sample_plot=_sample_plot,
))
