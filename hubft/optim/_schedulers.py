"""LR schedules by name: every torch scheduler verbatim, short aliases, and custom functions.

A schedule is a registry record naming a torch scheduler class, the interval it is stepped at and the defaults
hubft derives for it from the run length. Naming rules:

- Torch class names (``"StepLR"``, ``"CosineAnnealingLR"``, ...) take torch's keyword arguments and keep
  torch's defaults; hubft fills in only the arguments torch requires (``T_max``, ``step_size``, ``gamma``,
  ``max_lr``, ...), from the run length and each group's LR.
- Lower-case aliases (``"cosine"``, ``"linear"``, ``"step"``, ...) are the same classes with defaults that suit a
  fine-tune, e.g. ``"linear"`` decays from the LR to 0 over the run, ``"constant"`` / ``"none"`` keep it.

Derived defaults count in the schedule's interval: updates for ``interval="step"``, epochs for
``interval="epoch"``. The run length is ``total_updates - warmup_steps`` updates, or in epochs the number of epochs
that begin after warmup, ``ceil(total_updates / updates_per_epoch) - ceil(warmup_steps / updates_per_epoch)``:
the epochs at whose ends a per-epoch schedule steps (the rest of the epoch in which warmup ends belongs to the
first of them, see :class:`~hubft.optim.Schedule`). Absolute LRs that hubft derives
(``max_lr`` of OneCycleLR, ``base_lr`` / ``max_lr`` of CyclicLR) are per-group lists, so group ratios survive;
a single number given by the caller applies to every group, exactly as in torch.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch.optim import lr_scheduler as tls

from hubft.errors import ConfigError
from hubft.optim._kwargs import accepted_kwargs, check_kwargs
from hubft.registry import Registry

Interval = Literal["step", "epoch"]
INTERVALS: tuple[str, ...] = ("step", "epoch")


class LengthUnknown(Exception):
    """A default needed the run length, which the caller did not give (turned into a ConfigError)."""


@dataclass(frozen=True)
class ScheduleContext:
    """What a record's defaults are derived from.

    Attributes:
        base_lrs: Each optimizer group's LR when the schedule is created.
        total_updates: Optimizer updates in the whole run, warmup included, if known.
        warmup_steps: Warmup updates before the main schedule starts.
        updates_per_epoch: Optimizer updates per epoch, if known.
        interval: Unit of the main schedule's durations.
    """

    base_lrs: tuple[float, ...]
    total_updates: int | None
    warmup_steps: int
    updates_per_epoch: int | None
    interval: Interval

    @property
    def length(self) -> int:
        """Length of the main schedule (after warmup) in the interval's unit, at least 1: updates after warmup, or
        epochs that begin after warmup.

        Raises:
            LengthUnknown: ``total_updates`` (or, for epochs, ``updates_per_epoch``) was not given.
        """
        if self.total_updates is None:
            raise LengthUnknown("total_updates")
        # A warmup longer than a smoke-test run just means the run ends inside the warmup.
        if self.interval == "step":
            return max(1, self.total_updates - self.warmup_steps)
        if self.updates_per_epoch is None:
            raise LengthUnknown("updates_per_epoch")
        # Epochs that begin after warmup: a per-epoch schedule steps at the end of each of them and no other, so
        # the rest of the epoch in which warmup ends is no epoch of its own (counting it would leave e.g.
        # "exponential" short of 1% at the end of the run).
        epochs, warmup_epochs = (math.ceil(n / self.updates_per_epoch) for n in (self.total_updates, self.warmup_steps))
        return max(1, epochs - warmup_epochs)


Default = Callable[[ScheduleContext], Any]


@dataclass(frozen=True)
class SchedulerInfo:
    """One schedule that :func:`create_scheduler` can build by name.

    Attributes:
        name: Registry key (case-sensitive).
        scheduler_class: A torch ``LRScheduler`` subclass (``ReduceLROnPlateau`` included), called as
            ``scheduler_class(optimizer, **kwargs)``.
        interval: When the main schedule is stepped by default: ``"step"`` after every optimizer update,
            ``"epoch"`` at every epoch end. Durations in the kwargs count in this unit.
        description: One line for listings and plots.
        defaults: Keyword argument -> function of the :class:`ScheduleContext` giving its value when the caller
            did not pass it.
    """

    name: str
    scheduler_class: type
    interval: Interval
    description: str = ""
    defaults: Mapping[str, Default] = field(default_factory=dict)

    @property
    def needs_metric(self) -> bool:
        """Whether the schedule steps on a validation metric (``ReduceLROnPlateau``)."""
        return issubclass(self.scheduler_class, tls.ReduceLROnPlateau)

    def accepted_kwargs(self) -> tuple[str, ...] | None:
        """Keyword arguments of the class besides ``optimizer``; ``None`` if it takes ``**kwargs``.

        ``last_epoch`` is left out: a schedule resumes through ``state_dict()``.
        """
        return accepted_kwargs(self.scheduler_class, exclude=("last_epoch",))

    def resolve_kwargs(self, kwargs: Mapping[str, Any], context: ScheduleContext) -> dict[str, Any]:
        """The caller's kwargs completed with this record's derived defaults.

        Raises:
            ConfigError: A kwarg the class does not take, or a default that needs an unknown run length.
        """
        check_kwargs(kwargs, self.accepted_kwargs(), f"schedule {self.name!r} ({self.scheduler_class.__name__})")
        _check_scalar_types(self.scheduler_class, kwargs, self.name)
        resolved = dict(kwargs)
        for key, default in self.defaults.items():
            if key in resolved:
                continue
            try:
                resolved[key] = default(context)
            except LengthUnknown as missing:
                unit, needed = (("updates", "total_updates") if context.interval == "step"
                                else ("epochs", "total_updates and updates_per_epoch"))
                raise ConfigError(
                    f"schedule {self.name!r} needs {key!r}, derived from the run length, but {missing} was not given",
                    fix=f"pass {key}=... (in {unit}), or {needed}",
                ) from None
        return resolved


def _check_scalar_types(cls: type, kwargs: Mapping[str, Any], name: str) -> None:
    """Reject a string or bool where torch annotates a plain ``int`` / ``float``.

    Torch validates few scheduler arguments at construction; a ``gamma: "0.1"`` from YAML would otherwise only
    fail with a TypeError at the first epoch end.
    """
    kinds = {"int": (int,), "float": (int, float)}
    params = inspect.signature(cls.__init__).parameters
    for key, value in kwargs.items():
        annotation = params[key].annotation if key in params else None
        annotation = getattr(annotation, "__name__", annotation)
        if annotation in kinds and (isinstance(value, bool) or not isinstance(value, kinds[annotation])):
            article = "an" if annotation == "int" else "a"
            raise ConfigError(f"schedule {name!r}: {key}={value!r} is not {article} {annotation}",
                              fix=f"give {key} as a number")


_REGISTRY: Registry[SchedulerInfo] = Registry(
    "schedule", "list_schedulers", hint="or name a function or scheduler class as 'package.module:attr'")


def register_scheduler(info: SchedulerInfo, *, overwrite: bool = False) -> SchedulerInfo:
    """Add a schedule record so that :func:`create_scheduler` can build it by ``info.name``.

    Raises:
        ConfigError: The name is taken (and ``overwrite`` is false), the interval is not ``"step"`` / ``"epoch"``,
            or the class is not a torch LR scheduler.

    Examples:
        >>> from torch.optim.lr_scheduler import ExponentialLR
        >>> _ = register_scheduler(SchedulerInfo("halving", ExponentialLR, "epoch", "halve every epoch",
        ...                                      {"gamma": lambda c: 0.5}))
    """
    if info.interval not in INTERVALS:
        raise ConfigError(f"schedule {info.name!r}: interval {info.interval!r} is not 'step' or 'epoch'",
                          fix="use interval='step' or 'epoch'")
    if not (isinstance(info.scheduler_class, type) and issubclass(info.scheduler_class, tls.LRScheduler)):
        raise ConfigError(f"schedule {info.name!r}: {info.scheduler_class!r} is not a torch LR scheduler class",
                          fix="register a torch.optim.lr_scheduler.LRScheduler subclass")
    return _REGISTRY.register(info, overwrite=overwrite)


def list_schedulers(pattern: str | None = None) -> list[str]:
    """Names of the registered schedules, sorted; ``pattern`` filters with shell wildcards, ignoring case."""
    return _REGISTRY.names(pattern)


def get_scheduler_info(name: str) -> SchedulerInfo:
    """The record that ``name`` denotes (looked up as :mod:`hubft.registry` says).

    Raises:
        ConfigError: Unknown name; the message lists the closest names.
    """
    return _REGISTRY.get(name)


# -- derived defaults -----------------------------------------------------------------------------------------------
# Closures rather than callable objects: torch's LambdaLR.state_dict skips plain functions but copies an object's
# __dict__, and these carry nothing worth saving.


def _length(c: ScheduleContext) -> int:
    return c.length


def _third(c: ScheduleContext) -> int:
    return max(1, c.length // 3)


def _to_one_percent(c: ScheduleContext) -> float:
    """Per-step factor that reaches 1% of the LR at the end of the run."""
    return 0.01 ** (1 / c.length)


def _step_decay(c: ScheduleContext) -> Callable[[int], float]:
    every = _third(c)

    def factor(t: int) -> float:
        return 0.1 ** (t // every)

    return factor


def _constant_factor(c: ScheduleContext) -> Callable[[int], float]:
    gamma = _to_one_percent(c)

    def factor(t: int) -> float:
        return gamma

    return factor


def _const(value: Any) -> Default:
    return lambda c: value


def _group_lrs(scale: float) -> Default:
    return lambda c: [lr * scale for lr in c.base_lrs]


_MILESTONES: Default = lambda c: sorted({max(1, c.length // 2), max(1, 3 * c.length // 4)})  # noqa: E731

_TORCH: Sequence[SchedulerInfo] = (
    SchedulerInfo("LambdaLR", tls.LambdaLR, "epoch", "base_lr * lr_lambda(t); default: 0.1 ** (t // (length/3))",
                  {"lr_lambda": _step_decay}),
    SchedulerInfo("MultiplicativeLR", tls.MultiplicativeLR, "epoch",
                  "lr *= lr_lambda(t) each step; default: a constant factor reaching 1% at the end",
                  {"lr_lambda": _constant_factor}),
    SchedulerInfo("StepLR", tls.StepLR, "epoch", "x gamma every step_size; default: 3 drops of 0.1 over the run",
                  {"step_size": _third}),
    SchedulerInfo("MultiStepLR", tls.MultiStepLR, "epoch", "x gamma at each milestone; default: at 1/2 and 3/4",
                  {"milestones": _MILESTONES}),
    SchedulerInfo("ExponentialLR", tls.ExponentialLR, "epoch", "x gamma each step; default: reaches 1% at the end",
                  {"gamma": _to_one_percent}),
    SchedulerInfo("CosineAnnealingLR", tls.CosineAnnealingLR, "step", "half cosine to eta_min over T_max",
                  {"T_max": _length}),
    SchedulerInfo("ReduceLROnPlateau", tls.ReduceLROnPlateau, "epoch",
                  "x factor after `patience` epochs without a better validation metric", {}),
    SchedulerInfo("CyclicLR", tls.CyclicLR, "step",
                  "triangle between base_lr and max_lr; default: each group's lr/10 .. lr, 4 cycles",
                  {"base_lr": _group_lrs(0.1), "max_lr": _group_lrs(1.0),
                   "step_size_up": lambda c: max(1, c.length // 8)}),
    SchedulerInfo("OneCycleLR", tls.OneCycleLR, "step",
                  "warm up to max_lr then anneal; default: max_lr = each group's lr, over the run",
                  {"max_lr": _group_lrs(1.0), "total_steps": _length}),
    SchedulerInfo("CosineAnnealingWarmRestarts", tls.CosineAnnealingWarmRestarts, "step",
                  "cosine restarting every T_0 (x T_mult); default: 4 cycles", {"T_0": lambda c: max(1, c.length // 4)}),
    SchedulerInfo("LinearLR", tls.LinearLR, "step", "linear start_factor -> end_factor over total_iters (torch's)"),
    SchedulerInfo("ConstantLR", tls.ConstantLR, "step", "x factor until total_iters, then 1 (torch's defaults)"),
    SchedulerInfo("PolynomialLR", tls.PolynomialLR, "step", "(1 - t/total_iters) ** power (torch's defaults)"),
)
TORCH_SCHEDULERS: tuple[str, ...] = tuple(info.name for info in _TORCH)

_KEEP = {"factor": _const(1.0), "total_iters": _const(0)}
_ALIASES: Mapping[str, tuple[str, str, Mapping[str, Default] | None]] = {
    # alias: (torch name, description, defaults replacing the torch record's; None keeps them)
    "cosine": ("CosineAnnealingLR", "half cosine from the LR to 0 over the run", None),
    "linear": ("LinearLR", "linear from the LR to 0 over the run",
               {"start_factor": _const(1.0), "end_factor": _const(0.0), "total_iters": _length}),
    "step": ("StepLR", "x0.1 three times over the run (epochs)", None),
    "multistep": ("MultiStepLR", "x0.1 at 1/2 and 3/4 of the run (epochs)", None),
    "exponential": ("ExponentialLR", "exponential decay to 1% over the run (epochs)", None),
    "plateau": ("ReduceLROnPlateau", "x0.1 when the validation metric stalls for 10 epochs", None),
    "onecycle": ("OneCycleLR", "one cycle peaking at each group's LR", None),
    "cyclic": ("CyclicLR", "4 triangles between LR/10 and the LR", None),
    "cosine_restarts": ("CosineAnnealingWarmRestarts", "cosine with 4 warm restarts", None),
    "poly": ("PolynomialLR", "polynomial (power 1) decay to 0 over the run", {"total_iters": _length}),
    "constant": ("ConstantLR", "the LR stays constant", _KEEP),
    "none": ("ConstantLR", "no schedule: the LR stays constant (warmup still applies)", _KEEP),
}


def _register_builtin() -> None:
    for info in _TORCH:
        register_scheduler(info)
    for alias, (target, description, defaults) in _ALIASES.items():
        base = get_scheduler_info(target)
        register_scheduler(dataclasses.replace(
            base, name=alias, description=description, defaults=base.defaults if defaults is None else defaults
        ))


_register_builtin()
