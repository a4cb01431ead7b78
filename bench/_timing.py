"""Paired, interleaved timing: every number `make bench` prints is a ratio of two sides measured side by side.

Why this shape: the benchmark machine has 2 cores shared with other jobs, and a single repetition was seen to run
2-15x slow. Absolute times are therefore meaningless, but two measurements taken back to back see nearly the same
conditions. So one repetition runs every side once, the order alternating (forwards, then backwards) so that no
side always runs first or right after a given other; a line reports the median of the per-repetition ratios
(robust to the slow outliers) and their min-max (how noisy the run was).

Two more estimates go in each line's detail, to cross-check the headline on a loaded machine: the ratio of the
CPU time the process used (other jobs stretch wall time far more than the CPU time of the work itself), and the
ratio of each side's fastest repetition (contention only ever adds time, so the minimum is the least disturbed
run). The wall-clock median stays the headline: it is what a user waits for.
"""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Row:
    """One line of the results table: ``value`` is the median of ``pairs`` paired ratios in [low, high]."""

    bench: str
    metric: str
    case: str
    value: float
    low: float
    high: float
    pairs: int
    target: float | None = None  # the line passes when value >= target
    unit: str = "x"
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.target is None:
            return "info"
        return "ok" if self.value >= self.target else "MISSED"

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"status": self.status}


class Timings(dict):
    """Wall seconds per side (``timings[name]``, in round order) and CPU seconds in ``timings.cpu[name]``."""

    def __init__(self, names: list[str]) -> None:
        super().__init__({name: [] for name in names})
        self.cpu: dict[str, list[float]] = {name: [] for name in names}


def interleave(
    sides: dict[str, Callable[[], Any]],
    reps: int,
    *,
    warmup: int = 1,
    before: Callable[[str, int], Any] | None = None,
) -> Timings:
    """Run each side ``warmup`` times untimed, then ``reps`` timed rounds of every side, alternating the order.

    ``before(name, rep)`` runs untimed before each call (fresh output folders, new file contents...); ``rep`` is
    negative during warm-up. Returns the seconds of every timed call, per side, in round order, so that entry ``i``
    of two sides is a pair.
    """
    names = list(sides)
    for w in range(warmup):
        for name in names:
            if before is not None:
                before(name, -1 - w)
            sides[name]()
    times = Timings(names)
    for rep in range(reps):
        for name in names if rep % 2 == 0 else reversed(names):
            if before is not None:
                before(name, rep)
            # A collection triggered inside one side would charge it for garbage the other side left behind.
            gc.collect()
            start, start_cpu = time.perf_counter(), time.process_time()
            sides[name]()
            times[name].append(time.perf_counter() - start)
            times.cpu[name].append(time.process_time() - start_cpu)
    return times


def paired(numerator: list[float], denominator: list[float]) -> tuple[float, float, float]:
    """Median, min and max of ``numerator[i] / denominator[i]``."""
    ratios = [n / d for n, d in zip(numerator, denominator, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def speed_row(times: Timings, fast: str, slow: str, **row: Any) -> Row:
    """A :class:`Row` for "how fast ``fast`` runs relative to ``slow``": the paired ratios ``t_slow / t_fast``.

    ``detail`` gets the CPU-time and best-time ratios and the seconds of both sides (context only: absolute times
    are not comparable between runs on a shared machine).
    """
    value, low, high = paired(times[slow], times[fast])
    detail = row.pop("detail", {})
    # A side that works in another process shows (almost) no CPU time in this one: no CPU-time ratio then.
    if min(times.cpu[slow]) > 0.1 * min(times[slow]) and min(times.cpu[fast]) > 0.1 * min(times[fast]):
        cpu = paired(times.cpu[slow], times.cpu[fast])
        detail["cpu_time_ratio"] = {"median": cpu[0], "min": cpu[1], "max": cpu[2]}
    detail |= {"best_time_ratio": min(times[slow]) / min(times[fast]),
               f"median_s[{fast}]": statistics.median(times[fast]), f"median_s[{slow}]": statistics.median(times[slow]),
               f"times_s[{fast}]": [round(t, 4) for t in times[fast]],
               f"times_s[{slow}]": [round(t, 4) for t in times[slow]]}
    return Row(value=value, low=low, high=high, pairs=len(times[fast]), detail=detail, **row)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Send stdout/stderr (progress bars, parameter-group tables) to /dev/null.

    The progress bar is still created and formatted, so hubft keeps paying for it as a user would; only the
    terminal write is dropped, which keeps the benchmark's own table readable.
    """
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield
