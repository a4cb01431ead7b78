"""The schedule object the trainer steps: a torch scheduler behind an optional linear warmup.

Time is explicit. hubft's loop tells the schedule how many optimizer updates (and epochs) have completed
(:meth:`Schedule.step_update`, :meth:`Schedule.step_epoch`); the schedule never counts processes, micro-batches or
calls, so it gives the same LRs on 1 or N processes and with any gradient accumulation.

Code written for ``torch.optim.lr_scheduler`` (a plain loop, HF ``Trainer(optimizers=(opt, sched))``, Accelerate)
calls :meth:`Schedule.step` instead. It follows the optimizer: a hook on the optimizer counts its updates, and
``step()`` brings the schedule to that count. So it cannot be stepped twice for one update: a second call, or the
once-per-process calls of a schedule passed to ``accelerator.prepare``, find no new update and change nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from hubft.errors import CheckpointError, ConfigError
from hubft.optim._custom import custom_schedule
from hubft.optim._schedulers import INTERVALS, Interval, ScheduleContext, SchedulerInfo, get_scheduler_info

ScheduleSpec = str | Callable[..., Any] | None


class Schedule:
    """Linear warmup from ``warmup_start_factor`` over ``warmup_steps`` updates, then a torch scheduler.

    During warmup every group's LR is ``lr0 * (s + (1 - s) * u / warmup_steps)`` after ``u`` updates, where
    ``lr0`` is the LR the main scheduler starts at; from update ``warmup_steps`` on, the LRs are exactly the main
    scheduler's, shifted by ``warmup_steps`` updates. With no warmup the LRs are exactly those of the torch
    scheduler stepped by hand with the same arguments.

    Stepping, by ``interval``:
        - ``"step"``: the main scheduler steps in :meth:`step_update`, once per optimizer update after warmup.
        - ``"epoch"``: it steps in :meth:`step_epoch`, once per epoch that began after warmup had ended (so with
          a warmup of whole epochs the shift is exact; otherwise the first main epoch also covers the rest of the
          epoch in which warmup ended). ``ReduceLROnPlateau`` always steps here, on ``metric``.

    Code written for torch schedulers calls :meth:`step` instead, after each ``optimizer.step()`` (or each epoch):
    it follows the optimizer's update count, so it gives the same LRs and cannot be stepped twice for one update.

    Create it with :func:`create_scheduler`.

    Attributes:
        optimizer: The optimizer whose group LRs are set.
        main: The torch scheduler.
        name: The schedule's registry name (or a label of the custom function).
        interval: ``"step"`` or ``"epoch"``.
        kwargs: The keyword arguments the main scheduler was built with, derived defaults included.
        warmup_steps: Warmup length in updates.
        warmup_start_factor: Fraction of ``lr0`` at update 0.
        num_updates: Optimizer updates completed, as last told by :meth:`step_update`.
        num_epochs: Epochs completed, as last told by :meth:`step_epoch`.
        updates_per_epoch: Optimizer updates per epoch, when known: where :meth:`step` closes epochs.
        needs_metric: :meth:`step_epoch` needs a validation metric (``ReduceLROnPlateau``).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        info: SchedulerInfo,
        kwargs: dict[str, Any],
        *,
        interval: Interval,
        warmup_steps: int,
        warmup_start_factor: float,
        updates_per_epoch: int | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.name = info.name
        self.interval = interval
        self.kwargs = kwargs
        self.needs_metric = info.needs_metric
        self.warmup_steps = warmup_steps
        self.warmup_start_factor = warmup_start_factor
        self.num_updates = 0
        self.num_epochs = 0
        self.updates_per_epoch = updates_per_epoch
        self._epoch_began_at = 0  # num_updates when the current epoch began
        # Optimizer updates seen by the hook below, and the count at the last epoch step() closed: what step() follows.
        self._optimizer_steps = 0
        self._updates_at_epoch_step = 0
        self._step_count = 0  # torch schedulers' counter, which Accelerate's prepared scheduler increments
        optimizer.register_step_post_hook(self._count_optimizer_step)
        try:
            self.main = info.scheduler_class(optimizer, **kwargs)
        except (TypeError, ValueError, KeyError) as error:
            raise ConfigError(
                f"schedule {info.name!r} ({info.scheduler_class.__name__}) rejected {_short(kwargs)}: {error}",
                fix=f"check the values against torch.optim.lr_scheduler.{info.scheduler_class.__name__}",
            ) from error
        self._set_lrs()

    def step(self, metric: float | None = None) -> None:
        """Step like a torch scheduler: call it after ``optimizer.step()``, per update or per epoch.

        The schedule is brought to the number of updates the optimizer has made (counted by a hook on it), with the
        same LRs :meth:`step_update` gives for that count; an epoch-interval schedule also closes each epoch those
        updates complete (every ``updates_per_epoch`` updates, or, when that length was not given, one epoch per
        call that follows at least one update), feeding ``metric`` to a plateau schedule. A call that finds no new
        optimizer update changes nothing, so the schedule cannot be stepped twice for one update (a repeated call,
        or Accelerate's prepared scheduler calling it once per process).

        Raises:
            ConfigError: A plateau schedule closes an epoch without a ``metric``.
        """
        updates = max(self.num_updates, self._optimizer_steps)
        if self.interval == "step" or updates == self._updates_at_epoch_step:
            self.step_update(updates)
            return
        if self.updates_per_epoch:
            for end in range((self.num_epochs + 1) * self.updates_per_epoch, updates + 1, self.updates_per_epoch):
                self.step_update(end)
                self.step_epoch(self.num_epochs, metric)
        else:
            self.step_update(updates)
            self.step_epoch(self.num_epochs, metric)
        self.step_update(updates)
        self._updates_at_epoch_step = updates

    @property
    def last_epoch(self) -> int:
        """Steps taken in the schedule's interval, as torch schedulers count them: updates or epochs."""
        return self.num_updates if self.interval == "step" else self.num_epochs

    def get_lr(self) -> list[float]:
        """The current LR of every group (as :meth:`get_last_lr`; torch's ``get_lr`` computes the next one)."""
        return self.get_last_lr()

    def _count_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._optimizer_steps += 1

    def step_update(self, num_updates: int) -> None:
        """Advance to ``num_updates`` completed optimizer updates; call after every ``optimizer.step()``.

        Calling again with the same count does nothing; a larger jump replays the updates in between, so a fresh
        schedule can be brought to any point from the update count alone (except plateau state: use
        :meth:`load_state_dict` for that).

        Raises:
            ValueError: ``num_updates`` is lower than the count already reached.
        """
        if num_updates < self.num_updates:
            raise ValueError(f"schedule is at update {self.num_updates}; cannot go back to {num_updates}")
        while self.num_updates < num_updates:
            self.num_updates += 1
            if self.num_updates <= self.warmup_steps:
                self._set_lrs()
            elif self.interval == "step":
                self.main.step()

    def step_epoch(self, epoch: int, metric: float | None = None) -> None:
        """Record the end of epoch ``epoch`` (0 for the first); call once per epoch after :meth:`step_update`.

        Epoch-interval schedules step here; for ``ReduceLROnPlateau`` ``metric`` is the validation value
        (lower is better unless the schedule was built with ``mode="max"``). Other schedules ignore ``metric``.
        Calling again for the same epoch does nothing.

        Raises:
            ConfigError: The schedule needs a metric and ``metric`` is None.
        """
        if self.needs_metric and metric is None:
            raise ConfigError(f"schedule {self.name!r} steps on a validation metric, but none was given",
                              fix="evaluate every epoch, or pick a schedule without a metric")
        while self.num_epochs < epoch + 1:
            self.num_epochs += 1
            began_after_warmup = self._epoch_began_at >= self.warmup_steps
            self._epoch_began_at = self.num_updates
            if not began_after_warmup or self.interval != "epoch":
                continue
            self.main.step(float(metric)) if self.needs_metric else self.main.step()

    def get_last_lr(self) -> list[float]:
        """The current LR of every group (what the next optimizer update will use)."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Counters, warmup and the main scheduler's state: plain Python values (safe for
        ``torch.load(weights_only=True)`` as long as a custom factor function is a plain function)."""
        return {
            "name": self.name,
            "interval": self.interval,
            "warmup_steps": self.warmup_steps,
            "warmup_start_factor": self.warmup_start_factor,
            "num_updates": self.num_updates,
            "num_epochs": self.num_epochs,
            "epoch_began_at": self._epoch_began_at,
            "optimizer_steps": self._optimizer_steps,
            "updates_at_epoch_step": self._updates_at_epoch_step,
            "groups": len(self.optimizer.param_groups),
            "main": self.main.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a schedule saved by :meth:`state_dict`, on a fresh optimizer or one whose state was loaded.

        The group LRs are set from the saved state, so the next update uses exactly the LR it would have used.

        Raises:
            CheckpointError: The state belongs to a different schedule (name, interval, warmup or group count).
        """
        keys = ("name", "interval", "warmup_steps", "groups")
        mine = dict(zip(keys, (self.name, self.interval, self.warmup_steps, len(self.optimizer.param_groups))))
        theirs = {k: state.get(k) for k in keys}
        if mine != theirs:
            raise CheckpointError(f"the saved schedule {theirs} does not match this run's {mine}",
                                  fix="resume with the schedule settings the checkpoint was written with")
        self.warmup_start_factor = state["warmup_start_factor"]
        self.num_updates, self.num_epochs = state["num_updates"], state["num_epochs"]
        self._epoch_began_at = state["epoch_began_at"]
        # Written before step() existed: the optimizer had made exactly the updates the schedule counted.
        self._optimizer_steps = state.get("optimizer_steps", self.num_updates)
        self._updates_at_epoch_step = state.get("updates_at_epoch_step", self._epoch_began_at)
        self.main.load_state_dict(state["main"])
        self._set_lrs()

    def _set_lrs(self) -> None:
        """Write the LRs for the current update count into the groups.

        After warmup these are the main scheduler's own last values, exactly: its recursive (chainable) formulas
        read the groups' LRs back at its next step.
        """
        lrs = self.main.get_last_lr()
        if self.num_updates < self.warmup_steps:
            s = self.warmup_start_factor
            factor = s + (1 - s) * self.num_updates / self.warmup_steps
            lrs = [lr * factor for lr in lrs]
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr

    def __repr__(self) -> str:
        return (f"Schedule({self.name!r}, interval={self.interval!r}, warmup_steps={self.warmup_steps}, "
                f"num_updates={self.num_updates}, kwargs={_short(self.kwargs)})")


def create_scheduler(
    optimizer: torch.optim.Optimizer,
    name: ScheduleSpec = "cosine",
    *,
    warmup_steps: int = 0,
    warmup_start_factor: float = 0.01,
    updates_per_epoch: int | None = None,
    total_updates: int | None = None,
    interval: Interval | None = None,
    **kwargs: Any,
) -> Schedule:
    """Build a :class:`Schedule` for ``optimizer`` from a name, a function or a ``"module:attr"`` string.

    Args:
        optimizer: A torch optimizer (the unwrapped one under Accelerate); its groups' current LRs are the bases.
        name: A name from :func:`list_schedulers` (torch class names verbatim, aliases, ``"none"``; ``None`` means
            ``"none"``); a factor function ``f(t) -> float`` (LambdaLR semantics); an
            ``adjust_learning_rate(optimizer, epoch)`` function that sets ``param_group["lr"]`` (hubft keeps the
            groups' ratios, see :func:`~hubft.optim._custom.factor_from_adjust_fn`; ``reference_lr=`` may be
            passed in ``kwargs``); an ``LRScheduler`` subclass; or a ``"package.module:attr"`` string naming one.
            Functions and classes default to ``interval="epoch"``.
        warmup_steps: Updates of linear warmup before the main schedule (0 for none).
        warmup_start_factor: Warmup starts at this fraction of each group's starting LR, in ``[0, 1]``.
        updates_per_epoch: Optimizer updates per epoch on each process; needed to derive epoch-unit defaults.
        total_updates: Optimizer updates in the whole run, warmup included; needed to derive defaults.
        interval: ``"step"`` or ``"epoch"``; overrides the record's. Durations in ``kwargs`` and the derived
            defaults count in this unit.
        **kwargs: The torch scheduler's own keyword arguments.

    Returns:
        The schedule, already applied to the optimizer's groups (they hold the LRs for the first update).

    Raises:
        ConfigError: Unknown name (with close matches), a keyword the scheduler does not take (naming the ones
            it does), a bad interval or warmup, a default that needs ``total_updates`` / ``updates_per_epoch``,
            ``ReduceLROnPlateau`` with ``interval="step"``, or values torch rejects.

    Examples:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> sched = create_scheduler(opt, "StepLR", step_size=30, gamma=0.1, warmup_steps=5)
        >>> sched.interval, sched.get_last_lr()
        ('epoch', [0.001])
    """
    if name is None:
        name = "none"
    if isinstance(name, str) and ":" not in name:
        info, kwargs = get_scheduler_info(name), dict(kwargs)
    else:
        info, kwargs = custom_schedule(name, kwargs)
    interval = info.interval if interval is None else interval
    if interval not in INTERVALS:
        raise ConfigError(f"interval={interval!r} is not 'step' or 'epoch'", fix="use interval='step' or 'epoch'")
    if info.needs_metric and interval != "epoch":
        raise ConfigError(f"schedule {info.name!r} steps on a validation metric, so only at epoch ends",
                          fix="use interval='epoch' (or leave it unset)")
    _check_count(warmup_steps, "warmup_steps", minimum=0)
    for value, option in ((updates_per_epoch, "updates_per_epoch"), (total_updates, "total_updates")):
        if value is not None:
            _check_count(value, option, minimum=1)
    if not (isinstance(warmup_start_factor, (int, float)) and 0 <= warmup_start_factor <= 1):
        raise ConfigError(f"warmup_start_factor={warmup_start_factor!r} is not in [0, 1]",
                          fix="use e.g. warmup_start_factor=0.01")
    context = ScheduleContext(
        base_lrs=tuple(float(g["lr"]) for g in optimizer.param_groups),
        total_updates=total_updates,
        warmup_steps=warmup_steps,
        updates_per_epoch=updates_per_epoch,
        interval=interval,
    )
    return Schedule(optimizer, info, info.resolve_kwargs(kwargs, context), interval=interval,
                    warmup_steps=warmup_steps, warmup_start_factor=float(warmup_start_factor),
                    updates_per_epoch=updates_per_epoch)


def _check_count(value: Any, option: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{option}={value!r} is not an integer >= {minimum}", fix=f"give {option} as a whole number")


def _short(kwargs: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        return getattr(v, "__qualname__", None) or repr(v) if callable(v) else repr(v)

    return "{" + ", ".join(f"{k}={show(v)}" for k, v in kwargs.items()) + "}"

