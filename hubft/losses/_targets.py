"""Check the (output, target) pair a loss receives and bring targets to the form the loss computes with.

Target layouts, with ``output`` of shape ``[B, C, *S]`` (``*S``: optional spatial or sequence dims):

* class indices: an integer tensor ``[B, *S]`` holding values in ``[0, C)``;
* dense targets: a tensor of ``output``'s own shape (class probabilities, multi-hot labels, regression values).

Losses that compute with dense targets (dice, focal, bce, soft-target cross-entropy) one-hot encode class indices
along dim 1, so that any of them can replace cross-entropy in a classification loop without touching it. Anything
else raises :class:`LossInputError` saying what was expected and what arrived: torch would otherwise broadcast
``[B, 1]`` against ``[B]`` into ``[B, B]`` without a word, or fail deep inside a kernel.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from hubft.errors import ConfigError
from hubft.losses._checks import as_float


class LossInputError(ConfigError):
    """The tensors given to a loss do not fit its contract (shape, dtype or class range)."""


_RANGE_CHECKED_UPSTREAM = contextvars.ContextVar("hubft_class_range_checked_upstream", default=False)


@contextmanager
def class_range_checked_upstream() -> Iterator[None]:
    """Skip the class-range check of targets on an accelerator, inside this block.

    The check costs a host sync per call on a GPU (the device must finish the forward pass before the host can
    read the result), which stalls the host's lead over the device. hubft's training loop enters this block when
    its labels were already checked against the head's classes when the data was loaded. On CPU the check is
    cheap and always runs.

    Examples:
        >>> with class_range_checked_upstream():
        ...     pass
    """
    token = _RANGE_CHECKED_UPSTREAM.set(True)
    try:
        yield
    finally:
        _RANGE_CHECKED_UPSTREAM.reset(token)


def _describe(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)}"


def _index_shape(output: torch.Tensor) -> torch.Size:
    return output.shape[:1] + output.shape[2:]


def check_output(output: torch.Tensor, loss: str, *, min_ndim: int = 1) -> torch.Tensor:
    """Return ``output`` upcast to at least float32 after checking it is a floating tensor with ``min_ndim`` dims.

    Raises:
        LossInputError: ``output`` is not a floating-point tensor or has too few dims.
    """
    if not isinstance(output, torch.Tensor) or not output.is_floating_point():
        got = _describe(output) if isinstance(output, torch.Tensor) else type(output).__name__
        raise LossInputError(
            f"{loss}: expected a floating-point output tensor (logits or predictions); got {got}",
            fix="pass the model's raw output as the first argument and the targets as the second",
        )
    if output.ndim < min_ndim:
        layout = "[B, C, ...] (batch, classes, ...)" if min_ndim == 2 else f"at least {min_ndim} dims"
        raise LossInputError(
            f"{loss}: expected output of shape {layout}; got {_describe(output)}",
            fix="check the model's head: it should output one logit per class",
        )
    return as_float(output)


def _check_target_tensor(output: torch.Tensor, target: torch.Tensor, loss: str) -> None:
    if not isinstance(target, torch.Tensor) or target.is_complex():
        got = _describe(target) if isinstance(target, torch.Tensor) else type(target).__name__
        raise LossInputError(f"{loss}: expected a real-valued target tensor; got {got}", fix="pass targets as a tensor")
    if target.device != output.device:
        raise LossInputError(
            f"{loss}: the target is on {target.device} but the output is on {output.device}",
            fix="move the batch to the model's device (Accelerate's prepared DataLoader does this)",
        )


def _check_class_range(indices: torch.Tensor, num_classes: int, loss: str, ignore_index: int | None) -> None:
    # One host sync per call; on CUDA an out-of-range index would otherwise be a device-side assert that kills the
    # process without naming the value.
    if indices.device.type != "cpu" and _RANGE_CHECKED_UPSTREAM.get():
        return
    bad = (indices < 0) | (indices >= num_classes)
    if ignore_index is not None:
        bad &= indices != ignore_index
    if bool(bad.any()):
        raise LossInputError(
            f"{loss}: target holds class index {int(indices[bad][0])}, but the output has {num_classes} classes "
            f"(dim 1), so indices must be in [0, {num_classes - 1}]",
            fix="check the label mapping and the head's num_classes",
        )


def _layout_error(output: torch.Tensor, target: torch.Tensor, loss: str, expected: str, fix: str) -> LossInputError:
    return LossInputError(
        f"{loss}: expected {expected}; got target {_describe(target)} for output {_describe(output)}", fix=fix
    )


def _classes_expected(output: torch.Tensor) -> str:
    return (
        f"integer class indices of shape {list(_index_shape(output))} or dense targets (float probabilities or "
        f"multi-hot labels) of the output's shape {list(output.shape)}"
    )


def class_targets(
    output: torch.Tensor, target: torch.Tensor, loss: str, *, ignore_index: int | None = None
) -> torch.Tensor:
    """Return int64 class indices ``[B, *S]`` or float dense targets ``[B, C, *S]``, as ``target`` arrived.

    Args:
        output: Logits ``[B, C, *S]``, already checked by :func:`check_output`.
        target: Integer class indices ``[B, *S]`` or class probabilities of ``output``'s shape.
        loss: Name used in error messages.
        ignore_index: An index value exempt from the range check.

    Raises:
        LossInputError: The target fits neither layout, is a float tensor of the index layout, or holds an index
            outside ``[0, C)``.
    """
    _check_target_tensor(output, target, loss)
    if target.shape == output.shape and output.ndim >= 2:
        return target.to(output.dtype)
    if target.shape == _index_shape(output):
        if target.is_floating_point():
            raise _layout_error(
                output,
                target,
                loss,
                f"{_classes_expected(output)}; class indices must be integers",
                fix="convert class indices with target.long(), or give probabilities shaped like the output",
            )
        indices = target.long()
        _check_class_range(indices, output.shape[1], loss, ignore_index)
        return indices
    raise _layout_error(
        output,
        target,
        loss,
        _classes_expected(output),
        fix="check that the head's outputs (dim 1: classes) and the labels belong to the same task",
    )


def one_hot_targets(output: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Like :func:`class_targets`, but class indices come back one-hot encoded along dim 1 in ``output``'s dtype."""
    target = class_targets(output, target, loss)
    if target.is_floating_point():
        return target
    return F.one_hot(target, output.shape[1]).movedim(-1, 1).to(output.dtype)


def multilabel_targets(output: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Dense targets of ``output``'s shape for independent per-class sigmoids; class indices are one-hot encoded."""
    if output.ndim < 2:
        return dense_targets(output, target, loss)
    return one_hot_targets(output, target, loss)


def binary_targets(output: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Return 0/1 (or soft) targets of ``output``'s shape for a binary (one-logit-per-element) loss.

    ``target`` has ``output``'s shape, or lacks its singleton channel dim (output ``[B, 1, *S]``, target
    ``[B, *S]``); integer and boolean targets are cast to ``output``'s dtype.

    Raises:
        LossInputError: The target has another shape.
    """
    _check_target_tensor(output, target, loss)
    if target.shape == output.shape:
        return target.to(output.dtype)
    if output.ndim >= 2 and output.shape[1] == 1 and target.shape == _index_shape(output):
        return target.unsqueeze(1).to(output.dtype)
    expected = f"binary targets of the output's shape {list(output.shape)}"
    if output.ndim >= 2 and output.shape[1] == 1:
        expected += f" or {list(_index_shape(output))}"
    elif output.ndim >= 2:
        expected += " (for class indices use mode='multiclass' or 'multilabel')"
    raise _layout_error(output, target, loss, expected, fix="reshape the target or check the head's output size")


def dense_targets(output: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Return ``target`` in ``output``'s dtype after checking the two have the same shape.

    Raises:
        LossInputError: The shapes differ (no broadcasting: ``[B, 1]`` against ``[B]`` is an error, not ``[B, B]``).
    """
    _check_target_tensor(output, target, loss)
    if target.shape != output.shape:
        raise _layout_error(
            output,
            target,
            loss,
            f"targets of the output's shape {list(output.shape)}",
            fix="reshape the target (e.g. target.view_as(output)) or check the head's output size",
        )
    return target.to(output.dtype)


def check_softmax_channels(output: torch.Tensor, loss: str) -> None:
    """Refuse a softmax over a single channel: it is the constant 1, so nothing would train.

    Raises:
        LossInputError: ``output`` has one channel along dim 1.
    """
    if output.ndim >= 2 and output.shape[1] == 1:
        raise LossInputError(
            f"{loss}: a softmax over the output's single channel (shape {list(output.shape)}) is always 1, so the "
            "loss could not train anything",
            fix="use mode='binary' (or 'auto') for a one-channel output, or give the head one channel per class",
        )


def ignored_positions(target: torch.Tensor, ignore_index: int | None, output: torch.Tensor) -> torch.Tensor | None:
    """The positions of class-index ``target`` (``[B, *S]``) that equal ``ignore_index``, or None when none can.

    Dense targets (the output's own shape) and ``ignore_index=None`` ignore nothing.
    """
    if ignore_index is None or not isinstance(target, torch.Tensor) or target.is_floating_point() \
            or target.shape != _index_shape(output):
        return None
    return target == ignore_index


def without_ignored(target: torch.Tensor, ignored: torch.Tensor | None) -> torch.Tensor:
    """``target`` with its ignored positions set to class 0 (they are masked out of the loss afterwards)."""
    return target if ignored is None else target.masked_fill(ignored, 0)
