"""Endpoints that read files: ``resolve`` downloads, tree listings and paths-info.

Downloads are served directly with 200 (or 206 for a ``Range``), never redirected: a same-origin redirect would
need the Hub headers on the target too, and a cross-origin one would need a second host. ``HEAD`` answers with
exactly the headers of ``GET``. ``ETag`` is the git blob id for regular files and the sha256 for LFS files, which
also get ``X-Linked-Etag``/``X-Linked-Size`` like on the Hub.
"""

from __future__ import annotations

import mimetypes
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from ._errors import ApiError, bad_request, entry_not_found
from ._http import API_REPO, GIT_REPO, Request, Response, Route, paged_json, repo_type_of
from ._names import check_path
from ._objects import Commit, FileEntry, folder_oid, folders_of
from ._storage import Repo

if TYPE_CHECKING:
    from ._app import HubApp

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range a ``Range`` header asks for, ``None`` to send the whole file.

    Raises:
        ApiError: 416 for a range that starts past the end.
    """
    found = _RANGE.match((header or "").strip())
    if found is None or found.group(1) == found.group(2) == "":
        return None  # absent, or a form (e.g. several ranges) that HTTP allows us to answer with the whole file
    first, last = found.groups()
    if first:
        start, end = int(first), min(int(last) if last else size - 1, size - 1)
    else:
        start, end = max(size - int(last), 0), size - 1
    if start >= size or start > end:
        raise ApiError(416, f"Range {header!r} is outside the file ({size} bytes)",
                       headers={"Content-Range": f"bytes */{size}"})
    return start, end


def resolve(app: HubApp, request: Request, prefix: str | None, ns: str, name: str, rev: str, path: str) -> Response:
    check_path(path)
    repo, state = app.open_repo(request, repo_type_of(prefix), ns, name, files=path)
    commit = repo.resolve(rev, state)
    entry = commit.tree.get(path)
    if entry is None:
        raise entry_not_found(path, commit.id)
    if not app.storage.blobs.has(entry.sha256):  # its LFS content was permanently deleted, history kept
        raise ApiError(404, f"The content of {path!r} was permanently deleted from this repo", code="EntryNotFound",
                       headers={"X-Repo-Commit": commit.id})
    headers = {
        "X-Repo-Commit": commit.id,
        "ETag": f'"{entry.etag}"',
        "Accept-Ranges": "bytes",
        "Content-Type": mimetypes.guess_type(path)[0] or "application/octet-stream",
    }
    if entry.lfs:
        headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
    blob = app.storage.blobs.path(entry.sha256)
    span = _byte_range(request.headers.get("range"), entry.size) if request.method == "GET" else None
    if span is None:
        return Response(200, headers, file=blob, length=entry.size)
    start, end = span
    headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
    return Response(206, headers, file=blob, offset=start, length=end - start + 1)


def _folder_item(tree: dict[str, FileEntry], folder: str) -> dict[str, Any]:
    return {"type": "directory", "path": folder, "oid": folder_oid(tree, folder), "size": 0}


def _last_commits(repo: Repo, head: Commit, paths: set[str]) -> dict[str, dict[str, str]]:
    """For each path (file or folder), the newest first-parent commit that changed it."""
    found: dict[str, dict[str, str]] = {}
    for commit in repo.first_parent_history(head.id):
        parent = repo.commit(commit.parents[0]).tree if commit.parents else {}
        changed = {p for p in set(commit.tree) | set(parent) if commit.tree.get(p) != parent.get(p)}
        changed |= folders_of(changed)
        for path in paths & changed:
            found[path] = commit.summary()
        paths = paths - changed
        if not paths:
            break
    return found


def tree(app: HubApp, request: Request, type: str, ns: str, name: str, rev: str, path: str | None) -> Response:
    repo, state = app.open_repo(request, repo_type_of(type), ns, name)
    commit = repo.resolve(rev, state)
    folder = (path or "").strip("/")
    if folder:
        check_path(folder)
    prefix = f"{folder}/" if folder else ""
    files = sorted(p for p in commit.tree if p.startswith(prefix))
    if folder and not files:
        raise entry_not_found(folder, commit.id)
    folders = sorted(d for d in folders_of(files) if d.startswith(prefix))
    if not request.flag("recursive"):
        files = [p for p in files if "/" not in p[len(prefix):]]
        folders = [d for d in folders if "/" not in d[len(prefix):]]
    items = [_folder_item(commit.tree, d) for d in folders] + [commit.tree[p].wire(p) for p in files]
    if request.flag("expand"):
        last = _last_commits(repo, commit, {item["path"] for item in items})
        for item in items:
            item["lastCommit"] = last.get(item["path"])
    return paged_json(request, items, app.page_size)


def paths_info(app: HubApp, request: Request, type: str, ns: str, name: str, rev: str) -> Response:
    repo, state = app.open_repo(request, repo_type_of(type), ns, name)
    commit = repo.resolve(rev, state)
    if "json" in (request.headers.get("content-type") or ""):
        form = request.json_object()
        paths, expand = form.get("paths") or [], bool(form.get("expand"))
    else:
        form = parse_qs(request.body.read_all().decode("utf-8", "replace"), keep_blank_values=True)
        paths, expand = form.get("paths", []), (form.get("expand") or ["false"])[0].lower() in ("1", "true")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise bad_request("'paths' must be a list of strings")
    folders = folders_of(commit.tree)
    items = []
    for path in (check_path(p.strip("/")) for p in paths):
        if path in commit.tree:
            items.append(commit.tree[path].wire(path))
        elif path in folders:
            items.append(_folder_item(commit.tree, path))
    if expand:
        last = _last_commits(repo, commit, {item["path"] for item in items})
        for item in items:
            item["lastCommit"] = last.get(item["path"])
    return Response.json(items)


ROUTES = (
    Route.of("tree", "GET", API_REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", tree),
    Route.of("paths-info", "POST", API_REPO + r"/paths-info/(?P<rev>[^/]+)$", paths_info),
    Route.of("resolve", "GET", GIT_REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", resolve),
)
