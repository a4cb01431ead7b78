"""A team's hub: users and org roles from a users file, hashed tokens, the access log, fsck, and bad input to the
``hubft hub`` commands (one line, a fix, exit code 2)."""

from __future__ import annotations

import hashlib
import json

import pytest
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError

from hubft.cli import main
from hubft.errors import ConfigError
from hubft.hub.server import add_token, load_team
from hubft.testing import LocalHub

ROLE_RIGHTS = {  # org role -> (may read a private repo, may commit, may change settings)
    "read": (True, False, False),
    "write": (True, True, False),
    "admin": (True, True, True),
}


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """A hub serving a users file: ``lab`` has one member per role, ``outsider`` is in no org."""
    folder = tmp_path_factory.mktemp("team")
    users = folder / "users.yaml"
    tokens = {name: add_token(users, name, "main", role="write") for name in (*ROLE_RIGHTS, "outsider")}
    text = users.read_text() + "orgs:\n  lab:\n    members: {read: read, write: write, admin: admin}\n"
    users.write_text(text.replace("orgs: {}\n", ""))
    with LocalHub(folder / "root", users_file=users, access_log=folder / "access.jsonl") as hub:
        HfApi(endpoint=hub.endpoint, token=tokens["admin"]).create_repo("lab/private", private=True)
        yield hub, tokens, users


def test_tokens_are_stored_as_digests_only(team):
    _, tokens, users = team
    text = users.read_text()
    assert not any(token in text for token in tokens.values())
    assert all(hashlib.sha256(t.encode()).hexdigest() in text for t in tokens.values())
    assert load_team(users).orgs == {"lab": {"members": {"read": "read", "write": "write", "admin": "admin"}}}


@pytest.mark.parametrize("role", sorted(ROLE_RIGHTS))
def test_org_roles_decide_who_reads_commits_and_administers(team, role):
    hub, tokens, _ = team
    api = HfApi(endpoint=hub.endpoint, token=tokens[role])
    may_read, may_commit, may_administer = ROLE_RIGHTS[role]
    assert api.repo_exists("lab/private") is may_read
    assert {"name": "lab", "roleInOrg": role}.items() <= api.whoami()["orgs"][0].items()

    def allowed(call) -> bool:
        try:
            call()
        except HfHubHTTPError as e:
            assert e.response.status_code == 403, e
            return False
        return True

    assert allowed(lambda: api.create_commit("lab/private", commit_message=role,
                                             operations=[CommitOperationAdd(f"{role}.txt", b"x")])) is may_commit
    assert allowed(lambda: api.update_repo_settings("lab/private", private=True)) is may_administer
    assert not HfApi(endpoint=hub.endpoint, token=tokens["outsider"]).repo_exists("lab/private")


def test_the_access_log_names_the_user_and_never_a_token_or_a_signature(team):
    hub, tokens, _ = team
    api = HfApi(endpoint=hub.endpoint, token=tokens["write"])
    api.upload_file(path_or_fileobj=bytes(range(256)) * 4, path_in_repo="w.safetensors", repo_id="lab/private")
    HfApi(endpoint=hub.endpoint, token=False).repo_exists("lab/private")
    lines = [json.loads(line) for line in (hub.root.parent / "access.jsonl").read_text().splitlines()]
    assert {"time", "user", "method", "path", "status", "ms"} == set(lines[-1])
    assert ("write", "PUT") in {(x["user"], x["method"]) for x in lines}  # the LFS upload, credited to its user
    assert lines[-1]["user"] == "-" and lines[-1]["status"] == 401
    text = (hub.root.parent / "access.jsonl").read_text()
    assert "sig=" not in text and not any(token in text for token in tokens.values())


@pytest.mark.parametrize("content, message", [
    ("users: [alice]\n", "users must be a mapping"),
    ("userz: {}\n", "unknown key 'userz'"),
    ("users:\n  alice:\n    tokens: [{name: a, role: admin, sha256: " + "0" * 64 + "}]\n", "unknown role 'admin'"),
    ("users:\n  alice:\n    tokens: [{name: a, token: hf_plain}]\n", "unknown key 'token'"),
    ("users:\n  alice:\n    tokens: [{name: a}]\n", "no valid sha256"),
    ("orgs:\n  lab:\n    members: {bob: read}\n", "'bob', who is not a user"),
    ("users: {alice: {}}\norgs:\n  lab:\n    members: {alice: owner}\n", "unknown role 'owner'"),
    ("users: {alice: {}\n", "not valid YAML"),
])
def test_an_invalid_users_file_is_refused_with_the_reason(tmp_path, content, message):
    users = tmp_path / "users.yaml"
    users.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_team(users)


@pytest.fixture
def cli(capsys):
    """Run ``hubft`` in-process: (exit code, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_bad_input_to_the_hub_commands_is_one_line_with_a_fix_and_exit_code_2(tmp_path, cli, free_port):
    (tmp_path / "bad.yaml").write_text("userz: {}\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("not a bundle")
    cases = [
        ("hub", "serve", "--root", str(tmp_path / "root"), "--users", str(tmp_path / "missing.yaml")),
        ("hub", "serve", "--root", str(tmp_path / "root"), "--users", str(tmp_path / "bad.yaml")),
        ("hub", "token", "add", "--users", str(tmp_path / "u.yaml"), "--user", "not a name", "--name", "x"),
        ("hub", "token", "revoke", "--users", str(tmp_path / "bad.yaml"), "--user", "a", "--name", "x"),
        ("hub", "fsck", "--root", str(tmp_path)),
        ("hub", "mirror", "a/b", "--from", str(tmp_path / "x"), "--to", str(tmp_path / "y")),
        ("hub", "mirror", "a/b", "--from", "http://127.0.0.1:9", "--to", str(tmp_path / "y"), "--repo-type", "space"),
        ("hub", "mirror", "not a repo", "--from", "http://127.0.0.1:9", "--to", str(tmp_path / "y")),
        ("hub", "mirror", "a/b", "--from", str(tmp_path / "folder"), "--to", "http://127.0.0.1:9"),
        ("hub", "mirror", "a/b", "--from", f"http://127.0.0.1:{free_port()}", "--to", str(tmp_path / "y")),
    ]
    for argv in cases:
        code, _, err = cli(*argv)
        assert code == 2, argv
        assert err.count("\n") == 1 and err.startswith("hubft: error: ") and ". Fix: " in err, (argv, err)
        assert "Traceback" not in err


def test_token_add_and_revoke_say_what_they_did(tmp_path, cli):
    users = str(tmp_path / "users.yaml")
    code, out, _ = cli("hub", "token", "add", "--users", users, "--user", "bob", "--name", "ci")
    token = out.strip().splitlines()[-1]
    assert code == 0 and token.startswith("hf_") and token not in (tmp_path / "users.yaml").read_text()
    code, _, err = cli("hub", "token", "add", "--users", users, "--user", "bob", "--name", "ci")
    assert code == 2 and "already has a token named 'ci'" in err
    assert cli("hub", "token", "revoke", "--users", users, "--user", "bob", "--name", "ci")[0] == 0
    code, _, err = cli("hub", "token", "revoke", "--users", users, "--user", "bob", "--name", "ci")
    assert code == 2 and "has no token named 'ci'" in err


def test_fsck_reports_corrupt_and_missing_objects(tmp_path, cli):
    root = tmp_path / "root"
    weights = bytes(range(256)) * 16
    with LocalHub(root) as hub:
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        api.create_repo("hubft-user/checked")
        api.upload_file(path_or_fileobj=weights, path_in_repo="w.safetensors", repo_id="hubft-user/checked")
        api.upload_file(path_or_fileobj=b"note", path_in_repo="n.txt", repo_id="hubft-user/checked")
    code, out, _ = cli("hub", "fsck", "--root", str(root))
    assert code == 0 and out.strip().endswith(": ok")

    lfs = hashlib.sha256(weights).hexdigest()
    (root / "objects" / lfs[:2] / lfs[2:]).write_bytes(weights[::-1])  # same size, other bytes
    note = hashlib.sha256(b"note").hexdigest()
    (root / "objects" / note[:2] / note[2:]).unlink()
    code, out, err = cli("hub", "fsck", "--root", str(root))
    problems = [line for line in out.splitlines() if line.startswith("problem: ")]
    assert code == 2 and "2 problem(s)" in err
    assert any(f"object {lfs} is corrupt" in p for p in problems)
    assert any("'n.txt'" in p and "missing" in p for p in problems)
