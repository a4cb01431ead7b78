"""The access log of a team hub: one JSON line per request, for audits ("who downloaded what, when").

Each line holds the time, the user (``-`` when anonymous, ``?`` for a refused token), the method, the path without
its query (LFS upload URLs carry a signature there), the status and the duration. Tokens never appear. Lines are
appended and flushed one by one, so a crash loses at most the line being written.

Examples:
    >>> {"time": "2025-01-01T12:00:00.000Z", "user": "alice", "method": "GET",
    ...  "path": "/alice/model/resolve/main/config.json", "status": 200, "ms": 3}  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from ._objects import utc_now


class AccessLog:
    """Appends one line per request to ``path`` (its folder is created). Thread-safe.

    Raises:
        OSError: when the file cannot be opened for appending.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, user: str, method: str, path: str, status: int, seconds: float) -> None:
        """Record one request."""
        line = json.dumps({"time": utc_now(), "user": user, "method": method, "path": path, "status": status,
                           "ms": round(seconds * 1000)})
        with self._lock:
            if not self._file.closed:
                self._file.write(line + "\n")
                self._file.flush()

    def close(self) -> None:
        """Stop logging (idempotent)."""
        with self._lock:
            self._file.close()
