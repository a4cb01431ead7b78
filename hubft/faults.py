"""One fault-injection seam for the reliability tests.

``fault_point(name)`` is called at the moments where a crash would hurt most (between the writes of a checkpoint,
after an optimizer update, after a backward pass). In production it costs one environment lookup and does nothing.

Tests set ``HUBFT_FAULT`` to ``"<name>[@<n>][:<action>]"`` (comma-separated for several points) so that the *n*-th
hit of that point in this process (1 by default) does one of:

=========== ==========================================================================================
``kill``    SIGKILL this process (the default): a preempted machine, an OOM kill, a pulled plug
``sigterm`` send this process a SIGTERM, as a scheduler announcing preemption would
``enospc``  raise ``OSError(ENOSPC)``: the disk filled up during a write
``raise``   raise :class:`FaultInjected` (for in-process tests)
``nan``     make :func:`fault_point` return True, so that the caller poisons a value (loss, gradients)
=========== ==========================================================================================

``HUBFT_FAULT_RANK=<r>`` restricts the plan to the process of that rank (``RANK``, as torchrun sets it; 0 when
unset), e.g. to poison the loss on one of two processes. ``HUBFT_FAULT_TRACE=1`` prints ``HUBFT_FAULT_POINT
<name>`` at every hit, so a test can wait for a printed marker instead of sleeping.

The points, in the order a run meets them: ``after_backward`` (every micro-batch), ``after_optimizer_step`` (every
update), and per checkpoint ``checkpoint_start``, ``checkpoint_after_weights``, ``checkpoint_after_optimizer``,
``checkpoint_after_accelerate_state`` (RNG states written), ``checkpoint_after_train_state``,
``checkpoint_before_manifest``, ``checkpoint_before_rename``, ``checkpoint_replacing`` (only when a checkpoint of
the same step is rewritten: the old copy moved aside, the new one not yet renamed), ``checkpoint_after_rename``,
``checkpoint_after_prune``; ``epoch_end`` (after evaluation, before the epoch's checkpoint); ``before_save`` (before
the final outputs are written); in ``hubft push``, ``push_after_upload`` (the files are uploaded, the commit that
would make them the branch's is not made yet). The poisonable points are ``loss`` and ``gradients``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["fault_point", "FaultInjected", "reset_fault_counts", "fault_point_after", "fault_points_after_writes"]

ACTIONS = ("kill", "sigterm", "enospc", "raise", "nan")

_counts: dict[str, int] = {}


class FaultInjected(RuntimeError):
    """Raised at a fault point by the ``raise`` action."""


def reset_fault_counts() -> None:
    """Forget how often each point was hit (tests that run several trainings in one process)."""
    _counts.clear()


def _active() -> bool:
    return "HUBFT_FAULT" in os.environ or os.environ.get("HUBFT_FAULT_TRACE") == "1"


def _plan() -> dict[str, tuple[int, str]]:
    rank = os.environ.get("HUBFT_FAULT_RANK")
    if rank is not None and rank != os.environ.get("RANK", "0"):
        return {}
    plan = {}
    for item in filter(None, (s.strip() for s in os.environ.get("HUBFT_FAULT", "").split(","))):
        where, _, action = item.partition(":")
        name, _, nth = where.partition("@")
        action = action or "kill"
        if action not in ACTIONS:
            raise ValueError(f"unknown fault action {action!r} in HUBFT_FAULT; use one of {', '.join(ACTIONS)}")
        plan[name] = (int(nth or 1), action)
    return plan


def fault_point(name: str) -> bool:
    """Mark a point where tests may inject a fault; a no-op unless ``HUBFT_FAULT`` names it.

    Returns:
        True only when the ``nan`` action fires here: the caller then poisons the value the point guards.

    Raises:
        FaultInjected: The ``raise`` action fired.
        OSError: The ``enospc`` action fired (``errno.ENOSPC``).
    """
    if os.environ.get("HUBFT_FAULT_TRACE") == "1":
        print(f"HUBFT_FAULT_POINT {name}", flush=True)
    if "HUBFT_FAULT" not in os.environ:
        return False
    plan = _plan()
    if name not in plan:
        return False
    _counts[name] = _counts.get(name, 0) + 1
    nth, action = plan[name]
    if _counts[name] != nth:
        return False
    sys.stdout.flush()
    sys.stderr.flush()
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
    elif action == "raise":
        raise FaultInjected(f"fault injected at {name} (hit {nth})")
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + f" (injected at {name})")
    return action == "nan"


@contextlib.contextmanager
def fault_points_after_writes(module: Any, attr: str, point_for: Callable[[Path], str | None]) -> Iterator[None]:
    """While faults are planned or traced, call :func:`fault_point` after each file ``module.attr`` writes.

    ``module.attr`` is a ``save(obj, path, ...)`` function of a library that writes several files in one call
    (Accelerate's ``save_state``); wrapping it is the only way to reach the moments between those files.
    ``point_for(path)`` names the point for a written file (None: no point). Without ``HUBFT_FAULT`` or
    ``HUBFT_FAULT_TRACE`` nothing is wrapped, so production runs never touch the library.
    """
    original = getattr(module, attr, None)
    if original is None or not _active():
        yield
        return

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(obj, f, *args, **kwargs)
        name = point_for(Path(f)) if isinstance(f, (str, os.PathLike)) else None
        if name:
            fault_point(name)
        return result

    setattr(module, attr, save)
    try:
        yield
    finally:
        setattr(module, attr, original)


@contextlib.contextmanager
def fault_point_after(obj: Any, attr: str, name: str) -> Iterator[None]:
    """While faults are planned or traced, call :func:`fault_point` ``name`` after each call of ``obj.attr``.

    For a library call that does one step of several inside a larger one (huggingface_hub's LFS upload inside a
    commit): wrapping it is the only way to reach the moment after it. Without ``HUBFT_FAULT`` or
    ``HUBFT_FAULT_TRACE`` nothing is wrapped.
    """
    original = getattr(obj, attr, None)
    if original is None or not _active():
        yield
        return

    def call(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        fault_point(name)
        return result

    setattr(obj, attr, call)
    try:
        yield
    finally:
        setattr(obj, attr, original)
