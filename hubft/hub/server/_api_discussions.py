"""Discussions and pull requests: opening, listing, commenting, closing and merging them.

A pull request is a discussion with a ref ``refs/pr/N`` (``RepoState.prs``) and a record in
``RepoState.discussions``: its target branch (``base``), the commit it started from (``forkPoint``), its status
(``draft``, ``open``, ``closed`` or ``merged``) and its events (comments, commits, status and title changes), in the
shapes ``huggingface_hub``'s ``deserialize_event`` reads. Discussions and pull requests share one numbering.

Any authenticated caller who can see a repo may open one and comment; its author or a writer may change its status
or title; merging needs write rights on the target branch. A merge is a file-level three-way merge (``_history``)
between the fork point, the target branch and the pull request, recorded as a commit with both heads as parents;
files changed differently on both sides make it fail with 409 and are listed as ``filesWithConflicts``.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from ._auth import check_write, require_identity
from ._errors import ApiError, bad_request
from ._history import merge_trees
from ._http import API_REPO, Request, Response, Route, repo_type_of
from ._objects import Commit, utc_now
from ._storage import Repo, RepoState

if TYPE_CHECKING:
    from ._app import HubApp

PAGE_SIZE = 50
_STATUS_FILTERS = ("all", "open", "closed")
_TYPE_FILTERS = ("all", "discussion", "pull_request")


def event(kind: str, author: str, data: dict[str, Any]) -> dict[str, Any]:
    """One discussion event, as the client deserialises it."""
    return {"id": secrets.token_hex(12), "type": kind, "createdAt": utc_now(), "author": {"name": author},
            "data": data}


def comment_event(author: str, text: str) -> dict[str, Any]:
    """A comment event."""
    return event("comment", author, {"edited": False, "hidden": False, "latest": {"raw": text, "html": text}})


def commit_event(author: str, commit: Commit) -> dict[str, Any]:
    """The event of a commit pushed to a pull request."""
    return event("commit", author, {"subject": commit.title, "oid": commit.id})


def open_discussion(state: RepoState, author: str, title: str, description: str, *, pull_request: bool,
                    base: str | None = None, fork_point: str | None = None, status: str = "open") -> dict[str, Any]:
    """Add a discussion (or, with ``pull_request``, a pull request from ``fork_point`` into ``base``) to ``state``.

    A pull request's ref ``refs/pr/N`` starts at ``fork_point``; the caller moves it to its first commit.
    """
    num = max([int(n) for n in state.prs] + [d["num"] for d in state.discussions], default=0) + 1
    record = {"num": num, "title": title, "author": author, "createdAt": utc_now(), "status": status,
              "isPullRequest": pull_request, "events": [comment_event(author, description)]}
    if pull_request:
        record.update(base=base, forkPoint=fork_point, mergeCommitId=None)
        state.prs[str(num)] = fork_point
    state.discussions.append(record)
    return record


def find(state: RepoState, num: int | str) -> dict[str, Any]:
    """The discussion ``num``.

    Raises:
        ApiError: 404 when there is none.
    """
    found = next((d for d in state.discussions if str(d["num"]) == str(num)), None)
    if found is None:
        raise ApiError(404, f"Discussion {num} not found in {state.id}")
    return found


def _summary(record: dict[str, Any], state: RepoState) -> dict[str, Any]:
    return {"num": record["num"], "title": record["title"], "author": {"name": record["author"]},
            "createdAt": record["createdAt"], "status": record["status"], "isPullRequest": record["isPullRequest"],
            "repo": {"name": state.id, "type": state.type}}


def list_discussions(app: HubApp, request: Request, type: str, ns: str, name: str) -> Response:
    _, state = app.open_repo(request, repo_type_of(type), ns, name)
    kind, status = request.param("type") or "all", request.param("status") or "all"
    if kind not in _TYPE_FILTERS or status not in _STATUS_FILTERS:
        raise bad_request(f"type must be one of {_TYPE_FILTERS} and status one of {_STATUS_FILTERS}")
    author, page = request.param("author"), int(request.param("p") or 0)
    chosen = [d for d in reversed(state.discussions)
              if (kind == "all" or d["isPullRequest"] == (kind == "pull_request"))
              and (status == "all" or (d["status"] in ("open", "draft")) == (status == "open"))
              and (author is None or d["author"].lower() == author.lower())]
    start = page * PAGE_SIZE
    return Response.json({"discussions": [_summary(d, state) for d in chosen[start:start + PAGE_SIZE]],
                          "count": len(chosen), "start": start,
                          "numClosedDiscussions": sum(d["status"] in ("closed", "merged") for d in chosen)})


def create_discussion(app: HubApp, request: Request, type: str, ns: str, name: str) -> Response:
    repo, _ = app.open_repo(request, repo_type_of(type), ns, name)
    author = require_identity(app.identify(request), "open a discussion").user
    body = request.json_object()
    title, description = str(body.get("title") or "").strip(), str(body.get("description") or "")
    if not 3 <= len(title) <= 200:
        raise bad_request(f"A title needs 3 to 200 characters, got {len(title)}")
    with repo.lock:
        state = repo.state()
        base = state.heads["main"]
        record = open_discussion(state, author, title, description, pull_request=bool(body.get("pullRequest")),
                                 base="main", fork_point=base, status="draft" if body.get("pullRequest") else "open")
        repo.save_state(state)
    return Response.json({"num": record["num"], "pullRequest": record["isPullRequest"]})


def _conflicts(repo: Repo, state: RepoState, record: dict[str, Any]) -> list[str]:
    if not record["isPullRequest"] or record["status"] in ("merged", "closed") or record["base"] not in state.heads:
        return []
    trees = [repo.resolve(sha, state).tree for sha in
             (record["forkPoint"], state.heads[record["base"]], state.prs[str(record["num"])])]
    return merge_trees(*trees)[1]


def details(app: HubApp, request: Request, type: str, ns: str, name: str, num: str) -> Response:
    repo, state = app.open_repo(request, repo_type_of(type), ns, name)
    record = find(state, num)
    body = {**_summary(record, state), "events": record["events"], "diff": ""}
    if record["isPullRequest"]:
        body["changes"] = {"base": f"refs/heads/{record['base']}", "mergeCommitId": record.get("mergeCommitId")}
        body["filesWithConflicts"] = _conflicts(repo, state, record)
    return Response.json(body)


def _change(app: HubApp, request: Request, type: str, ns: str, name: str, num: str, resource: str) -> Response:
    repo, _ = app.open_repo(request, repo_type_of(type), ns, name)
    identity = require_identity(app.identify(request), f"change a discussion's {resource}")
    body = request.json_object()
    with repo.lock:
        state = repo.state()
        record = find(state, num)
        if resource != "comment" and identity.user.lower() != record["author"].lower():
            check_write(identity, state.id.split("/")[0], f"change the {resource} of someone else's discussion")
        if resource == "comment":
            new, key = comment_event(identity.user, str(body.get("comment") or "")), "newMessage"
        elif resource == "title":
            title = str(body.get("title") or "").strip()
            if not 3 <= len(title) <= 200:
                raise bad_request(f"A title needs 3 to 200 characters, got {len(title)}")
            new, key = event("title-change", identity.user, {"from": record["title"], "to": title}), "newTitle"
            record["title"] = title
        else:
            status = body.get("status")
            if status not in ("open", "closed") or record["status"] == "merged":
                raise bad_request(f"Cannot set status {status!r} on a {record['status']} discussion")
            new, key = event("status-change", identity.user, {"status": status}), "newStatus"
            record["status"] = status
        record["events"].append(new)
        repo.save_state(state)
    return Response.json({key: new})


def comment(app: HubApp, request: Request, type: str, ns: str, name: str, num: str) -> Response:
    return _change(app, request, type, ns, name, num, "comment")


def status(app: HubApp, request: Request, type: str, ns: str, name: str, num: str) -> Response:
    return _change(app, request, type, ns, name, num, "status")


def title(app: HubApp, request: Request, type: str, ns: str, name: str, num: str) -> Response:
    return _change(app, request, type, ns, name, num, "title")


def merge(app: HubApp, request: Request, type: str, ns: str, name: str, num: str) -> Response:
    repo, _ = app.open_repo(request, repo_type_of(type), ns, name, write="merge a pull request")
    author = app.identify(request).user
    note = request.json_object().get("comment")
    with repo.lock:
        state = repo.state()
        record = find(state, num)
        if not record["isPullRequest"] or record["status"] in ("merged", "closed"):
            raise bad_request(f"Discussion {num} is not an open pull request (it is {record['status']})")
        if record["base"] not in state.heads:
            raise ApiError(404, f"The target branch {record['base']!r} no longer exists", code="RevisionNotFound")
        fork, ours, theirs = (repo.resolve(sha, state) for sha in
                              (record["forkPoint"], state.heads[record["base"]], state.prs[str(record["num"])]))
        tree, conflicts = merge_trees(fork.tree, ours.tree, theirs.tree)
        if conflicts:
            raise ApiError(409, f"Pull request {num} conflicts with {record['base']} in {', '.join(conflicts)}",
                           body={"filesWithConflicts": conflicts})
        new = Commit((ours.id, theirs.id), f"Merge refs/pr/{num}", record["title"], author, utc_now(), tree)
        repo.write_commit(new)
        state.heads[record["base"]] = new.id
        record.update(status="merged", mergeCommitId=new.id)
        if note:
            record["events"].append(comment_event(author, str(note)))
        record["events"].append(event("status-change", author, {"status": "merged"}))
        repo.save_state(state)
    return Response.json({"mergeCommitId": new.id})


_ONE = API_REPO + r"/discussions/(?P<num>\d+)"
ROUTES = (
    Route.of("discussions", "GET", API_REPO + r"/discussions$", list_discussions),
    Route.of("discussion-create", "POST", API_REPO + r"/discussions$", create_discussion),
    Route.of("discussion", "GET", _ONE + "$", details),
    Route.of("discussion-comment", "POST", _ONE + "/comment$", comment),
    Route.of("discussion-status", "POST", _ONE + "/status$", status),
    Route.of("discussion-title", "POST", _ONE + "/title$", title),
    Route.of("discussion-merge", "POST", _ONE + "/merge$", merge),
)
