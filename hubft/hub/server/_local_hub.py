"""``LocalHub``: a Hub-compatible server over a local directory, run in a background thread.

It serves what ``huggingface_hub``, ``timm`` and ``datasets`` need (model and dataset repos, branches, tags, PR
refs, LFS uploads, downloads with ``Range``, listings), keeps everything under ``root`` so that a new instance on
the same root sees the old repos, and can misbehave on purpose (fault plans, outages) for reliability tests.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
from pathlib import Path
from typing import IO, Any

from hubft.errors import ConfigError, HubError

from ._access_log import AccessLog
from ._app import HubApp, LoggedRequest
from ._auth import Identity, TokenTable
from ._faults import FaultPlan
from ._server import HubHTTPServer
from ._root import Storage
from ._users import users_file_tokens

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock; one server per root is then up to the user
    fcntl = None

_MARKER = "hubft-hub.json"
_OUTAGE_MODES = ("refuse", "503")


def _lock_root(root: Path) -> IO[str] | None:
    """Create or open a hub root and take its lock, so that two servers never write one root."""
    root.mkdir(parents=True, exist_ok=True)
    marker = root / _MARKER
    if not marker.exists():
        if any(root.iterdir()):
            raise HubError(f"hub root {str(root)!r} is not empty and holds no local hub",
                           fix="pass a new or empty directory, or the root of an earlier hub")
        marker.write_text(json.dumps({"format": 1}) + "\n")
    if fcntl is None:
        return None
    handle = open(root / "hub.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise HubError(f"hub root {str(root)!r} is already served by another local hub",
                       fix="stop that hub first, or use another root") from None
    return handle


class LocalHub:
    """A local Hugging Face Hub-compatible server, for development and hermetic tests.

    The server binds to ``host:port`` when started (``with LocalHub(...) as hub`` or :meth:`start`) and answers in
    background threads. Clients reach it through ``HF_ENDPOINT``; since ``huggingface_hub`` reads that variable at
    import, tests pick the port before the import and pass it here (see ``tests/conftest.py``).

    Args:
        root: Directory holding the repos. Created if missing; reused as-is if it holds an earlier hub.
        host: Interface to bind. Keep the default loopback address unless others must reach the hub.
        port: TCP port; ``None`` picks a free one.
        user: The user the hub's own tokens belong to; the default namespace of new repos.
        orgs: Organisations ``user`` belongs to (repos there are also the user's to read and write).
        token: The write token to accept; a random one when ``None``.
        read_token: The read-only token to accept; a random one when ``None``.
        faults: A fault plan in force from the start (see :meth:`set_faults`).
        page_size: The most entries in one page of a tree or commit listing (small values exercise pagination).
        record_requests: Whether to keep :attr:`requests` (turn it off for a long-running server).
        users_file: A team's users file (see ``_users``): its tokens are accepted too, and edits to it (``hubft hub
            token add/revoke``) apply from the next request on.
        access_log: A file to append one JSON line per request to (see ``_access_log``).

    Raises:
        ConfigError: for an invalid user, token, page size, fault plan or users file.
        HubError: from :meth:`start`, when the port is taken or the root is in use or not a hub's.

    Examples:
        >>> with LocalHub(tmp_path) as hub:  # doctest: +SKIP
        ...     api = HfApi(endpoint=hub.endpoint, token=hub.token)
        ...     api.create_repo("hubft-user/demo")
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        user: str = "hubft-user",
        orgs: tuple[str, ...] = (),
        token: str | None = None,
        read_token: str | None = None,
        faults: FaultPlan | None = None,
        page_size: int = 1000,
        record_requests: bool = True,
        users_file: str | os.PathLike | None = None,
        access_log: str | os.PathLike | None = None,
    ) -> None:
        if page_size < 1:
            raise ConfigError(f"page_size {page_size!r} is below 1", fix="pass a positive number of entries")
        if port is not None and not 0 <= port <= 65535:
            raise ConfigError(f"port {port!r} is not a TCP port", fix="pass 1-65535, or None for a free port")
        self.root = Path(root).resolve()
        self.host = host
        self.port = port or 0
        self.user = user
        self._tokens = TokenTable() if users_file is None else users_file_tokens(users_file)
        self._access_log_path = None if access_log is None else Path(access_log)
        self._access_log: AccessLog | None = None
        self.token = self._tokens.add(Identity(user, "write", tuple(orgs)), token)
        self.read_token = self._tokens.add(Identity(user, "read", tuple(orgs)), read_token)
        self._faults = faults
        self._page_size = page_size
        self._record_requests = record_requests
        self._app: HubApp | None = None
        self._server: HubHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._root_lock: IO[str] | None = None
        if faults is not None:
            faults.check_targets(HubApp.endpoint_names())

    def __repr__(self) -> str:  # never shows the tokens
        state = "running" if self.running else "stopped"
        return f"LocalHub(root={str(self.root)!r}, endpoint={self.endpoint!r}, user={self.user!r}, {state})"

    @property
    def endpoint(self) -> str:
        """``http://host:port``, the value for ``HF_ENDPOINT`` (a wildcard bind is reached via 127.0.0.1)."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the hub is started (it may still be :meth:`down`)."""
        return self._app is not None

    @property
    def requests(self) -> list[LoggedRequest]:
        """Every request answered so far, as ``(method, raw path, status)``; ``clear()`` it between test phases."""
        return self._require_app().requests

    @property
    def faults_injected(self) -> int:
        """How many requests a fault plan has failed since the plan was installed."""
        return self._require_app().faults.injected

    @staticmethod
    def endpoint_names() -> list[str]:
        """The endpoint names fault-plan ``targets`` can name (``commit``, ``lfs-upload``, ``resolve``, ...)."""
        return HubApp.endpoint_names()

    def _require_app(self) -> HubApp:
        if self._app is None:
            raise HubError("the local hub is not running", fix="use it inside `with LocalHub(...)` or call start()")
        return self._app

    def start(self) -> LocalHub:
        """Bind the port and serve in background threads; returns ``self``.

        Raises:
            HubError: when the port is taken, or the root is in use or not a hub's.
        """
        if self._app is not None:
            return self
        self._root_lock = _lock_root(self.root)
        shutil.rmtree(self.root / "tmp", ignore_errors=True)  # staging left by a crash; we hold the root lock
        if self._access_log_path is not None:
            self._access_log = AccessLog(self._access_log_path)
        app = HubApp(Storage(self.root), self._tokens, page_size=self._page_size, lfs_secret=secrets.token_bytes(32),
                     record_requests=self._record_requests, access_log=self._access_log)
        app.faults.set_plan(self._faults)
        self._app = app
        try:
            self._bind()
        except BaseException:
            self.stop()
            raise
        return self

    def _bind(self) -> None:
        try:
            server = HubHTTPServer((self.host, self.port), self._require_app())
        except OSError as e:
            raise HubError(f"cannot listen on {self.host}:{self.port}: {e.strerror or e}",
                           fix="pick another port (or None for a free one), or stop what is using it") from None
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"hubft-local-hub-{self.port}", daemon=True)
        self._thread.start()

    def _unbind(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.close_connections()
            self._thread.join()

    def stop(self) -> None:
        """Stop serving, close every connection and release the root (idempotent)."""
        self._unbind()
        self._app = None
        if self._access_log is not None:
            self._access_log.close()
            self._access_log = None
        if self._root_lock is not None:
            self._root_lock.close()
            self._root_lock = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def wait(self) -> None:
        """Block until the hub is stopped or the process is interrupted (Ctrl-C raises ``KeyboardInterrupt``)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def env(self, token: str | None = "write") -> dict[str, str]:
        """Environment variables that point a client process at this hub.

        Args:
            token: ``"write"`` or ``"read"`` for the hub's tokens as ``HF_TOKEN``; ``None`` for an anonymous client
                (``HF_TOKEN`` empty). Any other string is passed as the token itself.
        """
        value = {"write": self.token, "read": self.read_token, None: ""}.get(token, token)
        return {
            "HF_ENDPOINT": self.endpoint,
            "HF_TOKEN": value,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_UPDATE_DOWNLOAD_COUNTS": "0",
        }

    def add_token(self, user: str, role: str = "write", orgs: tuple[str, ...] = (), token: str | None = None, *,
                  org_roles: dict[str, str] | None = None, fullname: str | None = None) -> str:
        """Accept another token (e.g. another user's, to test what strangers see) and return it.

        Args:
            org_roles: The user's role (``read``, ``write``, ``admin``) in each of ``orgs``; ``admin`` when missing.
            fullname: What ``whoami`` reports as the user's full name.

        Raises:
            ConfigError: for an unknown role or an invalid token.
        """
        return self._tokens.add(Identity(user, role, tuple(orgs), dict(org_roles or {}), fullname), token)

    def set_faults(self, plan: FaultPlan | None) -> None:
        """Install a fault plan now (``None`` turns faults off); the plan's counts start afresh.

        Raises:
            ConfigError: when the plan targets an unknown endpoint (the error lists close matches).
        """
        if plan is not None:
            plan.check_targets(self.endpoint_names())
        self._faults = plan
        if self._app is not None:
            self._app.faults.set_plan(plan)

    def down(self, mode: str = "refuse") -> None:
        """Simulate an outage until :meth:`up`.

        Args:
            mode: ``"refuse"`` closes the port and every open connection (clients get "connection refused");
                ``"503"`` keeps answering, with 503 and ``Retry-After: 0`` to every request.

        Raises:
            ConfigError: for another mode.
        """
        if mode not in _OUTAGE_MODES:
            raise ConfigError(f"unknown outage mode {mode!r}", fix=f"use one of: {', '.join(_OUTAGE_MODES)}")
        app = self._require_app()
        app.outage = mode
        if mode == "refuse":
            self._unbind()

    def up(self) -> None:
        """End an outage started by :meth:`down` (rebinding the same port after ``"refuse"``)."""
        app = self._require_app()
        if app.outage == "refuse" and self._server is None:
            self._bind()
        app.outage = None
