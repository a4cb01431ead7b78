"""The value types the local Hub stores: file entries and commits, with their ids and wire formats.

A commit is a full snapshot: a mapping from path to :class:`FileEntry`, plus parents and message. Its id is the
sha1 of its canonical JSON, so ids are 40 lowercase hex characters (the client only treats such strings as
immutable commits) and identical commits get identical ids. File identities follow git and git-lfs: a regular
file's ``oid`` is its git blob sha1; an LFS file's ``oid`` is the git blob sha1 of its LFS pointer, and its content
is addressed by sha256. Those are the values the client compares to skip unchanged files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from huggingface_hub.utils.sha import git_hash


def utc_now() -> str:
    """The current time as ``YYYY-MM-DDTHH:MM:SS.mmmZ``: the client rejects ``isoformat()``'s ``+00:00``."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that stands in git for an LFS object."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class FileEntry:
    """One file in a commit.

    Attributes:
        sha256: Address of the content in the blob store (and the LFS oid for LFS files).
        size: The real content size in bytes (never the pointer size).
        lfs: Whether the file is stored as an LFS object.
        oid: The git blob id: of the content for regular files, of the LFS pointer for LFS files.
    """

    sha256: str
    size: int
    lfs: bool
    oid: str

    @classmethod
    def regular(cls, content: bytes) -> FileEntry:
        """The entry of an inline (non-LFS) file with this content."""
        return cls(hashlib.sha256(content).hexdigest(), len(content), False, git_hash(content))

    @classmethod
    def large(cls, sha256: str, size: int) -> FileEntry:
        """The entry of an LFS file whose content was uploaded separately."""
        return cls(sha256, size, True, git_hash(lfs_pointer(sha256, size)))

    @property
    def etag(self) -> str:
        """What downloads use as cache key: sha256 for LFS files (the client checks it in ``local_dir`` mode)."""
        return self.sha256 if self.lfs else self.oid

    @property
    def pointer_size(self) -> int:
        """The size of the LFS pointer that stands for an LFS file in git."""
        return len(lfs_pointer(self.sha256, self.size))

    def upload_oid(self) -> str:
        """The id the preupload answer reports for this file; the client compares it with the local file's."""
        return self.sha256 if self.lfs else self.oid

    def wire(self, path: str) -> dict[str, Any]:
        """This entry as a tree / paths-info item."""
        item: dict[str, Any] = {"type": "file", "path": path, "size": self.size, "oid": self.oid}
        if self.lfs:
            item["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return item

    def sibling(self, path: str) -> dict[str, Any]:
        """This entry as a ``siblings`` item of repo info with ``blobs=true`` (note ``sha256``, not ``oid``)."""
        item: dict[str, Any] = {"rfilename": path, "size": self.size, "blobId": self.oid}
        if self.lfs:
            item["lfs"] = {"size": self.size, "sha256": self.sha256, "pointerSize": self.pointer_size}
        return item


@dataclass(frozen=True)
class Commit:
    """An immutable snapshot of a repo, with ``id`` derived from everything else."""

    parents: tuple[str, ...]
    title: str
    message: str
    author: str
    date: str
    tree: dict[str, FileEntry] = field(repr=False)
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", hashlib.sha1(self._canonical(), usedforsecurity=False).hexdigest())

    def _canonical(self) -> bytes:
        data = self.to_json()
        del data["id"]
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> dict[str, Any]:
        """The on-disk form."""
        return {
            "id": self.id,
            "parents": list(self.parents),
            "title": self.title,
            "message": self.message,
            "author": self.author,
            "date": self.date,
            "tree": {p: [e.sha256, e.size, e.lfs, e.oid] for p, e in sorted(self.tree.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Commit:
        """Inverse of :meth:`to_json`."""
        tree = {p: FileEntry(sha, size, lfs, oid) for p, (sha, size, lfs, oid) in data["tree"].items()}
        return cls(tuple(data["parents"]), data["title"], data["message"], data["author"], data["date"], tree,
                   data["id"])

    def summary(self) -> dict[str, Any]:
        """The ``lastCommit`` shape used in expanded tree entries."""
        return {"id": self.id, "title": self.title, "date": self.date}


def folder_oid(tree: dict[str, FileEntry], folder: str) -> str:
    """A stable id for a folder: the sha1 of the (path, oid) pairs below it."""
    prefix = folder.rstrip("/") + "/"
    h = hashlib.sha1(usedforsecurity=False)
    for path in sorted(p for p in tree if p.startswith(prefix)):
        h.update(f"{path}\0{tree[path].oid}\n".encode())
    return h.hexdigest()


def folders_of(paths: Iterable[str]) -> set[str]:
    """Every folder that contains at least one of ``paths`` (without the root)."""
    out: set[str] = set()
    for path in paths:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return out

