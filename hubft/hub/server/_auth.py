"""Tokens, who they belong to, and what they may do.

A token is a bearer secret mapped to an :class:`Identity`: a user, the organisations it belongs to (each with a
role: ``read``, ``write`` or ``admin``), and the token's own role (``read`` or ``write``). A token may read the
private repos of every namespace its user belongs to. It may *write* (commit, create branches and tags, merge pull
requests) when it is a ``write`` token and the namespace is the user's own or an org where the user is ``write`` or
``admin``; it may *administer* (change settings, grant access, move or delete repos) with a ``write`` token in the
user's own namespace or an org where the user is ``admin``.

Anyone may read public repos, and any authenticated reader may open a pull request or a discussion on a repo it
can see. A private repo is invisible (``RepoNotFound``: 401 to an anonymous caller, 404 to one with a token) to
everyone but its namespace's members, exactly like a missing one. A gated repo shows its info, listings and card to
everyone who may see it, but its files only to its namespace's members and to users granted access (``GatedRepo``:
401 anonymous, 403 otherwise). Only sha256 digests of the tokens are kept (tokens are random strings of about 190
bits, so a plain digest cannot be reversed): the table, and a users file, can be shown without leaking a secret.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import string
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from hubft.errors import ConfigError, HubftError

from ._errors import ApiError, repo_not_found
from ._names import is_valid_segment

logger = logging.getLogger(__name__)

ROLES = ("read", "write")
ORG_ROLES = ("read", "write", "admin")
GATE_FREE_FILES = frozenset({"README.md", ".gitattributes"})
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.~+/=-]{8,200}$")
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


def new_token() -> str:
    """A fresh random token in the Hub's ``hf_...`` shape."""
    return "hf_" + "".join(secrets.choice(string.ascii_letters) for _ in range(34))


def token_digest(token: str) -> str:
    """The sha256 hex digest that stands for a token at rest."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, eq=False)
class Identity:
    """Who a token speaks for.

    Attributes:
        user: The user name; also the default namespace for new repos.
        role: The token's role, ``"read"`` or ``"write"``.
        orgs: Organisations the user belongs to.
        org_roles: The user's role in each of ``orgs`` (``read``, ``write`` or ``admin``); an org missing here
            counts as ``admin`` (the hub's own tokens, :class:`LocalHub` ``orgs``).
        fullname: What ``whoami`` reports as the full name (the user name when ``None``).
        email: What ``whoami`` reports as the e-mail address.
    """

    user: str
    role: str
    orgs: tuple[str, ...] = ()
    org_roles: Mapping[str, str] = field(default_factory=dict)
    fullname: str | None = None
    email: str | None = None

    def org_role(self, namespace: str) -> str | None:
        """``admin`` for the user's own namespace, the org role for one of its orgs, else ``None``."""
        if namespace.lower() == self.user.lower():
            return "admin"
        org = next((o for o in self.orgs if o.lower() == namespace.lower()), None)
        return None if org is None else self.org_roles.get(org, "admin")

    def member_of(self, namespace: str) -> bool:
        """Whether repos under ``namespace`` belong to this user or one of its organisations (case-insensitive)."""
        return self.org_role(namespace) is not None

    def may(self, namespace: str, level: str) -> bool:
        """Whether this token may ``read``, ``write`` or ``admin`` in ``namespace`` (see the module table)."""
        role = self.org_role(namespace)
        if role is None:
            return False
        if level == "read":
            return True
        return self.role == "write" and ORG_ROLES.index(role) >= ORG_ROLES.index(level)


def check_identity(identity: Identity) -> Identity:
    """Check the names and roles of an identity.

    Raises:
        ConfigError: for an unknown role, or a user or organisation name that cannot be a namespace.
    """
    if identity.role not in ROLES:
        raise ConfigError(f"unknown token role {identity.role!r}", fix=f"use one of: {', '.join(ROLES)}")
    for name in (identity.user, *identity.orgs):
        if not isinstance(name, str) or not is_valid_segment(name):
            raise ConfigError(f"invalid user or organisation name {name!r}",
                              fix="use letters, digits, '.', '_' and '-', starting with a letter or digit")
    for org, role in identity.org_roles.items():
        if role not in ORG_ROLES:
            raise ConfigError(f"unknown role {role!r} in organisation {org!r}",
                              fix=f"use one of: {', '.join(ORG_ROLES)}")
    return identity


class TokenTable:
    """The tokens a server accepts: added in code, and optionally those of a users file. Thread-safe.

    Args:
        source: Where to (re)load more tokens from: called with no argument, returns digests -> identities; it is
            called again whenever ``stamp`` changes. ``None`` for tokens added in code only.
        stamp: Returns a value that changes when the source does (a file's mtime and size).
    """

    def __init__(self, source: Callable[[], dict[str, Identity]] | None = None,
                 stamp: Callable[[], object] | None = None) -> None:
        self._identities: dict[str, Identity] = {}
        self._loaded: dict[str, Identity] = {}
        self._source, self._stamp, self._seen = source, stamp, None
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        """Reload the source if it changed since the last load."""
        if self._source is None:
            return
        try:
            stamp = self._stamp()
            if stamp == self._seen:
                return
            loaded = self._source()
        except (OSError, HubftError) as e:
            if self._seen is None:
                raise
            logger.error("local hub: keeping the previous tokens, the users file cannot be loaded: %s", e)
            return
        with self._lock:
            self._loaded, self._seen = loaded, stamp

    def add(self, identity: Identity, token: str | None = None) -> str:
        """Accept ``token`` (a new random one when ``None``) for ``identity`` and return it.

        Raises:
            ConfigError: for an unknown role, a user or organisation name that cannot be a namespace, or a token that
                is too short or has characters a header cannot carry.
        """
        check_identity(identity)
        token = new_token() if token is None else token
        if not _TOKEN_RE.match(token):
            # The message must not echo the token: it is a secret even when it is malformed.
            raise ConfigError("invalid token", fix="use 8 to 200 characters from letters, digits and _.~+/=-")
        with self._lock:
            self._identities[token_digest(token)] = identity
        return token

    def identify(self, authorization: str | None) -> Identity | None:
        """The identity behind an ``Authorization`` header; ``None`` for an anonymous request.

        Raises:
            ApiError: 401 for a malformed header or an unknown token.
        """
        if not authorization:
            return None
        self.refresh()
        scheme, _, token = authorization.strip().partition(" ")
        digest = token_digest(token.strip())
        with self._lock:
            identity = self._identities.get(digest) or self._loaded.get(digest)
        if identity is None or scheme.lower() != "bearer":
            raise ApiError(401, INVALID_CREDENTIALS)
        return identity


def check_read(identity: Identity | None, repo_type: str, repo_id: str, private: bool) -> None:
    """Refuse to show a private repo to anyone outside its namespace.

    Raises:
        ApiError: ``RepoNotFound``, the same answer as for a missing repo (401 anonymous, 404 with a token).
    """
    if private and (identity is None or not identity.member_of(repo_id.split("/")[0])):
        raise repo_not_found(repo_type, repo_id, anonymous=identity is None)


def check_write(identity: Identity | None, namespace: str, action: str, level: str = "write") -> Identity:
    """Require a token that may ``write`` (or ``admin``) in ``namespace``; return the identity.

    Raises:
        ApiError: 401 without a token, 403 for a read token, a namespace the user does not belong to, or an org
            role below ``level``.
    """
    if identity is None:
        raise ApiError(401, f"You must be authenticated to {action}: pass a write token")
    if not identity.member_of(namespace):
        raise ApiError(403, f"You don't have the rights to {action} in namespace {namespace!r}")
    if identity.role != "write":
        raise ApiError(403, f"Your token has the {identity.role!r} role: {action} needs a write token")
    if not identity.may(namespace, level):
        raise ApiError(403, f"Your role in {namespace!r} is {identity.org_role(namespace)!r}: {action} needs "
                            f"{level!r}")
    return identity


def require_identity(identity: Identity | None, action: str) -> Identity:
    """Require any valid token (pull requests and discussions need a user, not write rights).

    Raises:
        ApiError: 401 without a token.
    """
    if identity is None:
        raise ApiError(401, f"You must be authenticated to {action}: pass a token")
    return identity


def has_gated_access(identity: Identity | None, repo_id: str, gated: str | bool, grants: dict[str, dict]) -> bool:
    """Whether the caller may read the files of a repo with this gating: always when not gated; else members of the
    namespace and users whose access was accepted."""
    if not gated:
        return True
    if identity is None:
        return False
    grant = grants.get(identity.user.lower())
    return identity.member_of(repo_id.split("/")[0]) or (grant is not None and grant.get("status") == "accepted")


def check_gated(identity: Identity | None, repo_type: str, repo_id: str, gated: str | bool, grants: dict[str, dict],
                path: str | None = None) -> None:
    """Refuse the files of a gated repo to a caller without access (``path`` in :data:`GATE_FREE_FILES` passes).

    Raises:
        ApiError: ``GatedRepo``, 401 for an anonymous caller and 403 for one with a token, as on the Hub.
    """
    if path in GATE_FREE_FILES or has_gated_access(identity, repo_id, gated, grants):
        return
    raise ApiError(401 if identity is None else 403,
                   f"Access to {repo_type} {repo_id} is restricted: you must have been granted access to it, and be "
                   "authenticated, to read its files. Ask one of its admins for access.", code="GatedRepo")
