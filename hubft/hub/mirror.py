"""``hubft hub mirror``: copy a model or dataset repo, every branch and tag with its files (LFS included), from one
Hub endpoint to another, or through a bundle folder that can be carried into an air-gapped network.

A source or destination is either a Hub endpoint (``https://huggingface.co``, ``http://hub.lab:8000``) or a bundle
folder. A bundle holds the files by sha256 (``objects/``) and a manifest (``hubft-bundle.json``: the repo's type,
id and visibility, its refs, and the files of each commit a ref points to). Exporting into an existing bundle of the
same repo downloads only what it lacks.

What is copied is the *state of every ref*, not the history: on the destination, each branch gets one commit that
makes its files equal to the source branch's (nothing when they already are), and each tag a commit with the files
of its source commit. Commit ids therefore differ between the two hubs; file contents, paths, branch and tag names,
and visibility are the same. Branches and tags that exist only on the destination are left alone, and a tag that
already exists there is not moved.

Examples:
    >>> mirror("acme/resnet", "https://huggingface.co", "/media/usb/resnet")  # doctest: +SKIP
    >>> mirror("acme/resnet", "/media/usb/resnet", "http://hub.lab:8000", dest_token="hf_...")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubft.errors import ConfigError, HubError, one_line
from hubft.files import atomic_write_text, sha256_file
from hubft.hub.repo_id import check_repo_id

MANIFEST = "hubft-bundle.json"
REPO_TYPES = ("model", "dataset")
_TEMP_BRANCH = "hubft-mirror-tag"


@dataclass
class Snapshot:
    """A repo as a bundle records it: refs, and for each commit a ref points to, its files (path -> sha256)."""

    repo_type: str
    repo_id: str
    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, str]] = field(default_factory=dict)
    blobs: dict[str, str] = field(default_factory=dict)  # git blob id -> sha256, to skip known regular files


@dataclass(frozen=True)
class MirrorResult:
    """What a mirror did: the refs copied, the files downloaded, and the commits made on the destination."""

    branches: tuple[str, ...]
    tags: tuple[str, ...]
    downloaded: int
    commits: int


def is_endpoint(location: str) -> bool:
    """Whether a source or destination names a Hub endpoint (else it is a bundle folder)."""
    return location.startswith(("http://", "https://"))


def _load_bundle(folder: Path, repo_type: str, repo_id: str, *, must_exist: bool) -> Snapshot:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        if must_exist:
            raise ConfigError(f"{str(folder)!r} is not a hubft bundle (no {MANIFEST})",
                              fix="pass a folder written by `hubft hub mirror REPO --to FOLDER`, or a Hub URL")
        if folder.exists() and any(folder.iterdir()):
            raise ConfigError(f"bundle folder {str(folder)!r} is not empty and holds no bundle",
                              fix="pass a new or empty folder, or one written by `hubft hub mirror`")
        return Snapshot(repo_type, repo_id)
    data = json.loads(manifest.read_text())
    if data["type"] != repo_type or data["id"].lower() != repo_id.lower():
        raise ConfigError(f"bundle {str(folder)!r} holds {data['type']} {data['id']}, not {repo_type} {repo_id}",
                          fix="pass the matching --repo-type and repo id, or another folder")
    return Snapshot(data["type"], data["id"], data["private"], data["branches"], data["tags"], data["commits"],
                    data.get("blobs", {}))


def _save_bundle(folder: Path, snap: Snapshot) -> None:
    data = {"format": 1, "type": snap.repo_type, "id": snap.repo_id, "private": snap.private,
            "branches": snap.branches, "tags": snap.tags, "commits": snap.commits, "blobs": snap.blobs}
    atomic_write_text(folder / MANIFEST, json.dumps(data, indent=1) + "\n")


@contextlib.contextmanager
def _hub_errors(where: str) -> Iterator[None]:
    """Turn the client's errors into one-line :class:`HubError` s that say which side failed."""
    import httpx2  # huggingface_hub's HTTP layer: connection errors surface as its TransportError
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        yield
    except RepositoryNotFoundError:
        raise HubError(f"the repo is not found at {where} (or its token may not see it)",
                       fix="check the repo id, --repo-type and the token for that side") from None
    except (HfHubHTTPError, RevisionNotFoundError, OSError, httpx2.TransportError) as e:
        raise HubError(f"{where} failed: {one_line(e)}",
                       fix="check the URL, that the hub is up, and the token for that side") from None


def export(repo_id: str, endpoint: str, folder: Path, *, repo_type: str, token: str | None) -> tuple[Snapshot, int]:
    """Write (or refresh) the bundle of ``repo_id`` at ``endpoint`` into ``folder``; return it and the files fetched."""
    from huggingface_hub import HfApi

    snap = _load_bundle(folder, repo_type, repo_id, must_exist=False)
    api = HfApi(endpoint=endpoint.rstrip("/"), token=token or False)
    downloaded = 0
    with _hub_errors(endpoint), tempfile.TemporaryDirectory(prefix="hubft-mirror-") as cache:
        info = api.repo_info(repo_id, repo_type=repo_type)
        snap.repo_id, snap.private = info.id, bool(info.private)
        refs = api.list_repo_refs(repo_id, repo_type=repo_type)
        snap.branches = {b.name: b.target_commit for b in refs.branches}
        snap.tags = {t.name: t.target_commit for t in refs.tags}
        for sha in sorted(set(snap.branches.values()) | set(snap.tags.values()) - set(snap.commits)):
            files = {}
            for entry in api.list_repo_tree(repo_id, revision=sha, recursive=True, repo_type=repo_type):
                if not hasattr(entry, "blob_id"):
                    continue  # a folder
                known = entry.lfs.sha256 if entry.lfs else snap.blobs.get(entry.blob_id)
                if known is None or not (folder / "objects" / known).is_file():
                    local = api.hf_hub_download(repo_id, entry.path, revision=sha, repo_type=repo_type,
                                                cache_dir=cache)
                    known = _store(folder, Path(local))
                    downloaded += 1
                snap.blobs[entry.blob_id] = files[entry.path] = known
            snap.commits[sha] = files
    wanted = {*snap.branches.values(), *snap.tags.values()}
    snap.commits = {sha: files for sha, files in snap.commits.items() if sha in wanted}
    _save_bundle(folder, snap)
    return snap, downloaded


def _store(folder: Path, local: Path) -> str:
    sha256 = sha256_file(local)
    dest = folder / "objects" / sha256
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, dest.with_suffix(".part"))
        os.replace(dest.with_suffix(".part"), dest)
    return sha256


def _make_equal(api: Any, snap: Snapshot, folder: Path, branch: str, files: dict[str, str], message: str) -> bool:
    """Commit on ``branch`` whatever makes its files equal to ``files``; return whether a commit was made."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    present = {e.path: (e.lfs.sha256 if e.lfs else e.blob_id) for e in
               api.list_repo_tree(snap.repo_id, revision=branch, recursive=True, repo_type=snap.repo_type)
               if hasattr(e, "blob_id")}
    ids = {sha256: blob for blob, sha256 in snap.blobs.items()}
    operations: list[Any] = [CommitOperationDelete(p) for p in sorted(set(present) - set(files))]
    operations += [CommitOperationAdd(p, str(folder / "objects" / sha256)) for p, sha256 in sorted(files.items())
                   if present.get(p) not in (sha256, ids.get(sha256))]
    if not operations:
        return False
    api.create_commit(snap.repo_id, operations=operations, commit_message=message, revision=branch,
                      repo_type=snap.repo_type)
    return True


def import_bundle(folder: Path, snap: Snapshot, endpoint: str, *, token: str | None) -> int:
    """Make the repo at ``endpoint`` hold the refs and files of bundle ``snap`` in ``folder`` (see the module
    docstring); return how many commits that took."""
    from huggingface_hub import HfApi, constants

    api = HfApi(endpoint=endpoint.rstrip("/"), token=token or False)
    commits = 0
    previous, constants.HF_HUB_DISABLE_XET = constants.HF_HUB_DISABLE_XET, True  # a local hub speaks LFS only
    try:
        with _hub_errors(endpoint):
            api.create_repo(snap.repo_id, repo_type=snap.repo_type, private=snap.private, exist_ok=True)
            present = api.list_repo_refs(snap.repo_id, repo_type=snap.repo_type)
            branches = {b.name for b in present.branches}
            for name in sorted(snap.branches, key=lambda b: b != "main"):
                if name not in branches:
                    api.create_branch(snap.repo_id, branch=name, repo_type=snap.repo_type)
                sha = snap.branches[name]
                commits += _make_equal(api, snap, folder, name, snap.commits[sha], f"Mirror of {snap.repo_id}@{sha}")
            tags = {t.name for t in present.tags}
            for name, sha in sorted(snap.tags.items()):
                if name not in tags:
                    commits += _tag(api, snap, folder, name, sha)
    finally:
        constants.HF_HUB_DISABLE_XET = previous
    return commits


def _tag(api: Any, snap: Snapshot, folder: Path, name: str, sha: str) -> int:
    """Create tag ``name`` on a commit with the files of source commit ``sha``; return the commits made."""
    on_branch = next((b for b, target in snap.branches.items() if target == sha), None)
    if on_branch is not None:
        api.create_tag(snap.repo_id, tag=name, revision=on_branch, repo_type=snap.repo_type)
        return 0
    api.create_branch(snap.repo_id, branch=_TEMP_BRANCH, repo_type=snap.repo_type, exist_ok=True)
    try:
        made = _make_equal(api, snap, folder, _TEMP_BRANCH, snap.commits[sha], f"Mirror of {snap.repo_id}@{sha}")
        api.create_tag(snap.repo_id, tag=name, revision=_TEMP_BRANCH, repo_type=snap.repo_type)
    finally:
        api.delete_branch(snap.repo_id, branch=_TEMP_BRANCH, repo_type=snap.repo_type)
    return int(made)


def mirror(repo_id: str, source: str, dest: str, *, repo_type: str = "model", source_token: str | None = None,
           dest_token: str | None = None) -> MirrorResult:
    """Copy ``repo_id`` from ``source`` to ``dest``, each a Hub endpoint URL or a bundle folder (not both folders).

    Raises:
        ConfigError: for an invalid repo id or type, two folders, or a folder that holds something else.
        HubError: when a hub cannot be reached, refuses a token, or has no such repo (saying which side).
    """
    check_repo_id(repo_id, key="the repo id")
    if repo_type not in REPO_TYPES:
        raise ConfigError(f"unknown repo type {repo_type!r}", fix=f"use one of: {', '.join(REPO_TYPES)}")
    if not is_endpoint(source) and not is_endpoint(dest):
        raise ConfigError("both --from and --to are folders", fix="make one of them a Hub URL (http:// or https://)")
    if not is_endpoint(source):
        snap = _load_bundle(Path(source), repo_type, repo_id, must_exist=True)
        commits = import_bundle(Path(source), snap, dest, token=dest_token)
        return MirrorResult(tuple(snap.branches), tuple(snap.tags), 0, commits)
    with contextlib.ExitStack() as stack:
        folder = Path(dest) if not is_endpoint(dest) else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        snap, downloaded = export(repo_id, source, folder, repo_type=repo_type, token=source_token)
        commits = import_bundle(folder, snap, dest, token=dest_token) if is_endpoint(dest) else 0
    return MirrorResult(tuple(snap.branches), tuple(snap.tags), downloaded, commits)
