"""On-disk storage of the local Hub: content-addressed blobs, immutable commits, and per-repo refs.

Layout under the root directory::

    objects/ab/cdef...                 file contents, named by sha256 (shared by every repo)
    repos/{type}s/{ns}/{name}/
        repo.json                      visibility, gating, branches, tags, PR refs and discussions
        commits/{sha}.json             one immutable snapshot per commit
        lfs/{sha256}                   empty markers: LFS objects uploaded to this repo
    redirects.json                     old repo ids of moved repos -> their new ids
    tmp/                               staging for atomic writes

Every file is written to ``tmp/``, flushed, and moved into place with ``os.replace`` (then the directory entry is
flushed too), so a crash or a concurrent reader never sees half a file and a restarted server sees exactly what was
committed. Blobs and commits never change once written; only ``repo.json`` is replaced, under the repo's lock, and
a commit becomes visible only when that replacement moves a ref: a crash before it leaves the repo at its previous
commit (plus an unreferenced commit file, which is harmless). The LFS markers keep repos apart: a commit may only
reference LFS objects uploaded to its own repo, so knowing a sha256 from someone else's private repo gives nothing.

Repo ids are case-insensitive, as on the Hub: ``Owner/Name`` and ``owner/name`` name the same repo, whose
directory and ``id`` keep the spelling it was created (or moved) with.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from hubft.files import atomic_write, atomic_write_bytes, fsync_dir

from ._errors import bad_request, revision_not_found
from ._names import is_commit_sha, is_short_sha
from ._objects import Commit

_COPY_CHUNK = 1024 * 1024


class BlobStore:
    """File contents addressed by their sha256, shared by all repos (identical files are stored once)."""

    def __init__(self, root: Path) -> None:
        self._dir = root / "objects"
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """Where the content with this sha256 lives (whether or not it exists)."""
        return self._dir / sha256[:2] / sha256[2:]

    def has(self, sha256: str, size: int | None = None) -> bool:
        """Whether the content is stored (with this size, when given)."""
        try:
            return size is None or self.path(sha256).stat().st_size == size
        except FileNotFoundError:
            return False

    def atomic_write(self, dest: Path, data: bytes) -> None:
        """Write ``dest`` so that readers see either the old file or the whole new one, even after a crash."""
        atomic_write_bytes(dest, data, staging_dir=self._tmp)
        fsync_dir(dest.parent)

    def delete(self, sha256: str) -> None:
        """Remove stored content (callers make sure nothing refers to it any more)."""
        self.path(sha256).unlink(missing_ok=True)

    def all(self) -> Iterator[tuple[str, Path]]:
        """Every stored object as ``(sha256 its name claims, path)``."""
        for path in sorted(self._dir.glob("??/*")):
            yield path.parent.name + path.name, path

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` and return its sha256."""
        sha256 = hashlib.sha256(data).hexdigest()
        if not self.has(sha256, len(data)):
            self.atomic_write(self.path(sha256), data)
        return sha256

    def put_stream(self, stream: IO[bytes], length: int, sha256: str) -> None:
        """Store exactly ``length`` bytes read from ``stream``, which must hash to ``sha256``.

        Raises:
            ApiError: 400 when the body is shorter than announced or its size or hash differ; nothing is stored.
        """

        def copy(tmp: str) -> None:
            digest, remaining = hashlib.sha256(), length
            with open(tmp, "wb") as f:
                while remaining:
                    chunk = stream.read(min(_COPY_CHUNK, remaining))
                    if not chunk:
                        raise bad_request(f"Upload of {sha256} ended after {length - remaining} of {length} bytes")
                    digest.update(chunk)
                    f.write(chunk)
                    remaining -= len(chunk)
            if digest.hexdigest() != sha256:
                raise bad_request(f"Uploaded content does not match oid {sha256} (got {digest.hexdigest()})")

        atomic_write(self.path(sha256), copy, staging_dir=self._tmp)
        fsync_dir(self.path(sha256).parent)


@dataclass
class RepoState:
    """The mutable part of a repo, stored in ``repo.json``.

    Attributes:
        gated: ``False``, or ``"auto"``/``"manual"``: file contents then need an explicit grant (see ``_auth``).
        grants: Access decisions on a gated repo, by user: ``{"status": "accepted"|"rejected"|"pending",
            "timestamp": ...}``.
        discussions: Discussions and pull requests, in the order they were opened (see ``_api_discussions``).
    """

    type: str
    id: str
    private: bool
    created_at: str
    heads: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    prs: dict[str, str] = field(default_factory=dict)
    gated: str | bool = False
    grants: dict[str, dict] = field(default_factory=dict)
    discussions: list[dict] = field(default_factory=list)

    _KEYS = {"type": "type", "id": "id", "private": "private", "created_at": "createdAt", "heads": "heads",
             "tags": "tags", "prs": "prs", "gated": "gated", "grants": "grants", "discussions": "discussions"}

    def to_json(self) -> dict:
        """The ``repo.json`` form."""
        return {key: getattr(self, attr) for attr, key in self._KEYS.items()}

    @classmethod
    def from_json(cls, data: dict) -> RepoState:
        """Inverse of :meth:`to_json`; keys added in later versions default when an older file lacks them."""
        return cls(**{attr: data[key] for attr, key in cls._KEYS.items() if key in data})

    def ref_targets(self) -> dict[str, str]:
        """Every ref (``refs/heads/...``, ``refs/tags/...``, ``refs/pr/...``) and the commit it points to."""
        return {**{f"refs/heads/{k}": v for k, v in self.heads.items()},
                **{f"refs/tags/{k}": v for k, v in self.tags.items()},
                **{f"refs/pr/{k}": v for k, v in self.prs.items()}}

    def resolve(self, revision: str) -> str | None:
        """The commit a branch, a tag or a ``refs/heads|tags|pr/...`` ref points to; ``None`` if none."""
        for prefix, refs in (("refs/heads/", self.heads), ("refs/tags/", self.tags), ("refs/pr/", self.prs)):
            if revision.startswith(prefix):
                return refs.get(revision[len(prefix):])
        return self.heads.get(revision) or self.tags.get(revision)

    def writable_ref(self, revision: str) -> tuple[dict[str, str], str] | None:
        """The ref table and key a commit on ``revision`` moves: a branch or a PR ref, never a tag or a sha."""
        if revision.startswith("refs/pr/"):
            key = revision[len("refs/pr/"):]
            return (self.prs, key) if key in self.prs else None
        name = revision.removeprefix("refs/heads/")
        return (self.heads, name) if name in self.heads else None


class Repo:
    """One repo's directory: its state, its commits, and the lock that serialises its writes."""

    def __init__(self, base: Path, blobs: BlobStore) -> None:
        self.base = base
        self.blobs = blobs
        self.lock = threading.RLock()
        self._commits: dict[str, Commit] = {}

    def state(self) -> RepoState:
        """Read ``repo.json`` (a consistent snapshot: it is only ever replaced whole)."""
        return RepoState.from_json(json.loads((self.base / "repo.json").read_text()))

    def save_state(self, state: RepoState) -> None:
        """Replace ``repo.json``; callers hold :attr:`lock` across their read-modify-write."""
        self.blobs.atomic_write(self.base / "repo.json", json.dumps(state.to_json(), indent=1).encode())

    def commit(self, sha: str) -> Commit | None:
        """The commit with this id, or ``None``."""
        if not is_commit_sha(sha):
            return None
        cached = self._commits.get(sha)
        if cached is None:
            try:
                cached = Commit.from_json(json.loads((self.base / "commits" / f"{sha}.json").read_text()))
            except FileNotFoundError:
                return None
            self._commits[sha] = cached
        return cached

    def resolve(self, revision: str, state: RepoState | None = None) -> Commit:
        """The commit ``revision`` names: a branch, a tag, a PR ref, a full sha or an unambiguous short sha.

        Refs win over a short sha that happens to spell the same characters, as in git. A short sha is 4 to 39 hex
        characters (the Hub resolves ``/revision/169d4a4`` and stamps the full sha on the answer); the client still
        treats only a full sha as immutable.

        Raises:
            ApiError: 404 ``RevisionNotFound``, also for a short sha that several commits start with.
        """
        sha = (state or self.state()).resolve(revision) or self._expand(revision)
        found = self.commit(sha)
        if found is None:
            raise revision_not_found(revision)
        return found

    def _expand(self, revision: str) -> str:
        """The full sha a short sha abbreviates; ``revision`` unchanged when it abbreviates none, or several."""
        if not is_short_sha(revision):
            return revision
        matches = [p.stem for p in (self.base / "commits").glob(f"{revision}*.json")]
        return matches[0] if len(matches) == 1 else revision

    def expand(self, sha: str) -> str | None:
        """The full id of the commit a full or short sha names, ``None`` when it names none (or several)."""
        full = self._expand(sha)
        return full if self.commit(full) is not None else None

    def write_commit(self, commit: Commit) -> None:
        """Store a commit (idempotent: the id is derived from the content)."""
        dest = self.base / "commits" / f"{commit.id}.json"
        if not dest.exists():
            self.blobs.atomic_write(dest, json.dumps(commit.to_json()).encode())
        self._commits[commit.id] = commit

    def commit_ids(self) -> list[str]:
        """The ids of every stored commit, reachable or not."""
        return sorted(p.stem for p in (self.base / "commits").glob("*.json"))

    def first_parent_history(self, sha: str) -> Iterator[Commit]:
        """The commit ``sha`` and its first parents, newest first."""
        current = self.commit(sha)
        while current is not None:
            yield current
            current = self.commit(current.parents[0]) if current.parents else None

    def ancestors(self, sha: str) -> list[Commit]:
        """Every commit reachable from ``sha``, newest first (``git log`` order by date)."""
        return self.ancestors_of([sha])

    def ancestors_of(self, shas: list[str]) -> list[Commit]:
        """Every commit reachable from any of ``shas``, newest first."""
        seen, stack, out = set(), list(shas), []
        while stack:
            commit = self.commit(stack.pop())
            if commit is None or commit.id in seen:
                continue
            seen.add(commit.id)
            out.append(commit)
            stack.extend(commit.parents)
        return sorted(out, key=lambda c: c.date, reverse=True)

    def mark_lfs(self, sha256: str) -> None:
        """Record that this LFS object was uploaded to this repo."""
        marker = self.base / "lfs" / sha256
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()

    def owns_lfs(self, sha256: str, size: int | None = None) -> bool:
        """Whether this LFS object was uploaded to this repo and is stored (with this size, when given)."""
        return (self.base / "lfs" / sha256).exists() and self.blobs.has(sha256, size)

    def lfs_markers(self) -> dict[str, float]:
        """The LFS objects uploaded to this repo, with the time of their (last) upload."""
        return {p.name: p.stat().st_mtime for p in sorted((self.base / "lfs").glob("*"))}

    def unmark_lfs(self, sha256: str) -> None:
        """Forget that this LFS object was uploaded to this repo."""
        (self.base / "lfs" / sha256).unlink(missing_ok=True)


