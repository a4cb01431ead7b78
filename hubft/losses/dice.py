"""Dice loss: one minus the (smoothed) Dice coefficient between predicted probabilities and targets."""

from __future__ import annotations

import torch
from torch import nn

from hubft.errors import ConfigError
from hubft.losses._checks import check_choice, check_flag, check_number, check_reduction, reduce
from hubft.losses._targets import (
    binary_targets,
    check_output,
    check_softmax_channels,
    ignored_positions,
    multilabel_targets,
    one_hot_targets,
    without_ignored,
)

DICE_MODES = ("auto", "binary", "multilabel", "multiclass")

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
      probabilities are used as they are. A one-channel output is refused (its softmax is the constant 1).
    * ``auto`` (the default): ``binary`` for a one-channel output (``[B, 1, *S]``, or no channel dim), else
      ``multiclass``.

    ``ignore_index``: positions whose class-index target equals it (segmentation's "void" pixels, 255) count in
    neither sum, so they carry no gradient.

    Soft targets in ``[0, 1]`` give the usual soft Dice.

    Args:
        mode: ``auto``, ``binary``, ``multilabel`` or ``multiclass``.
        smooth: Added to numerator and denominator, ``>= 0``; keeps the loss defined (and 0 for empty-vs-empty)
            when a class is absent from both prediction and target.
        from_logits: Apply the sigmoid / softmax; ``False`` when the output is already probabilities in [0, 1].
        per_sample: Score each sample separately instead of the batch as a whole.
        reduction: ``mean`` or ``sum`` over the scores, or ``none``: the scores, shape ``[C]`` (``[1]`` in
            ``binary`` mode), or ``[B, C]`` with ``per_sample``.
        ignore_index: A class index whose positions are left out (None: none are).

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
        mode: str = "auto",
        smooth: float = 1.0,
        from_logits: bool = True,
        per_sample: bool = False,
        reduction: str = "mean",
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        name = "dice"
        self.mode = check_choice(mode, DICE_MODES, "mode", name)
        self.smooth = check_number(smooth, "smooth", name, low=0.0)
        self.from_logits = check_flag(from_logits, "from_logits", name)
        self.per_sample = check_flag(per_sample, "per_sample", name)
        self.reduction = check_reduction(reduction, name)
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise ConfigError(f"{name}: ignore_index={ignore_index!r} is not an integer or null", fix="e.g. 255")
        self.ignore_index = ignore_index

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        name = "dice"
        mode = self.mode
        if mode == "auto":
            mode = "binary" if output.ndim < 2 or output.shape[1] == 1 else "multiclass"
        ignored = ignored_positions(target, self.ignore_index, output)
        target = without_ignored(target, ignored)
        if mode == "multiclass":
            output = check_output(output, name, min_ndim=2)
            check_softmax_channels(output, name)
            target = one_hot_targets(output, target, name)
            probs = torch.softmax(output, dim=1) if self.from_logits else output
        else:
            output = check_output(output, name)
            if mode == "binary":
                target = binary_targets(output, target, name)
            else:
                target = multilabel_targets(output, target, name)
            probs = torch.sigmoid(output) if self.from_logits else output
        batch = output.shape[0]
        classes = output.shape[1] if mode != "binary" and output.ndim >= 2 else 1
        probs = probs.reshape(batch, classes, -1)
        target = target.reshape(batch, classes, -1)
        if ignored is not None:
            keep = (~ignored).reshape(batch, 1, -1).to(probs.dtype)
            probs, target = probs * keep, target * keep
        dims = (2,) if self.per_sample else (0, 2)
        intersection = (probs * target).sum(dims)
        cardinality = probs.sum(dims) + target.sum(dims)
        dice = (2.0 * intersection + self.smooth) / (cardinality + self.smooth).clamp_min(_EPS)
        return reduce(1.0 - dice, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, smooth={self.smooth}, from_logits={self.from_logits}, "
            f"per_sample={self.per_sample}, reduction={self.reduction!r}"
            + (f", ignore_index={self.ignore_index}" if self.ignore_index is not None else "")
        )

