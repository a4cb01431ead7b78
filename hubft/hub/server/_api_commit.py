"""Endpoints that write: README validation, the preupload decision, and the NDJSON commit.

A commit is applied under the repo's lock: read the branch head, check ``parentCommit`` against it (412 when
stale, which is how concurrent pushes to one branch are serialised: exactly one commit wins each parent), apply the
operations to a copy of the head's tree, store the new commit and move the ref. Inline file contents are stored
before the lock is taken; they are content-addressed, so a failed commit leaves nothing visible behind.

With ``create_pr=1`` the commit opens a pull request instead: any authenticated caller who can see the repo may
do that (its preupload and LFS upload need no write rights either), against a branch only; ``parentCommit`` then
says where the pull request starts. A ``deletedFile`` or ``deletedFolder`` line deletes whatever is at its path,
a file or a whole folder, as on the Hub (``delete_folder`` may send either).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import TYPE_CHECKING, Any

from hubft.faults import fault_point

from ._api_discussions import commit_event, open_discussion
from ._api_repos import repo_url
from ._auth import Identity, check_write, require_identity
from ._card_rules import validate_metadata
from ._errors import ApiError, bad_request, revision_not_found
from ._http import API_REPO, Request, Response, Route, repo_type_of
from ._names import check_path
from ._objects import Commit, FileEntry, folders_of, utc_now
from ._root import Storage
from ._storage import Repo, RepoState
from ._upload_rules import is_ignored, lfs_patterns, wants_lfs

if TYPE_CHECKING:
    from ._app import HubApp

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def validate_yaml(app: HubApp, request: Request) -> Response:
    body = request.json_object()
    content = body.get("content")
    if not isinstance(content, str):
        raise bad_request("Missing 'content' (the README text) in the request body")
    errors, warnings = validate_metadata(content, str(body.get("repoType") or "model"))
    answer = {"errors": [{"message": m} for m in errors], "warnings": [{"message": m} for m in warnings]}
    if errors:
        raise ApiError(400, "Invalid metadata in README.md: " + "; ".join(errors), body=answer)
    return Response.json(answer)


def _text(storage: Storage, commit: Commit, path: str) -> str | None:
    entry = commit.tree.get(path)
    return None if entry is None else storage.read(entry).decode("utf-8", "replace")


def preupload(app: HubApp, request: Request, type: str, ns: str, name: str, rev: str) -> Response:
    if request.flag("create_pr") or rev.startswith("refs/pr/"):  # pull requests need a user, not write rights
        repo, state = app.open_repo(request, repo_type_of(type), ns, name)
        require_identity(app.identify(request), "open a pull request")
    else:
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
        else:  # deletedFile or deletedFolder: whatever is there, a file or a folder
            doomed = [p for p in tree if p == path or p.startswith(path + "/")]
            if not doomed:
                what = "folder" if kind == "deletedFolder" else "file"
                raise ApiError(404, f"A {what} with this name doesn't exist: {path!r}", code="EntryNotFound")
            for p in doomed:
                del tree[p]
    clashes = sorted(folders_of(tree) & set(tree))
    if clashes:
        raise bad_request(f"Paths {clashes} would be both a file and a folder")
    return tree


def _check_rights(identity: Identity | None, state: RepoState, rev: str, create_pr: bool) -> Identity:
    """Opening a pull request needs any token; pushing to one, its author's or write rights; else write rights."""
    identity = require_identity(identity, "commit")
    if create_pr:
        return identity
    if rev.startswith("refs/pr/"):
        record = next((d for d in state.discussions if str(d["num"]) == rev[len("refs/pr/"):]), None)
        if record is not None and record["author"].lower() == identity.user.lower():
            return identity
    return check_write(identity, state.id.split("/")[0], "commit")


def _head(repo: Repo, state: RepoState, rev: str, parent: Any, create_pr: bool) -> Commit:
    """The commit the new one goes on top of: the ref's head, or for a new pull request ``parent`` if given.

    Raises:
        ApiError: 404 ``RevisionNotFound`` for a revision that is not a branch (a pull request is opened against a
            branch only, as on the Hub) or an unknown one; 400 for a tag or a sha; 412 for a stale ``parent``.
    """
    if create_pr and rev.removeprefix("refs/heads/") not in state.heads:
        raise ApiError(404, f"Invalid rev id: {rev} (a pull request targets a branch)", code="RevisionNotFound")
    if not create_pr and state.writable_ref(rev) is None:
        repo.resolve(rev, state)  # 404 when it names nothing at all
        raise bad_request(f"Cannot commit to {rev!r}: commits go to a branch or a refs/pr/N ref")
    head = repo.resolve(rev, state)
    if parent is None:
        return head
    full = repo.expand(parent) if isinstance(parent, str) else None  # a short sha is accepted, as on the Hub
    if create_pr:
        if full is None:
            raise revision_not_found(str(parent))
        return repo.resolve(full, state)
    if full != head.id:
        raise ApiError(412, f"Parent commit {parent} is not the head of {rev!r} ({head.id}): pull and retry")
    return head


def commit(app: HubApp, request: Request, type: str, ns: str, name: str, rev: str) -> Response:
    repo_type = repo_type_of(type)
    repo, _ = app.open_repo(request, repo_type, ns, name)
    identity = require_identity(app.identify(request), "commit")
    header, operations = _parse_operations(app, repo, request.body.read_all())
    title, parent = header.get("summary"), header.get("parentCommit")
    if not isinstance(title, str) or not title.strip():
        raise bad_request("The commit header needs a non-empty 'summary'")
    create_pr = request.flag("create_pr")
    with repo.lock:
        state = repo.state()
        _check_rights(identity, state, rev, create_pr)
        head = _head(repo, state, rev, parent, create_pr)
        new = Commit((head.id,), title.strip(), str(header.get("description") or ""), identity.user, utc_now(),
                     _apply(head.tree, operations))
        repo.write_commit(new)
        fault_point("hub_commit_written")  # stored, no ref moved yet: a crash here leaves the ref where it was
        pr_num = None
        if create_pr:
            pr_num = open_discussion(state, identity.user, title.strip(), str(header.get("description") or ""),
                                     pull_request=True, base=rev.removeprefix("refs/heads/"), fork_point=head.id)["num"]
            table, key = state.prs, str(pr_num)
        else:
            table, key = state.writable_ref(rev)
        if table is state.prs:
            record = next((d for d in state.discussions if str(d["num"]) == key), None)  # none for older PRs
            if record is not None:
                record["events"].append(commit_event(identity.user, new))
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
