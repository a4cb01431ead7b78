"""One fault-injection seam for the reliability tests.

``fault_point(name)`` is called at the moments where a crash would hurt most (between the writes of a checkpoint,
after an optimizer update). In production it costs one dict lookup. Tests set ``HUBFT_FAULT`` to
``"<name>[@<n>]:<action>"`` (comma-separated for several) to make the *n*-th hit of that point (1 by default)
kill the process (``kill``: SIGKILL, as a preempted machine would), raise ``OSError(ENOSPC)`` (``enospc``),
send the process a SIGTERM (``sigterm``), or raise :class:`FaultInjected` (``raise``, for in-process tests). Every hit of a named point also prints ``HUBFT_FAULT_POINT <name>`` when
``HUBFT_FAULT_TRACE=1``, so a test waits for a printed marker instead of sleeping.
"""

from __future__ import annotations

import errno
import os
import signal
import sys

__all__ = ["fault_point", "FaultInjected", "reset_fault_counts"]

_counts: dict[str, int] = {}


class FaultInjected(RuntimeError):
    """Raised at a fault point by the ``raise`` action."""


def reset_fault_counts() -> None:
    """Forget how often each point was hit (tests that run several trainings in one process)."""
    _counts.clear()


def _plan() -> dict[str, tuple[int, str]]:
    spec = os.environ.get("HUBFT_FAULT", "")
    plan = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        where, _, action = item.partition(":")
        name, _, nth = where.partition("@")
        plan[name] = (int(nth or 1), action or "kill")
    return plan


def fault_point(name: str) -> None:
    """Mark a point where tests may inject a fault; a no-op unless ``HUBFT_FAULT`` names it."""
    if os.environ.get("HUBFT_FAULT_TRACE") == "1":
        print(f"HUBFT_FAULT_POINT {name}", flush=True)
    plan = _plan() if "HUBFT_FAULT" in os.environ else None
    if not plan or name not in plan:
        return
    _counts[name] = _counts.get(name, 0) + 1
    nth, action = plan[name]
    if _counts[name] != nth:
        return
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
    else:
        raise ValueError(f"unknown fault action {action!r} in HUBFT_FAULT")
