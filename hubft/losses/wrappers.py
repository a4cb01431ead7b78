"""Modules that turn a loss function, or a weighted set of losses, into one loss module."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from hubft.errors import ConfigError
from hubft.losses._checks import check_number
from hubft.losses._targets import LossInputError
from hubft.losses.soft_targets import accepts_soft_targets


def callable_name(obj: Any) -> str:
    """A readable name for a function, class or instance: ``module.qualname`` where there is one."""
    target = obj if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj) else type(obj)
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", repr(obj))
    return f"{module}.{qualname}" if module and module != "builtins" else qualname


def _check_result(value: Any, source: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ConfigError(
            f"loss {source} returned {type(value).__name__}, not a tensor",
            fix="make the loss return a torch.Tensor (a 0-d tensor for a reduced loss)",
        )
    return value


class FunctionLoss(nn.Module):
    """Wrap a loss function ``fn(output, target, **options) -> Tensor`` as a module.

    The module's ``accepts_soft_targets`` is the function's own attribute of that name if it is exactly
    ``True``, else False.

    Args:
        fn: The loss function; called with ``(output, target)`` positionally and ``options`` as keywords.
        **options: Extra keyword arguments bound to every call (e.g. ``reduction="sum"``).

    Raises:
        ConfigError: ``fn`` is not callable, or cannot take ``(output, target, **options)``; (forward) ``fn``
            returned something that is not a tensor.

    Examples:
        >>> loss = FunctionLoss(torch.nn.functional.l1_loss, reduction="sum")
        >>> float(loss(torch.tensor([1.0, -2.0]), torch.zeros(2)))
        3.0
    """

    def __init__(self, fn: Callable[..., torch.Tensor], **options: Any) -> None:
        super().__init__()
        if not callable(fn) or inspect.isclass(fn):
            raise ConfigError(f"{fn!r} is not a loss function", fix="pass a function f(output, target) -> Tensor")
        self.name = callable_name(fn)
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):  # builtins without a signature: find out on the first call
            signature = None
        if signature is not None:
            try:
                signature.bind(None, None, **options)
            except TypeError as error:
                raise ConfigError(
                    f"loss function {self.name}{signature} cannot be called as f(output, target"
                    + "".join(f", {key}=..." for key in options)
                    + f"): {error}",
                    fix="make it take (output, target) positionally, and only the options it defines",
                ) from error
        self.fn = fn
        self.options = dict(options)
        self.accepts_soft_targets = getattr(fn, "accepts_soft_targets", None) is True

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _check_result(self.fn(output, target, **self.options), self.name)

    def extra_repr(self) -> str:
        return ", ".join([f"fn={self.name}"] + [f"{key}={value!r}" for key, value in self.options.items()])


class WeightedSumLoss(nn.Module):
    """``sum_i weight_i * loss_i(output, target)`` over named component losses.

    Every component sees the same ``(output, target)`` and must return a tensor of the same shape (normally a
    0-d tensor; combining ``reduction="none"`` components is allowed when their shapes agree). Soft targets are
    accepted only if every component accepts them.

    Args:
        components: ``(name, loss module, weight)`` triples; names are for ``repr`` and error messages, weights
            are finite and positive.

    Raises:
        ConfigError: There are no components, or a weight is not a positive finite number; (forward) components
            return tensors of different shapes.

    Examples:
        >>> from hubft.losses import CrossEntropyLoss, DiceLoss
        >>> loss = WeightedSumLoss([("cross_entropy", CrossEntropyLoss(), 1.0), ("dice", DiceLoss(), 0.5)])
        >>> loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 0])).shape
        torch.Size([])
    """

    def __init__(self, components: Sequence[tuple[str, nn.Module, float]]) -> None:
        super().__init__()
        if not components:
            raise ConfigError("a weighted loss needs at least one component", fix="e.g. {cross_entropy: 1.0}")
        self.names = tuple(name for name, _, _ in components)
        self.losses = nn.ModuleList(loss for _, loss, _ in components)
        self.weights = tuple(
            check_number(weight, f"weight of {name!r}", "weighted loss", low=0.0, low_inclusive=False)
            for name, _, weight in components
        )

    @property
    def accepts_soft_targets(self) -> bool:
        return all(accepts_soft_targets(loss) for loss in self.losses)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        first = ""
        for name, loss, weight in zip(self.names, self.losses, self.weights):
            value = _check_result(loss(output, target), name)
            if total is None:
                total, first = weight * value, name
            elif value.shape != total.shape:
                raise LossInputError(
                    f"weighted loss: component {name!r} returned shape {list(value.shape)} but {first!r} returned "
                    f"{list(total.shape)}, so they cannot be summed",
                    fix="give every component the same reduction (the default, 'mean', works for all)",
                )
            else:
                total = total + weight * value
        return total

    def extra_repr(self) -> str:
        return ", ".join(f"{name}: {weight:g}" for name, weight in zip(self.names, self.weights))
