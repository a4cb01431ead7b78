"""The users file of a team hub: users, their hashed tokens, and organisations with a role per member.

``hubft hub serve --users users.yaml`` serves the tokens listed there; ``hubft hub token add`` and ``revoke`` edit
it (the server picks changes up on the next request). A token is stored only as its sha256 digest, so the file may
be read by anyone who may read the server's configuration, without giving away a token::

    users:
      alice:
        fullname: Alice Liddell
        email: alice@lab.example
        tokens:
        - {name: laptop, role: write, sha256: 5e88...}   # printed once by `hubft hub token add`
    orgs:
      vision-lab:
        members: {alice: admin, bob: read}               # read | write | admin

Examples:
    >>> token = add_token(tmp / "users.yaml", "alice", "laptop", role="write")  # doctest: +SKIP
    >>> revoke_token(tmp / "users.yaml", "alice", "laptop")  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hubft.errors import ConfigError
from hubft.files import atomic_write_text

from ._auth import ORG_ROLES, ROLES, Identity, TokenTable, check_identity, new_token, token_digest
from ._objects import utc_now

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_TOP_KEYS = ("users", "orgs")
_USER_KEYS = ("fullname", "email", "tokens")
_TOKEN_KEYS = ("name", "role", "sha256", "created")
_ORG_KEYS = ("members",)


@dataclass
class Team:
    """The content of a users file: ``users[name] = {fullname, email, tokens}``, ``orgs[name] = {members}``."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    orgs: dict[str, dict[str, Any]] = field(default_factory=dict)


def _mapping(where: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}",
                          fix="see docs/hub.md for the format")
    return value


def _keys(where: str, value: Any, valid: Collection[str]) -> dict:
    value = _mapping(where, value)
    for key in value:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"unknown key {key!r} in {where}", fix=f"{hint}valid keys: {', '.join(valid)}")
    return value


def _check_tokens(user: str, tokens: Any) -> list[dict]:
    if not isinstance(tokens, list):
        raise ConfigError(f"users.{user}.tokens must be a list", fix="write tokens as a list of {name, role, sha256}")
    names = set()
    for token in tokens:
        _keys(f"a token of user {user!r}", token, _TOKEN_KEYS)
        name, role, digest = token.get("name"), token.get("role", "read"), token.get("sha256")
        if not isinstance(name, str) or not name or name in names:
            raise ConfigError(f"user {user!r} has a token without a name or two tokens named {name!r}",
                              fix="give each token of a user its own name")
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r} of token {name!r} of user {user!r}",
                              fix=f"use one of: {', '.join(ROLES)}")
        if not isinstance(digest, str) or not _DIGEST.match(digest):
            raise ConfigError(f"token {name!r} of user {user!r} has no valid sha256",
                              fix="add tokens with `hubft hub token add`, which writes the digest, never the token")
        names.add(name)
    return tokens


def load_team(path: str | os.PathLike) -> Team:
    """Read and check a users file.

    Raises:
        ConfigError: for a missing file, invalid YAML, an unknown key (with the valid ones), a bad role, a token
            without a sha256 digest, or an organisation member who is not a user.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"users file {str(path)!r} does not exist",
                          fix="create it with `hubft hub token add --users FILE --user NAME --name LABEL`") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"users file {str(path)!r} is not valid YAML ({' '.join(str(e).split())})",
                          fix="check the YAML syntax near the line named") from None
    data = _keys(f"users file {str(path)!r}", data, _TOP_KEYS)
    team = Team(dict(_mapping("users", data.get("users"))), dict(_mapping("orgs", data.get("orgs"))))
    for user, record in team.users.items():
        record = team.users[user] = dict(_keys(f"users.{user}", record, _USER_KEYS))
        record["tokens"] = _check_tokens(user, record.get("tokens") or [])
        check_identity(Identity(str(user), "read"))
    for org, record in team.orgs.items():
        members = _mapping(f"orgs.{org}.members", _keys(f"orgs.{org}", record, _ORG_KEYS).get("members"))
        for user, role in members.items():
            if user not in team.users:
                raise ConfigError(f"organisation {org!r} lists {user!r}, who is not a user",
                                  fix=f"add {user!r} under users (e.g. with `hubft hub token add`), or remove it")
            if role not in ORG_ROLES:
                raise ConfigError(f"unknown role {role!r} of {user!r} in organisation {org!r}",
                                  fix=f"use one of: {', '.join(ORG_ROLES)}")
        team.orgs[org] = {"members": dict(members)}
        check_identity(Identity(str(org), "read"))
    return team


def save_team(path: str | os.PathLike, team: Team) -> None:
    """Write a users file atomically (readers, the server included, see the old or the new file, never half)."""
    text = ("# hubft hub users: tokens are stored as sha256 digests only. Edit with `hubft hub token add/revoke`.\n"
            + yaml.safe_dump({"users": team.users, "orgs": team.orgs}, sort_keys=False))
    atomic_write_text(path, text)


def team_identities(team: Team) -> dict[str, Identity]:
    """Every token digest of a team, with the identity it speaks for."""
    out = {}
    for user, record in team.users.items():
        orgs = {org: rec["members"][user] for org, rec in team.orgs.items() if user in rec["members"]}
        for token in record["tokens"]:
            out[token["sha256"]] = Identity(user, token.get("role", "read"), tuple(orgs), orgs,
                                            record.get("fullname"), record.get("email"))
    return out


def users_file_tokens(path: str | os.PathLike) -> TokenTable:
    """A token table that serves the tokens of a users file and picks up its changes (``hubft hub token add``).

    Raises:
        ConfigError: for a missing or invalid file. Later edits that break the file are logged and ignored: the
            tokens loaded last stay in force.
    """
    path = Path(path)
    load_team(path)  # a missing or invalid file is refused here, with its reason

    def stamp() -> object:
        stat = path.stat()
        return stat.st_ino, stat.st_mtime_ns, stat.st_size  # an atomic rewrite is a new inode

    return TokenTable(lambda: team_identities(load_team(path)), stamp)


def add_token(path: str | os.PathLike, user: str, name: str, *, role: str = "read") -> str:
    """Create a token for ``user`` (adding the user, and the file, when missing), store its digest, return it.

    The token itself is returned once and stored nowhere: print it for its owner.

    Raises:
        ConfigError: for an invalid file, user name or role, or a token name the user already has.
    """
    path = Path(path)
    team = load_team(path) if path.exists() else Team()
    check_identity(Identity(user, role))
    record = team.users.setdefault(user, {"fullname": user, "tokens": []})
    if any(t["name"] == name for t in record["tokens"]):
        raise ConfigError(f"user {user!r} already has a token named {name!r}",
                          fix="pick another --name, or revoke that token first")
    token = new_token()
    record["tokens"].append({"name": name, "role": role, "sha256": token_digest(token), "created": utc_now()})
    save_team(path, team)
    return token


def revoke_token(path: str | os.PathLike, user: str, name: str) -> None:
    """Remove the token ``name`` of ``user``; a running server refuses it from its next request on.

    Raises:
        ConfigError: for an invalid file, an unknown user or an unknown token name (listing the user's tokens).
    """
    team = load_team(path)
    if user not in team.users:
        raise ConfigError(f"no user {user!r} in {str(path)!r}", fix=f"use one of: {', '.join(team.users) or '(none)'}")
    tokens = team.users[user]["tokens"]
    if not any(t["name"] == name for t in tokens):
        names = ", ".join(t["name"] for t in tokens) or "(none)"
        raise ConfigError(f"user {user!r} has no token named {name!r}", fix=f"use one of: {names}")
    team.users[user]["tokens"] = [t for t in tokens if t["name"] != name]
    save_team(path, team)
