"""Dice loss: one minus the (smoothed) Dice coefficient between predicted probabilities and targets."""

from __future__ import annotations

import torch
from torch import nn

from hubft.losses._checks import check_choice, check_flag, check_number, check_reduction, reduce
from hubft.losses._targets import binary_targets, check_output, multilabel_targets, one_hot_targets

DICE_MODES = ("binary", "multilabel", "multiclass")

# Only reached with smooth=0 and nothing predicted or labelled; keeps 0/0 from turning into NaN.
_EPS = 1e-7


class DiceLoss(nn.Module):
    """``1 - (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth)``, per class.

    Sums run over the batch and all spatial positions (one Dice score per class, as for a whole dataset), or
    over each sample's positions only with ``per_sample=True`` (one score per sample and class, then averaged).

    Modes:

    * ``binary``: one class; ``p = sigmoid(x)`` over the output (``[B, *S]`` or ``[B, 1, *S]``), targets of the
      same shape or without the singleton channel dim.
    * ``multilabel``: ``C`` independent classes along dim 1, ``p = sigmoid(x)``; integer class indices are one-hot
      encoded.
    * ``multiclass``: ``p = softmax(x, dim=1)``; integer class indices ``[B, *S]`` are one-hot encoded, class
      probabilities are used as they are.

    Soft targets in ``[0, 1]`` give the usual soft Dice.

    Args:
        mode: ``binary``, ``multilabel`` or ``multiclass``. The default suits a single-label classification head.
        smooth: Added to numerator and denominator, ``>= 0``; keeps the loss defined (and 0 for empty-vs-empty)
            when a class is absent from both prediction and target.
        from_logits: Apply the sigmoid / softmax; ``False`` when the output is already probabilities in [0, 1].
        per_sample: Score each sample separately instead of the batch as a whole.
        reduction: ``mean`` or ``sum`` over the scores, or ``none``: the scores, shape ``[C]`` (``[1]`` in
            ``binary`` mode), or ``[B, C]`` with ``per_sample``.

    Raises:
        ConfigError: An argument is invalid.
        LossInputError: (forward) The target layout does not fit the output.

    Examples:
        >>> loss = DiceLoss(mode="binary", from_logits=False)
        >>> mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
        >>> float(loss(mask, mask))  # identical masks
        0.0
    """

    accepts_soft_targets = True

    def __init__(
        self,
        mode: str = "multiclass",
        smooth: float = 1.0,
        from_logits: bool = True,
        per_sample: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        name = "dice"
        self.mode = check_choice(mode, DICE_MODES, "mode", name)
        self.smooth = check_number(smooth, "smooth", name, low=0.0)
        self.from_logits = check_flag(from_logits, "from_logits", name)
        self.per_sample = check_flag(per_sample, "per_sample", name)
        self.reduction = check_reduction(reduction, name)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        name = "dice"
        if self.mode == "multiclass":
            output = check_output(output, name, min_ndim=2)
            target = one_hot_targets(output, target, name)
            probs = torch.softmax(output, dim=1) if self.from_logits else output
        else:
            output = check_output(output, name)
            if self.mode == "binary":
                target = binary_targets(output, target, name)
            else:
                target = multilabel_targets(output, target, name)
            probs = torch.sigmoid(output) if self.from_logits else output
        batch = output.shape[0]
        classes = output.shape[1] if self.mode != "binary" and output.ndim >= 2 else 1
        probs = probs.reshape(batch, classes, -1)
        target = target.reshape(batch, classes, -1)
        dims = (2,) if self.per_sample else (0, 2)
        intersection = (probs * target).sum(dims)
        cardinality = probs.sum(dims) + target.sum(dims)
        dice = (2.0 * intersection + self.smooth) / (cardinality + self.smooth).clamp_min(_EPS)
        return reduce(1.0 - dice, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, smooth={self.smooth}, from_logits={self.from_logits}, "
            f"per_sample={self.per_sample}, reduction={self.reduction!r}"
        )

