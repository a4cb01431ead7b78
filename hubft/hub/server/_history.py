"""Operations that make new commits out of old ones: squashing a branch, rewriting history, merging trees.

Commits are content-addressed (``_objects``), so rebuilding a commit whose tree and parents did not change gives back
the very same id: a rewrite only creates commits where something was actually dropped, and leaves the rest of the
history (and the refs pointing into it) untouched.
"""

from __future__ import annotations

from collections.abc import Callable

from ._objects import Commit, FileEntry, utc_now
from ._storage import Repo


def squash(repo: Repo, head: Commit, title: str, author: str) -> Commit:
    """A new root commit holding ``head``'s files (``super_squash_history``); stored, no ref moved."""
    new = Commit((), title, "", author, utc_now(), dict(head.tree))
    repo.write_commit(new)
    return new


def rewrite(repo: Repo, heads: list[str], drop: Callable[[FileEntry], bool]) -> dict[str, str]:
    """Rebuild the history behind ``heads`` without the files ``drop`` selects; return old id -> new id.

    Every commit reachable from ``heads`` is visited once, parents before children (iteratively: histories can be
    deeper than Python's recursion limit). New commits are stored; moving the refs is the caller's job.
    """
    mapping: dict[str, str] = {}
    stack = [(sha, False) for sha in heads]
    while stack:
        sha, parents_done = stack.pop()
        if sha in mapping:
            continue
        commit = repo.commit(sha)
        if commit is None:
            continue
        missing = [p for p in commit.parents if p not in mapping]
        if missing and not parents_done:
            stack.append((sha, True))
            stack.extend((p, False) for p in missing)
            continue
        tree = {path: entry for path, entry in commit.tree.items() if not drop(entry)}
        parents = tuple(mapping.get(p, p) for p in commit.parents)
        new = Commit(parents, commit.title, commit.message, commit.author, commit.date, tree)
        if new.id != commit.id:
            repo.write_commit(new)
        mapping[sha] = new.id
    return mapping


def merge_trees(base: dict[str, FileEntry], ours: dict[str, FileEntry],
                theirs: dict[str, FileEntry]) -> tuple[dict[str, FileEntry], list[str]]:
    """A file-level three-way merge: the merged tree and the paths that conflict.

    ``ours`` is the target branch, ``theirs`` the pull request, ``base`` where the pull request started. A path
    changed on one side only takes that side's version (a deletion included); changed on both sides to the same
    content it is kept; changed on both sides differently it conflicts (and the merge must not be made).
    """
    merged, conflicts = {}, []
    for path in sorted(set(base) | set(ours) | set(theirs)):
        b, o, t = base.get(path), ours.get(path), theirs.get(path)
        if o == t or t == b:
            chosen = o
        elif o == b:
            chosen = t
        else:
            conflicts.append(path)
            continue
        if chosen is not None:
            merged[path] = chosen
    return merged, conflicts
