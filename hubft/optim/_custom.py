"""Custom schedules: a factor function, an ``adjust_learning_rate(optimizer, epoch)`` function, or either named by
a ``"package.module:attr"`` string; also a torch ``LRScheduler`` subclass named that way.

Both kinds of function become a ``LambdaLR`` factor, so they compose with warmup, keep per-group ratios and
resume like any other schedule. The kind is told by the number of required positional parameters: one (the step
or epoch) is a factor function, two (optimizer, epoch) is an adjust function.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.optim import lr_scheduler as tls

from hubft.errors import ConfigError
from hubft.optim._schedulers import SchedulerInfo
from hubft.registry import import_object

_KINDS_FIX = (
    "give f(t) -> factor, adjust_learning_rate(optimizer, epoch) that sets param_group['lr'], "
    "or an LRScheduler class (bind extra arguments with functools.partial)"
)


def custom_schedule(spec: str | Callable[..., Any], kwargs: Mapping[str, Any]) -> tuple[SchedulerInfo, dict]:
    """A one-off record (default interval ``"epoch"``) and the kwargs left for its class.

    Raises:
        ConfigError: The string cannot be imported, the object is neither kind of function nor a scheduler class,
            or ``reference_lr`` is given for something other than an adjust function.
    """
    obj = import_object(spec, what="schedule") if isinstance(spec, str) else spec
    label = spec if isinstance(spec, str) else getattr(obj, "__qualname__", type(obj).__name__)
    kwargs = dict(kwargs)
    if isinstance(obj, type) and issubclass(obj, tls.LRScheduler):
        return SchedulerInfo(label, obj, "epoch", f"custom scheduler {label}"), kwargs
    if not callable(obj):
        raise ConfigError(f"schedule {label!r} is a {type(obj).__name__}, not a function", fix=_KINDS_FIX)
    arity = _required_positional(obj, label)
    reference_lr = kwargs.pop("reference_lr", None)
    if arity == 2:
        lr_lambda, kind = factor_from_adjust_fn(obj, reference_lr, label), "adjust_learning_rate-style function"
    elif arity == 1 and reference_lr is None:
        lr_lambda, kind = obj, "factor function"
    elif arity == 1:
        raise ConfigError(f"schedule {label!r}: reference_lr only applies to adjust_learning_rate(optimizer, epoch) "
                          "functions; this one returns a factor", fix="drop reference_lr")
    else:
        raise ConfigError(f"schedule {label!r} takes {arity} required positional arguments, not 1 or 2",
                          fix=_KINDS_FIX)
    return SchedulerInfo(label, tls.LambdaLR, "epoch", f"custom {kind}", {"lr_lambda": lambda c: lr_lambda}), kwargs


def factor_from_adjust_fn(
    fn: Callable[[torch.optim.Optimizer, int], Any], reference_lr: float | None, label: str = "schedule"
) -> Callable[[int], float]:
    """Turn ``fn(optimizer, epoch)``, which sets ``param_group["lr"]`` itself, into a factor ``t -> lr / reference``.

    Such functions usually set every group to one absolute LR (``lr = args.lr * 0.1 ** (epoch // 30)``), which
    would erase the head / layer-decay ratios. So ``fn`` runs on a one-group shadow optimizer whose LR (and
    ``initial_lr``) is ``reference_lr`` before each call; the LR it leaves there, divided by ``reference_lr``, is
    the factor that each real group applies to its own LR.

    Args:
        fn: The adjust function; it must not depend on the LR it set at the previous call.
        reference_lr: The LR ``fn`` treats as its base (usually the config's ``lr``). ``None`` takes the LR that
            ``fn`` sets at ``t = 0``, which is right unless ``fn`` starts below its base (e.g. its own warmup).
        label: Name for error messages.

    Raises:
        ConfigError: ``reference_lr`` is not positive, or is ``None`` and ``fn`` sets a non-positive LR at 0.
    """
    shadow = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    group = shadow.param_groups[0]

    def lr_set_by_fn(t: int, lr: float) -> float:
        group["lr"] = group["initial_lr"] = lr
        fn(shadow, t)
        return float(group["lr"])

    if reference_lr is None:
        reference_lr = lr_set_by_fn(0, 1.0)
    if not (isinstance(reference_lr, (int, float)) and reference_lr > 0):
        raise ConfigError(f"schedule {label!r}: reference LR {reference_lr!r} is not > 0",
                          fix="pass reference_lr=<the base LR your function scales>")
    reference = float(reference_lr)

    def factor(t: int) -> float:
        return lr_set_by_fn(t, reference) / reference

    return factor


def _required_positional(fn: Callable[..., Any], label: str) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError) as error:
        raise ConfigError(f"cannot read the signature of schedule {label!r}: {error}", fix=_KINDS_FIX) from error
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in positional and p.default is inspect.Parameter.empty for p in params)
