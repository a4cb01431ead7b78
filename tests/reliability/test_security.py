"""Hostile input: pickles that run code, paths that climb out, tokens that must never leak, private repos.

The Hub-side rules (paths escaping a repo, tokens and roles on the local Hub) are tested in
``tests/hub/test_server_security.py``; push behaviour with tokens in ``tests/hub/test_push.py``. Here: what hubft
itself does with such input.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path

import pytest
import torch

import hubft
from hubft.errors import CheckpointError, ConfigError, HubError, WeightsError
from hubft.hub.push import push_to_hub
from hubft.testing import FaultPlan


class _CreatesAFile:
    """Unpickling this calls ``open(path, "w")``: the file appearing would prove code ran."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _malicious_pickle(target, marker) -> None:
    torch.save({"state_dict": _CreatesAFile(marker)}, target)
    # The payload is real: torch's safe loader sees the call and refuses it.
    with pytest.raises(Exception, match="open"):
        torch.load(target, weights_only=True)
    assert not marker.exists()


@pytest.fixture
def pickled_model(tmp_path):
    """A model directory whose only weights are a ``pytorch_model.bin`` that would create ``marker``."""
    model_dir, marker = tmp_path / "evil-model", tmp_path / "PWNED"
    hubft.save_pretrained(hubft.create_model("test_resnet", label_names=["a", "b"], pretrained=False), model_dir)
    (model_dir / "model.safetensors").unlink()
    _malicious_pickle(model_dir / "pytorch_model.bin", marker)
    return model_dir, marker


def test_a_malicious_pickle_in_a_local_model_is_refused(pickled_model, tmp_path, make_config, capsys, survival):
    survival("a local model whose only weights are a pytorch_model.bin that creates a file when unpickled",
             "refused with WeightsError (API) / exit 2 (CLI) naming the file; the file is never created")
    model_dir, marker = pickled_model
    with pytest.raises(WeightsError, match="pytorch_model.bin"):
        hubft.create_model(f"local-dir:{model_dir}", pretrained=True)
    from hubft.cli import main

    config = make_config(tmp_path)
    assert main(["finetune", "--config", str(config), "--model.name", f"local-dir:{model_dir}",
                 "--model.pretrained", "true"]) == 2
    assert "refuses to load" in capsys.readouterr().err
    assert not marker.exists()


def test_a_malicious_pickle_on_the_hub_is_refused(pickled_model, hub, api, repo_id, tmp_path, survival):
    survival("a Hub repo whose only weights are a malicious pytorch_model.bin",
             "create_model and pull_from_hub refuse it; the pickle is never downloaded or loaded")
    model_dir, marker = pickled_model
    api.create_repo(repo_id)
    api.upload_folder(folder_path=str(model_dir), repo_id=repo_id)
    assert "pytorch_model.bin" in api.list_repo_files(repo_id)
    hub.requests.clear()
    with pytest.raises(WeightsError, match="pytorch_model.bin"):
        hubft.create_model(f"hf-hub:{repo_id}", pretrained=True, cache_dir=tmp_path / "hf-cache")
    with pytest.raises(HubError, match="no model.safetensors"):
        hubft.pull_from_hub(repo_id, tmp_path / "pulled", token=hub.token)
    assert not (tmp_path / "pulled" / "pytorch_model.bin").exists()
    assert not marker.exists()

    # The Hub's own log is the proof: the pickle's bytes never left the server. Its name was only probed with
    # HEAD (which carries no body), while the config it sits beside was downloaded with GET.
    def served(method: str, name: str) -> list:
        return [r for r in hub.requests if r.method == method and r.path.endswith(f"/{name}") and r.status == 200]

    assert served("GET", "config.json"), hub.requests
    assert served("HEAD", "pytorch_model.bin"), hub.requests
    assert not [r for r in hub.requests if r.method != "HEAD" and "pytorch_model.bin" in r.path]


def _rewrite_manifest(checkpoint) -> None:
    """What an attacker who can write the checkpoint can also do: make the manifest match the new files."""
    import hashlib

    manifest = json.loads((checkpoint / "manifest.json").read_text())
    for rel, meta in manifest["files"].items():
        data = (checkpoint / rel).read_bytes()
        meta.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


def test_a_malicious_pickle_in_a_checkpoint_is_refused(finished_run, tmp_path, make_config, capsys, survival):
    survival("a checkpoint whose optimizer.bin is a malicious pickle (manifest forged to match)",
             "resume refuses it with CheckpointError, exit 2; the file is never created")
    run, marker = tmp_path / "run", tmp_path / "PWNED"
    shutil.copytree(finished_run, run)
    checkpoint = run / "checkpoints" / "step-00000010"
    _malicious_pickle(checkpoint / "optimizer.bin", marker)
    _rewrite_manifest(checkpoint)
    from hubft.cli import main

    assert main(["finetune", "--config", str(make_config(tmp_path)), "--train.resume", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "could not be loaded" in err and "step-00000010" in err and "Traceback" not in err
    assert not marker.exists()


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory, images, rel) -> Path:
    """A finished one-process ``train.fsdp`` run: its checkpoints are torch distributed checkpoints (``sharded/``)."""
    import copy

    from hubft.testing import reset_process_state

    cfg = copy.deepcopy(rel.BASE)
    cfg["data"]["path"] = str(images)
    cfg["train"].update(output_dir=str(tmp_path_factory.mktemp("sharded") / "run"), fsdp=True)
    try:
        hubft.finetune(cfg)
    finally:
        reset_process_state()
    return Path(cfg["train"]["output_dir"])


def _poison_metadata(sharded: Path, marker: Path) -> None:
    import pickle

    from torch.distributed.checkpoint import FileSystemReader

    (sharded / ".metadata").write_bytes(pickle.dumps(_CreatesAFile(marker)))
    FileSystemReader(sharded).read_metadata()  # torch's own reader runs it
    assert marker.exists()
    marker.unlink()


def _poison_an_entry(sharded: Path, marker: Path) -> None:
    """Rewrite the checkpoint with an optimizer group's name replaced by the payload (a non-tensor entry)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(sharded, sharded.parent / "whole.pt")
    state = torch.load(sharded.parent / "whole.pt", weights_only=True)
    (sharded.parent / "whole.pt").unlink()
    state["optimizer"]["param_groups"][0]["name"] = _CreatesAFile(marker)
    shutil.rmtree(sharded)
    dcp.save(state, checkpoint_id=str(sharded), no_dist=True)
    dcp.load({"optimizer": {"param_groups": [{"name": None}]}}, checkpoint_id=str(sharded), no_dist=True)
    assert marker.exists()  # torch's default planner runs it
    marker.unlink()


@pytest.mark.parametrize("where, poison", [pytest.param("whose .metadata", _poison_metadata, id="metadata"),
                                          pytest.param("where an optimizer group's name (a non-tensor entry)",
                                                       _poison_an_entry, id="entry")])
def test_a_malicious_pickle_in_a_sharded_checkpoint_is_refused(where, poison, sharded_run, tmp_path, make_config,
                                                                capsys, survival):
    survival(f"a train.fsdp checkpoint {where} is a malicious pickle that torch's own reader would run "
             "(manifest forged to match)",
             "resume refuses it with CheckpointError, exit 2, naming what was refused; the file is never created")
    run, marker = tmp_path / "run", tmp_path / "PWNED"
    shutil.copytree(sharded_run, run)
    checkpoint = run / "checkpoints" / "step-00000010"
    poison(checkpoint / "sharded", marker)
    _rewrite_manifest(checkpoint)
    from hubft.cli import main

    config = make_config(tmp_path, train={"fsdp": True})
    assert main(["finetune", "--config", str(config), "--train.resume", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "could not be loaded" in err and "UnpicklingError" in err and "io.open" in err, err
    assert "Traceback" not in err and "weights_only" not in err  # not torch's advice on loading it unsafely
    assert not marker.exists()


@pytest.mark.parametrize("index_path", ["../outside/model.safetensors", "/tmp/outside-model.safetensors"])
def test_a_sharded_index_pointing_outside_is_not_followed(index_path, tmp_path, survival):
    survival(f"a model directory with only a sharded index whose shard path is {index_path!r}",
             "refused (hubft reads model.safetensors only and never follows an index); nothing outside is read")
    model_dir = tmp_path / "sharded"
    hubft.save_pretrained(hubft.create_model("test_resnet", label_names=["a", "b"], pretrained=False), model_dir)
    (model_dir / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {"fc.weight": index_path, "fc.bias": index_path}}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsError, match="has no model.safetensors"):
        hubft.create_model(f"local-dir:{model_dir}", pretrained=True)


BAD_REPO_IDS = {
    "../escape": "climbs out of the namespace",
    "alice/../bob": "a '..' segment (and two slashes)",
    "/etc/passwd": "an absolute path",
    "..": "the parent directory itself",
    "alice/..": "'..' as the repo name",
    "alice/model/../../x": "a nested path",
}


@pytest.mark.parametrize("repo_id", list(BAD_REPO_IDS))
def test_repo_ids_with_dots_or_absolute_paths_are_refused_everywhere(repo_id, hub, tmp_path, capsys, survival):
    survival(f"repo id {repo_id!r} ({BAD_REPO_IDS[repo_id]})",
             "refused by push, pull, create_model and `hubft push` before any request reaches the Hub")
    from hubft.cli import main

    out = tmp_path / "run"
    hubft.save_pretrained(hubft.create_model("test_resnet", label_names=["a", "b"], pretrained=False), out)
    hub.requests.clear()
    with pytest.raises(ConfigError):
        push_to_hub(out, repo_id, token=hub.token)
    with pytest.raises(ConfigError):
        hubft.pull_from_hub(repo_id, tmp_path / "pulled", token=hub.token)
    with pytest.raises(ConfigError):
        hubft.create_model(f"hf-hub:{repo_id}", pretrained=True)
    assert main(["push", str(out), repo_id]) == 2
    assert "not a valid Hub repo id" in capsys.readouterr().err
    assert hub.requests == []
    assert not (tmp_path / "pulled").exists()


def _everything_under(root) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_a_token_passed_as_token_leaks_nowhere(hub, api, repo_id, tmp_path, capsys, caplog, survival):
    survival("a canary token passed as push_to_hub(token=...), through 503s, a Hub outage and a rejected token",
             "absent from every message, log record, stdout/stderr, the run directory and the uploaded files")
    from hubft.hub.retry import RetryPolicy

    canary = hub.add_token(hub.user, "write", token=f"hf_canary_{uuid.uuid4().hex}")
    out = tmp_path / "run"
    hubft.save_pretrained(hubft.create_model("test_resnet", label_names=["a", "b"], pretrained=False), out)
    fast = RetryPolicy(sleep=lambda s: None)
    caplog.set_level(logging.DEBUG)
    messages = []
    hub.set_faults(FaultPlan(rate=0.5, kinds=("503", "drop"), seed=1))
    push_to_hub(out, repo_id, token=canary, retry=fast)
    assert hub.faults_injected >= 1
    hub.set_faults(None)
    hub.down("503")
    try:
        with pytest.raises(HubError) as err:
            push_to_hub(out, repo_id + "-2", token=canary, retry=fast)
        messages.append(str(err.value))
    finally:
        hub.up()
    with pytest.raises(HubError) as err:
        push_to_hub(out, repo_id + "-3", token=canary + "x", retry=fast)
    messages.append(str(err.value))

    captured = capsys.readouterr()
    text = "\n".join([*messages, captured.out, captured.err, caplog.text,
                      *(repr(r.__dict__) for r in caplog.records)])
    assert canary not in text
    assert canary.encode() not in _everything_under(out)
    from huggingface_hub import snapshot_download

    remote = Path(snapshot_download(repo_id, cache_dir=str(tmp_path / "check"), token=hub.token))
    assert (remote / "model.safetensors").is_file()
    assert canary.encode() not in _everything_under(remote)


@pytest.mark.slow
def test_hf_token_leaks_nowhere_from_a_console_script_run_that_pushes(hub, api, repo_id, tmp_path, make_config, rel,
                                                                      survival):
    survival("a canary token in HF_TOKEN for `hubft finetune ... --hub.push true` (the console script, checkpoints on)",
             "the push succeeds; the canary is in no file of the run (checkpoints, card, logs, config), "
             "not on stdout/stderr, not in the uploaded files")
    canary = hub.add_token(hub.user, "write", token=f"hf_canary_{uuid.uuid4().hex}")
    config = make_config(tmp_path, train={"epochs": 1, "max_updates": 2},
                         hub={"push": True, "repo_id": repo_id})
    result = rel.console("finetune", "--config", config, HF_TOKEN=canary, HF_HUB_DISABLE_IMPLICIT_TOKEN="0")
    assert result.returncode == 0, result.output[-3000:]
    assert repo_id in result.output
    assert canary not in result.output
    run = tmp_path / "run"
    assert (run / "checkpoints").is_dir() and (run / "README.md").is_file()
    assert canary.encode() not in _everything_under(run)
    from huggingface_hub import snapshot_download

    remote = Path(snapshot_download(repo_id, cache_dir=str(tmp_path / "check"), token=hub.token))
    assert (remote / "model.safetensors").is_file()
    assert canary.encode() not in _everything_under(remote)


def test_config_dumps_and_reprs_hold_no_secret(tmp_path, make_config, monkeypatch, capsys, survival):
    survival("a canary in HF_TOKEN while the config is loaded, dumped (`hubft config`) and printed",
             "configs have no token field at all, so no dump, repr or config.yaml can carry one")
    canary = f"hf_canary_{uuid.uuid4().hex}"
    monkeypatch.setenv("HF_TOKEN", canary)
    from hubft.cli import main
    from hubft.config import config_fields, load_config

    assert not [k for k in config_fields() if any(w in k.lower() for w in ("token", "secret", "password", "key"))]
    config = make_config(tmp_path)
    assert main(["config", "--config", str(config)]) == 0
    shown = capsys.readouterr().out
    assert "output_dir" in shown
    assert canary not in shown + repr(load_config(config)) + str(load_config(config))


def test_a_private_repo_needs_a_token_and_a_read_token_cannot_write(hub, api, repo_id, tmp_path, monkeypatch,
                                                                    survival):
    survival("a private model repo on the local Hub, reached by hubft without a token and with a read token",
             "without: create_model and pull fail with a one-line 'private or not found' error; with the read "
             "token: both work, and a push is refused (no commit)")
    from huggingface_hub import constants

    out = tmp_path / "run"
    hubft.save_pretrained(hubft.create_model("test_resnet", label_names=["a", "b"], pretrained=False), out)
    push_to_hub(out, repo_id, private=True, token=hub.token)
    commits = len(api.list_repo_commits(repo_id))
    with pytest.raises(HubError, match="private"):
        hubft.create_model(f"hf-hub:{repo_id}", pretrained=True)
    with pytest.raises(HubError, match="private"):
        hubft.pull_from_hub(repo_id, tmp_path / "anonymous")

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
    monkeypatch.setenv("HF_TOKEN", hub.read_token)
    model = hubft.create_model(f"hf-hub:{repo_id}", pretrained=True)
    assert model.label_names == ["a", "b"]
    assert (hubft.pull_from_hub(repo_id, tmp_path / "pulled") / "model.safetensors").is_file()
    from hubft.hub.retry import RetryPolicy

    with pytest.raises(HubError, match="not authorised"):
        push_to_hub(out, repo_id, retry=RetryPolicy(sleep=lambda s: None))
    assert len(api.list_repo_commits(repo_id)) == commits
