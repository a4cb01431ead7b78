"""Tokens, who they belong to, and what they may do.

A token is a bearer secret mapped to an :class:`Identity`: a user, the organisations it belongs to, and a role.
``read`` tokens may read the user's private repos; ``write`` tokens may also create, commit to and delete repos in
the user's own namespace and its organisations. Anyone may read public repos. A private repo is invisible
(``RepoNotFound``: 401 to an anonymous caller, 404 to one with a token) to everyone but its namespace's members,
exactly like a missing one. Only sha256 digests of the
tokens are kept, so the table can be printed or logged without leaking a secret.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import threading
from dataclasses import dataclass

from hubft.errors import ConfigError

from ._errors import ApiError, repo_not_found
from ._names import is_valid_segment

ROLES = ("read", "write")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.~+/=-]{8,200}$")
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


def new_token() -> str:
    """A fresh random token in the Hub's ``hf_...`` shape."""
    return "hf_" + "".join(secrets.choice(string.ascii_letters) for _ in range(34))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Identity:
    """Who a token speaks for.

    Attributes:
        user: The user name; also the default namespace for new repos.
        role: ``"read"`` or ``"write"``.
        orgs: Organisations whose repos the user may see and (with a write token) change.
    """

    user: str
    role: str
    orgs: tuple[str, ...] = ()

    def member_of(self, namespace: str) -> bool:
        """Whether repos under ``namespace`` belong to this identity's user or one of its organisations."""
        return namespace == self.user or namespace in self.orgs


class TokenTable:
    """The tokens a server accepts. Thread-safe; tokens may be added while it serves."""

    def __init__(self) -> None:
        self._identities: dict[str, Identity] = {}
        self._lock = threading.Lock()

    def add(self, identity: Identity, token: str | None = None) -> str:
        """Accept ``token`` (a new random one when ``None``) for ``identity`` and return it.

        Raises:
            ConfigError: for an unknown role, a user or organisation name that cannot be a namespace, or a token that
                is too short or has characters a header cannot carry.
        """
        if identity.role not in ROLES:
            raise ConfigError(f"unknown token role {identity.role!r}", fix=f"use one of: {', '.join(ROLES)}")
        for name in (identity.user, *identity.orgs):
            if not isinstance(name, str) or not is_valid_segment(name):
                raise ConfigError(f"invalid user or organisation name {name!r}",
                                  fix="use letters, digits, '.', '_' and '-', starting with a letter or digit")
        token = new_token() if token is None else token
        if not _TOKEN_RE.match(token):
            # The message must not echo the token: it is a secret even when it is malformed.
            raise ConfigError("invalid token", fix="use 8 to 200 characters from letters, digits and _.~+/=-")
        with self._lock:
            self._identities[_digest(token)] = identity
        return token

    def identify(self, authorization: str | None) -> Identity | None:
        """The identity behind an ``Authorization`` header; ``None`` for an anonymous request.

        Raises:
            ApiError: 401 for a malformed header or an unknown token.
        """
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        with self._lock:
            identity = self._identities.get(_digest(token.strip())) if scheme.lower() == "bearer" else None
        if identity is None:
            raise ApiError(401, INVALID_CREDENTIALS)
        return identity


def check_read(identity: Identity | None, repo_type: str, repo_id: str, private: bool) -> None:
    """Refuse to show a private repo to anyone outside its namespace.

    Raises:
        ApiError: ``RepoNotFound``, the same answer as for a missing repo (401 anonymous, 404 with a token).
    """
    if private and (identity is None or not identity.member_of(repo_id.split("/")[0])):
        raise repo_not_found(repo_type, repo_id, anonymous=identity is None)


def check_write(identity: Identity | None, namespace: str, action: str) -> Identity:
    """Require a write token of a member of ``namespace``; return the identity.

    Raises:
        ApiError: 401 without a token, 403 for a read token or a namespace the user does not belong to.
    """
    if identity is None:
        raise ApiError(401, f"You must be authenticated to {action}: pass a write token")
    if not identity.member_of(namespace):
        raise ApiError(403, f"You don't have the rights to {action} in namespace {namespace!r}")
    if identity.role != "write":
        raise ApiError(403, f"Your token has the {identity.role!r} role: {action} needs a write token")
    return identity
