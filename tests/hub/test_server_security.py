"""Who may see and change what on the local Hub, which inputs it refuses, and how it serialises commits."""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.request

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from hubft.hub.server._errors import ApiError
from hubft.hub.server._names import check_path, check_repo_segment


def _raw(hub, method, path, body=None, token=None, content_type="application/json"):
    """(status, headers, parsed JSON body) of a request sent without the client's retries."""
    headers = {"content-type": content_type}
    if token:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{hub.endpoint}{path}", data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request) as r:
            return r.status, r.headers, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read() or b"null")


def _ndjson(*lines):
    return "\n".join(json.dumps(line) for line in lines).encode()


def _file_line(path, content=b"x"):
    return {"key": "file", "value": {"path": path, "content": base64.b64encode(content).decode(), "encoding": "base64"}}


HEADER = {"key": "header", "value": {"summary": "test", "description": ""}}


def test_private_repo_invisible_to_strangers_and_read_only_with_the_read_token(hub, api, repo_id):
    api.create_repo(repo_id, private=True)
    api.upload_file(path_or_fileobj=b"secret\n", path_in_repo="s.txt", repo_id=repo_id)
    stranger = hub.add_token("someone-else", role="write")

    for client in (HfApi(token=False), HfApi(token=stranger)):
        assert not client.repo_exists(repo_id)
        with pytest.raises(RepositoryNotFoundError):
            client.list_repo_files(repo_id)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_id, "s.txt", token=False)
    assert _raw(hub, "GET", f"/api/models/{repo_id}")[1]["X-Error-Code"] == "RepoNotFound"

    reader = HfApi(token=hub.read_token)
    with open(hf_hub_download(repo_id, "s.txt", token=hub.read_token), "rb") as f:
        assert f.read() == b"secret\n"
    with pytest.raises(HfHubHTTPError) as refused:
        reader.upload_file(path_or_fileobj=b"r", path_in_repo="r.txt", repo_id=repo_id)
    assert refused.value.response.status_code == 403
    assert "r.txt" not in api.list_repo_files(repo_id)


def test_strangers_cannot_write_to_a_public_repo_and_bad_tokens_are_refused(hub, api, repo_id):
    api.create_repo(repo_id)
    stranger = HfApi(token=hub.add_token("someone-else", role="write"))
    assert stranger.repo_exists(repo_id)
    with pytest.raises(HfHubHTTPError) as refused:
        stranger.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert refused.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as refused:
        stranger.create_repo(f"{hub.user}/not-yours")
    assert refused.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as invalid:
        HfApi(token="hf_not_a_token_of_this_hub").whoami()
    assert invalid.value.response.status_code == 401
    assert api.whoami()["name"] == hub.user and api.whoami()["auth"]["accessToken"]["role"] == "write"


@pytest.mark.parametrize("segment, reason", [
    ("hubft-user", None),
    ("my.model_v2", None),
    ("a", None),
    ("-leading", "must start with a letter or digit"),
    ("trailing.", "must end with a letter or digit"),
    ("two--dashes", "'--' is reserved (cache folder separator)"),
    ("dot..dot", "'..' could climb directories"),
    ("weights.git", "'.git' suffix routes to git LFS"),
    ("has space", "only letters, digits, '.', '_' and '-'"),
    ("x" * 97, "at most 96 characters"),
])
def test_check_repo_segment_rules(segment, reason):
    if reason is None:
        assert check_repo_segment(segment, "repo name") == segment
    else:
        with pytest.raises(ApiError) as refused:
            check_repo_segment(segment, "repo name")
        assert refused.value.status == 400 and repr(segment) in refused.value.message


@pytest.mark.parametrize("path, reason", [
    ("a/b.txt", None),
    ("dir.with.dots/..hidden", None),
    ("../escape.txt", "'..' segment"),
    ("a/../../b.txt", "'..' segment"),
    ("./a.txt", "'.' segment"),
    ("a//b.txt", "empty segment"),
    ("/etc/passwd", "absolute"),
    ("a\\..\\b.txt", "backslash"),
    (".git/config", "into .git"),
    ("a\x00b", "control character"),
    ("", "empty"),
])
def test_check_path_rules(path, reason):
    if reason is None:
        assert check_path(path) == path
    else:
        with pytest.raises(ApiError) as refused:
            check_path(path)
        assert refused.value.status == 400 and repr(path) in refused.value.message


@pytest.mark.parametrize("path", ["../../escape.txt", "/abs.txt", "a\\b.txt", "sub/../../x.txt"])
def test_commits_and_downloads_that_escape_the_repo_are_refused(hub, api, repo_id, path):
    api.create_repo(repo_id)
    status, headers, body = _raw(hub, "POST", f"/api/models/{repo_id}/commit/main",
                                 _ndjson(HEADER, _file_line(path)), hub.token, "application/x-ndjson")
    assert status == 400 and headers["X-Error-Code"] == "BadRequest" and "Invalid path" in body["error"]
    status, _, _ = _raw(hub, "GET", f"/{repo_id}/resolve/main/{urllib.request.quote(path, safe='/')}")
    assert status == 400
    assert api.list_repo_files(repo_id) == [".gitattributes"]


def test_stale_parent_commit_is_refused_with_412(api, repo_id):
    api.create_repo(repo_id)
    old = api.model_info(repo_id).sha
    api.upload_file(path_or_fileobj=b"1", path_in_repo="one.txt", repo_id=repo_id)
    with pytest.raises(HfHubHTTPError) as stale:
        api.create_commit(repo_id, operations=[CommitOperationAdd("two.txt", b"2")], commit_message="stale",
                          parent_commit=old)
    assert stale.value.response.status_code == 412
    assert "two.txt" not in api.list_repo_files(repo_id)


def test_concurrent_commits_to_one_branch_are_serialised(hub, api, repo_id):
    api.create_repo(repo_id)
    parent = api.model_info(repo_id).sha

    def race(n, header):
        statuses = []

        def commit(i):
            body = _ndjson({"key": "header", "value": {"summary": f"c{i}", **header}}, _file_line(f"f{len(header)}{i}"))
            statuses.append(_raw(hub, "POST", f"/api/models/{repo_id}/commit/main", body, hub.token,
                                 "application/x-ndjson")[0])

        threads = [threading.Thread(target=commit, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sorted(statuses)

    # Commits that all name the same parent: exactly one wins, the others see that it moved.
    assert race(4, {"parentCommit": parent}) == [200, 412, 412, 412]
    # Commits without a parent each land on top of the previous one: none is lost.
    assert race(6, {}) == [200] * 6
    assert len(api.list_repo_commits(repo_id)) == 1 + 1 + 6
    assert len(api.list_repo_files(repo_id)) == 1 + 1 + 6


def test_lfs_upload_urls_are_signed_and_commits_only_use_objects_uploaded_to_the_repo(hub, api, repo_id):
    api.create_repo(repo_id)
    oid = "ab" * 32
    status, _, _ = _raw(hub, "PUT", f"/{repo_id}.git/info/lfs/objects/{oid}/3?sig=forged", b"abc")
    assert status == 403
    line = {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": oid, "size": 3}}
    status, _, body = _raw(hub, "POST", f"/api/models/{repo_id}/commit/main", _ndjson(HEADER, line), hub.token,
                           "application/x-ndjson")
    assert status == 400 and "was not uploaded to this repo" in body["error"]


@pytest.mark.parametrize("body, message", [
    ({"name": "..evil"}, "Invalid repo name"),
    ({"name": "../evil"}, "Invalid namespace"),
    ({"name": "ok", "organization": "a--b"}, "Invalid namespace"),
    ({"name": "ok", "type": "bucket"}, "Invalid repo type"),
    ({}, "Missing 'name'"),
])
def test_create_repo_validates_its_input(hub, body, message):
    status, headers, answer = _raw(hub, "POST", "/api/repos/create", json.dumps(body).encode(), hub.token)
    assert status == 400 and headers["X-Error-Code"] == "BadRequest" and message in answer["error"]


def test_every_error_carries_an_error_code(hub, api, repo_id):
    api.create_repo(repo_id)
    cases = [
        ("GET", f"/api/models/{repo_id}/revision/nope", None, "RevisionNotFound"),
        ("GET", f"/{repo_id}/resolve/main/nope.txt", None, "EntryNotFound"),
        ("GET", "/api/datasets/barename", None, "RepoNotFound"),
        ("POST", f"/api/models/{repo_id}/commit/main", b"not json", "BadRequest"),
        ("GET", "/api/no/such/endpoint/here", None, "NotFound"),
        ("DELETE", "/api/whoami-v2", None, "MethodNotAllowed"),
    ]
    for method, path, body, code in cases:
        status, headers, answer = _raw(hub, method, path, body, hub.token)
        assert 400 <= status < 500 and headers["X-Error-Code"] == code and answer["error"], (path, code)
    assert _raw(hub, "GET", f"/{repo_id}/resolve/main/nope.txt")[1]["X-Repo-Commit"] == api.model_info(repo_id).sha
