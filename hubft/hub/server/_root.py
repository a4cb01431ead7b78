"""All repos under one root directory: finding them by a case-insensitive id, creating, deleting and moving them.

The disk layout is described in ``_storage``. Here live the repo index (built once by scanning ``repos/``, then kept
up to date under :attr:`Storage._lock`), the redirects that moved repos leave behind (``redirects.json``), and the
question "does anything still use this blob?" that permanent deletions must answer before freeing content that
every repo shares.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

from ._errors import ApiError
from ._names import REPO_TYPES
from ._objects import Commit, FileEntry, utc_now
from ._storage import BlobStore, Repo, RepoState
from ._upload_rules import DEFAULT_GITATTRIBUTES


class Storage:
    """All repos under one root directory.

    Args:
        root: The directory holding the data; created if missing. Only one server may use it at a time (the
            server takes a lock on it).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.blobs = BlobStore(self.root)
        self._repos: dict[tuple[str, str], Repo] = {}
        self._lock = threading.Lock()
        self._index: dict[tuple[str, str], str] = {}
        for repo_type in REPO_TYPES:
            for marker in (self.root / "repos" / f"{repo_type}s").glob("*/*/repo.json"):
                repo_id = f"{marker.parent.parent.name}/{marker.parent.name}"
                self._index[(repo_type, repo_id.lower())] = repo_id

    def _base(self, repo_type: str, repo_id: str) -> Path:
        return self.root / "repos" / f"{repo_type}s" / repo_id

    def canonical_id(self, repo_type: str, repo_id: str) -> str | None:
        """The id an existing repo was created (or moved) with, whatever the case of ``repo_id``; else ``None``."""
        return self._index.get((repo_type, repo_id.lower()))

    def repo(self, repo_type: str, repo_id: str) -> Repo | None:
        """The repo, or ``None`` if it does not exist. ``repo_id`` must already be validated; case is ignored."""
        with self._lock:
            canonical = self._index.get((repo_type, repo_id.lower()))
            if canonical is None:
                return None
            key = (repo_type, canonical.lower())
            handle = self._repos.get(key)
            if handle is None:
                handle = self._repos[key] = Repo(self._base(repo_type, canonical), self.blobs)
            return handle

    def create_repo(self, repo_type: str, repo_id: str, *, private: bool, author: str) -> Repo:
        """Create a repo whose ``main`` holds the Hub's initial commit (a default ``.gitattributes``).

        Raises:
            ApiError: 409 when it already exists, in any spelling of its case.
        """
        with self._lock:
            existing = self._index.get((repo_type, repo_id.lower()))
            if existing is not None:
                raise ApiError(409, f"You already created this {repo_type} repo: {existing}")
            handle = self._repos[(repo_type, repo_id.lower())] = Repo(self._base(repo_type, repo_id), self.blobs)
            content = DEFAULT_GITATTRIBUTES
            self.blobs.put_bytes(content)
            first = Commit((), "initial commit", "", author, utc_now(), {".gitattributes": FileEntry.regular(content)})
            handle.write_commit(first)
            handle.save_state(RepoState(repo_type, repo_id, private, first.date, heads={"main": first.id}))
            self._index[(repo_type, repo_id.lower())] = repo_id
            return handle

    def delete_repo(self, repo_type: str, repo_id: str) -> bool:
        """Delete a repo (its blobs stay, they may be shared); return whether it existed."""
        with self._lock:
            canonical = self._index.pop((repo_type, repo_id.lower()), None)
            if canonical is None:
                return False
            base = self._base(repo_type, canonical)
            handle = self._repos.pop((repo_type, canonical.lower()), None) or Repo(base, self.blobs)
            with handle.lock:
                # Move aside first so that the repo disappears at once, then clean up.
                trash = Path(tempfile.mkdtemp(dir=self.root / "tmp"))
                os.replace(base, trash / "repo")
            shutil.rmtree(trash, ignore_errors=True)
            _remove_if_empty(base.parent)
            return True

    def move_repo(self, repo_type: str, from_id: str, to_id: str) -> str:
        """Rename a repo (or move it to another namespace) and leave a redirect at its old id; return the new id.

        The repo keeps its history, refs, discussions and LFS objects. Requests for the old id are redirected to the
        new one until a repo is created there again (see :meth:`redirect`).

        Raises:
            ApiError: ``RepoNotFound`` for a missing source; 409 when the target exists.
        """
        with self._lock:
            source = self._index.get((repo_type, from_id.lower()))
            if source is None:
                raise ApiError(404, f"Repository not found: {repo_type} repo {from_id!r}", code="RepoNotFound")
            taken = self._index.get((repo_type, to_id.lower()))
            if taken is not None and taken != source:
                raise ApiError(409, f"A {repo_type} repo {taken} already exists: pick another name or delete it")
            handle = self._repos.pop((repo_type, source.lower()), None) or Repo(self._base(repo_type, source),
                                                                                 self.blobs)
            with handle.lock:
                old_base, new_base = handle.base, self._base(repo_type, to_id)
                new_base.parent.mkdir(parents=True, exist_ok=True)
                os.replace(old_base, new_base)
                handle.base = new_base
                state = handle.state()
                state.id = to_id
                handle.save_state(state)
            _remove_if_empty(old_base.parent)
            del self._index[(repo_type, source.lower())]
            self._index[(repo_type, to_id.lower())] = to_id
            self._repos[(repo_type, to_id.lower())] = handle
            if source.lower() != to_id.lower():
                self._add_redirect(repo_type, source, to_id)
            return to_id

    def _redirects(self) -> dict[str, dict[str, str]]:
        try:
            return json.loads((self.root / "redirects.json").read_text())
        except FileNotFoundError:
            return {}

    def _add_redirect(self, repo_type: str, old_id: str, new_id: str) -> None:
        redirects = self._redirects()
        table = redirects.setdefault(repo_type, {})
        for key, target in table.items():  # a repo moved twice: its first id points straight at the last one
            if target.lower() == old_id.lower():
                table[key] = new_id
        table[old_id.lower()] = new_id
        table.pop(new_id.lower(), None)
        self.blobs.atomic_write(self.root / "redirects.json", json.dumps(redirects, indent=1).encode())

    def redirect(self, repo_type: str, repo_id: str) -> str | None:
        """The id of the existing repo that ``repo_id`` was moved to, or ``None``."""
        target = self._redirects().get(repo_type, {}).get(repo_id.lower())
        return None if target is None else self.canonical_id(repo_type, target)

    def repo_ids(self, repo_type: str) -> list[str]:
        """The ids of all repos of a type, sorted."""
        with self._lock:
            return sorted(v for (t, _), v in self._index.items() if t == repo_type)

    def repos(self) -> list[Repo]:
        """Every repo, of every type."""
        return [r for t in REPO_TYPES for i in self.repo_ids(t) if (r := self.repo(t, i)) is not None]

    def read(self, entry: FileEntry) -> bytes:
        """The whole content of a (small) file."""
        return self.blobs.path(entry.sha256).read_bytes()

    def is_referenced(self, sha256: str, *, ignore: Repo | None = None) -> bool:
        """Whether any repo (but ``ignore``) has a commit with this content or holds it as an uploaded LFS object.

        Reads every commit of every repo: meant for rare, deliberate deletions, not for a request path.
        """
        for repo in self.repos():
            if ignore is not None and repo.base == ignore.base:
                continue
            if sha256 in repo.lfs_markers():
                return True
            if any(e.sha256 == sha256 for sha in repo.commit_ids() for e in repo.commit(sha).tree.values()):
                return True
        return False


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
