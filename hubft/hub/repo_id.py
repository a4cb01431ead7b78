"""Repo ids checked at the boundary, with huggingface_hub's own rules, before any training starts."""

from __future__ import annotations

from hubft.errors import ConfigError

__all__ = ["check_repo_id"]


def check_repo_id(repo_id: object, *, key: str = "repo_id") -> str:
    """Validate a Hub repo id (``name`` or ``owner/name``) with :func:`huggingface_hub.utils.validate_repo_id`.

    Args:
        repo_id: The id to check.
        key: How the id is named in the error (e.g. ``hub.repo_id``).

    Returns:
        The id, unchanged.

    Raises:
        ConfigError: Missing, or breaking the Hub's rules (which rule, and an example of a valid id).
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not repo_id or not isinstance(repo_id, str):
        raise ConfigError(f"{key} is required to push", fix=f"set {key} to 'owner/name'")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        reason = str(e).splitlines()[0].rstrip(".")
        raise ConfigError(f"{key} {repo_id!r} is not a valid Hub repo id ({reason})",
                          fix="use 'owner/name' with letters, digits, '-', '_' and '.' (e.g. 'alice/resnet-digits')"
                          ) from None
    if repo_id.count("/") > 1:
        raise ConfigError(f"{key} {repo_id!r} has more than one '/'", fix="use 'owner/name'")
    return repo_id
