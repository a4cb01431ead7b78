"""Endpoints about identities and repos as a whole: whoami, create/delete, info, settings, refs and history."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import yaml
from huggingface_hub.repocard import REGEX_YAML_BLOCK

from ._auth import check_write
from ._errors import ApiError, bad_request, repo_not_found
from ._http import API_REPO, Request, Response, Route, paged_json, repo_type_of, url_prefix
from ._names import check_ref_name, check_repo_segment, check_repo_type
from ._objects import Commit
from ._storage import Storage

if TYPE_CHECKING:
    from ._app import HubApp


def front_matter(text: str) -> dict[str, Any] | None:
    """The YAML metadata block of a README, or ``None`` when there is none.

    Raises:
        ValueError: when the block is not valid YAML or not a mapping.
    """
    match = REGEX_YAML_BLOCK.search(text)
    if match is None:
        return None
    data = yaml.safe_load(match.group(2))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"the YAML metadata must be a mapping, got {type(data).__name__}")
    return data


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
        "fullname": identity.user,
        "email": None,
        "emailVerified": False,
        "isPro": False,
        "orgs": [{"type": "org", "name": org, "fullname": org, "roleInOrg": identity.role} for org in identity.orgs],
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
    url = repo_url(request, repo_type, repo_id)
    try:
        app.storage.create_repo(repo_type, repo_id, private=private, author=identity.user)
    except ApiError as e:
        e.body["url"] = url  # create_repo(exist_ok=True) reads the URL from the 409 body.
        raise
    return Response.json({"url": url, "name": repo_id, "id": repo_id})


def delete_repo(app: HubApp, request: Request) -> Response:
    repo_type, repo_id, _ = _target(app, request)
    app.open_repo(request, repo_type, *repo_id.split("/"), write="delete a repo")
    if not app.storage.delete_repo(repo_type, repo_id):
        raise repo_not_found(repo_type, repo_id)
    return Response.json({})


def repo_settings(app: HubApp, request: Request, type: str, ns: str, name: str) -> Response:
    repo, _ = app.open_repo(request, repo_type_of(type), ns, name, write="change repo settings")
    body = request.json_object()
    unknown = set(body) - {"private", "visibility"}
    if unknown:
        raise bad_request(f"Unsupported settings {sorted(unknown)}: this local hub supports 'private' and 'visibility'")
    with repo.lock:
        state = repo.state()
        if "private" in body:
            state.private = bool(body["private"])
        if "visibility" in body:
            state.private = body["visibility"] == "private"
        repo.save_state(state)
    return Response.json({"private": state.private})


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
        "gated": False,
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
        if state is None or (author and repo_id.split("/")[0] != author) or search not in repo_id.lower():
            continue
        if state.private and (identity is None or not identity.member_of(repo_id.split("/")[0])):
            continue
        items.append({"id": repo_id, "private": state.private, "sha": state.heads.get("main"),
                      "createdAt": state.created_at})
    return paged_json(request, items, app.page_size)


def list_refs(app: HubApp, request: Request, type: str, ns: str, name: str) -> Response:
    _, state = app.open_repo(request, repo_type_of(type), ns, name)

    def refs(table: dict[str, str], prefix: str) -> list[dict[str, str]]:
        return [{"name": k, "ref": f"{prefix}{k}", "targetCommit": v} for k, v in sorted(table.items())]

    body = {"branches": refs(state.heads, "refs/heads/"), "tags": refs(state.tags, "refs/tags/"), "converts": []}
    if request.flag("include_prs"):
        body["pullRequests"] = refs(state.prs, "refs/pr/")
    return Response.json(body)


def branch(app: HubApp, request: Request, type: str, ns: str, name: str, branch: str) -> Response:
    repo, _ = app.open_repo(request, repo_type_of(type), ns, name, write="create or delete a branch")
    body = request.json_object() if request.method == "POST" else {}
    with repo.lock:
        state = repo.state()
        if request.method == "DELETE":
            if branch not in state.heads:
                raise ApiError(404, f"Branch {branch!r} does not exist", code="RevisionNotFound")
            if branch == "main":
                raise ApiError(403, "The default branch 'main' cannot be deleted")
            del state.heads[branch]
        else:
            check_ref_name(branch, "branch")
            if branch in state.heads:
                raise ApiError(409, f"Reference already exists: refs/heads/{branch}")
            start = body.get("startingPoint") or "main"
            state.heads[branch] = repo.resolve(str(start), state).id
        repo.save_state(state)
    return Response.json({})


def tag(app: HubApp, request: Request, type: str, ns: str, name: str, rev: str) -> Response:
    repo, _ = app.open_repo(request, repo_type_of(type), ns, name, write="create or delete a tag")
    with repo.lock:
        state = repo.state()
        if request.method == "DELETE":  # here the path segment is the tag itself
            if rev not in state.tags:
                raise ApiError(404, f"Tag {rev!r} does not exist", code="RevisionNotFound")
            del state.tags[rev]
        else:
            body = request.json_object()
            new_tag = check_ref_name(str(body.get("tag") or ""), "tag")
            if new_tag in state.tags:
                raise ApiError(409, f"Reference already exists: refs/tags/{new_tag}")
            state.tags[new_tag] = repo.resolve(rev, state).id
        repo.save_state(state)
    return Response.json({})


def list_commits(app: HubApp, request: Request, type: str, ns: str, name: str, rev: str) -> Response:
    repo, state = app.open_repo(request, repo_type_of(type), ns, name)
    items = [{"id": c.id, "title": c.title, "message": c.message, "date": c.date, "authors": [{"user": c.author}]}
             for c in repo.ancestors(repo.resolve(rev, state).id)]
    return paged_json(request, items, app.page_size)


ROUTES = (
    Route.of("whoami", "GET", r"^/api/whoami-v2$", whoami),
    Route.of("agent-harnesses", "GET", r"^/api/agent-harnesses$", agent_harnesses),
    Route.of("repo-create", "POST", r"^/api/repos/create$", create_repo),
    Route.of("repo-delete", "DELETE", r"^/api/repos/delete$", delete_repo),
    Route.of("repo-list", "GET", r"^/api/(?P<type>models|datasets|spaces)$", list_repos),
    Route.of("repo-settings", "PUT", API_REPO + r"/settings$", repo_settings),
    Route.of("refs", "GET", API_REPO + r"/refs$", list_refs),
    Route.of("branch", "POST DELETE", API_REPO + r"/branch/(?P<branch>[^/]+)$", branch),
    Route.of("tag", "POST DELETE", API_REPO + r"/tag/(?P<rev>[^/]+)$", tag),
    Route.of("commits", "GET", API_REPO + r"/commits/(?P<rev>[^/]+)$", list_commits),
    Route.of("repo-info", "GET",
             r"^/api/(?P<type>models|datasets|spaces)/(?:(?P<ns>[^/]+)/)?(?P<name>[^/]+)(?:/revision/(?P<rev>[^/]+))?$",
             repo_info),
)
