"""Repo ids checked at the boundary, with huggingface_hub's own rules, before any training or upload starts."""

from __future__ import annotations

import re

from hubft.errors import ConfigError

__all__ = ["check_repo_id"]

_EXAMPLE = "'alice/resnet-pets'"


def check_repo_id(repo_id: object, *, key: str = "repo_id") -> str:
    """Validate a Hub repo id (``name`` or ``owner/name``) with :func:`huggingface_hub.utils.validate_repo_id`.

    The rules are the Hub's: at most one ``/``; each part made of letters, digits, ``-``, ``_`` and ``.``, not
    starting or ending with ``-`` or ``.``; no ``--`` or ``..``; not ending in ``.git``; at most 96 characters.

    Args:
        repo_id: The id to check.
        key: How the id is named in the error (e.g. ``hub.repo_id``).

    Returns:
        The id, unchanged.

    Raises:
        ConfigError: Missing, not a string, or breaking a rule (the message says which, and shows a valid id).

    Examples:
        >>> check_repo_id("alice/resnet-pets")
        'alice/resnet-pets'
        >>> check_repo_id("alice/resnet pets")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hubft.errors.ConfigError: repo_id 'alice/resnet pets' is not a valid Hub repo id: ...
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo_id is None or repo_id == "":
        raise ConfigError(f"{key} is missing", fix=f"set {key} to 'owner/name', e.g. {_EXAMPLE}")
    if not isinstance(repo_id, str):
        raise ConfigError(f"{key} {repo_id!r} is not a string", fix=f"set {key} to 'owner/name', e.g. {_EXAMPLE}")
    if repo_id.startswith("hf-hub:"):
        raise ConfigError(f"{key} {repo_id!r} has the 'hf-hub:' prefix of a model source",
                          fix=f"write the bare id: {repo_id.removeprefix('hf-hub:')!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        # huggingface_hub's message repeats the id after a colon: keep only the rule.
        rule = re.sub(r"\s*:\s*'.*'\.?.*$", "", str(e).splitlines()[0]).rstrip(".")
        raise ConfigError(f"{key} {repo_id!r} is not a valid Hub repo id: {rule}",
                          fix=f"use 'owner/name' with letters, digits, '-', '_' and '.', e.g. {_EXAMPLE}") from None
    return repo_id
