"""``hubft hub fsck``: check that a hub root is whole.

Checks that every stored object hashes to its name (the sha256 that LFS clients and the commits rely on), that every
ref of every repo points at a stored commit, that every commit reachable from a ref has every file it lists (with the
size it lists), and that every LFS object a repo claims is stored. Commits that no ref reaches (what a crash between
storing a commit and moving its ref leaves) are counted, not reported: they are harmless. Read-only: it may run
while a server serves the root.

Examples:
    >>> report = fsck("/srv/hub")  # doctest: +SKIP
    >>> report.problems
    []
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from hubft.errors import HubError
from hubft.files import sha256_file

from ._root import Storage


@dataclass
class FsckReport:
    """What :func:`fsck` found: counts, and one line per problem (empty when the root is whole)."""

    objects: int = 0
    bytes: int = 0
    repos: int = 0
    commits: int = 0
    unreachable: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the console."""
        verdict = "ok" if not self.problems else f"{len(self.problems)} problem(s)"
        return (f"checked {self.objects} objects ({self.bytes / 1e6:.1f} MB), {self.repos} repos, {self.commits} "
                f"commits ({self.unreachable} unreachable, harmless): {verdict}")


def _check_objects(storage: Storage, report: FsckReport) -> None:
    for name, path in storage.blobs.all():
        report.objects += 1
        report.bytes += path.stat().st_size
        actual = sha256_file(path)
        if actual != name:
            report.problems.append(f"object {name} is corrupt: its content hashes to {actual}")


def _check_repo(storage: Storage, base: Path, report: FsckReport) -> None:
    repo_type = base.parent.parent.name.removesuffix("s")
    repo_id = f"{base.parent.name}/{base.name}"
    repo = storage.repo(repo_type, repo_id)
    try:
        state = repo.state()
    except (OSError, ValueError, KeyError, TypeError) as e:
        report.problems.append(f"{repo_type} {repo_id}: repo.json is unreadable ({e})")
        return
    report.repos += 1
    targets = state.ref_targets()
    for ref, sha in sorted(targets.items()):
        if repo.commit(sha) is None:
            report.problems.append(f"{repo_type} {repo_id}: {ref} points at missing commit {sha}")
    reachable = repo.ancestors_of([sha for sha in targets.values() if repo.commit(sha) is not None])
    report.commits += len(repo.commit_ids())
    report.unreachable += len(repo.commit_ids()) - len(reachable)
    for commit in reachable:
        for path, entry in sorted(commit.tree.items()):
            if not storage.blobs.has(entry.sha256, entry.size):
                report.problems.append(f"{repo_type} {repo_id}: commit {commit.id[:12]} lists {path!r} "
                                       f"({entry.sha256}, {entry.size} bytes), which is missing or of another size")
    for sha256 in repo.lfs_markers():
        if not storage.blobs.has(sha256):
            report.problems.append(f"{repo_type} {repo_id}: LFS object {sha256} was uploaded but is missing")


def fsck(root: str | os.PathLike) -> FsckReport:
    """Check a hub root (see the module docstring); never changes it.

    Raises:
        HubError: when ``root`` is not a local hub's root.
    """
    root = Path(root)
    if not (root / "hubft-hub.json").is_file():
        raise HubError(f"{str(root)!r} is not the root of a local hub (no hubft-hub.json)",
                       fix="pass the --root that `hubft hub serve` uses")
    storage = Storage(root)
    report = FsckReport()
    _check_objects(storage, report)
    for marker in sorted(root.glob("repos/*/*/*/repo.json")):
        _check_repo(storage, marker.parent, report)
    return report
