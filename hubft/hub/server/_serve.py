"""``serve``: run a local Hub in the foreground, for ``hubft hub serve``."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TextIO

from ._local_hub import LocalHub

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(
    root: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    user: str = "hubft-user",
    token: str | None = None,
    read_token: str | None = None,
    users_file: str | os.PathLike | None = None,
    access_log: str | os.PathLike | None = None,
    out: TextIO | None = None,
) -> None:
    """Serve a local Hub over ``root`` until Ctrl-C or SIGTERM, printing its endpoint and tokens once.

    The tokens are the hub's own (random unless given), not the user's Hugging Face token, and are printed only in
    this banner: copy them from there. With a ``users_file`` (a team hub) the users' tokens are served instead and
    none is printed: ``hubft hub token add`` makes them. On SIGINT (Ctrl-C) or SIGTERM (a service manager, ``kill``)
    the hub closes its connections and releases ``root``, then prints ``stopped`` and returns, so the command exits
    with 0.

    Args:
        root: Directory holding the repos (created if missing; an earlier hub's root is reused).
        host: Interface to bind; anything but loopback makes the hub reachable from other machines, over plain HTTP.
        port: TCP port (0 picks a free one).
        user: The user the tokens belong to.
        token: The write token to accept; random when ``None``.
        read_token: The read-only token to accept; random when ``None``.
        users_file: The team's users file (see ``hubft.hub.server._users``).
        access_log: A file to append one JSON line per request to.
        out: Where to print the banner (standard output by default).

    Raises:
        HubError: when the port is taken or the root is in use or not a hub's.
        ConfigError: for a missing or invalid users file.
    """
    out = out or sys.stdout
    hub = LocalHub(root, host=host, port=port, user=user, token=token, read_token=read_token, record_requests=False,
                   users_file=users_file, access_log=access_log)
    with hub:
        print(f"hubft local hub: serving {hub.root} at {hub.endpoint}", file=out)
        if users_file is None:
            print(f"  user:        {hub.user}", file=out)
            print(f"  write token: {hub.token}", file=out)
            print(f"  read token:  {hub.read_token}", file=out)
        else:
            print(f"  users:       {users_file} (tokens: `hubft hub token add --users {users_file} ...`)", file=out)
        if access_log is not None:
            print(f"  access log:  {access_log}", file=out)
        print("Point clients at it (HF_TOKEN = a token of this hub):", file=out)
        exports = " ".join(f"{k}={v}" for k, v in hub.env().items() if k != "HF_TOKEN")
        print(f"  export {exports} HF_TOKEN=...", file=out)
        if host not in _LOOPBACK:
            print(f"warning: listening on {host}: other machines can reach this hub, and tokens travel unencrypted",
                  file=out)
        print("Press Ctrl-C to stop.", file=out, flush=True)
        try:
            with _stop_on_signals():
                hub.wait()
        except KeyboardInterrupt:
            pass
    print("\nstopped", file=out, flush=True)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into ``KeyboardInterrupt`` while serving, whatever handlers were inherited.

    SIGTERM would otherwise kill the process before the hub releases its root, and a process started in the
    background by a shell inherits SIGINT ignored, so Ctrl-C (or ``kill -INT``) would never reach it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread; the caller stops the hub another way
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
