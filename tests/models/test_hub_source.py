"""Hub sources: what is downloaded at which revision, and the errors when that fails.

Everything runs the real clients (huggingface_hub, and timm for timm names) against the session's local Hub
(``hub`` in tests/conftest.py). Which files were fetched at which revision is read from the Hub's request log, and
which error path ran from the status the Hub answered. Each test downloads into its own ``cache_dir``, so no test
is answered by another's cache.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from urllib.parse import unquote

import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi
from torch import nn

import hubft
from hubft.errors import HubError, ModelError, WeightsError
from hubft.models import create_model

LABELS = ["ant", "bee", "cat"]


@dataclass(frozen=True)
class Pets:
    """A model repo with a different model at each of its revisions.

    ``main`` moved on after tag ``v1``; branch ``dev`` forked from ``v1`` and has a commit of its own.
    """

    repo_id: str
    sha: dict[str, str]  # "v1", "dev", "main" -> commit sha
    model: dict[str, nn.Module]  # the same keys -> the model pushed there


@pytest.fixture(scope="module")
def pets(local_hub, tmp_path_factory) -> Pets:
    api = HfApi(token=local_hub.token)
    repo_id = f"{local_hub.user}/pets-{uuid.uuid4().hex[:6]}"
    api.create_repo(repo_id)
    folders = tmp_path_factory.mktemp("pets")
    sha, models = {}, {}

    def push(name: str, seed: int, revision: str = "main") -> None:
        torch.manual_seed(seed)
        models[name] = create_model("test_resnet", label_names=LABELS, pretrained=False).eval()
        folder = hubft.save_pretrained(models[name], folders / name)
        sha[name] = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision).oid

    push("v1", seed=1)
    api.create_tag(repo_id, tag="v1")
    api.create_branch(repo_id, branch="dev")
    push("dev", seed=2, revision="dev")
    push("main", seed=3)
    assert len(set(sha.values())) == 3
    return Pets(repo_id, sha, models)


def _downloads(hub) -> list[tuple[str, str]]:
    """(revision, file) of every download request, in order and without repeats (a HEAD and its GET count once)."""
    seen = []
    for request in hub.requests:
        if "/resolve/" in request.path:
            revision, filename = request.path.split("/resolve/", 1)[1].split("/", 1)
            if (unquote(revision), filename) not in seen:
                seen.append((unquote(revision), filename))
    return seen


def _statuses(hub) -> set[int]:
    return {request.status for request in hub.requests}


def _assert_same_weights(model: nn.Module, pushed: nn.Module, *, skip_head: bool = False) -> None:
    got, want = model.state_dict(), pushed.state_dict()
    keys = [k for k in want if not (skip_head and k.startswith("fc."))]
    assert keys and all(torch.equal(got[k], want[k]) for k in keys)


def test_hub_source_downloads_both_files_at_one_resolved_commit(hub, pets, tmp_path):
    model = create_model(f"hf-hub:{pets.repo_id}@v1", label_names=["x", "y"], cache_dir=tmp_path)
    # The tag is resolved once, by the config download; the weights are then fetched by the commit it named.
    assert _downloads(hub) == [("v1", "config.json"), (pets.sha["v1"], "model.safetensors")]
    assert _statuses(hub) == {200}
    assert model.hubft_source["path"] is None
    assert {k: model.hubft_source[k] for k in ("kind", "repo_id", "revision", "requested_revision")} == {
        "kind": "hub", "repo_id": pets.repo_id, "revision": pets.sha["v1"], "requested_revision": "v1"}
    assert model.pretrained_cfg["hf_hub_id"] == pets.repo_id and "file" not in model.pretrained_cfg
    _assert_same_weights(model, pets.model["v1"], skip_head=True)  # the head was reset for the labels x, y
    assert model.num_classes == 2 and model.hubft_source["head_reset"]


@pytest.mark.parametrize("kind, expected", [
    ("default branch", "main"),
    ("branch", "dev"),
    ("tag", "v1"),
    ("short sha", "dev"),
    ("full sha", "v1"),
])
def test_every_kind_of_revision_loads_the_model_pushed_there(hub, pets, tmp_path, kind, expected):
    revision = {"default branch": None, "branch": "dev", "tag": "v1", "short sha": pets.sha["dev"][:7],
                "full sha": pets.sha["v1"]}[kind]
    model = create_model(f"hf-hub:{pets.repo_id}" + (f"@{revision}" if revision else ""), cache_dir=tmp_path).eval()

    _assert_same_weights(model, pets.model[expected])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), pets.model[expected](x))
    assert model.label_names == LABELS and not model.hubft_source["head_reset"]
    assert (model.hubft_source["revision"], model.hubft_source["requested_revision"]) == (pets.sha[expected], revision)
    assert _downloads(hub)[-1] == (pets.sha[expected], "model.safetensors")


def test_revision_keyword_and_config_only_download(hub, pets, tmp_path):
    model = create_model(f"hf-hub:{pets.repo_id}", revision="main", pretrained=False, cache_dir=tmp_path)
    assert _downloads(hub) == [("main", "config.json")]
    assert model.hubft_source["revision"] == pets.sha["main"] and not model.hubft_source["pretrained"]


def test_a_cached_source_loads_while_the_hub_is_down(hub, pets, tmp_path, no_backoff):
    create_model(f"hf-hub:{pets.repo_id}@v1", cache_dir=tmp_path)
    hub.down()
    model = create_model(f"hf-hub:{pets.repo_id}@v1", cache_dir=tmp_path)
    _assert_same_weights(model, pets.model["v1"])
    assert model.hubft_source["revision"] == pets.sha["v1"]


def test_hub_repo_with_only_pickle_weights_is_refused(hub, api, repo_id, tmp_path):
    folder = hubft.save_pretrained(create_model("test_resnet", label_names=LABELS, pretrained=False), tmp_path / "m")
    torch.save({"fc.bias": torch.zeros(3)}, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=folder)
    with pytest.raises(WeightsError, match="only pickle weights \\(pytorch_model.bin\\)"):
        create_model(f"hf-hub:{repo_id}", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("case, status, text", [
    ("no repo, anonymous", 401, "does not exist, or it is private or gated"),
    ("no repo, with a token", 404, "does not exist, or it is private or gated"),
    ("private repo, anonymous", 401, "does not exist, or it is private or gated"),
    ("no revision", 404, "revision 'nope' does not exist"),
    ("invalid token", 401, "answered HTTP 401"),
])
def test_hub_lookup_errors(hub, api, pets, repo_id, tmp_path, send_hf_token, case, status, text):
    source = {"no revision": f"hf-hub:{pets.repo_id}@nope"}.get(case, f"hf-hub:{repo_id}")
    if case == "private repo, anonymous":
        api.create_repo(repo_id, private=True)
        api.upload_folder(repo_id=repo_id, folder_path=hubft.save_pretrained(pets.model["main"], tmp_path / "m"))
    token = {"no repo, with a token": hub.token, "invalid token": "hf_not_a_token_of_this_hub"}.get(case)
    if token:
        send_hf_token(token)
    hub.requests.clear()

    with pytest.raises(HubError) as info:
        create_model(source, cache_dir=tmp_path / "cache")
    assert text in str(info.value) and "Fix: " in str(info.value)
    assert _statuses(hub) == {status}  # the answer that took this path, and nothing else was asked
    if case == "private repo, anonymous":  # the owner's token reads it: the 401 was about who asked
        send_hf_token(hub.token)
        _assert_same_weights(create_model(source, cache_dir=tmp_path / "cache"), pets.model["main"])


def test_hub_repo_without_config_is_not_a_timm_repo(hub, api, repo_id, tmp_path):
    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=b"# notes\n", path_in_repo="README.md", repo_id=repo_id)
    with pytest.raises(ModelError, match="has no config.json, so it is not a timm model repo"):
        create_model(f"hf-hub:{repo_id}", cache_dir=tmp_path)
    assert [r.status for r in hub.requests if r.path.endswith("/config.json")] == [404]


def test_unreachable_hub_says_so_and_how_to_work_offline(hub, pets, tmp_path, no_backoff):
    hub.down()
    with pytest.raises(HubError) as info:
        create_model(f"hf-hub:{pets.repo_id}", num_classes=2, cache_dir=tmp_path)
    text = str(info.value)
    assert "unreachable" in text and os.environ["HF_ENDPOINT"] in text
    assert "local-dir:PATH" in text and "pretrained=False" in text and "\n" not in text
    assert "config.json" in text  # the config is needed even without weights: the fix names a timm name
    assert no_backoff.pauses  # the client retried before giving up
    assert hub.requests == []  # nothing reached the hub


def test_unreachable_timm_pretrained_weights_say_so_too(hub, tmp_path, no_backoff):
    hub.down()
    with pytest.raises(HubError) as info:
        create_model("test_resnet.r160_in1k", num_classes=2, cache_dir=tmp_path)
    text = str(info.value)
    assert "'test_resnet.r160_in1k'" in text and "unreachable" in text and "pretrained=False" in text
    assert no_backoff.pauses and hub.requests == []


def test_offline_mode_without_a_cached_copy_is_named(hub, pets, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match=r"offline mode is on \(HF_HUB_OFFLINE=1\)"):
        create_model(f"hf-hub:{pets.repo_id}", cache_dir=tmp_path)
    assert hub.requests == []
