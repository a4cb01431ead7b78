"""The local Hub as an application: a request goes in, a response (or a dropped connection) comes out.

``HubApp`` owns the route table, the storage, the tokens, the fault injector and the request log, and knows nothing
about sockets; ``_server`` feeds it requests. Every request passes through :meth:`HubApp.handle`, which applies an
outage or an injected fault first, then the endpoint, and turns :class:`ApiError` into the Hub's error shape.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import NamedTuple

from . import _api_access, _api_commit, _api_discussions, _api_files, _api_lfs, _api_lfs_files, _api_refs, _api_repos
from ._access_log import AccessLog
from ._auth import Identity, TokenTable, check_gated, check_read, check_write
from ._errors import ApiError, RepoMoved, repo_not_found
from ._faults import FaultInjector, FaultKind
from ._http import Request, Response, Route
from ._names import split_repo_id
from ._root import Storage
from ._storage import Repo, RepoState

logger = logging.getLogger(__name__)

ROUTES: tuple[Route, ...] = (
    *_api_repos.ROUTES, *_api_refs.ROUTES, *_api_access.ROUTES, *_api_discussions.ROUTES, *_api_commit.ROUTES,
    *_api_lfs.ROUTES, *_api_lfs_files.ROUTES, *_api_files.ROUTES,
)
DROP = object()
"""Returned by :meth:`HubApp.handle` when the connection must be closed without an answer."""


class LoggedRequest(NamedTuple):
    """One entry of the request log.

    ``status`` is what the endpoint answered, or 0 when the connection was dropped before any endpoint ran (a
    ``drop`` fault or an outage). A ``drop-after`` fault logs the endpoint's status although the client never sees
    it: the log says what happened on the hub.
    """

    method: str
    path: str
    status: int


class HubApp:
    """The endpoints of the local Hub over one storage root.

    Args:
        storage: Where repos live.
        tokens: The tokens accepted.
        page_size: The most entries one page of a tree or commit listing holds.
        lfs_secret: Key that signs LFS upload URLs (the client sends no credentials on the upload itself).
        record_requests: Whether to keep the request log (a long-running server should not: it only grows).
        access_log: Where to append one line per request (see ``_access_log``), if anywhere.
    """

    def __init__(
        self, storage: Storage, tokens: TokenTable, *, page_size: int, lfs_secret: bytes, record_requests: bool = True,
        access_log: AccessLog | None = None,
    ) -> None:
        self.access_log = access_log
        self.storage = storage
        self.tokens = tokens
        self.page_size = page_size
        self.lfs_secret = lfs_secret
        self.faults = FaultInjector()
        self.outage: str | None = None
        self.requests: list[LoggedRequest] = []
        self.record_requests = record_requests
        self._ids = itertools.count(1)
        self._log_lock = threading.Lock()

    @staticmethod
    def endpoint_names() -> list[str]:
        """The names of all endpoints, as used by fault-plan ``targets``."""
        return sorted({route.name for route in ROUTES})

    def handle(self, request: Request) -> Response | object:
        """Answer one request (or return :data:`DROP`) and log it in :attr:`requests`."""
        started = time.monotonic()
        route, params = self._route(request)
        name = route.name if route else "unknown"
        fault = self._outage_fault() if self.outage else self.faults.decide(name, request.method, request.path)
        drops = fault is not None and fault.status is None
        response = DROP if drops and not fault.after else self._respond(request, route, params, fault)
        if self.record_requests:
            status = 0 if response is DROP else response.status
            with self._log_lock:
                self.requests.append(LoggedRequest(request.method, request.path, status))
        if self.access_log is not None:
            self.access_log.write(self._user_of(request), request.method, request.path,
                                  0 if response is DROP else response.status, time.monotonic() - started)
        return DROP if drops else response

    def _user_of(self, request: Request) -> str:
        try:
            identity = self.identify(request)
        except ApiError:
            return "?"
        return "-" if identity is None else identity.user

    def _respond(self, request: Request, route: Route | None, params: dict, fault: FaultKind | None) -> Response:
        try:
            if fault is not None and fault.status is not None:
                response = self._fault_response(fault)
            elif route is None:
                response = self._no_route(request)
            else:
                response = route.handler(self, request, **params)
        except ApiError as e:
            response = Response.error(e)
        except RepoMoved as moved:
            response = self._redirect(request, route, moved.new_id)
        except Exception:
            logger.exception("local hub: %s %s failed", request.method, request.path)
            response = Response.error(ApiError(500, "Internal error in the local hub; see its log"))
        response.headers.setdefault("X-Request-Id", f"hubft-{next(self._ids)}")
        return response

    def _route(self, request: Request) -> tuple[Route | None, dict]:
        # Full repo ids first, so that a repo named like an endpoint ("u/refs") keeps its info page; then ids
        # without a namespace, which every endpoint answers with RepoNotFound.
        for loose in (False, True):
            for route in ROUTES:
                if request.method in route.methods or (request.method == "HEAD" and "GET" in route.methods):
                    params = route.match(request.path, loose=loose)
                    if params is not None:
                        return route, params
        return None, {}

    @staticmethod
    def _redirect(request: Request, route: Route, new_id: str) -> Response:
        start, end = route.repo_span(request.path)
        query = request.raw_query
        location = f"{request.base_url}{request.path[:start]}{new_id}{request.path[end:]}{'?' + query if query else ''}"
        return Response.json({"error": f"This repo was moved to {new_id}", "url": location}, 307,
                             {"Location": location})

    def _no_route(self, request: Request) -> Response:
        allowed = sorted({m for r in ROUTES if r.match(request.path) is not None for m in r.methods})
        if allowed:
            raise ApiError(405, f"{request.method} is not allowed on {request.path}; use {', '.join(allowed)}",
                           headers={"Allow": ", ".join(allowed)})
        raise ApiError(404, f"No such endpoint on this local hub: {request.method} {request.path}")

    def _outage_fault(self) -> FaultKind:
        return FaultKind("outage", None if self.outage == "refuse" else 503, "the hub is down")

    def _fault_response(self, fault: FaultKind) -> Response:
        plan = self.faults.plan
        retry_after = 0 if plan is None else plan.retry_after
        headers = {"Retry-After": str(retry_after)} if fault.status in (429, 503) and retry_after is not None else {}
        return Response.error(ApiError(fault.status, f"Injected fault: {fault.description}", headers=headers))

    # Helpers shared by the endpoints.

    def identify(self, request: Request) -> Identity | None:
        """The caller's identity (``None`` when anonymous).

        Raises:
            ApiError: 401 for an unknown token.
        """
        return self.tokens.identify(request.headers.get("authorization"))

    def open_repo(
        self, request: Request, repo_type: str, namespace: str | None, name: str, *, write: str | None = None,
        level: str = "write", files: str | None = None,
    ) -> tuple[Repo, RepoState]:
        """Find a repo the caller may read, and may change when ``write`` names the action.

        Args:
            write: The action, when the caller must have ``level`` rights (``write`` or ``admin``) on the namespace.
            files: The path of a file about to be served: a gated repo then also needs an access grant.

        Raises:
            ApiError: ``RepoNotFound`` for a missing repo or a private one the caller cannot see (401 when anonymous,
                404 otherwise); 400 for an invalid id; 401/403 when ``write`` is asked without the rights;
                ``GatedRepo`` for the files of a gated repo the caller has no access to.
            RepoMoved: for the old id of a moved repo that the caller may see.
        """
        repo_id = split_repo_id(namespace, name, repo_type)
        identity = self.identify(request)
        repo = self.storage.repo(repo_type, repo_id)
        if repo is None:
            self._follow_move(identity, repo_type, repo_id)
            raise repo_not_found(repo_type, repo_id, anonymous=identity is None)
        state = repo.state()
        check_read(identity, repo_type, state.id, state.private)
        if files is not None:
            check_gated(identity, repo_type, state.id, state.gated, state.grants, files)
        if write:
            check_write(identity, state.id.split("/")[0], write, level)
        return repo, state

    def _follow_move(self, identity: Identity | None, repo_type: str, repo_id: str) -> None:
        new_id = self.storage.redirect(repo_type, repo_id)
        target = None if new_id is None else self.storage.repo(repo_type, new_id)
        if target is not None:
            state = target.state()
            if not state.private or (identity is not None and identity.member_of(state.id.split("/")[0])):
                raise RepoMoved(state.id)
