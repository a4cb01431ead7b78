"""Starting, stopping and restarting the local Hub: persistence, root and port ownership, the serve() entry."""

from __future__ import annotations

import io
import socket
import re

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError

from hubft.errors import ConfigError, HubError
from hubft.testing import LocalHub


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
