"""The LR range test: sweep one multiplier over every parameter group, watch the loss, suggest an LR.

:func:`find_lr` multiplies every group's LR by the same factor at each step, from ``start`` to ``end``
(exponentially), so the ratios between groups (head vs body, layer decay) are those of the run; it calls a train
step at each LR, smooths the loss, stops once the loss diverges, and puts back everything the sweep changed. Two
suggestions are reported from the smoothed curve:

- **steepest**: where the loss falls fastest against log(LR);
- **valley**: the middle of the longest stretch over which the loss keeps falling (a longest decreasing run of the
  smoothed curve, in steps), a more conservative pick that is less fooled by noise at the ends.

The suggestions are LRs of the reference group (the one the config's ``optim.lr`` sets); every other group's
suggested LR keeps its ratio to it.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hubft.errors import ConfigError

__all__ = ["LRFindResult", "check_sweep", "find_lr", "steepest_lr", "valley_lr"]


@dataclass(frozen=True)
class LRFindResult:
    """The curve of an LR range test and what it suggests.

    Attributes:
        group_names: The parameter groups, in the optimizer's order.
        base_lrs: Each group's LR before the sweep; its LR at a step is ``base_lr * multiplier``.
        reference_lr: The reference group's LR before the sweep (``lr`` of the sweep = ``reference_lr * m``).
        lrs: The reference LR at each step taken.
        losses: The loss at each step (averaged over the processes by the train step).
        smoothed: The exponentially smoothed, bias-corrected loss at each step.
        steepest: The reference LR where the smoothed loss falls fastest, or None on a curve too short.
        valley: The reference LR in the middle of the longest falling stretch, or None on a curve too short.
        stopped_early: The loss diverged (or went non-finite) before ``end`` was reached.
    """

    group_names: tuple[str, ...]
    base_lrs: tuple[float, ...]
    reference_lr: float
    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed: tuple[float, ...]
    steepest: float | None
    valley: float | None
    stopped_early: bool

    def group_lrs(self, lr: float) -> dict[str, float]:
        """Every group's LR when the reference group's is ``lr`` (the ratios of the run)."""
        return {n: b * lr / self.reference_lr for n, b in zip(self.group_names, self.base_lrs)}

    def write_csv(self, path: str | Path) -> Path:
        """One row per step: step, reference LR, every group's LR, loss, smoothed loss."""
        from hubft.files import atomic_write_text

        header = ["step", "lr", *(f"lr[{n}]" for n in self.group_names), "loss", "smoothed_loss"]
        rows = [",".join(header)]
        for i, (lr, loss, smooth) in enumerate(zip(self.lrs, self.losses, self.smoothed)):
            groups = [repr(v) for v in self.group_lrs(lr).values()]
            rows.append(",".join([str(i), repr(lr), *groups, repr(loss), repr(smooth)]))
        atomic_write_text(path, "\n".join(rows) + "\n")
        return Path(path)

    def plot(self, path: str | Path) -> Path | None:
        """Loss against each group's LR (log scale), with the suggestions marked; None without matplotlib."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, base in zip(self.group_names, self.base_lrs):
            ax.plot([lr * base / self.reference_lr for lr in self.lrs], self.smoothed, lw=1, label=name)
        for label, lr, style in (("steepest", self.steepest, "--"), ("valley", self.valley, ":")):
            if lr is not None:
                ax.axvline(lr, color="k", ls=style, lw=1, label=f"{label} {lr:.2g} (reference group)")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate of each group")
        ax.set_ylabel("smoothed training loss")
        ax.set_title("LR range test")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return Path(path)


def find_lr(
    optimizer: torch.optim.Optimizer,
    train_step: Callable[[], float],
    *,
    reference_lr: float | None = None,
    start: float = 1e-7,
    end: float = 10.0,
    num_steps: int = 100,
    smoothing: float = 0.98,
    diverge: float = 4.0,
    model: torch.nn.Module | None = None,
    schedule: Any = None,
    group_names: Sequence[str] | None = None,
) -> LRFindResult:
    """Run an LR range test and put everything back as it was.

    At step ``i`` the reference LR is ``start * (end / start) ** (i / (num_steps - 1))``; every group's LR is its
    own LR (its ``initial_lr`` when a schedule set one, else its ``lr``) times ``lr / reference_lr``. ``train_step()`` makes one optimizer update at those LRs and
    returns its loss (with several processes, the mean over them, so that every process decides alike). The
    sweep stops once the smoothed loss exceeds ``diverge`` times its lowest value, or the loss is not finite.

    Afterwards the optimizer's state and LRs, ``model``'s parameters, buffers (BatchNorm statistics) and
    gradients, ``schedule``'s state (a :class:`~hubft.optim.Schedule` counts the sweep's updates otherwise) and
    the global RNG states of torch, NumPy and Python are exactly what they were before.

    Args:
        optimizer: The optimizer ``train_step`` steps.
        train_step: Makes one update and returns its loss.
        reference_lr: The LR that ``start`` / ``end`` and the suggestions refer to; default: the first group's.
        start: The first reference LR.
        end: The last reference LR.
        num_steps: Steps of the sweep (at most).
        smoothing: Weight of the running average of the loss (bias-corrected), in [0, 1).
        diverge: Stop once the smoothed loss is this many times its lowest.
        model: The model to restore afterwards.
        schedule: A schedule built on ``optimizer``, to restore afterwards.
        group_names: Names of the groups (default: their ``name`` keys, else ``group_<i>``).

    Returns:
        The curve and the suggestions.

    Raises:
        ConfigError: ``start`` / ``end`` / ``num_steps`` / ``smoothing`` / ``diverge`` out of range.

    Examples:
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(3.0)
        >>> opt = torch.optim.SGD(model.parameters(), lr=1.0)
        >>> def step():  # loss w^2: converges below lr 1 and diverges above it
        ...     opt.zero_grad(); loss = model.weight.pow(2).sum(); loss.backward(); opt.step(); return loss.item()
        >>> result = find_lr(opt, step, start=1e-3, end=10, num_steps=40, model=model)
        >>> model.weight.item(), result.stopped_early, 0.01 < result.valley < 1
        (3.0, True, True)
    """
    check_sweep(start, end, num_steps, smoothing, diverge)
    groups = optimizer.param_groups
    # A schedule may have moved "lr" (warmup); torch schedulers keep each group's own LR in "initial_lr".
    base = tuple(float(g.get("initial_lr", g["lr"])) for g in groups)
    reference = float(reference_lr) if reference_lr is not None else base[0]
    names = tuple(group_names or (g.get("name", f"group_{i}") for i, g in enumerate(groups)))
    saved = _Snapshot(optimizer, model, schedule)
    lrs, losses, smoothed = [], [], []
    stopped, average, lowest = False, 0.0, math.inf
    try:
        for i in range(num_steps):
            lr = start * (end / start) ** (i / max(1, num_steps - 1))
            for group, b in zip(groups, base):
                group["lr"] = b * lr / reference
            loss = float(train_step())
            if not math.isfinite(loss):
                stopped = True
                break
            average = smoothing * average + (1 - smoothing) * loss
            smooth = average / (1 - smoothing ** (i + 1))
            lrs.append(lr)
            losses.append(loss)
            smoothed.append(smooth)
            lowest = min(lowest, smooth)
            if smooth > diverge * lowest:
                stopped = True
                break
    finally:
        saved.restore()
    return LRFindResult(names, base, reference, tuple(lrs), tuple(losses), tuple(smoothed),
                        steepest_lr(lrs, smoothed), valley_lr(lrs, smoothed), stopped)


def steepest_lr(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """The LR where ``losses`` falls fastest against log(LR), leaving out the first tenth of the curve (where the
    smoothing has not settled) and its last two points; None with fewer than 5 points.

    Examples:
        >>> steepest_lr([1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0], [2.0, 1.9, 1.2, 0.6, 0.5, 3.0])
        0.01
    """
    n = len(losses)
    if n < 5:
        return None
    slopes = np.gradient(np.asarray(losses, dtype=np.float64), np.log(np.asarray(lrs, dtype=np.float64)))
    first, last = n // 10, n - 2
    return float(lrs[first + int(np.argmin(slopes[first:last]))])


def valley_lr(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """The LR in the middle (in steps) of the longest falling stretch of ``losses``: the span of a longest strictly
    decreasing subsequence, which skips over single bumps of noise; None with fewer than 5 points.

    Examples:
        >>> valley_lr([1, 2, 3, 4, 5, 6, 7, 8], [5.0, 4.0, 4.5, 3.0, 2.0, 1.0, 6.0, 9.0])  # 5, 4, 3, 2, 1: steps 0-5
        3.0
    """
    n = len(losses)
    if n < 5:
        return None
    # length[i]: the longest strictly decreasing subsequence ending at i; begin[i]: where that one begins.
    length, begin = [1] * n, list(range(n))
    for i in range(n):
        for j in range(i):
            if losses[j] > losses[i] and length[j] + 1 > length[i]:
                length[i], begin[i] = length[j] + 1, begin[j]
    end = max(range(n), key=lambda i: (length[i], -i))
    return float(lrs[(begin[end] + end) // 2])


class _Snapshot:
    """What a sweep changes, kept so it can be put back exactly."""

    def __init__(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module | None, schedule: Any) -> None:
        self.optimizer, self.model, self.schedule = optimizer, model, schedule
        self.optimizer_state = copy.deepcopy(optimizer.state_dict())
        self.model_state = copy.deepcopy(model.state_dict()) if model is not None else None
        self.grads = [p.grad.detach().clone() if p.grad is not None else None for p in model.parameters()] \
            if model is not None else None
        self.schedule_state = copy.deepcopy(schedule.state_dict()) if schedule is not None else None
        self.rng = (torch.get_rng_state(), np.random.get_state(), random.getstate(),
                    torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)

    def restore(self) -> None:
        self.optimizer.load_state_dict(self.optimizer_state)
        if self.model is not None:
            self.model.load_state_dict(self.model_state)
            for p, grad in zip(self.model.parameters(), self.grads):
                p.grad = grad
        if self.schedule is not None:
            self.schedule.load_state_dict(self.schedule_state)
        torch.set_rng_state(self.rng[0])
        np.random.set_state(self.rng[1])
        random.setstate(self.rng[2])
        if self.rng[3] is not None:
            torch.cuda.set_rng_state_all(self.rng[3])


def check_sweep(start: float, end: float, num_steps: int, smoothing: float = 0.98, diverge: float = 4.0) -> None:
    """Check the settings of an LR range test (see :func:`find_lr`).

    Raises:
        ConfigError: Naming the setting out of range.
    """

    def need(ok: bool, what: str, fix: str) -> None:
        if not ok:
            raise ConfigError(f"LR range test: {what}", fix=fix)

    need(isinstance(start, (int, float)) and isinstance(end, (int, float)) and 0 < start < end,
         f"start={start!r} and end={end!r} must be numbers with 0 < start < end", "e.g. start 1e-7, end 10")
    need(isinstance(num_steps, int) and not isinstance(num_steps, bool) and num_steps >= 5,
         f"num_steps={num_steps!r} must be an integer >= 5", "e.g. num_steps 100")
    need(isinstance(smoothing, (int, float)) and 0 <= smoothing < 1, f"smoothing={smoothing!r} must be in [0, 1)",
         "e.g. smoothing 0.98")
    need(isinstance(diverge, (int, float)) and diverge > 1, f"diverge={diverge!r} must be > 1", "e.g. diverge 4")
