"""Cross-entropy losses for single-label classification, and binary cross-entropy for multi-label heads.

All three take logits ``[B, C, *S]`` and compute in float32 or wider (bf16 / fp16 outputs are upcast).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hubft.errors import ConfigError
from hubft.losses._checks import channel_view, check_number, check_reduction, check_vector, is_scalar, reduce
from hubft.losses._targets import (
    LossInputError,
    check_output,
    check_softmax_channels,
    class_targets,
    multilabel_targets,
    one_hot_targets,
)


def _check_class_count(vector: torch.Tensor, num_classes: int, option: str, loss: str) -> None:
    if vector.numel() != num_classes:
        raise LossInputError(
            f"{loss}: {option} has {vector.numel()} values but the output has {num_classes} classes (dim 1)",
            fix=f"give one {option} value per class",
        )


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy over dim 1, with label smoothing, class weights and an ignored index.

    A thin, checked front to :func:`torch.nn.functional.cross_entropy`. Targets are integer class indices
    ``[B, *S]`` or class probabilities of the output's shape (mixup / cutmix targets): torch computes
    ``-sum(t * log_softmax(x))`` for the latter, which is exactly soft-target cross-entropy, so this loss
    ``accepts_soft_targets``. With probability targets ``ignore_index`` does not apply, and ``label_smoothing``
    is applied on top of them (mix *or* smooth, not both, unless that is intended).

    Args:
        class_weights: One non-negative weight per class, rescaling each class's term. Named so that it cannot be
            mistaken for a component's ``weight`` in a weighted combination. Stored as a buffer.
        label_smoothing: Mass in ``[0, 1)`` moved from the target class to a uniform distribution.
        ignore_index: Class index whose positions contribute nothing (segmentation "void" pixels).
        reduction: ``mean``: as torch, a weighted mean (divides by the summed weights of non-ignored targets, so
            a batch whose every position is ignored gives NaN); ``sum``; ``none``: one loss per position,
            shape ``[B, *S]``.

    Raises:
        ConfigError: An argument is out of range or of the wrong type.
        LossInputError: (forward) The target layout, dtype or class range does not fit the output, or
            ``class_weights`` does not have one value per class.

    Examples:
        >>> loss = CrossEntropyLoss(label_smoothing=0.1)
        >>> loss(torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])).shape
        torch.Size([])
    """

    accepts_soft_targets = True
    class_weights: torch.Tensor | None

    def __init__(
        self,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        name = "cross_entropy"
        self.reduction = check_reduction(reduction, name)
        self.label_smoothing = check_number(
            label_smoothing, "label_smoothing", name, low=0.0, high=1.0, high_inclusive=False
        )
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ConfigError(f"{name}: ignore_index={ignore_index!r} is not an integer", fix="give an integer")
        self.ignore_index = ignore_index
        weights = None if class_weights is None else check_vector(class_weights, "class_weights", name)
        self.register_buffer("class_weights", weights)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        name = "cross_entropy"
        output = check_output(output, name, min_ndim=2)
        check_softmax_channels(output, name)
        target = class_targets(output, target, name, ignore_index=self.ignore_index)
        weights = self.class_weights
        if weights is not None:
            _check_class_count(weights, output.shape[1], "class_weights", name)
            weights = weights.to(output.dtype)
        return F.cross_entropy(
            output,
            target,
            weight=weights,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, ignore_index={self.ignore_index}, reduction={self.reduction!r}"


class SoftTargetCrossEntropyLoss(nn.Module):
    """Cross-entropy ``-sum_c t_c * log_softmax(x)_c`` against class-probability targets (mixup / cutmix).

    Integer class indices are one-hot encoded first, so the same loss serves the training loop (mixed targets)
    and the evaluation loop (hard labels).

    Args:
        reduction: ``mean`` over positions, ``sum``, or ``none``: one loss per position, shape ``[B, *S]``.

    Raises:
        ConfigError: ``reduction`` is not supported.
        LossInputError: (forward) The target layout, dtype or class range does not fit the output.

    Examples:
        >>> loss = SoftTargetCrossEntropyLoss()
        >>> float(loss(torch.zeros(1, 2), torch.tensor([[0.5, 0.5]])))  # log(2)
        0.6931...
    """

    accepts_soft_targets = True

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction, "soft_target_cross_entropy")

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        name = "soft_target_cross_entropy"
        output = check_output(output, name, min_ndim=2)
        check_softmax_channels(output, name)
        target = one_hot_targets(output, target, name)
        return F.cross_entropy(output, target, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class BinaryCrossEntropyLoss(nn.Module):
    """Sigmoid binary cross-entropy per element, for multi-label heads (one independent logit per class).

    Targets are multi-hot (or soft, in ``[0, 1]``) tensors of the output's shape; integer class indices
    ``[B, *S]`` are one-hot encoded along dim 1, so a single-label dataset works unchanged. Computed by
    :func:`torch.nn.functional.binary_cross_entropy_with_logits`, which is stable for any logit.

    Args:
        pos_weight: Weight of the positive term: one number for all classes, or one per class (dim 1).
            Stored as a buffer.
        smoothing: Label smoothing in ``[0, 1)``: every target becomes ``t * (1 - smoothing) + smoothing / 2``,
            i.e. moves towards 0.5, the uniform Bernoulli. Applied to whatever targets arrive, so leave it 0 when
            the data pipeline already smooths (e.g. timm ``Mixup(label_smoothing=...)``).
        reduction: ``mean`` over all elements, ``sum``, or ``none``: the output's shape.

    Raises:
        ConfigError: An argument is out of range.
        LossInputError: (forward) The target layout does not fit, or ``pos_weight`` does not have one value per
            class.

    Examples:
        >>> loss = BinaryCrossEntropyLoss(pos_weight=[1.0, 4.0])
        >>> loss(torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [0.0, 1.0]])).shape
        torch.Size([])
    """

    accepts_soft_targets = True
    pos_weight: torch.Tensor | None

    def __init__(
        self,
        pos_weight: float | Sequence[float] | torch.Tensor | None = None,
        smoothing: float = 0.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        name = "bce"
        self.reduction = check_reduction(reduction, name)
        self.smoothing = check_number(smoothing, "smoothing", name, low=0.0, high=1.0, high_inclusive=False)
        if is_scalar(pos_weight):
            pos_weight = [check_number(pos_weight, "pos_weight", name, low=0.0)]
        weights = None if pos_weight is None else check_vector(pos_weight, "pos_weight", name)
        self.register_buffer("pos_weight", weights)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        name = "bce"
        output = check_output(output, name)
        target = multilabel_targets(output, target, name)
        if self.smoothing:
            target = target * (1.0 - self.smoothing) + 0.5 * self.smoothing
        pos_weight = self.pos_weight
        if pos_weight is not None:
            if pos_weight.numel() != 1:
                _check_class_count(pos_weight, output.shape[1] if output.ndim >= 2 else 1, "pos_weight", name)
            pos_weight = channel_view(pos_weight.to(output.dtype), output.ndim)
        loss = F.binary_cross_entropy_with_logits(output, target, pos_weight=pos_weight, reduction="none")
        return reduce(loss, self.reduction)

    def extra_repr(self) -> str:
        return f"smoothing={self.smoothing}, reduction={self.reduction!r}"

