"""Starting, stopping and restarting the local Hub: persistence, root and port ownership, the serve() entry."""

from __future__ import annotations

import io
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError

from hubft.cli import main
from hubft.errors import ConfigError, HubError
from hubft.hub.server import fsck
from hubft.testing import LocalHub

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_a_new_hub_on_the_same_root_sees_everything_committed(tmp_path):
    root, cache = tmp_path / "root", tmp_path / "cache"
    weights = bytes(range(256)) * 40
    with LocalHub(root) as first:
        api = HfApi(endpoint=first.endpoint, token=first.token)
        repo = f"{first.user}/kept"
        api.create_repo(repo, private=True)
        sha = api.create_commit(repo, commit_message="add", operations=[
            CommitOperationAdd("a.txt", b"a\n"), CommitOperationAdd("w.safetensors", weights)]).oid
        api.create_tag(repo, tag="v1")
        api.create_branch(repo, branch="dev")
        old_token = first.token

    with LocalHub(root) as second:  # new tokens for the same user
        assert second.token != old_token
        api = HfApi(endpoint=second.endpoint, token=second.token)
        info = api.model_info(repo, revision="v1")
        assert info.sha == sha and info.private
        assert {b.name for b in api.list_repo_refs(repo).branches} == {"main", "dev"}
        path = hf_hub_download(repo, "w.safetensors", revision=sha, endpoint=second.endpoint, token=second.token,
                               cache_dir=cache)
        with open(path, "rb") as f:
            assert f.read() == weights
        with pytest.raises(HfHubHTTPError) as refused:  # tokens belong to a server instance, repos to the root
            HfApi(endpoint=second.endpoint, token=old_token).model_info(repo)
        assert refused.value.response.status_code == 401


def test_a_root_is_served_by_one_hub_at_a_time(tmp_path):
    with LocalHub(tmp_path / "root"):
        with pytest.raises(HubError, match="already served"):
            LocalHub(tmp_path / "root").start()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a hub")
    with pytest.raises(HubError, match="not empty"):
        LocalHub(tmp_path / "other").start()


def test_a_taken_port_is_reported_as_a_hub_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(HubError, match="cannot listen"):
            LocalHub(tmp_path / "root", port=taken.getsockname()[1]).start()


@pytest.mark.parametrize("kwargs, message", [
    ({"page_size": 0}, "page_size"),
    ({"port": 70000}, "port"),
    ({"user": "bad name"}, "invalid user"),
    ({"token": "short"}, "invalid token"),
])
def test_invalid_arguments_are_config_errors(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LocalHub(tmp_path, **kwargs)


def test_repr_and_errors_never_show_tokens(tmp_path):
    hub = LocalHub(tmp_path, token="hf_secret_write_token_1234", read_token="hf_secret_read_token_1234")
    assert "secret" not in repr(hub)
    with pytest.raises(ConfigError) as error:
        hub.add_token("x", token="hf bad token with spaces")
    assert "bad token" not in str(error.value)
    env = hub.env("read")
    assert env["HF_TOKEN"] == "hf_secret_read_token_1234" and env["HF_HUB_DISABLE_XET"] == "1"
    assert hub.env(None)["HF_TOKEN"] == ""


def test_serve_prints_the_endpoint_and_tokens_and_stops_on_ctrl_c(tmp_path, monkeypatch):
    from hubft.hub.server import serve

    out = io.StringIO()
    seen = {}

    def interrupted_wait(self):
        seen["whoami"] = HfApi(endpoint=self.endpoint, token=self.token).whoami()["name"]
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalHub, "wait", interrupted_wait)
    serve(tmp_path / "root", port=0, token="hf_console_token_123456", out=out)
    text = out.getvalue()
    assert seen == {"whoami": "hubft-user"}
    assert text.count("hf_console_token_123456") == 1 and "http://127.0.0.1:" in text and "stopped" in text
    port = int(re.search(r"http://127\.0\.0\.1:(\d+)", text).group(1))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_connections_send_without_nagle_delays(tmp_path):
    # Headers and body are separate writes: with Nagle's algorithm each keep-alive response would wait ~40 ms for
    # the client's delayed ACK. Every accepted connection must have TCP_NODELAY set.
    import http.client

    with LocalHub(tmp_path / "hub") as hub:
        port = int(hub.endpoint.rsplit(":", 1)[1])
        client = http.client.HTTPConnection("127.0.0.1", port)
        try:
            for _ in range(2):  # two requests on one keep-alive connection
                client.request("GET", "/api/whoami-v2", headers={"authorization": f"Bearer {hub.token}"})
                assert client.getresponse().read()
            connections = list(hub._server._connections)
            assert connections
            assert all(c.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for c in connections)
        finally:
            client.close()


def _read_until(proc: subprocess.Popen, marker: bytes, timeout: float = 120) -> str:
    """What ``proc`` printed up to and including ``marker``: waits on its pipe (never sleeps), fails if it exits."""
    deadline, text = time.monotonic() + timeout, b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while marker not in text:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise TimeoutError(f"no {marker!r} within {timeout} s; output so far: {text.decode()!r}")
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"exited with {proc.wait()} before printing {marker!r}: {text.decode()!r}")
            text += chunk
    return text.decode()


def _serve(root: Path, *args: str, **env: str) -> tuple[subprocess.Popen, str, str | None]:
    """Start `hubft hub serve` on a free port and return it once it says it is ready, with its endpoint and token
    (``None`` with ``--users``: a team hub prints no token).

    ``python -m hubft.cli`` from the repository root with the root first on PYTHONPATH, so that the child runs this
    checkout's code (the installed console script may belong to another checkout). ``env`` adds variables (a
    fault plan).
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]), **env)
    proc = subprocess.Popen([sys.executable, "-m", "hubft.cli", "hub", "serve", "--root", str(root), "--port", "0",
                             *args], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        banner = _read_until(proc, b"Press Ctrl-C to stop.")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    endpoint = re.search(r"serving .* at (http://127\.0\.0\.1:\d+)\n", banner).group(1)
    if "--users" in args:
        assert "hf_" not in banner
        return proc, endpoint, None
    token = re.search(r"write token: (hf_\w+)\n", banner).group(1)
    assert banner.count(token) == 1 and "read token:  hf_" in banner
    return proc, endpoint, token


def _stop(proc: subprocess.Popen, sig: signal.Signals) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        rest, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        rest, _ = proc.communicate()
        raise AssertionError(f"still running 120 s after {sig.name}: {rest.decode()!r}") from None
    return proc.returncode, rest.decode()


@pytest.mark.slow
def test_the_hub_serve_command_serves_clients_and_stops_cleanly_on_sigint_and_sigterm(tmp_path):
    root, repo = tmp_path / "root", "hubft-user/served"

    proc, endpoint, token = _serve(root)
    try:
        api = HfApi(endpoint=endpoint, token=token)
        api.create_repo(repo)
        api.upload_file(path_or_fileobj=b"hello\n", path_in_repo="hello.txt", repo_id=repo)
        assert Path(api.hf_hub_download(repo, "hello.txt", cache_dir=tmp_path / "cache-1")).read_bytes() == b"hello\n"
    finally:
        code, rest = _stop(proc, signal.SIGINT)
    assert (code, rest.strip()) == (0, "stopped")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(endpoint.rsplit(":", 1)[1])), timeout=5)

    # A second run on the same root: new tokens, the repo still there, and SIGTERM stops it as cleanly.
    proc, endpoint, second_token = _serve(root)
    try:
        assert second_token != token
        api = HfApi(endpoint=endpoint, token=second_token)
        assert Path(api.hf_hub_download(repo, "hello.txt", cache_dir=tmp_path / "cache-2")).read_bytes() == b"hello\n"
        api.upload_file(path_or_fileobj=b"again\n", path_in_repo="again.txt", repo_id=repo)
        assert api.list_repo_files(repo) == [".gitattributes", "again.txt", "hello.txt"]
    finally:
        code, rest = _stop(proc, signal.SIGTERM)
    assert (code, rest.strip()) == (0, "stopped")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(endpoint.rsplit(":", 1)[1])), timeout=5)


@pytest.mark.slow
def test_a_kill_in_the_middle_of_a_commit_leaves_the_repo_at_its_previous_commit(tmp_path):
    # The second commit is killed (SIGKILL, no clean-up) after its commit file is stored and before its ref moves.
    root, repo = tmp_path / "root", "hubft-user/crash"
    proc, endpoint, token = _serve(root, HUBFT_FAULT="hub_commit_written@2:kill")
    try:
        api = HfApi(endpoint=endpoint, token=token)
        api.create_repo(repo)
        first = api.upload_file(path_or_fileobj=b"one\n", path_in_repo="one.txt", repo_id=repo).oid
        with pytest.raises(httpx2.TransportError):  # the connection closes with no answer (commits are not retried)
            api.upload_file(path_or_fileobj=bytes(range(256)) * 64, path_in_repo="w.safetensors", repo_id=repo)
        assert proc.wait(timeout=120) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    proc, endpoint, token = _serve(root)  # same root: the dead server's lock is gone with it
    try:
        api = HfApi(endpoint=endpoint, token=token)
        assert api.model_info(repo).sha == first
        assert api.list_repo_files(repo) == [".gitattributes", "one.txt"]
        second = api.upload_file(path_or_fileobj=b"two\n", path_in_repo="two.txt", repo_id=repo).oid
        assert [c.commit_id for c in api.list_repo_commits(repo)][:2] == [second, first]
    finally:
        code, _ = _stop(proc, signal.SIGTERM)
    assert code == 0
    report = fsck(root)
    assert report.problems == [] and report.unreachable == 1  # the killed commit's file, referenced by nothing


@pytest.mark.slow
def test_a_team_hub_serves_its_users_file_and_writes_an_access_log(tmp_path, capsys):
    users, log = tmp_path / "users.yaml", tmp_path / "access.jsonl"
    assert main(["hub", "token", "add", "--users", str(users), "--user", "alice", "--name", "laptop",
                 "--role", "write"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    proc, endpoint, _ = _serve(tmp_path / "root", "--users", str(users), "--access-log", str(log))
    try:
        api = HfApi(endpoint=endpoint, token=token)
        assert api.whoami()["name"] == "alice"
        api.create_repo("alice/shared")
        assert main(["hub", "token", "revoke", "--users", str(users), "--user", "alice", "--name", "laptop"]) == 0
        with pytest.raises(HfHubHTTPError) as revoked:
            api.whoami()
        assert revoked.value.response.status_code == 401
    finally:
        code, _ = _stop(proc, signal.SIGINT)
    assert code == 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(x["user"], x["method"], x["path"], x["status"]) for x in lines] == [
        ("alice", "GET", "/api/whoami-v2", 200), ("alice", "POST", "/api/repos/create", 200),
        ("?", "GET", "/api/whoami-v2", 401)]
    assert token not in log.read_text()
