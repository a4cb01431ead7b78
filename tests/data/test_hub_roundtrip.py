"""load_data against hubft's local Hub: only HF_ENDPOINT is contacted, and the commit read is recorded."""

from __future__ import annotations

import sys

import datasets
import pytest

from hubft.data import load_data, make_synthetic_image_dataset


_RECORDERS: list[list[str]] = []


def _audit(event: str, args: tuple) -> None:
    # audit hooks cannot be removed, so this one stays installed and only records while a test holds a recorder
    if _RECORDERS and event == "socket.getaddrinfo":
        _RECORDERS[-1].append(str(args[0]))
    elif _RECORDERS and event == "socket.connect" and isinstance(args[1], tuple):
        _RECORDERS[-1].append(str(args[1][0]))


sys.addaudithook(_audit)


@pytest.fixture
def contacted_hosts(monkeypatch):
    """Every host looked up or connected to while the test runs (both extra hosts of datasets would show)."""
    # start from datasets' defaults, restored afterwards, so the test proves load_data turns both off itself
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", True)
    monkeypatch.setattr(datasets.config, "USE_PARQUET_EXPORT", True)
    monkeypatch.setenv("HF_UPDATE_DOWNLOAD_COUNTS", "1")
    hosts: list[str] = []
    _RECORDERS.append(hosts)
    yield hosts
    _RECORDERS.remove(hosts)


def test_load_from_the_local_hub_records_the_commit(hub, api, repo_id, contacted_hosts):
    pushed = make_synthetic_image_dataset(num_classes=3, per_class=4, size=8)
    pushed.push_to_hub(repo_id, token=hub.token)
    sha = api.dataset_info(repo_id).sha
    hub.requests.clear()
    contacted_hosts.clear()

    bundle = load_data(name=repo_id)

    # pooled connections to the local Hub may need no new look-up; anything else would be a new host
    assert hub.requests and set(contacted_hosts) <= {"127.0.0.1"}
    assert bundle.source.kind == "hub" and bundle.source.revision_sha == sha
    assert bundle.label_names == pushed.features["label"].names
    assert len(bundle.train) + len(bundle.eval) == 12
    pinned = load_data(name=repo_id, revision=sha)
    assert pinned.source.revision_sha == sha and len(pinned.train) == len(bundle.train)
