"""Hub sources: what is downloaded at which revision, and the errors when that fails.

The happy path stands in a fake ``hf_hub_download`` that serves a local directory through a Hub-cache-shaped
snapshot path (full round trips against the local Hub server are the lead's integration tests). The unreachable
path uses the real client against ``HF_ENDPOINT``, where nothing listens (see tests/conftest.py).
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import time

import httpx2
import huggingface_hub
import pytest
import timm.models._hub as timm_hub
import torch
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

from hubft.errors import HubError, ModelError, WeightsError
from hubft.models import create_model

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def closed_endpoint(monkeypatch):
    """Send the real download client (hubft's and timm's) to a port where nothing listens.

    HF_ENDPOINT already has no server behind it unless a local-Hub fixture started one in this session, so a port
    of our own is used. huggingface_hub retries a refused connection with 1-8 s pauses; the outcome is the same
    without them.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        functools.partial(huggingface_hub.hf_hub_download, endpoint=endpoint))
    monkeypatch.setattr(timm_hub, "hf_hub_download", functools.partial(timm_hub.hf_hub_download, endpoint=endpoint))
    monkeypatch.setattr(time, "sleep", lambda seconds: None)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path, resnet_source):
    """Serve resnet_source as Hub repo 'owner/pets' and record every download as (repo, file, revision)."""
    calls = []
    served = {"owner/pets": resnet_source.directory}

    def hf_hub_download(repo_id, filename, *, revision=None, cache_dir=None, library_name=None):
        calls.append((repo_id, filename, revision))
        if repo_id not in served:
            raise RepositoryNotFoundError("404", response=httpx2.Response(404, request=httpx2.Request("GET", "x")))
        if revision not in (None, "main", "v1", SHA):
            raise RevisionNotFoundError("404", response=httpx2.Response(404, request=httpx2.Request("GET", "x")))
        if not (served[repo_id] / filename).exists():
            raise EntryNotFoundError(filename)
        snapshot = tmp_path / "hub" / repo_id.replace("/", "--") / "snapshots" / SHA
        snapshot.mkdir(parents=True, exist_ok=True)
        shutil.copy(served[repo_id] / filename, snapshot / filename)
        return str(snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    return served, calls


def test_hub_source_downloads_both_files_at_one_resolved_commit(fake_hub, resnet_source):
    _, calls = fake_hub
    model = create_model("hf-hub:owner/pets@v1", label_names=["x", "y"])
    assert calls == [("owner/pets", "config.json", "v1"), ("owner/pets", "model.safetensors", SHA)]
    assert model.hubft_source["path"] is None
    assert {k: model.hubft_source[k] for k in ("kind", "repo_id", "revision", "requested_revision")} == {
        "kind": "hub", "repo_id": "owner/pets", "revision": SHA, "requested_revision": "v1"}
    assert model.pretrained_cfg["hf_hub_id"] == "owner/pets" and "file" not in model.pretrained_cfg
    assert torch.equal(model.layer1[0].conv1.weight, resnet_source.state_dict["layer1.0.conv1.weight"])


def test_revision_keyword_and_config_only_download(fake_hub):
    _, calls = fake_hub
    create_model("hf-hub:owner/pets", revision="main", pretrained=False)
    assert calls == [("owner/pets", "config.json", "main")]


def test_hub_repo_with_only_pickle_weights_is_refused(fake_hub, tmp_path, resnet_source, monkeypatch):
    served, _ = fake_hub
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(resnet_source.directory / "config.json", pickled / "config.json")
    served["owner/old"] = pickled
    monkeypatch.setattr(huggingface_hub, "file_exists", lambda repo, name, revision=None: name == "pytorch_model.bin")
    with pytest.raises(WeightsError, match="only pickle weights \\(pytorch_model.bin\\)"):
        create_model("hf-hub:owner/old")


@pytest.mark.parametrize("source, error, text", [
    ("hf-hub:owner/missing", HubError, "does not exist, or it is private or gated"),
    ("hf-hub:owner/pets@nope", HubError, "revision 'nope' does not exist"),
], ids=["no-repo", "no-revision"])
def test_hub_lookup_errors(fake_hub, source, error, text):
    with pytest.raises(error) as info:
        create_model(source)
    assert text in str(info.value) and "Fix: " in str(info.value)


def test_hub_repo_without_config_is_not_a_timm_repo(fake_hub, tmp_path):
    served, _ = fake_hub
    served["owner/empty"] = tmp_path
    with pytest.raises(ModelError, match="has no config.json, so it is not a timm model repo"):
        create_model("hf-hub:owner/empty")


def test_unreachable_hub_says_so_and_how_to_work_offline(closed_endpoint):
    with pytest.raises(HubError) as info:
        create_model("hf-hub:owner/name", num_classes=2)
    text = str(info.value)
    assert "unreachable" in text and os.environ["HF_ENDPOINT"] in text
    assert "local-dir:PATH" in text and "pretrained=False" in text and "\n" not in text
    assert "config.json" in text  # the config is needed even without weights: the fix names a timm name


def test_unreachable_timm_pretrained_weights_say_so_too(closed_endpoint):
    with pytest.raises(HubError) as info:
        create_model("test_resnet.r160_in1k", num_classes=2)
    text = str(info.value)
    assert "'test_resnet.r160_in1k'" in text and "unreachable" in text and "pretrained=False" in text


def test_offline_mode_without_a_cached_copy_is_named(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match=r"offline mode is on \(HF_HUB_OFFLINE=1\)"):
        create_model("hf-hub:owner/name")
