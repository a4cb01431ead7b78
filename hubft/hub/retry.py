"""Retrying the Hub calls that huggingface_hub does not retry itself.

huggingface_hub retries its LFS transfers, pre-upload checks and downloads with its ``http_backoff`` (1, 2, 4, 8 s,
five retries, ``Retry-After`` honoured), but not the calls around them: creating the repo or branch, reading the
branch head, validating the card, the commit itself. :func:`call_with_retry` retries a whole step on the same
failures and with the same schedule; the step itself must be safe to repeat (see :mod:`hubft.hub.push`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

__all__ = ["RetryPolicy", "DEFAULT_RETRY", "RETRY_STATUS_CODES", "call_with_retry", "is_transient", "status_of"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_STATUS_CODES = (408, 412, 429, 500, 502, 503, 504)
"""huggingface_hub's retried statuses, plus 412: the branch moved under a commit naming its parent, so the step is
redone from a fresh head."""


def _network_errors() -> tuple[type[BaseException], ...]:
    # The transport errors huggingface_hub's own backoff retries; its HTTP library has changed across versions
    # (requests, httpx, ...), so the list is taken from it rather than named here.
    from huggingface_hub.utils import _http

    found = tuple(getattr(_http, "_DEFAULT_RETRY_ON_EXCEPTIONS", ()))
    return found + (ConnectionError, TimeoutError)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a step is retried.

    Attributes:
        max_retries: Retries after the first attempt (huggingface_hub's ``http_backoff`` default).
        base_wait: Seconds before the first retry; doubled after each, up to ``max_wait``.
        max_wait: Longest wait between attempts without a ``Retry-After``.
        max_retry_after: Longest ``Retry-After`` honoured (a longer one is cut to this).
        sleep: The function that waits (tests pass a recorder).
    """

    max_retries: int = 5
    base_wait: float = 1.0
    max_wait: float = 8.0
    max_retry_after: float = 300.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def wait_before(self, retry: int, error: BaseException) -> float:
        """Seconds to wait before retry number ``retry`` (1-based) after ``error``: the server's ``Retry-After``
        (or rate-limit reset) when it sent one, else exponential backoff."""
        told = _retry_after(error)
        if told is not None:
            return min(told, self.max_retry_after)
        return min(self.max_wait, self.base_wait * 2 ** (retry - 1))


DEFAULT_RETRY = RetryPolicy()


def status_of(error: BaseException) -> int | None:
    """The HTTP status of a huggingface_hub error, or None for a transport error."""
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is worth retrying: a retried HTTP status or a network / protocol / timeout error."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, HfHubHTTPError):
        return status_of(error) in RETRY_STATUS_CODES
    return isinstance(error, _network_errors())


def _retry_after(error: BaseException) -> float | None:
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    if status_of(error) == 429:
        from huggingface_hub.utils import parse_ratelimit_headers

        limit = parse_ratelimit_headers(headers)
        if limit is not None and limit.remaining == 0:
            return float(limit.reset_in_seconds)
    value = headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: fall back to the backoff
        return None


def call_with_retry(step: Callable[[], T], policy: RetryPolicy, *, what: str) -> T:
    """Run ``step`` until it succeeds, retrying transient failures as ``policy`` says.

    Args:
        step: A callable that is safe to run again after any failure.
        policy: The retry schedule.
        what: The step in words, for the warning logged before each retry.

    Returns:
        What ``step`` returns.

    Raises:
        Exception: The last failure when retries are exhausted, or the first non-transient failure, unchanged.
    """
    retry = 0
    while True:
        try:
            return step()
        except Exception as error:
            if retry >= policy.max_retries or not is_transient(error):
                raise
            retry += 1
            wait = policy.wait_before(retry, error)
            status = status_of(error)
            cause = f"HTTP {status}" if status else type(error).__name__
            logger.warning("hubft: %s failed (%s); retry %d/%d in %.0f s", what, cause, retry, policy.max_retries, wait)
            policy.sleep(wait)
