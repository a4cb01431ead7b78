"""Endpoints about access: ``auth_check`` and the access decisions of gated repos.

A repo is gated with ``update_repo_settings(gated="auto"|"manual")``. There is no web page here where a user could
ask for access, so both modes mean the same: a namespace admin grants access explicitly (``grant_access``, or
``accept_access_request`` / ``reject_access_request`` / ``cancel_access_request`` by user name). Until then the
repo's files answer ``GatedRepo`` (see ``_auth``), and so does ``auth_check``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._auth import check_gated, check_write
from ._errors import ApiError, bad_request
from ._http import API_REPO, Request, Response, Route, paged_json, repo_type_of
from ._names import is_valid_segment
from ._objects import utc_now

if TYPE_CHECKING:
    from ._app import HubApp

_STATUSES = ("accepted", "rejected", "pending")


def auth_check(app: HubApp, request: Request, type: str, ns: str, name: str, write: str | None) -> Response:
    repo_type = repo_type_of(type)
    _, state = app.open_repo(request, repo_type, ns, name)
    identity = app.identify(request)
    check_gated(identity, repo_type, state.id, state.gated, state.grants)
    if write:
        check_write(identity, state.id.split("/")[0], "write to this repo")
    return Response.json({})


def _decide(app: HubApp, request: Request, type: str, ns: str, name: str, status: str | None) -> Response:
    repo, _ = app.open_repo(request, repo_type_of(type), ns, name, write="handle access requests", level="admin")
    body = request.json_object()
    user, status = body.get("user"), status or body.get("status")
    if not isinstance(user, str) or not is_valid_segment(user):
        raise bad_request(f"'user' must be a user name, got {user!r} (requests by 'requestId' are not kept here)")
    if status not in _STATUSES:
        raise bad_request(f"Invalid status {status!r}: use one of {', '.join(_STATUSES)}")
    with repo.lock:
        state = repo.state()
        if not state.gated:
            raise ApiError(400, f"{state.id} is not gated: gate it with update_repo_settings(gated=...) first")
        state.grants[user.lower()] = {"user": user, "status": status, "timestamp": utc_now()}
        repo.save_state(state)
    return Response.json({})


def grant(app: HubApp, request: Request, type: str, ns: str, name: str) -> Response:
    return _decide(app, request, type, ns, name, "accepted")


def handle(app: HubApp, request: Request, type: str, ns: str, name: str) -> Response:
    return _decide(app, request, type, ns, name, None)


def list_requests(app: HubApp, request: Request, type: str, ns: str, name: str, status: str) -> Response:
    _, state = app.open_repo(request, repo_type_of(type), ns, name, write="list access requests", level="admin")
    items = [{"user": {"user": g["user"], "fullname": g["user"]}, "requestId": key, "status": g["status"],
              "timestamp": g["timestamp"]} for key, g in sorted(state.grants.items()) if g["status"] == status]
    return paged_json(request, items, app.page_size)


ROUTES = (
    Route.of("auth-check", "GET", API_REPO + r"/auth-check(?:/(?P<write>write))?$", auth_check),
    Route.of("access-grant", "POST", API_REPO + r"/user-access-request/grant$", grant),
    Route.of("access-handle", "POST", API_REPO + r"/user-access-request/handle$", handle),
    Route.of("access-list", "GET", API_REPO + r"/user-access-request/(?P<status>accepted|rejected|pending)$",
             list_requests),
)
