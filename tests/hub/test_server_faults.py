"""Fault plans and outages: deterministic, targetable, and survivable by the client's own retries."""

from __future__ import annotations

import urllib.error
import urllib.request

import httpx2
import pytest
from huggingface_hub import CommitOperationAdd, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError

from hubft.errors import ConfigError
from hubft.hub.server._faults import FaultInjector
from hubft.testing import FaultPlan, list_fault_kinds


def _status(hub, path, token=None):
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(hub.endpoint + path, headers=headers), timeout=10) as r:
            return r.status, r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.headers


def _decisions(plan, requests):
    injector = FaultInjector()
    injector.set_plan(plan)
    return [getattr(injector.decide("resolve", "GET", path), "name", None) for path in requests]


REQUESTS = [f"/r/{i % 4}" for i in range(40)]


def test_decisions_depend_only_on_seed_and_the_request():
    plan = FaultPlan(rate=0.5, kinds=("503", "429", "drop"), seed=3, max_per_request=None)
    first = _decisions(plan, REQUESTS)
    assert first == _decisions(plan, REQUESTS)
    assert first != _decisions(FaultPlan(rate=0.5, kinds=("503", "429", "drop"), seed=4, max_per_request=None),
                               REQUESTS)
    assert {k for k in first if k} == {"503", "429", "drop"} and first.count(None) > 5
    # Interleaving other requests does not change what happens to /r/0.
    only_zero = _decisions(plan, [p for p in REQUESTS if p == "/r/0"])
    assert only_zero == [k for p, k in zip(REQUESTS, first) if p == "/r/0"]


def test_max_per_request_bounds_consecutive_failures_and_targets_filter():
    plan = FaultPlan(rate=1.0, kinds=("503",), max_per_request=2, targets=("resolve",))
    assert _decisions(plan, ["/a"] * 6) == ["503", "503", None, "503", "503", None]
    injector = FaultInjector()
    injector.set_plan(plan)
    assert injector.decide("commit", "POST", "/a") is None


@pytest.mark.parametrize("kwargs, message", [
    ({"kinds": ("dorp",)}, "did you mean drop"),
    ({"kinds": ()}, "at least one kind"),
    ({"rate": 1.5}, "outside"),
    ({"retry_after": -1}, "negative"),
    ({"max_per_request": 0}, "below 1"),
])
def test_invalid_plans_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FaultPlan(**kwargs)


def test_unknown_targets_are_refused_with_close_matches(hub):
    with pytest.raises(ConfigError, match="did you mean lfs-upload"):
        hub.set_faults(FaultPlan(targets=("lfs-uplod",)))
    assert "drop" in list_fault_kinds() and "lfs-upload" in hub.endpoint_names()


def test_push_survives_faults_on_lfs_uploads_with_exactly_one_commit(hub, api, repo_id):
    api.create_repo(repo_id)
    blobs = {f"w{i}.safetensors": bytes([i]) * 5000 for i in range(3)}
    hub.set_faults(FaultPlan(rate=1.0, kinds=("503", "429", "drop"), seed=0, targets=("lfs-upload",),
                             max_per_request=1))
    api.create_commit(repo_id, commit_message="weights",
                      operations=[CommitOperationAdd(k, v) for k, v in blobs.items()])

    assert hub.faults_injected == 3  # every upload failed once, then the client's retry went through
    commits = [r for r in hub.requests if r.method == "POST" and "/commit/" in r.path]
    assert [r.status for r in commits] == [200]
    hub.set_faults(None)
    for name, data in blobs.items():
        with open(hf_hub_download(repo_id, name, token=hub.token), "rb") as f:
            assert f.read() == data


def test_a_fault_on_the_commit_call_fails_the_commit_and_leaves_the_repo_unchanged(hub, api, repo_id):
    api.create_repo(repo_id)
    hub.set_faults(FaultPlan(rate=1.0, kinds=("429",), targets=("commit",), retry_after=9))
    with pytest.raises(HfHubHTTPError) as failed:  # the client does not retry commits
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert failed.value.response.status_code == 429
    assert failed.value.response.headers["Retry-After"] == "9"
    assert api.list_repo_files(repo_id) == [".gitattributes"]


def test_drop_after_carries_out_the_commit_but_loses_the_answer(hub, api, repo_id):
    api.create_repo(repo_id)
    parent = api.model_info(repo_id).sha
    hub.set_faults(FaultPlan(kinds=("drop-after",), targets=("commit",)))
    add = [CommitOperationAdd("x.txt", b"x")]
    with pytest.raises(httpx2.RemoteProtocolError):  # the client does not retry commits
        api.create_commit(repo_id, operations=add, commit_message="lost answer", parent_commit=parent)
    hub.set_faults(None)
    assert "x.txt" in api.list_repo_files(repo_id)  # ... yet it landed, so a blind retry must not land twice:
    with pytest.raises(HfHubHTTPError) as stale:
        api.create_commit(repo_id, operations=add, commit_message="retry", parent_commit=parent)
    assert stale.value.response.status_code == 412
    assert [r.status for r in hub.requests if "/commit/" in r.path] == [200, 412]


def test_down_refuses_connections_or_answers_503_until_up(hub):
    assert _status(hub, "/api/whoami-v2", hub.token)[0] == 200
    hub.down("refuse")
    with pytest.raises(urllib.error.URLError):
        _status(hub, "/api/whoami-v2", hub.token)
    hub.up()
    assert _status(hub, "/api/whoami-v2", hub.token)[0] == 200
    hub.down("503")
    status, headers = _status(hub, "/api/whoami-v2", hub.token)
    assert status == 503 and headers["Retry-After"] == "0"
    hub.up()
    assert [r.status for r in hub.requests] == [200, 200, 503]
    with pytest.raises(ConfigError, match="outage mode"):
        hub.down("explode")
