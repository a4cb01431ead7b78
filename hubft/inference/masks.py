"""``predict_masks``: class-id masks from a segmentation model, at each input image's own size."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from hubft.errors import ModelError

__all__ = ["predict_masks"]


@torch.no_grad()
def predict_masks(model: Any, images: Sequence[Any], *, image_size: int | None = None,
                  batch_size: int = 8) -> list[torch.Tensor]:
    """The class-id mask (int64 ``[H, W]``) of each PIL image, at that image's size.

    Each image is resized to the model's input size (``image_size``, else its ``pretrained_cfg``) and normalised
    with the model's own mean / std; the logits are resized back (bilinear) before the arg-max.

    Args:
        model: A segmentation model (a segmentation adapter too), or any name :func:`hubft.from_pretrained` takes
            (``hf-hub:owner/name``, ``local-dir:PATH``, a run directory).
        images: PIL images (any mode; converted to RGB).

    Raises:
        ModelError: ``model`` is not a segmentation model.

    Examples:
        >>> masks = predict_masks("local-dir:runs/shapes", [Image.open("a.png")])  # doctest: +SKIP
    """
    from torchvision.transforms.v2 import functional as F

    from hubft.data import SegmentationTransform
    from hubft.models import SegmentationModel, adapter_base, from_pretrained

    if isinstance(model, (str, os.PathLike)):
        text = os.fspath(model)
        model = from_pretrained(f"local-dir:{text}" if ":" not in text and os.path.isdir(text) else text)
    if not isinstance(adapter_base(model), SegmentationModel):
        raise ModelError(f"predict_masks needs a segmentation model, got {type(model).__name__}",
                         fix="train one with model.task: semantic-segmentation, or use hubft.predict for classifiers")
    transform = SegmentationTransform.for_model(model.pretrained_cfg, size=image_size)
    size = transform.size
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    masks = []
    for start in range(0, len(images), batch_size):
        chunk = [image.convert("RGB") for image in images[start:start + batch_size]]
        x = torch.stack([F.resize(F.pil_to_tensor(im), [size, size], antialias=True) for im in chunk])
        x = transform.normalize(x.to(device))
        logits = model(x)
        for one, image in zip(logits, chunk):
            masks.append(_at_size(one, image.size[::-1]))
    model.train(was_training)
    return masks


def _at_size(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    resized = torch.nn.functional.interpolate(logits.unsqueeze(0), size=size, mode="bilinear", align_corners=False)
    return resized[0].argmax(0).cpu()
