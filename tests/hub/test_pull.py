"""Getting models back: pull_from_hub / `hubft pull`, from_pretrained at a revision, and starting a fine-tune from
repos that hubft or timm pushed."""

from __future__ import annotations

import json

import pytest
import torch

import hubft
from hubft.errors import HubError
from hubft.hub.push import pull_from_hub, push_to_hub


# A fixed input, independent of the global RNG, for comparing logits.
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1234))


def _saved(tmp_path, name, labels):
    model = hubft.create_model("test_resnet", label_names=labels, pretrained=False).eval()
    return model, hubft.save_pretrained(model, tmp_path / name)


def _assert_is_the_pushed_model(pulled: torch.nn.Module, pushed: torch.nn.Module) -> None:
    """The model that came back from the Hub is the one that was pushed: every tensor byte for byte, same logits."""
    got, want = pulled.state_dict(), pushed.state_dict()
    assert sorted(got) == sorted(want)
    for key, tensor in want.items():
        assert (got[key].dtype, got[key].shape) == (tensor.dtype, tensor.shape), key
        assert got[key].numpy().tobytes() == tensor.numpy().tobytes(), key
    with torch.no_grad():
        assert torch.equal(pulled.eval()(X), pushed.eval()(X))


def test_pull_gets_the_pushed_files_and_revisions_pin_them(hub, api, repo_id, tmp_path):
    from hubft.cli import main

    first, first_dir = _saved(tmp_path, "first", ["a", "b"])
    push_to_hub(first_dir, repo_id, token=hub.token)
    first_sha = api.model_info(repo_id).sha
    second, second_dir = _saved(tmp_path, "second", ["a", "b", "c"])
    push_to_hub(second_dir, repo_id, token=hub.token)

    pulled = pull_from_hub(repo_id, tmp_path / "pulled")
    # Only the allowlisted files (a saved model has no metrics or plots); not .gitattributes.
    assert sorted(p.name for p in pulled.iterdir() if p.name != ".cache") == ["README.md", "config.json",
                                                                             "model.safetensors"]
    assert (pulled / "model.safetensors").read_bytes() == (second_dir / "model.safetensors").read_bytes()
    _assert_is_the_pushed_model(hubft.from_pretrained(pulled), second)

    assert main(["pull", repo_id, "-o", str(tmp_path / "old"), "--revision", first_sha]) == 0
    assert json.loads((tmp_path / "old" / "config.json").read_text())["label_names"] == ["a", "b"]
    assert (tmp_path / "old" / "model.safetensors").read_bytes() == (first_dir / "model.safetensors").read_bytes()

    old = hubft.from_pretrained(f"hf-hub:{repo_id}", revision=first_sha)
    _assert_is_the_pushed_model(old, first)
    assert old.label_names == ["a", "b"] and old.hubft_source["revision"] == first_sha


@pytest.mark.parametrize("case,message", [
    ("missing repo", "not found"),
    ("missing revision", "revision"),
    ("no weights", "no model.safetensors"),
])
def test_pull_errors_say_what_is_wrong(hub, api, repo_id, tmp_path, case, message):
    revision = None
    if case != "missing repo":
        api.create_repo(repo_id)
        api.upload_file(path_or_fileobj=b"# notes\n", path_in_repo="README.md", repo_id=repo_id)
        revision = "no-such-branch" if case == "missing revision" else None
    with pytest.raises(HubError, match=message):
        pull_from_hub(repo_id, tmp_path / "pulled", revision=revision)


def test_fine_tuning_can_start_from_a_repo_timm_pushed(hub, repo_id):
    import timm
    from timm.models import push_to_hf_hub

    source = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    push_to_hf_hub(source, repo_id, token=hub.token, model_config={"label_names": ["cat", "dog", "fox"]})

    kept = hubft.from_pretrained(f"hf-hub:{repo_id}")
    _assert_is_the_pushed_model(kept, source)
    assert kept.label_names == ["cat", "dog", "fox"]

    new = hubft.create_model(f"hf-hub:{repo_id}", label_names=["x", "y"])
    assert new.num_classes == 2 and new.hubft_source["head_reset"]
    body = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(new.state_dict()[k], v) for k, v in body.items())


def test_from_pretrained_takes_a_bare_repo_id(hub, repo_id, tmp_path, monkeypatch, send_hf_token):
    model, saved = _saved(tmp_path, "m", ["a", "b"])
    hubft.push_to_hub(saved, repo_id, token=hub.token)
    send_hf_token(hub.token)
    for source in (repo_id, f"hf-hub:{repo_id}"):
        pulled = hubft.from_pretrained(source)
        _assert_is_the_pushed_model(pulled, model)
        assert pulled.hubft_source["repo_id"] == repo_id and pulled.label_names == ["a", "b"]
    # An existing local folder of that name wins over the Hub.
    monkeypatch.chdir(tmp_path)
    owner, name = repo_id.split("/")
    hubft.save_pretrained(hubft.create_model("test_resnet", label_names=["x", "y", "z"], pretrained=False),
                          tmp_path / owner / name)
    assert hubft.from_pretrained(repo_id).label_names == ["x", "y", "z"]
