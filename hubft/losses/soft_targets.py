"""Whether a loss module is right for class-probability targets (mixup, cutmix, distillation)."""

from __future__ import annotations

from typing import Any

from torch import nn

from hubft.errors import ConfigError

# torch's own losses cannot carry the attribute; these two compute the right thing for probability targets.
_TORCH_SOFT_TARGET_LOSSES: tuple[type[nn.Module], ...] = (nn.CrossEntropyLoss, nn.BCEWithLogitsLoss)


def accepts_soft_targets(loss: Any) -> bool:
    """Say whether ``loss`` is correct for class-probability targets of the output's shape.

    The training loop asks this before turning on mixup / cutmix, and refuses a loss for which it is False.

    Precedence: an ``accepts_soft_targets`` attribute that is exactly ``True`` or ``False`` on the module (hubft's
    losses set it; a user class or function may set it too, and :class:`~hubft.losses.FunctionLoss` carries a
    function's attribute over); then torch's ``CrossEntropyLoss`` and ``BCEWithLogitsLoss``, which are True;
    anything else is False, because nothing says it handles probabilities.

    hubft's ``cross_entropy`` is True: torch's cross-entropy takes probability targets and computes
    ``-sum(t * log_softmax(x))``, exactly the soft-target cross-entropy. The regression losses are False: their
    targets are real values, not class probabilities.

    Args:
        loss: A loss module or function.

    Returns:
        True if ``loss`` declares (or is known) to handle soft targets.

    Examples:
        >>> from hubft.losses import create_loss
        >>> accepts_soft_targets(create_loss("soft_target_cross_entropy")), accepts_soft_targets(create_loss("mse"))
        (True, False)
    """
    declared = getattr(loss, "accepts_soft_targets", None)
    if isinstance(declared, bool):
        return declared
    return isinstance(loss, _TORCH_SOFT_TARGET_LOSSES)


def require_soft_targets(loss: Any, *, feature: str = "mixup/cutmix") -> None:
    """Raise unless :func:`accepts_soft_targets` is True for ``loss``; for the training loop to call before it
    turns on a feature that mixes labels into class probabilities.

    Args:
        loss: The loss module the run will train with.
        feature: What produces the soft targets, for the message.

    Raises:
        ConfigError: ``loss`` is not known to handle probability targets; the fix names
            ``soft_target_cross_entropy`` and ``bce``.
    """
    if not accepts_soft_targets(loss):
        raise ConfigError(
            f"{feature} turns labels into class probabilities, but the loss {type(loss).__name__} is not known to "
            "accept soft (probability) targets",
            fix="use loss 'soft_target_cross_entropy' (single-label) or 'bce' (multi-label), turn "
            f"{feature} off, or set accepts_soft_targets = True on your loss if it handles probabilities",
        )
