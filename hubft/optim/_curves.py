"""See the learning rates before training: every group's LR at every update, as numbers, a PNG and a CSV."""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hubft.errors import ConfigError
from hubft.optim._optimizers import create_optimizer
from hubft.optim._param_groups import param_groups
from hubft.optim._schedule import ScheduleSpec, create_scheduler
from hubft.optim._schedulers import get_scheduler_info, list_schedulers

# Curves step schedulers without ever calling optimizer.step(), which is what torch's warning is about.
_STEP_ORDER_WARNING = r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`"
PLATEAU_METRIC = 1.0


def lr_curve(
    model_or_groups: nn.Module | Iterable[Mapping[str, Any]],
    *,
    schedule: ScheduleSpec = "cosine",
    total_updates: int,
    updates_per_epoch: int,
    warmup_steps: int = 0,
    lr: float = 1e-3,
    head_lr: float | None = None,
    layer_decay: float | None = None,
    weight_decay: float = 0.05,
    optimizer: str = "adamw",
    **schedule_kwargs: Any,
) -> dict[str, list[float]]:
    """Every group's LR at every optimizer update, with no data and no training.

    The groups come from :func:`param_groups` (frozen parameters included, so that groups a freeze schedule
    unfreezes later show too) or are given. The optimizer is built over stand-in tensors, one per group, so the
    model is never touched. The schedule is stepped as the trainer steps it: :meth:`Schedule.step_update` after
    each update and :meth:`Schedule.step_epoch` every ``updates_per_epoch`` updates. ``ReduceLROnPlateau`` is fed
    a constant metric, so its curve shows the reductions it makes when the metric never improves.

    Args:
        model_or_groups: A model, or group dicts with ``lr`` (and ideally ``name``).
        schedule: Anything :func:`create_scheduler` accepts as ``name``.
        total_updates: Optimizer updates in the run, warmup included.
        updates_per_epoch: Optimizer updates per epoch.
        warmup_steps: Warmup updates.
        lr: Base LR for a model (see :func:`param_groups`), or the default of groups without ``lr``.
        head_lr: Head LR for a model.
        layer_decay: Layer decay for a model.
        weight_decay: Weight decay for a model; it changes no LR, only which groups exist and their names.
        optimizer: Optimizer name (matters for CyclicLR / OneCycleLR momentum cycling).
        **schedule_kwargs: Passed to :func:`create_scheduler` (``interval``, ``warmup_start_factor``, torch's
            keyword arguments).

    Returns:
        Group name -> list of ``total_updates`` LRs; entry ``i`` is the LR used by update ``i + 1``.

    Raises:
        ConfigError: Bad counts, ``head_lr`` / ``layer_decay`` given with ready groups, duplicate group names,
            or anything :func:`create_scheduler` / :func:`create_optimizer` reject.

    Examples:
        >>> curves = lr_curve([{"name": "all", "lr": 0.1}], schedule="step", total_updates=6, updates_per_epoch=2,
        ...                   step_size=1, gamma=0.5)
        >>> curves["all"]
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    """
    for value, option in ((total_updates, "total_updates"), (updates_per_epoch, "updates_per_epoch")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{option}={value!r} is not an integer >= 1", fix=f"give {option} as a whole number")
    if isinstance(model_or_groups, nn.Module):
        groups = param_groups(model_or_groups, lr=lr, weight_decay=weight_decay, head_lr=head_lr,
                              layer_decay=layer_decay, include_frozen=True)
    elif head_lr is not None or layer_decay is not None:
        raise ConfigError("head_lr and layer_decay apply to a model, not to ready-made groups",
                          fix="pass the model, or bake the LRs into the groups")
    else:
        groups = list(model_or_groups)
    names = [str(g.get("name", f"group_{i}")) for i, g in enumerate(groups)]
    if len(set(names)) != len(names):
        raise ConfigError(f"group names {names} are not unique", fix="give every group its own 'name'")
    # Stand-in tensors: a curve depends only on each group's settings, and the real weights stay untouched.
    stand_ins = [{**g, "params": [torch.zeros(1, requires_grad=True)]} for g in groups]
    opt = create_optimizer(stand_ins, optimizer, lr=lr)
    curves: dict[str, list[float]] = {name: [] for name in names}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_STEP_ORDER_WARNING)
        sched = create_scheduler(opt, schedule, warmup_steps=warmup_steps, updates_per_epoch=updates_per_epoch,
                                 total_updates=total_updates, **schedule_kwargs)
        for update in range(1, total_updates + 1):
            for name, value in zip(names, sched.get_last_lr()):
                curves[name].append(value)
            sched.step_update(update)
            if update % updates_per_epoch == 0:
                sched.step_epoch(update // updates_per_epoch - 1, PLATEAU_METRIC if sched.needs_metric else None)
    return curves


def plot_lr_curves(
    curves: Mapping[str, Sequence[float]],
    png_path: str | Path,
    csv_path: str | Path | None = None,
    *,
    title: str | None = None,
) -> None:
    """Draw each group's curve into a PNG and, with ``csv_path``, write the numbers as CSV.

    Groups with identical curves (typically ``x.decay`` and ``x.no_decay``) share one line and one legend entry.
    The CSV has a ``step`` column (0-based update index) and one column per group, in the order of ``curves``.

    Raises:
        ConfigError: No curves, curves of different lengths, or matplotlib (the ``plots`` extra) is missing.
    """
    lengths = {len(values) for values in curves.values()}
    if not curves or len(lengths) != 1:
        raise ConfigError(f"need at least one curve, all of one length; got lengths {sorted(lengths)}",
                          fix="pass the output of lr_curve()")
    figure = _figure(figsize=(10, 4.5))
    axes = figure.subplots()
    lines: dict[tuple[float, ...], list[str]] = {}
    for name, values in curves.items():
        lines.setdefault(tuple(values), []).append(name)
    if len(lines) > 10:  # the default cycle repeats after 10 colours
        from matplotlib import colormaps

        axes.set_prop_cycle(color=colormaps["tab20"].colors)
    for values, names in lines.items():
        axes.plot(range(len(values)), values, label=", ".join(names), linewidth=1.2)
    axes.set_xlabel("optimizer update")
    axes.set_ylabel("learning rate")
    axes.set_title(title or "learning rate per parameter group")
    axes.grid(alpha=0.3)
    # Outside the axes: with many groups an inside legend hides the curves.
    axes.legend(fontsize="small" if len(lines) <= 10 else "x-small", ncol=1 + len(lines) // 24,
                loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(figure, png_path)
    if csv_path is not None:
        Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["step", *curves])
            writer.writerows([step, *row] for step, row in enumerate(zip(*curves.values())))


def plot_all_schedules(
    png_path: str | Path,
    *,
    total_updates: int = 3000,
    updates_per_epoch: int = 100,
    warmup_steps: int = 0,
) -> list[str]:
    """Draw every registered schedule with its defaults, one panel each, for a single group with LR 1.

    Returns:
        The schedule names, in panel order.

    Raises:
        ConfigError: matplotlib is missing, or a registered schedule cannot be built from its defaults.
    """
    names = list_schedulers()
    columns = 4
    rows = math.ceil(len(names) / columns)
    # Fixed spacing: constrained layout would double the drawing time of a 25-panel grid.
    figure = _figure(figsize=(3.6 * columns, 2.2 * rows), layout=None)
    figure.subplots_adjust(left=0.04, right=0.99, bottom=0.03, top=1 - 0.5 / rows, hspace=0.45, wspace=0.2)
    for axes, name in zip(figure.subplots(rows, columns, squeeze=False).flat, names):
        curve = lr_curve([{"name": name, "lr": 1.0}], schedule=name, total_updates=total_updates,
                         updates_per_epoch=updates_per_epoch, warmup_steps=warmup_steps)[name]
        axes.plot(range(total_updates), curve, linewidth=1.2)
        axes.set_title(f"{name} (per {get_scheduler_info(name).interval})", fontsize="small")
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.tick_params(labelsize="x-small")
    for axes in figure.axes[len(names):]:
        axes.set_visible(False)
    figure.suptitle(f"LR schedules with their defaults: {total_updates} updates, {updates_per_epoch} per epoch, "
                    f"{warmup_steps} warmup")
    _save(figure, png_path, dpi=80)
    return names


def _figure(figsize: tuple[float, float], layout: str | None = "constrained") -> Any:
    """A matplotlib Figure on the Agg canvas: no pyplot, no GUI backend, no global state."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ConfigError("plotting LR curves needs matplotlib, which is not installed",
                          fix="pip install 'hubft[plots]'") from error
    figure = Figure(figsize=figsize, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | Path, dpi: int = 110) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
