"""Endpoints that write: README validation, the preupload decision, and the NDJSON commit.

A commit is applied under the repo's lock: read the branch head, check ``parentCommit`` against it (412 when
stale, which is how concurrent pushes to one branch are serialised), apply the operations to a copy of the head's
tree, store the new commit and move the ref. Inline file contents are stored before the lock is taken; they are
content-addressed, so a failed commit leaves nothing visible behind.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import TYPE_CHECKING, Any

import yaml

from ._api_repos import front_matter, repo_url
from ._errors import ApiError, bad_request, revision_not_found
from ._http import API_REPO, Request, Response, Route, repo_type_of
from ._names import check_path
from ._objects import Commit, FileEntry, folders_of, utc_now
from ._storage import Repo, Storage
from ._upload_rules import is_ignored, lfs_patterns, wants_lfs

if TYPE_CHECKING:
    from ._app import HubApp

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def validate_yaml(app: HubApp, request: Request) -> Response:
    body = request.json_object()
    content = body.get("content")
    if not isinstance(content, str):
        raise bad_request("Missing 'content' (the README text) in the request body")
    try:
        front_matter(content)
    except (ValueError, yaml.YAMLError) as e:
        message = f"Invalid YAML metadata: {e}"
        raise ApiError(400, message, body={"errors": [{"message": message}], "warnings": []}) from None
    return Response.json({"errors": [], "warnings": []})


def _text(storage: Storage, commit: Commit, path: str) -> str | None:
    entry = commit.tree.get(path)
    return None if entry is None else storage.read(entry).decode("utf-8", "replace")


def preupload(app: HubApp, request: Request, type: str, ns: str, name: str, rev: str) -> Response:
    repo, state = app.open_repo(request, repo_type_of(type), ns, name, write="upload files")
    body = request.json_object()
    files = body.get("files")
    if not isinstance(files, list):
        raise bad_request("Missing 'files' list in the request body")
    commit = repo.resolve(rev, state)
    patterns = lfs_patterns(_text(app.storage, commit, ".gitattributes") or "")
    gitignore = body.get("gitIgnore") or _text(app.storage, commit, ".gitignore")
    answers = []
    for item in files:
        if not isinstance(item, dict) or not isinstance(item.get("size"), int) or item["size"] < 0:
            raise bad_request(f"Each file needs 'path' and a non-negative integer 'size', got {item!r}")
        path = check_path(item.get("path"))
        try:
            sample = base64.b64decode(item.get("sample") or "", validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(f"'sample' of {path!r} is not valid base64") from None
        existing = commit.tree.get(path)
        answers.append({
            "path": path,
            "uploadMode": "lfs" if wants_lfs(path, item["size"], sample, patterns) else "regular",
            "shouldIgnore": is_ignored(path, gitignore),
            "oid": existing.upload_oid() if existing else None,
        })
    return Response.json({"files": answers, "commitOid": commit.id})


def _parse_operations(app: HubApp, repo: Repo, raw: bytes) -> tuple[dict[str, Any], list[tuple[str, str, Any]]]:
    """The header and the operations ``(kind, path, entry)`` of an NDJSON commit body."""
    lines = []
    for number, line in enumerate(raw.splitlines(), 1):
        if line.strip():
            try:
                item = json.loads(line)
            except ValueError:
                raise bad_request(f"Line {number} of the commit body is not JSON") from None
            if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
                raise bad_request(f"Line {number} of the commit body must be {{'key': ..., 'value': {{...}}}}")
            lines.append((item.get("key"), item["value"]))
    if not lines or lines[0][0] != "header":
        raise bad_request("The commit body must start with a 'header' line")
    operations = []
    for key, value in lines[1:]:
        path = check_path(value.get("path", "").rstrip("/") if key == "deletedFolder" else value.get("path"))
        if key == "file":
            if value.get("encoding", "base64") != "base64":
                raise bad_request(f"Unsupported encoding {value.get('encoding')!r} for {path!r}: use base64")
            try:
                content = base64.b64decode(value.get("content") or "", validate=True)
            except (binascii.Error, ValueError):
                raise bad_request(f"Content of {path!r} is not valid base64") from None
            app.storage.blobs.put_bytes(content)
            operations.append(("add", path, FileEntry.regular(content)))
        elif key == "lfsFile":
            oid, size = value.get("oid"), value.get("size")
            if value.get("algo", "sha256") != "sha256" or not isinstance(oid, str) or not _SHA256.match(oid):
                raise bad_request(f"LFS file {path!r} needs a sha256 'oid'")
            if size is not None and (not isinstance(size, int) or size < 0):
                raise bad_request(f"Invalid size {size!r} for LFS file {path!r}")
            if not repo.owns_lfs(oid, size):
                raise bad_request(f"LFS object {oid} for {path!r} was not uploaded to this repo (or has another size)")
            size = app.storage.blobs.path(oid).stat().st_size if size is None else size
            operations.append(("add", path, FileEntry.large(oid, size)))
        elif key in ("deletedFile", "deletedFolder"):
            operations.append((key, path, None))
        else:
            raise bad_request(f"Unknown commit operation {key!r}: use file, lfsFile, deletedFile or deletedFolder")
    return lines[0][1], operations


def _apply(tree: dict[str, FileEntry], operations: list[tuple[str, str, Any]]) -> dict[str, FileEntry]:
    tree = dict(tree)
    for kind, path, entry in operations:
        if kind == "add":
            tree[path] = entry
        elif kind == "deletedFile":
            if path not in tree:
                raise ApiError(404, f"A file with this name doesn't exist: {path!r}", code="EntryNotFound")
            del tree[path]
        else:
            doomed = [p for p in tree if p.startswith(path + "/")]
            if not doomed:
                raise ApiError(404, f"A folder with this name doesn't exist: {path!r}", code="EntryNotFound")
            for p in doomed:
                del tree[p]
    clashes = sorted(folders_of(tree) & set(tree))
    if clashes:
        raise bad_request(f"Paths {clashes} would be both a file and a folder")
    return tree


def commit(app: HubApp, request: Request, type: str, ns: str, name: str, rev: str) -> Response:
    repo_type = repo_type_of(type)
    repo, _ = app.open_repo(request, repo_type, ns, name, write="commit")
    author = app.identify(request).user
    header, operations = _parse_operations(app, repo, request.body.read_all())
    title, parent = header.get("summary"), header.get("parentCommit")
    if not isinstance(title, str) or not title.strip():
        raise bad_request("The commit header needs a non-empty 'summary'")
    create_pr = request.flag("create_pr")
    with repo.lock:
        state = repo.state()
        ref = state.writable_ref(rev)
        if ref is None and not create_pr:
            if state.resolve(rev) is None and repo.commit(rev) is None:
                raise revision_not_found(rev)
            raise bad_request(f"Cannot commit to {rev!r}: commits go to a branch or a refs/pr/N ref")
        head = repo.resolve(rev, state)
        if parent is not None and parent != head.id:
            raise ApiError(412, f"Parent commit {parent} is not the head of {rev!r} ({head.id}): pull and retry")
        new = Commit((head.id,), title.strip(), str(header.get("description") or ""), author, utc_now(),
                     _apply(head.tree, operations))
        repo.write_commit(new)
        pr_num = None
        if create_pr:
            pr_num = max((int(n) for n in state.prs), default=0) + 1
            state.prs[str(pr_num)] = new.id
        else:
            table, key = ref
            table[key] = new.id
        repo.save_state(state)
    url = repo_url(request, repo_type, state.id)
    return Response.json({
        "success": True,
        "commitOid": new.id,
        "commitUrl": f"{url}/commit/{new.id}",
        "pullRequestUrl": f"{url}/discussions/{pr_num}" if pr_num else None,
        "hookOutput": "",
    })


ROUTES = (
    Route.of("validate-yaml", "POST", r"^/api/validate-yaml$", validate_yaml),
    Route.of("preupload", "POST", API_REPO + r"/preupload/(?P<rev>[^/]+)$", preupload),
    Route.of("commit", "POST", API_REPO + r"/commit/(?P<rev>[^/]+)$", commit),
)
