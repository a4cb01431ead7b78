"""Focal loss (Lin et al., 2017, "Focal Loss for Dense Object Detection"), in sigmoid and softmax forms."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hubft.errors import ConfigError
from hubft.losses._checks import (
    channel_view,
    check_choice,
    check_number,
    check_reduction,
    check_vector,
    is_scalar,
    reduce,
)
from hubft.losses._targets import (
    LossInputError,
    binary_targets,
    check_output,
    check_softmax_channels,
    ignored_positions,
    multilabel_targets,
    one_hot_targets,
    without_ignored,
)

FOCAL_MODES = ("binary", "multilabel", "multiclass")


def _modulation(one_minus_p: torch.Tensor, gamma: float) -> torch.Tensor:
    # The clamp keeps d/dp (1 - p)^gamma finite where 1 - p underflows to 0 and gamma < 1 (its gradient is 0 there).
    return one_minus_p.clamp_min(torch.finfo(one_minus_p.dtype).tiny).pow(gamma)


class FocalLoss(nn.Module):
    """Cross-entropy down-weighted on well-classified examples by ``(1 - p_t) ** gamma``.

    Modes:

    * ``binary`` / ``multilabel``: the sigmoid focal loss of Lin et al., per element:
      ``alpha_t * (1 - p_t) ** gamma * bce(x, t)`` with ``p = sigmoid(x)``, ``p_t = p*t + (1-p)*(1-t)`` and
      ``alpha_t = alpha*t + (1-alpha)*(1-t)`` and ``bce = -(t * logsigmoid(x) + (1-t) * logsigmoid(-x))``.
      ``binary`` takes targets of the output's shape (or without its singleton channel dim); ``multilabel`` also
      one-hot encodes integer class indices along dim 1.
    * ``multiclass``: the softmax form, per position: ``-sum_c alpha_c * t_c * (1 - p_c) ** gamma * log p_c`` with
      ``p = softmax(x, dim=1)``; integer class indices are one-hot encoded, so for hard labels this is
      ``-alpha_y * (1 - p_y) ** gamma * log p_y``, and class probabilities (mixup) are accepted as they are.

    With ``gamma=0`` and ``alpha=None`` it equals ``bce`` (sigmoid modes) or ``cross_entropy`` (multiclass). Log
    probabilities come from ``logsigmoid`` / ``log_softmax`` and ``1 - p`` from ``exp(logsigmoid(-x))`` /
    ``-expm1(log p)``, so logits of +-1e4 give finite values and gradients, and confident predictions keep their
    (tiny) loss instead of rounding to 0.

    Args:
        mode: ``binary``, ``multilabel`` or ``multiclass``. The default suits a single-label classification head.
        alpha: Sigmoid modes: the weight of positives in ``[0, 1]`` (Lin et al. use 0.25), negatives get
            ``1 - alpha``; ``multilabel`` also takes one value per class. ``multiclass``: one non-negative weight
            per class. ``None``: no weighting. Stored as a buffer.
        gamma: Focusing parameter ``>= 0``; 0 turns the modulation off.
        reduction: ``mean``: a plain mean over items (weights are not renormalised, as in Lin et al.); ``sum``;
            ``none``: the output's shape in sigmoid modes, ``[B, *S]`` in ``multiclass``.
        ignore_index: A class index (segmentation's "void" pixels, 255) whose positions get zero loss and no
            gradient, and are left out of ``mean``'s count; None: none are.

    Raises:
        ConfigError: An argument is invalid, including an alpha of the wrong form for the mode.
        LossInputError: (forward) The target layout does not fit the output, or ``alpha`` does not have one
            value per class.

    Examples:
        >>> loss = FocalLoss(mode="binary", alpha=0.25, gamma=2.0)
        >>> loss(torch.tensor([3.0, -2.0]), torch.tensor([1.0, 0.0])).shape
        torch.Size([])
    """

    accepts_soft_targets = True
    alpha: torch.Tensor | None

    def __init__(
        self,
        mode: str = "multiclass",
        alpha: float | Sequence[float] | torch.Tensor | None = None,
        gamma: float = 2.0,
        reduction: str = "mean",
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        name = "focal"
        self.mode = check_choice(mode, FOCAL_MODES, "mode", name)
        self.gamma = check_number(gamma, "gamma", name, low=0.0)
        self.reduction = check_reduction(reduction, name)
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise ConfigError(f"{name}: ignore_index={ignore_index!r} is not an integer or null", fix="e.g. 255")
        self.ignore_index = ignore_index
        self.register_buffer("alpha", self._alpha_tensor(alpha))

    def _alpha_tensor(self, alpha: float | Sequence[float] | torch.Tensor | None) -> torch.Tensor | None:
        name = "focal"
        if alpha is None:
            return None
        is_vector = not is_scalar(alpha)
        if self.mode == "multiclass":
            if not is_vector:
                raise ConfigError(
                    f"{name}: alpha={alpha!r} is a single number, but mode='multiclass' weights each class",
                    fix="give alpha as a list with one weight per class, or use mode='binary'/'multilabel'",
                )
            return check_vector(alpha, "alpha", name)
        if is_vector:
            if self.mode == "binary":
                raise ConfigError(
                    f"{name}: mode='binary' takes alpha as one number in [0, 1]; got {alpha!r}",
                    fix="give one number, or use mode='multilabel' for per-class alpha",
                )
            return check_vector(alpha, "alpha", name, high=1.0)
        return torch.tensor([check_number(alpha, "alpha", name, low=0.0, high=1.0)])

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        name = "focal"
        ignored = ignored_positions(target, self.ignore_index, output)
        target = without_ignored(target, ignored)
        if self.mode == "multiclass":
            output = check_output(output, name, min_ndim=2)
            check_softmax_channels(output, name)
            target = one_hot_targets(output, target, name)
            log_p = F.log_softmax(output, dim=1)
            loss = -target * log_p
            if self.gamma:
                loss = loss * _modulation(-torch.expm1(log_p), self.gamma)
        else:
            output = check_output(output, name)
            if self.mode == "binary":
                target = binary_targets(output, target, name)
            else:
                target = multilabel_targets(output, target, name)
            # Both log terms via logsigmoid: torch's BCE-with-logits computes x + softplus(-x) for negatives,
            # which cancels to 0 for confident ones, and the focal product would lose all relative precision.
            log_p, log_not_p = F.logsigmoid(output), F.logsigmoid(-output)
            loss = -(target * log_p + (1.0 - target) * log_not_p)
            if self.gamma:
                one_minus_p_t = log_p.exp() * (1.0 - target) + log_not_p.exp() * target
                loss = loss * _modulation(one_minus_p_t, self.gamma)
        if self.alpha is not None:
            loss = loss * self._alpha_weights(output, target)
        if self.mode == "multiclass":
            loss = loss.sum(dim=1)
        if ignored is None:
            return reduce(loss, self.reduction)
        keep = ~ignored if self.mode == "multiclass" else (~ignored).unsqueeze(1).expand_as(loss)
        loss = loss * keep
        if self.reduction == "mean":  # over the positions that count, as torch's cross-entropy does
            return loss.sum() / keep.sum()
        return reduce(loss, self.reduction)

    def _alpha_weights(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.to(output.dtype)
        if alpha.numel() != 1:
            classes = output.shape[1] if output.ndim >= 2 else 1
            if alpha.numel() != classes:
                raise LossInputError(
                    f"focal: alpha has {alpha.numel()} values but the output has {classes} classes (dim 1)",
                    fix="give one alpha per class",
                )
            alpha = channel_view(alpha, output.ndim)
        if self.mode == "multiclass":
            return alpha
        return alpha * target + (1.0 - alpha) * (1.0 - target)

    def extra_repr(self) -> str:
        return (f"mode={self.mode!r}, gamma={self.gamma}, reduction={self.reduction!r}"
                + (f", ignore_index={self.ignore_index}" if self.ignore_index is not None else ""))
