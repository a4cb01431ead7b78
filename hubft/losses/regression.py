"""Element-wise regression losses: squared, absolute, Huber and smooth-L1 error.

Same maths as torch's, behind a checked front: the target must have the output's exact shape (torch broadcasts
``[B, 1]`` against ``[B]`` into ``[B, B]`` with only a warning), and bf16 / fp16 outputs are reduced in float32.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from hubft.losses._checks import check_number, check_reduction
from hubft.losses._targets import check_output, dense_targets


class _ElementwiseLoss(nn.Module):
    """Base of the element-wise regression losses: checks inputs, then defers to ``_compute``."""

    accepts_soft_targets = False
    loss_name: ClassVar[str]

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction, self.loss_name)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output = check_output(output, self.loss_name)
        return self._compute(output, dense_targets(output, target, self.loss_name))

    def _compute(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class MSELoss(_ElementwiseLoss):
    """Squared error ``(x - t) ** 2``; ``reduction``: ``mean``, ``sum`` or ``none`` (the output's shape).

    Raises:
        ConfigError: ``reduction`` is not supported.
        LossInputError: (forward) The target's shape differs from the output's.

    Examples:
        >>> float(MSELoss()(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])))
        5.0
    """

    loss_name = "mse"

    def _compute(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, target, reduction=self.reduction)


class L1Loss(_ElementwiseLoss):
    """Absolute error ``|x - t|``; ``reduction``: ``mean``, ``sum`` or ``none`` (the output's shape).

    Raises:
        ConfigError: ``reduction`` is not supported.
        LossInputError: (forward) The target's shape differs from the output's.
    """

    loss_name = "l1"

    def _compute(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(output, target, reduction=self.reduction)


class HuberLoss(_ElementwiseLoss):
    """Huber loss: ``0.5 * e**2`` for ``|e| <= delta``, else ``delta * (|e| - 0.5 * delta)``, with ``e = x - t``.

    Args:
        delta: Where the loss turns from quadratic to linear, ``> 0``.
        reduction: ``mean``, ``sum`` or ``none`` (the output's shape).

    Raises:
        ConfigError: An argument is invalid.
        LossInputError: (forward) The target's shape differs from the output's.
    """

    loss_name = "huber"

    def __init__(self, delta: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.delta = check_number(delta, "delta", self.loss_name, low=0.0, low_inclusive=False)

    def _compute(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.huber_loss(output, target, reduction=self.reduction, delta=self.delta)

    def extra_repr(self) -> str:
        return f"delta={self.delta}, {super().extra_repr()}"


class SmoothL1Loss(_ElementwiseLoss):
    """Smooth L1: ``0.5 * e**2 / beta`` for ``|e| < beta``, else ``|e| - 0.5 * beta`` (Huber divided by ``beta``).

    Args:
        beta: Where the loss turns from quadratic to linear, ``>= 0``; 0 gives the L1 loss.
        reduction: ``mean``, ``sum`` or ``none`` (the output's shape).

    Raises:
        ConfigError: An argument is invalid.
        LossInputError: (forward) The target's shape differs from the output's.
    """

    loss_name = "smooth_l1"

    def __init__(self, beta: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.beta = check_number(beta, "beta", self.loss_name, low=0.0)

    def _compute(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.smooth_l1_loss(output, target, reduction=self.reduction, beta=self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, {super().extra_repr()}"
