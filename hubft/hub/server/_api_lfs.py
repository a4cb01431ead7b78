"""The git-lfs Batch API (``basic`` transfer) used to upload large files before they are committed.

The client sends no credentials on the upload ``PUT``, so each upload URL is self-authorising: it carries an HMAC
of (repo, oid, size) under the server's secret, handed out only by the authenticated batch call. The upload body is
streamed to disk while hashing and refused unless its size and sha256 match the oid. A stored object is then
recorded as belonging to the repo, which is what a later ``lfsFile`` commit line is checked against.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import TYPE_CHECKING

from ._auth import require_identity
from ._errors import ApiError, bad_request, repo_not_found
from ._http import GIT_REPO, Request, Response, Route, repo_type_of, url_prefix
from ._names import split_repo_id

if TYPE_CHECKING:
    from ._app import HubApp

_LFS_JSON = {"Content-Type": "application/vnd.git-lfs+json"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _signature(app: HubApp, repo_type: str, repo_id: str, oid: str, size: int) -> str:
    return hmac.new(app.lfs_secret, f"{repo_type}:{repo_id}:{oid}:{size}".encode(), hashlib.sha256).hexdigest()


def batch(app: HubApp, request: Request, prefix: str | None, ns: str, name: str) -> Response:
    repo_type = repo_type_of(prefix)
    body = request.json_object()
    ref = body.get("ref") if isinstance(body.get("ref"), dict) else {}
    if str(ref.get("name") or "refs/pr/").startswith("refs/pr/"):
        # No ref (the client omits it when opening a pull request) or a PR ref: a user suffices, as on the Hub;
        # the commit endpoint decides what lands where.
        repo, state = app.open_repo(request, repo_type, ns, name)
        require_identity(app.identify(request), "upload files for a pull request")
    else:
        repo, state = app.open_repo(request, repo_type, ns, name, write="upload files")
    if body.get("operation") != "upload":
        raise bad_request(f"Unsupported LFS operation {body.get('operation')!r}: this local hub accepts 'upload'")
    objects = body.get("objects")
    if not isinstance(objects, list):
        raise bad_request("Missing 'objects' list in the LFS batch request")
    base = f"{request.base_url}/{url_prefix(repo_type)}{state.id}.git/info/lfs/objects"
    answers = []
    for item in objects:
        oid, size = (item.get("oid"), item.get("size")) if isinstance(item, dict) else (None, None)
        if not isinstance(oid, str) or not _SHA256.match(oid) or not isinstance(size, int) or size < 0:
            answers.append({"oid": str(oid), "size": size if isinstance(size, int) else 0,
                            "error": {"code": 422, "message": "oid must be a sha256 hex string and size an int >= 0"}})
        elif repo.owns_lfs(oid, size):
            answers.append({"oid": oid, "size": size})
        else:
            signature = _signature(app, repo_type, state.id, oid, size)
            answers.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                "upload": {"href": f"{base}/{oid}/{size}?sig={signature}", "header": {}},
                "verify": {"href": f"{base}/verify", "header": {}},
            }})
    return Response.json({"transfer": "basic", "objects": answers, "hash_algo": "sha256"}, headers=_LFS_JSON)


def upload(app: HubApp, request: Request, prefix: str | None, ns: str, name: str, oid: str, size: str) -> Response:
    repo_type = repo_type_of(prefix)
    repo_id = app.storage.canonical_id(repo_type, split_repo_id(ns, name, repo_type)) or f"{ns}/{name}"
    expected = _signature(app, repo_type, repo_id, oid, int(size))
    if not hmac.compare_digest(expected, request.param("sig") or ""):
        raise ApiError(403, "Invalid or missing upload signature: ask the LFS batch endpoint for an upload URL")
    repo = app.storage.repo(repo_type, repo_id)
    if repo is None:
        raise repo_not_found(repo_type, repo_id)
    if request.body.length != int(size):
        raise bad_request(f"Upload body has {request.body.length} bytes, the batch call announced {size}")
    app.storage.blobs.put_stream(request.body, int(size), oid)
    repo.mark_lfs(oid)
    return Response(200)


def verify(app: HubApp, request: Request, prefix: str | None, ns: str, name: str) -> Response:
    repo, _ = app.open_repo(request, repo_type_of(prefix), ns, name)
    require_identity(app.identify(request), "verify an upload")
    body = request.json_object()
    oid, size = body.get("oid"), body.get("size")
    if not isinstance(oid, str) or not isinstance(size, int) or not repo.owns_lfs(oid, size):
        raise ApiError(404, f"LFS object {oid!r} of size {size!r} was not uploaded to this repo")
    return Response.json({"oid": oid, "size": size}, headers=_LFS_JSON)


ROUTES = (
    Route.of("lfs-batch", "POST", GIT_REPO + r"\.git/info/lfs/objects/batch$", batch),
    Route.of("lfs-verify", "POST", GIT_REPO + r"\.git/info/lfs/objects/verify$", verify),
    Route.of("lfs-upload", "PUT", GIT_REPO + r"\.git/info/lfs/objects/(?P<oid>[0-9a-f]{64})/(?P<size>\d+)$", upload),
)
