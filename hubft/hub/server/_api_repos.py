"""Endpoints about identities and repos as a whole: whoami, create, delete, move, settings, info and listings."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import yaml

from ._auth import check_write
from ._card_rules import front_matter
from ._errors import ApiError, bad_request, repo_not_found
from ._http import API_REPO, Request, Response, Route, paged_json, repo_type_of, url_prefix
from ._names import check_repo_segment, check_repo_type
from ._objects import Commit
from ._root import Storage

if TYPE_CHECKING:
    from ._app import HubApp


def _card_data(storage: Storage, commit: Commit) -> dict[str, Any] | None:
    entry = commit.tree.get("README.md")
    if entry is None or entry.lfs or entry.size > 1024 * 1024:
        return None
    try:
        return front_matter(storage.read(entry).decode("utf-8", "replace"))
    except (ValueError, yaml.YAMLError):
        return None


def repo_url(request: Request, repo_type: str, repo_id: str) -> str:
    """The repo's web URL, in the form the client parses back into a repo id."""
    return f"{request.base_url}/{url_prefix(repo_type)}{repo_id}"


def whoami(app: HubApp, request: Request) -> Response:
    identity = app.identify(request)
    if identity is None:
        raise ApiError(401, "You must pass a token to call whoami")
    return Response.json({
        "type": "user",
        "id": hashlib.sha1(identity.user.encode(), usedforsecurity=False).hexdigest()[:24],
        "name": identity.user,
        "fullname": identity.fullname or identity.user,
        "email": identity.email,
        "emailVerified": identity.email is not None,
        "isPro": False,
        "orgs": [{"type": "org", "name": org, "fullname": org, "roleInOrg": identity.org_role(org)}
                 for org in identity.orgs],
        "auth": {"type": "access_token",
                 "accessToken": {"displayName": f"hubft local {identity.role} token", "role": identity.role}},
    })


def agent_harnesses(app: HubApp, request: Request) -> Response:
    return Response.json({"standardEnvVars": [], "harnesses": {}})


def _target(app: HubApp, request: Request) -> tuple[str, str, dict[str, Any]]:
    """Repo type and id named by a create/delete body; the namespace defaults to the caller's user."""
    body = request.json_object()
    repo_type = check_repo_type(body.get("type"))
    name, namespace = body.get("name"), body.get("organization")
    if not isinstance(name, str) or not name:
        raise bad_request("Missing 'name' in the request body")
    if "/" in name and namespace is None:
        namespace, name = name.split("/", 1)
    identity = app.identify(request)
    if namespace is None:
        if identity is None:
            raise ApiError(401, "You must be authenticated to create or delete a repo: pass a write token")
        namespace = identity.user
    if not isinstance(namespace, str):
        raise bad_request(f"Invalid organization {namespace!r}")
    repo_id = f"{check_repo_segment(namespace, 'namespace')}/{check_repo_segment(name, 'repo name')}"
    return repo_type, repo_id, body


def create_repo(app: HubApp, request: Request) -> Response:
    repo_type, repo_id, body = _target(app, request)
    identity = check_write(app.identify(request), repo_id.split("/")[0], "create a repo")
    private = body.get("visibility") == "private" or body.get("private") is True
    try:
        app.storage.create_repo(repo_type, repo_id, private=private, author=identity.user)
    except ApiError as e:
        existing = app.storage.canonical_id(repo_type, repo_id) or repo_id
        e.body["url"] = repo_url(request, repo_type, existing)  # create_repo(exist_ok=True) reads it from the 409
        raise
    return Response.json({"url": repo_url(request, repo_type, repo_id), "name": repo_id, "id": repo_id})


def delete_repo(app: HubApp, request: Request) -> Response:
    repo_type, repo_id, _ = _target(app, request)
    app.open_repo(request, repo_type, *repo_id.split("/"), write="delete a repo", level="admin")
    if not app.storage.delete_repo(repo_type, repo_id):
        raise repo_not_found(repo_type, repo_id)
    return Response.json({})


def _repo_id_field(body: dict[str, Any], key: str) -> tuple[str, str]:
    value = body.get(key)
    if not isinstance(value, str) or value.count("/") != 1:
        raise bad_request(f"{key!r} must be a repo id 'namespace/name', got {value!r}")
    namespace, name = value.split("/")
    return check_repo_segment(namespace, "namespace"), check_repo_segment(name, "repo name")


def move_repo(app: HubApp, request: Request) -> Response:
    body = request.json_object()
    repo_type = check_repo_type(body.get("type"))
    (from_ns, from_name), (to_ns, to_name) = _repo_id_field(body, "fromRepo"), _repo_id_field(body, "toRepo")
    _, state = app.open_repo(request, repo_type, from_ns, from_name, write="move a repo", level="admin")
    check_write(app.identify(request), to_ns, "move a repo here")
    new_id = app.storage.move_repo(repo_type, state.id, f"{to_ns}/{to_name}")
    return Response.json({"url": repo_url(request, repo_type, new_id)})


_GATED = ("auto", "manual", False)


def repo_settings(app: HubApp, request: Request, type: str, ns: str, name: str) -> Response:
    repo, _ = app.open_repo(request, repo_type_of(type), ns, name, write="change repo settings", level="admin")
    body = request.json_object()
    unknown = set(body) - {"private", "visibility", "gated"}
    if unknown:
        raise bad_request(f"Unsupported settings {sorted(unknown)}: this local hub supports 'private', 'visibility' "
                          "and 'gated'")
    if "gated" in body and body["gated"] not in _GATED:
        raise bad_request(f"Invalid 'gated' {body['gated']!r}: use 'auto', 'manual' or false")
    with repo.lock:
        state = repo.state()
        if "private" in body:
            state.private = bool(body["private"])
        if "visibility" in body:
            state.private = body["visibility"] == "private"
        if "gated" in body:
            state.gated = body["gated"]
        repo.save_state(state)
    return Response.json({"private": state.private, "gated": state.gated})


def repo_info(app: HubApp, request: Request, type: str, ns: str | None, name: str, rev: str | None) -> Response:
    repo_type = repo_type_of(type)
    repo, state = app.open_repo(request, repo_type, ns, name)
    commit = repo.resolve(rev or "main", state)
    card = _card_data(app.storage, commit)
    tags = (card or {}).get("tags")
    blobs = request.flag("blobs")
    siblings = [e.sibling(p) if blobs else {"rfilename": p} for p, e in sorted(commit.tree.items())]
    info: dict[str, Any] = {
        "_id": hashlib.sha1(state.id.encode(), usedforsecurity=False).hexdigest()[:24],
        "id": state.id,
        "author": state.id.split("/")[0],
        "sha": commit.id,
        "private": state.private,
        "gated": state.gated,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": tags if isinstance(tags, list) else [],
        "createdAt": state.created_at,
        "lastModified": commit.date,
        "siblings": siblings,
        "usedStorage": sum(e.size for e in commit.tree.values()),
    }
    if card is not None:
        info["cardData"] = card
    if repo_type == "model":
        info["modelId"] = state.id
        for key in ("library_name", "pipeline_tag"):
            if isinstance((card or {}).get(key), str):
                info[key] = card[key]
    return Response.json(info)


def list_repos(app: HubApp, request: Request, type: str) -> Response:
    repo_type = repo_type_of(type)
    identity = app.identify(request)
    author, search = request.param("author"), (request.param("search") or "").lower()
    items = []
    for repo_id in app.storage.repo_ids(repo_type):
        repo = app.storage.repo(repo_type, repo_id)
        state = repo.state() if repo else None
        namespace = repo_id.split("/")[0]
        if state is None or (author and namespace.lower() != author.lower()) or search not in repo_id.lower():
            continue
        if state.private and (identity is None or not identity.member_of(repo_id.split("/")[0])):
            continue
        items.append({"id": repo_id, "private": state.private, "sha": state.heads.get("main"),
                      "createdAt": state.created_at})
    return paged_json(request, items, app.page_size)


ROUTES = (
    Route.of("whoami", "GET", r"^/api/whoami-v2$", whoami),
    Route.of("agent-harnesses", "GET", r"^/api/agent-harnesses$", agent_harnesses),
    Route.of("repo-create", "POST", r"^/api/repos/create$", create_repo),
    Route.of("repo-delete", "DELETE", r"^/api/repos/delete$", delete_repo),
    Route.of("repo-move", "POST", r"^/api/repos/move$", move_repo),
    Route.of("repo-list", "GET", r"^/api/(?P<type>models|datasets|spaces)$", list_repos),
    Route.of("repo-settings", "PUT", API_REPO + r"/settings$", repo_settings),
    Route.of("repo-info", "GET",
             r"^/api/(?P<type>models|datasets|spaces)/(?:(?P<ns>[^/]+)/)?(?P<name>[^/]+)(?:/revision/(?P<rev>[^/]+))?$",
             repo_info),
)
