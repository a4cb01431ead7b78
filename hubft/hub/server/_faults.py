"""Fault injection: make chosen requests fail the way a real Hub or network sometimes does.

A :class:`FaultPlan` says how often (``rate``), how (``kinds``, see :func:`list_fault_kinds`), and where
(``targets``: endpoint names, see ``LocalHub.endpoint_names()``) requests fail. Decisions are deterministic given
the seed: the ``n``-th arrival of a given request (method and path) is decided from ``(seed, method, path, n)``
alone, so thread interleaving between *different* requests never changes which ones fail. ``max_per_request`` caps
how many times in a row one request fails, which bounds the client's retries (each costs it 1-8 s of backoff).
"""

from __future__ import annotations

import difflib
import random
import threading
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from hubft.errors import ConfigError


@dataclass(frozen=True)
class FaultKind:
    """One way of failing.

    Attributes:
        name: What plans call it.
        status: The HTTP status answered, or ``None`` to close the connection without answering.
        description: What the client sees.
        after: Whether the request is carried out before the connection is closed (the change lands, the answer is
            lost), rather than refused before the endpoint runs.
    """

    name: str
    status: int | None
    description: str
    after: bool = False


_FAULT_KINDS = {
    kind.name: kind
    for kind in (
        FaultKind("429", 429, "429 Too Many Requests with Retry-After; retried by the client's backoff"),
        FaultKind("500", 500, "500 Internal Server Error; retried by the client's backoff"),
        FaultKind("502", 502, "502 Bad Gateway; retried by the client's backoff"),
        FaultKind("503", 503, "503 Service Unavailable with Retry-After; retried by the client's backoff"),
        FaultKind("504", 504, "504 Gateway Timeout; retried by the client's backoff"),
        FaultKind("drop", None, "the connection is closed without an answer, and the request is not carried out"),
        FaultKind("drop-after", None, "the request is carried out, then the connection is closed without an answer",
                  after=True),
    )
}


def list_fault_kinds() -> list[str]:
    """Names of the fault kinds a :class:`FaultPlan` accepts."""
    return sorted(_FAULT_KINDS)


def get_fault_kind(name: str) -> FaultKind:
    """The fault kind called ``name``.

    Raises:
        ConfigError: for an unknown name, listing close matches.
    """
    try:
        return _FAULT_KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown fault kind {name!r}", fix=_choose(name, _FAULT_KINDS)) from None


def _choose(name: str, valid: Collection[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"{hint}valid: {', '.join(sorted(valid))}"


@dataclass(frozen=True)
class FaultPlan:
    """Which requests fail, and how.

    Args:
        rate: Probability in [0, 1] that an eligible request fails.
        kinds: Fault kinds to pick from (uniformly, per failing request); see :func:`list_fault_kinds`.
        seed: Makes the choice reproducible; see the module docstring for what exactly is deterministic.
        retry_after: Seconds sent in ``Retry-After`` on 429 and 503 answers (the client sleeps this plus one
            second); ``None`` sends no header, so the client falls back to its exponential backoff.
        targets: Endpoint names whose requests are eligible (e.g. ``("lfs-upload",)`` or ``("commit",)``);
            ``None`` makes every request eligible.
        max_per_request: How many times in a row the same request (method and path) may fail before one attempt
            is let through; ``None`` for no limit. Keep it below the client's 5 retries for an operation that must
            still succeed.

    Raises:
        ConfigError: for a rate outside [0, 1], no or unknown kinds, a negative ``retry_after`` or a
            ``max_per_request`` below 1. Unknown ``targets`` are refused when the plan is installed on a server.

    Examples:
        >>> plan = FaultPlan(rate=1.0, kinds=("503",), targets=("lfs-upload",), max_per_request=1)
        >>> plan.kinds
        ('503',)
    """

    rate: float = 1.0
    kinds: Sequence[str] = ("503",)
    seed: int = 0
    retry_after: int | None = 0
    targets: Sequence[str] | None = None
    max_per_request: int | None = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", tuple(self.kinds))
        if self.targets is not None:
            object.__setattr__(self, "targets", tuple(self.targets))
        if not 0.0 <= self.rate <= 1.0:
            raise ConfigError(f"fault rate {self.rate!r} is outside [0, 1]", fix="pass a probability such as 0.3")
        if not self.kinds:
            raise ConfigError("a fault plan needs at least one kind",
                              fix=f"use some of: {', '.join(list_fault_kinds())}")
        for kind in self.kinds:
            get_fault_kind(kind)
        if self.retry_after is not None and self.retry_after < 0:
            raise ConfigError(f"retry_after {self.retry_after!r} is negative", fix="pass seconds >= 0 or None")
        if self.max_per_request is not None and self.max_per_request < 1:
            raise ConfigError(f"max_per_request {self.max_per_request!r} is below 1", fix="pass 1 or more, or None")

    def check_targets(self, endpoint_names: Collection[str]) -> None:
        """Refuse targets that name no endpoint.

        Raises:
            ConfigError: listing close matches among ``endpoint_names``.
        """
        for target in self.targets or ():
            if target not in endpoint_names:
                raise ConfigError(f"unknown fault target {target!r}", fix=_choose(target, endpoint_names))


class FaultInjector:
    """Applies the current :class:`FaultPlan` to incoming requests. Thread-safe."""

    def __init__(self) -> None:
        self._plan: FaultPlan | None = None
        self._arrivals: dict[tuple[str, str], int] = defaultdict(int)
        self._streaks: dict[tuple[str, str], int] = defaultdict(int)
        self._lock = threading.Lock()
        self.injected = 0

    @property
    def plan(self) -> FaultPlan | None:
        """The plan in force, if any."""
        return self._plan

    def set_plan(self, plan: FaultPlan | None) -> None:
        """Install ``plan`` (``None`` turns faults off) and restart all counts, so runs repeat exactly."""
        with self._lock:
            self._plan = plan
            self.injected = 0
            self._arrivals.clear()
            self._streaks.clear()

    def decide(self, endpoint: str, method: str, path: str) -> FaultKind | None:
        """The fault this request gets, or ``None`` to serve it normally."""
        plan = self._plan
        if plan is None or (plan.targets is not None and endpoint not in plan.targets):
            return None
        key = (method, path)
        with self._lock:
            arrival = self._arrivals[key]
            self._arrivals[key] += 1
            if plan.max_per_request is not None and self._streaks[key] >= plan.max_per_request:
                self._streaks[key] = 0
                return None
            # A str seed is hashed with sha512 by `random`, so this is stable across processes (unlike hash()).
            rng = random.Random(f"{plan.seed}|{method}|{path}|{arrival}")
            if rng.random() >= plan.rate:
                self._streaks[key] = 0
                return None
            self._streaks[key] += 1
            self.injected += 1
            return _FAULT_KINDS[plan.kinds[rng.randrange(len(plan.kinds))]]
