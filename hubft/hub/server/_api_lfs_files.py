"""``list_lfs_files`` and ``permanently_delete_lfs_files``: the LFS objects of a repo, and freeing their space.

An LFS object belongs to a repo once uploaded to it (``Repo.lfs_markers``). Deleting it forgets that, rewrites the
history without the files that held it when ``rewriteHistory`` is true (the default: every branch, tag and pull
request ref moves to the rewritten commits, see ``_history.rewrite``), and frees the content unless another repo
still uses the same bytes (the blob store is shared). Without the rewrite, the old commits keep pointing at content
that is gone; downloading those files then answers ``EntryNotFound``, which is the corruption the client warns of.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ._errors import bad_request
from ._history import rewrite
from ._http import API_REPO, Request, Response, Route, paged_json, repo_type_of
from ._storage import Repo, RepoState

if TYPE_CHECKING:
    from ._app import HubApp

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _stamp(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _filenames(repo: Repo, state: RepoState) -> dict[str, str]:
    """For each sha256, a path that holds it in the newest commit reachable from a ref that has one."""
    names: dict[str, str] = {}
    for commit in repo.ancestors_of(list(state.ref_targets().values())):
        for path, entry in commit.tree.items():
            names.setdefault(entry.sha256, path)
    return names


def list_lfs_files(app: HubApp, request: Request, type: str, ns: str, name: str) -> Response:
    repo, state = app.open_repo(request, repo_type_of(type), ns, name, write="list LFS files", level="admin")
    names = _filenames(repo, state)
    items: list[dict[str, Any]] = []
    for sha256, pushed in repo.lfs_markers().items():
        path = app.storage.blobs.path(sha256)
        if path.exists():
            items.append({"fileOid": sha256, "oid": sha256, "filename": names.get(sha256, ""),
                          "pushedAt": _stamp(pushed), "ref": None, "size": path.stat().st_size})
    return paged_json(request, items, app.page_size)


def delete_lfs_files(app: HubApp, request: Request, type: str, ns: str, name: str) -> Response:
    repo, _ = app.open_repo(request, repo_type_of(type), ns, name, write="delete LFS files", level="admin")
    deletions = request.json_object().get("deletions")
    shas = deletions.get("sha") if isinstance(deletions, dict) else None
    if not isinstance(shas, list) or not all(isinstance(s, str) and _SHA256.match(s) for s in shas):
        raise bad_request("Expected {'deletions': {'sha': [sha256, ...], 'rewriteHistory': bool}}")
    doomed = set(shas)
    with repo.lock:
        state = repo.state()
        if deletions.get("rewriteHistory", True):
            mapping = rewrite(repo, list(state.ref_targets().values()), lambda e: e.lfs and e.sha256 in doomed)
            for table in (state.heads, state.tags, state.prs):
                table.update({k: mapping.get(v, v) for k, v in table.items()})
            for record in state.discussions:
                for key in ("forkPoint", "mergeCommitId"):
                    if record.get(key):
                        record[key] = mapping.get(record[key], record[key])
            repo.save_state(state)
        for sha256 in doomed:
            repo.unmark_lfs(sha256)
    for sha256 in doomed:
        if not app.storage.is_referenced(sha256, ignore=repo):
            app.storage.blobs.delete(sha256)
    return Response.json({})


ROUTES = (
    Route.of("lfs-files", "GET", API_REPO + r"/lfs-files$", list_lfs_files),
    Route.of("lfs-files-delete", "POST", API_REPO + r"/lfs-files/batch$", delete_lfs_files),
)
