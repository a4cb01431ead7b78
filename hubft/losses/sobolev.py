"""Sobolev loss: match dense predictions in value and in finite differences along their spatial dims."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hubft.errors import ConfigError
from hubft.losses._checks import check_number, check_reduction, reduce
from hubft.losses._targets import LossInputError, check_output, dense_targets


class SobolevLoss(nn.Module):
    """Squared error of the values plus squared errors of their finite differences (a discrete Sobolev norm).

    With residual ``r = output - target``, each sample's loss is::

        weights[0] * mean(r ** 2) + sum_{k >= 1} weights[k] * sum_{d in dims} mean(diff(r, n=k, dim=d) ** 2)

    where ``diff(r, n=k, dim=d)`` is the k-th forward difference along dim ``d`` (``torch.diff``). Since
    differencing is linear, the difference terms compare the derivatives of prediction and target, so the head is
    also trained to get edges, slopes and smoothness right. Differences use unit spacing: for a grid step ``h``,
    scale ``weights[k]`` by ``h ** (-2 * k)``.

    Args:
        weights: ``weights[k]`` weighs order ``k`` (0: values, 1: first differences, ...); non-negative, at least
            one positive.
        dims: Dims to difference along (not 0, the batch dim). ``None``: every dim after the channel dim
            (``[B, C, H, W]``: 2 and 3), or dim 1 for a ``[B, L]`` output, which has no channel dim.
        reduction: ``mean`` or ``sum`` over samples, or ``none``: one loss per sample, shape ``[B]``.

    Raises:
        ConfigError: An argument is invalid.
        LossInputError: (forward) Shapes differ, or a differenced dim is not longer than the highest order.

    Examples:
        >>> loss = SobolevLoss(weights=(1.0, 1.0))
        >>> float(loss(torch.tensor([[0.0, 1.0, 0.0]]), torch.zeros(1, 3)))  # mean(r^2) + mean(diff(r)^2)
        1.3333...
    """

    accepts_soft_targets = False

    def __init__(
        self,
        weights: Sequence[float] = (1.0, 1.0),
        dims: Sequence[int] | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        name = "sobolev"
        if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence) or not weights:
            raise ConfigError(
                f"{name}: weights={weights!r} is not a non-empty list of numbers",
                fix="give one weight per order, e.g. [1.0, 1.0] for values and first differences",
            )
        self.weights = tuple(check_number(w, f"weights[{k}]", name, low=0.0) for k, w in enumerate(weights))
        if not any(self.weights):
            raise ConfigError(f"{name}: every weight is 0, so the loss would be constant", fix="make one positive")
        self.dims = None if dims is None else self._check_dims(dims)
        self.reduction = check_reduction(reduction, name)

    @staticmethod
    def _check_dims(dims: Sequence[int]) -> tuple[int, ...]:
        valid = (
            isinstance(dims, Sequence)
            and not isinstance(dims, (str, bytes))
            and len(dims) > 0
            and all(isinstance(d, int) and not isinstance(d, bool) and d != 0 for d in dims)
            and len(set(dims)) == len(dims)
        )
        if not valid:
            raise ConfigError(
                f"sobolev: dims={dims!r} must be a non-empty list of distinct dims other than 0 (the batch dim)",
                fix="e.g. dims=[2, 3] for [B, C, H, W] outputs, or leave it null",
            )
        return tuple(dims)

    def _resolve_dims(self, residual: torch.Tensor) -> tuple[int, ...]:
        ndim = residual.ndim
        if self.dims is None:
            dims = tuple(range(2, ndim)) if ndim >= 3 else (1,) if ndim == 2 else ()
        else:
            if any(not -ndim < d < ndim for d in self.dims):
                raise LossInputError(f"sobolev: dims={list(self.dims)} do not exist in a {ndim}-D output")
            dims = tuple(sorted({d % ndim for d in self.dims}))
            if 0 in dims or len(dims) != len(self.dims):
                raise LossInputError(
                    f"sobolev: dims={list(self.dims)} name the batch dim or one dim twice for a {ndim}-D output"
                )
        highest = len(self.weights) - 1
        if highest and not dims:
            raise LossInputError(
                f"sobolev: a {ndim}-D output has no dim to difference along",
                fix="give outputs of shape [B, L] or [B, C, *S], or set weights=[1.0] for plain MSE",
            )
        for d in dims:
            if residual.shape[d] <= highest:
                raise LossInputError(
                    f"sobolev: dim {d} has size {residual.shape[d]}, too short for differences of order {highest}",
                    fix="difference along longer dims (dims=...) or lower the number of weights",
                )
        return dims

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output = check_output(output, "sobolev")
        residual = output - dense_targets(output, target, "sobolev")
        dims = self._resolve_dims(residual)
        batch = residual.shape[0]
        loss = residual.new_zeros(batch)
        for order, weight in enumerate(self.weights):
            if not weight:
                continue
            if order == 0:
                term = residual.square().reshape(batch, -1).mean(1)
            else:
                term = sum(torch.diff(residual, n=order, dim=d).square().reshape(batch, -1).mean(1) for d in dims)
            loss = loss + weight * term
        return reduce(loss, self.reduction)

    def extra_repr(self) -> str:
        return f"weights={self.weights}, dims={self.dims}, reduction={self.reduction!r}"
