"""Endpoints about refs and history: listing refs, branches, tags, the commit log and super-squash.

Wherever a revision is taken (a tag's target, a branch's starting point, the log's head), it may be a branch, a
tag, a ``refs/...`` ref, a full sha or an unambiguous short sha (``Repo.resolve``). The checks run in the Hub's
order: the repo, then the revision (404 ``RevisionNotFound``), then the new name (400), then a clash (409).
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from ._errors import ApiError, bad_request
from ._history import squash
from ._http import API_REPO, Request, Response, Route, paged_json, repo_type_of
from ._names import check_ref_name
from ._objects import Commit

if TYPE_CHECKING:
    from ._app import HubApp


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
            start = repo.resolve(str(body.get("startingPoint") or "main"), state)
            check_ref_name(branch, "branch")
            if branch in state.heads:
                raise ApiError(409, f"Reference already exists: refs/heads/{branch}")
            state.heads[branch] = start.id
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
            target = repo.resolve(rev, state)
            new_tag = check_ref_name(str(body.get("tag") or ""), "tag")
            if new_tag in state.tags:
                raise ApiError(409, f"Reference already exists: refs/tags/{new_tag}")
            state.tags[new_tag] = target.id
        repo.save_state(state)
    return Response.json({})


def _log_item(commit: Commit, formatted: bool) -> dict[str, Any]:
    item: dict[str, Any] = {"id": commit.id, "title": commit.title, "message": commit.message, "date": commit.date,
                            "authors": [{"user": commit.author}]}
    if formatted:  # the Hub renders Markdown; escaped text is the faithful subset without a Markdown renderer
        item["formatted"] = {"title": html.escape(commit.title), "message": html.escape(commit.message)}
    return item


def list_commits(app: HubApp, request: Request, type: str, ns: str, name: str, rev: str) -> Response:
    repo, state = app.open_repo(request, repo_type_of(type), ns, name)
    formatted = "formatted" in request.query.get("expand[]", []) + request.query.get("expand", [])
    items = [_log_item(c, formatted) for c in repo.ancestors(repo.resolve(rev, state).id)]
    return paged_json(request, items, app.page_size)


def super_squash(app: HubApp, request: Request, type: str, ns: str, name: str, rev: str) -> Response:
    repo, _ = app.open_repo(request, repo_type_of(type), ns, name, write="squash a branch's history")
    body = request.json_object()
    title = body.get("message") or f"Super-squash branch '{rev}'"
    if not isinstance(title, str):
        raise bad_request("'message' must be a string")
    author = app.identify(request).user
    with repo.lock:
        state = repo.state()
        if rev.removeprefix("refs/heads/") not in state.heads:
            raise ApiError(404, f"Invalid rev id: {rev} is not a branch", code="RevisionNotFound")
        branch_name = rev.removeprefix("refs/heads/")
        new = squash(repo, repo.resolve(branch_name, state), title, author)
        state.heads[branch_name] = new.id
        repo.save_state(state)
    return Response.json({"commitId": new.id})


ROUTES = (
    Route.of("refs", "GET", API_REPO + r"/refs$", list_refs),
    Route.of("branch", "POST DELETE", API_REPO + r"/branch/(?P<branch>[^/]+)$", branch),
    Route.of("tag", "POST DELETE", API_REPO + r"/tag/(?P<rev>[^/]+)$", tag),
    Route.of("commits", "GET", API_REPO + r"/commits/(?P<rev>[^/]+)$", list_commits),
    Route.of("super-squash", "POST", API_REPO + r"/super-squash/(?P<rev>[^/]+)$", super_squash),
)
