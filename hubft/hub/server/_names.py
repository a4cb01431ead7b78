"""Validation of the names a client sends: repo ids, file paths in a repo, branch and tag names.

Everything that later becomes part of a file-system path or a ref is checked here, at the boundary, so that storage
code can trust its inputs. Bad values are refused with a 400 that names the value and the rule it broke.
"""

from __future__ import annotations

import re

from ._errors import ApiError, bad_request

REPO_TYPES = ("model", "dataset", "space")

_SEGMENT = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
_SHA = re.compile(r"^[0-9a-f]{40}$")
_SHORT_SHA = re.compile(r"^[0-9a-f]{4,39}$")
_REF_FORBIDDEN = re.compile(r"[\x00-\x20~^:?*\[\\\x7f]")


def is_commit_sha(value: str) -> bool:
    """Whether ``value`` is a full 40-character lowercase hex commit id (what the client treats as immutable)."""
    return bool(_SHA.match(value))


def is_short_sha(value: str) -> bool:
    """Whether ``value`` could abbreviate a commit id: 4 to 39 lowercase hex characters, as ``git rev-parse`` takes."""
    return bool(_SHORT_SHA.match(value))


def check_repo_type(value: str | None) -> str:
    """Return the repo type for an API ``type`` field (``None`` means model).

    Raises:
        ApiError: 400 for anything but ``model``, ``dataset`` or ``space``.
    """
    repo_type = value or "model"
    if repo_type not in REPO_TYPES:
        raise bad_request(f"Invalid repo type {repo_type!r}: expected one of {', '.join(REPO_TYPES)}")
    return repo_type


def is_valid_segment(value: str) -> bool:
    """Whether ``value`` may be a namespace or repo name (the rules are in :func:`check_repo_segment`)."""
    return bool(_SEGMENT.match(value)) and "--" not in value and ".." not in value and not value.endswith(".git")


def check_repo_segment(value: str, what: str) -> str:
    """Check one half of a repo id (namespace or name), with the Hub's rules.

    A segment starts and ends with a letter or digit, uses letters, digits, ``.``, ``_`` and ``-`` only, is at most
    96 characters, and contains no ``--`` or ``..`` (``.git`` cannot end it either: that suffix routes to git LFS).

    Raises:
        ApiError: 400 naming the bad value.
    """
    if not is_valid_segment(value):
        raise bad_request(
            f"Invalid {what} {value!r}: use letters, digits, '.', '_' and '-' (at most 96), starting and ending "
            "with a letter or digit, without '--' or '..'"
        )
    return value


def check_path(value: str) -> str:
    """Check a file path inside a repo and return it unchanged.

    A path is relative and uses ``/`` as separator; it must not be empty, start with ``/``, contain a backslash, a
    control character, an empty, ``.`` or ``..`` segment, or point into ``.git``. These are the paths that could
    escape the repo or mean different files on different systems, so they are refused rather than normalised.

    Raises:
        ApiError: 400 naming the path and the rule.
    """
    problem = None
    if not isinstance(value, str) or not value:
        problem = "it is empty"
    elif len(value) > 1000:
        problem = "it is longer than 1000 characters"
    elif value.startswith("/"):
        problem = "it is absolute"
    elif "\\" in value:
        problem = "it contains a backslash"
    elif any(ord(c) < 32 or ord(c) == 127 for c in value):
        problem = "it contains a control character"
    else:
        parts = value.split("/")
        if any(p in ("", ".", "..") for p in parts):
            problem = "it has an empty, '.' or '..' segment"
        elif parts[0] == ".git":
            problem = "it points into .git"
    if problem:
        raise bad_request(f"Invalid path {value!r}: {problem}")
    return value


def check_ref_name(value: str, what: str = "branch") -> str:
    """Check a new branch or tag name with (a strict subset of) git's ref-name rules.

    Raises:
        ApiError: 400 naming the bad value.
    """
    bad = (
        not value
        or len(value) > 200
        or _REF_FORBIDDEN.search(value)
        or value.startswith(("/", ".", "-", "refs/"))
        or value.endswith(("/", ".", ".lock"))
        or ".." in value
        or "//" in value
        or "@{" in value
        or value == "HEAD"
        or is_commit_sha(value)
    )
    if bad:
        raise bad_request(
            f"Invalid {what} name {value!r}: use a git ref name (no spaces, '..', '~^:?*[\\', leading 'refs/' or "
            "'-', trailing '/', '.' or '.lock'; not a 40-hex sha)"
        )
    return value


def split_repo_id(namespace: str | None, name: str, repo_type: str) -> str:
    """Join and check ``namespace/name``; a missing namespace is a repo that cannot exist.

    Raises:
        ApiError: 404 ``RepoNotFound`` when the namespace is missing (e.g. ``/api/datasets/barename``: ``datasets``
            then creates the repo under the caller's name), 400 for invalid segments.
    """
    if not namespace:
        raise ApiError(404, f"Repository not found: {repo_type} repo {name!r}", code="RepoNotFound")
    return f"{check_repo_segment(namespace, 'namespace')}/{check_repo_segment(name, 'repo name')}"
