"""DataLoader worker errors, as hubft's own one-line errors."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from hubft.errors import HubftError, unwrap_worker_error

__all__ = ["plain_worker_errors"]


def plain_worker_errors(loader: Iterable) -> Iterator[Any]:
    """Iterate ``loader``; a hubft error raised in a DataLoader worker comes back as its own one-line error.

    torch re-raises a worker's exception with the worker's traceback folded into the message.
    """
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except HubftError as e:
            unwrapped = unwrap_worker_error(e)
            if unwrapped is e:
                raise
            raise unwrapped from None
        yield batch
