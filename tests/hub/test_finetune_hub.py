"""The whole Hub flow, once per module: a fine-tune pulls its backbone and data from the local Hub and pushes its
result (``hub.push: true``), authenticated only by a canary token in ``HF_TOKEN``; the tests then read the result
back with timm, huggingface_hub and a fresh offline process, and look for the canary everywhere."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import copy
import hashlib
import subprocess
import sys
import threading
import uuid
from types import SimpleNamespace

import pytest
import torch

import hubft
from hubft.testing import reset_process_state
from hubft.hub.card import PLOTS
from hubft.hub.push import push_to_hub

pytestmark = pytest.mark.slow

_LOGGERS = ("", "hubft", "huggingface_hub", "datasets", "accelerate", "timm")


@contextlib.contextmanager
def _capture_everything():
    """stdout, stderr and every log record of the libraries involved, as one growing text buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setLevel(logging.DEBUG)
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    levels = [lg.level for lg in loggers]
    # The root handler sees what propagates; libraries that do not propagate get the handler themselves.
    hooked = [lg for lg in loggers if lg is logging.getLogger() or not lg.propagate]
    for lg in hooked:
        lg.addHandler(handler)
    for lg in loggers[1:]:
        lg.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield buffer
    finally:
        for lg in hooked:
            lg.removeHandler(handler)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)




@pytest.fixture(scope="module")
def e2e(local_hub, tmp_path_factory):
    from huggingface_hub import HfApi, constants

    from hubft.data import make_synthetic_image_dataset

    hub = local_hub
    hub.set_faults(None)
    hub.up()
    canary = hub.add_token(hub.user, "write", token=f"hf_canary_{uuid.uuid4().hex}")
    api = HfApi(token=canary)
    tag = uuid.uuid4().hex[:6]
    base_repo, data_repo, out_repo = (f"{hub.user}/e2e-{kind}-{tag}" for kind in ("base", "data", "model"))
    tmp = tmp_path_factory.mktemp("e2e")

    # A tiny backbone saved and pushed by hubft, whose card declares the license the fine-tune must inherit ...
    base = hubft.create_model("test_resnet", label_names=["x", "y"], pretrained=False)
    hubft.save_pretrained(base, tmp / "base")
    (tmp / "base" / "config.yaml").write_text("hub:\n  license: apache-2.0\n")
    push_to_hub(tmp / "base", base_repo, token=canary)
    # ... and image data pushed with datasets.
    dataset = make_synthetic_image_dataset(num_classes=4, per_class=8, size=16, seed=0)
    dataset.push_to_hub(data_repo, token=canary)

    out = tmp / "run"
    config = {
        "model": {"name": f"hf-hub:{base_repo}", "pretrained": True},
        "data": {"name": data_repo, "image_size": 16, "eval_fraction": 0.25, "hflip": 0.0},
        "optim": {"lr": 0.01, "weight_decay": 0.0},
        "schedule": {"name": "cosine", "warmup_steps": 1},
        "train": {"epochs": 1, "max_updates": 2, "batch_size": 8, "output_dir": str(out), "log_every": 1,
                  "cpu": True, "checkpoint_every": 1},
        "hub": {"push": True, "repo_id": out_repo},
    }
    with pytest.MonkeyPatch.context() as mp, _capture_everything() as captured:
        # The canary is the only credential: HF_TOKEN, read per request as for any user.
        mp.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
        mp.setenv("HF_TOKEN", canary)
        try:
            result = hubft.finetune(config)
        finally:
            reset_process_state()
    return SimpleNamespace(hub=hub, canary=canary, api=api, base_repo=base_repo, data_repo=data_repo,
                           out_repo=out_repo, out=out, config=config, result=result, captured=captured.getvalue(),
                           labels=dataset.features["label"].names)


def test_the_run_pulls_its_backbone_and_data_and_pushes_one_commit(e2e):
    api, out = e2e.api, e2e.out
    assert e2e.out_repo in e2e.result["url"]
    assert [c.title for c in api.list_repo_commits(e2e.out_repo)] == ["Upload fine-tuned model with hubft",
                                                                      "initial commit"]
    uploaded = set(api.list_repo_files(e2e.out_repo)) - {".gitattributes"}
    assert uploaded == {"model.safetensors", "config.json", "README.md", "config.yaml", "metrics.json", *PLOTS}
    assert any((out / "checkpoints").iterdir()) and (out / "log.jsonl").is_file()  # they exist, and stay local

    run = json.loads((out / "metrics.json").read_text())["run"]
    assert run["base_model"]["repo_id"] == e2e.base_repo
    assert run["base_model"]["revision"] == api.model_info(e2e.base_repo).sha
    assert run["dataset"]["kind"] == "hub" and run["dataset"]["dataset"] == e2e.data_repo
    assert run["dataset"]["revision_sha"] == api.dataset_info(e2e.data_repo).sha
    assert run["label_names"] == e2e.labels


def test_timm_loads_the_pushed_model_with_identical_logits_and_labels(e2e):
    import timm

    from_hub = timm.create_model(f"hf-hub:{e2e.out_repo}", pretrained=True).eval()
    local = hubft.from_pretrained(f"local-dir:{e2e.out}").eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(from_hub(x), local(x))
    assert list(from_hub.pretrained_cfg["label_names"]) == e2e.labels
    assert hubft.from_pretrained(f"hf-hub:{e2e.out_repo}").label_names == e2e.labels


def test_the_model_card_on_the_hub_carries_eval_results_and_provenance(e2e):
    from huggingface_hub import ModelCard

    card = ModelCard.load(e2e.out_repo)
    final = json.loads((e2e.out / "metrics.json").read_text())["final"]
    data_sha = e2e.api.dataset_info(e2e.data_repo).sha
    base_sha = e2e.api.model_info(e2e.base_repo).sha

    assert card.data.library_name == "timm" and card.data.pipeline_tag == "image-classification"
    assert card.data.base_model == e2e.base_repo
    assert card.data.license == "apache-2.0"  # inherited from the base model's card
    assert card.data.datasets == [e2e.data_repo]
    results = {(r.metric_type, (r.metric_args or {}).get("average")): r for r in card.data.eval_results}
    assert results[("accuracy", None)].metric_value == pytest.approx(final["accuracy"], abs=1e-6)
    assert results[("f1", "macro")].metric_value == pytest.approx(final["f1_macro"], abs=1e-6)
    assert {r.dataset_type for r in results.values()} == {e2e.data_repo}
    assert {r.dataset_revision for r in results.values()} == {data_sha}
    for needle in (f'"hf-hub:{e2e.out_repo}"', base_sha, data_sha, *(f"]({name})" for name in PLOTS),
                   f"torch {torch.__version__}", *e2e.labels):
        assert needle in card.text, needle


def test_the_token_appears_in_no_file_log_output_or_upload(e2e, tmp_path):
    from huggingface_hub import snapshot_download

    canary = e2e.canary.encode()
    written = [p for p in e2e.out.rglob("*") if p.is_file()]
    assert any("checkpoints" in p.parts for p in written)
    for path in written:
        assert canary not in path.read_bytes(), path
    assert e2e.canary not in e2e.captured
    assert "hubft" in e2e.captured  # the capture did see the run's output
    for repo, kind in ((e2e.out_repo, "model"), (e2e.base_repo, "model"), (e2e.data_repo, "dataset")):
        remote = snapshot_download(repo, repo_type=kind, cache_dir=str(tmp_path / "check"))
        for root, _, files in os.walk(remote):
            for name in files:
                assert canary not in open(os.path.join(root, name), "rb").read(), (repo, name)


_OFFLINE_RELOAD = """
import sys, torch, timm, hubft
from safetensors.torch import save_file
repo, x_path, out_path = sys.argv[1:]
from safetensors.torch import load_file
x = load_file(x_path)["x"]
m = timm.create_model("hf-hub:" + repo, pretrained=True).eval()
h = hubft.from_pretrained("hf-hub:" + repo).eval()
pulled = hubft.pull_from_hub(repo)
with torch.no_grad():
    save_file({"timm": m(x), "hubft": h(x)}, out_path)
print("labels", m.pretrained_cfg["label_names"], h.label_names, sorted(p.name for p in pulled.iterdir()))
"""


def test_snapshot_download_then_an_offline_process_reloads_it(e2e, hub, tmp_path):
    from huggingface_hub import snapshot_download
    from safetensors.torch import load_file, save_file

    snapshot = snapshot_download(e2e.out_repo)
    assert open(os.path.join(snapshot, "model.safetensors"), "rb").read() == \
        (e2e.out / "model.safetensors").read_bytes()

    x = torch.randn(2, 3, 16, 16)
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    env = {**os.environ, **hub.env(token=None), "HF_HUB_OFFLINE": "1"}  # HF_HOME / HF_HUB_CACHE: the test's
    hub.down()  # offline means offline: nothing answers
    try:
        proc = subprocess.run([sys.executable, "-c", _OFFLINE_RELOAD, e2e.out_repo, str(tmp_path / "x.safetensors"),
                               str(tmp_path / "logits.safetensors")], env=env, capture_output=True, text=True,
                              timeout=300)
    finally:
        hub.up()
    assert proc.returncode == 0, proc.stderr[-3000:]
    logits = load_file(str(tmp_path / "logits.safetensors"))
    with torch.no_grad():
        expected = hubft.from_pretrained(f"local-dir:{e2e.out}").eval()(x)
    assert torch.equal(logits["timm"], expected) and torch.equal(logits["hubft"], expected)
    assert str(e2e.labels) in proc.stdout and "model.safetensors" in proc.stdout


def test_checkpoints_pushed_in_the_background_resume_the_run_exactly(e2e, hub, tmp_path):
    from hubft.train.hub_checkpoints import CheckpointPusher, download_checkpoint
    from hubft.hub.push import RetryPolicy

    # The Hub is down when the first checkpoint is submitted: submit returns, the upload waits in the background
    # (its retry sleeps until the test releases it), and nothing of the training loop waits with it.
    release = threading.Event()
    pusher = CheckpointPusher(e2e.out_repo, "ckpt", token=e2e.canary,
                              retry=RetryPolicy(sleep=lambda seconds: release.wait(60)))
    first, second = sorted((e2e.out / "checkpoints").iterdir())[:2]
    hub.down()
    pending = pusher.submit(first)
    assert not pending.done()
    hub.up()
    release.set()
    later = pusher.submit(second)
    pusher.close()
    assert pending.result() and later.result() and pusher.errors == []
    assert not list((e2e.out / "checkpoints").glob(".hub-push-*"))  # staging is gone once uploaded

    commits = e2e.api.list_repo_commits(e2e.out_repo, revision="ckpt")
    assert [c.title for c in commits[:2]] == [f"Checkpoint {second.name}", f"Checkpoint {first.name}"]
    tip = {f for f in e2e.api.list_repo_files(e2e.out_repo, revision="ckpt") if f.startswith("checkpoints/")}
    assert {f.split("/")[1] for f in tip} == {second.name}  # the tip holds the newest only
    assert download_checkpoint(f"hub:{e2e.out_repo}@ckpt").name == second.name

    # Resuming from the older checkpoint (picked by its commit) finishes the run bit for bit.
    local = download_checkpoint(f"hub:{e2e.out_repo}@{commits[1].commit_id}")
    assert local.name == first.name
    config = copy.deepcopy(e2e.config)
    config["train"].update(output_dir=str(tmp_path / "resumed"), resume=f"hub:{e2e.out_repo}@{commits[1].commit_id}")
    config["hub"]["push"] = False
    try:
        hubft.finetune(config)
    finally:
        reset_process_state()

    def sha(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert sha(tmp_path / "resumed" / "model.safetensors") == sha(e2e.out / "model.safetensors")
    log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["type"] == "step"] == [2]  # it did resume: update 1 came from the Hub


def test_a_run_whose_push_fails_keeps_its_output_and_hubft_push_finishes_it(e2e, hub, tmp_path, monkeypatch,
                                                                            capsys):
    from huggingface_hub import constants

    import hubft.hub.push as push_module
    from hubft.cli import main
    from hubft.errors import HubError
    from hubft.hub.push import RetryPolicy
    from hubft.testing import FaultPlan

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    sleeps = []
    monkeypatch.setattr(push_module, "DEFAULT_RETRY", RetryPolicy(sleep=sleeps.append))
    repo_id = f"{hub.user}/e2e-retry-{uuid.uuid4().hex[:6]}"
    config = copy.deepcopy(e2e.config)
    config["train"].update(output_dir=str(tmp_path / "run"), max_updates=1, checkpoint_every=None)
    config["hub"]["repo_id"] = repo_id

    # The Hub refuses every write for the whole push: the run's files are all written first, and stay.
    hub.set_faults(FaultPlan(kinds=("503",), targets=("repo-create",), max_per_request=None))
    try:
        with pytest.raises(HubError, match="kept failing") as err:
            hubft.finetune(config)
    finally:
        reset_process_state()
        hub.set_faults(None)
    assert f"hubft push {tmp_path / 'run'} {repo_id}" in str(err.value)
    assert len(sleeps) == RetryPolicy().max_retries
    written = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"model.safetensors", "config.json", "README.md", "metrics.json", *PLOTS} <= written
    assert not e2e.api.repo_exists(repo_id)

    assert main(["push", str(tmp_path / "run"), repo_id]) == 0
    assert repo_id in capsys.readouterr().out
    pulled = hubft.pull_from_hub(repo_id, tmp_path / "pulled")
    assert (pulled / "model.safetensors").read_bytes() == (tmp_path / "run" / "model.safetensors").read_bytes()


def test_hub_push_checkpoints_uploads_each_checkpoint_to_the_branch(e2e, hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
    monkeypatch.setenv("HF_TOKEN", e2e.canary)
    config = copy.deepcopy(e2e.config)
    config["train"].update(output_dir=str(tmp_path / "run"), checkpoint_every=1)
    config["hub"].update(push=False, push_checkpoints=True, checkpoint_branch="auto-ckpt")
    try:
        hubft.finetune(config)
    finally:
        reset_process_state()
    titles = [c.title for c in e2e.api.list_repo_commits(e2e.out_repo, revision="auto-ckpt")]
    assert any(t.startswith("Checkpoint step-") for t in titles)
    newest = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith("step-"))[-1]
    assert hubft.download_checkpoint(f"hub:{e2e.out_repo}@auto-ckpt").name == newest


def test_a_sharded_run_pushes_its_checkpoints_and_resumes_from_one_exactly(e2e, tmp_path, monkeypatch):
    """train.fsdp checkpoints (torch distributed checkpoint files) go to the Hub branch like any other, and a run
    resumed from the older one, in another output directory, ends bit-identical to the uninterrupted run."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
    monkeypatch.setenv("HF_TOKEN", e2e.canary)
    config = copy.deepcopy(e2e.config)
    config["train"].update(output_dir=str(tmp_path / "run"), fsdp=True)
    config["hub"].update(push=False, push_checkpoints=True, checkpoint_branch="fsdp-ckpt")
    try:
        hubft.finetune(config)
    finally:
        reset_process_state()
    commits = e2e.api.list_repo_commits(e2e.out_repo, revision="fsdp-ckpt")
    assert [c.title for c in commits[:2]] == ["Checkpoint step-00000002", "Checkpoint step-00000001"]
    files = set(e2e.api.list_repo_files(e2e.out_repo, revision=commits[1].commit_id))
    assert {f"checkpoints/step-00000001/sharded/{name}" for name in (".metadata", "__0_0.distcp")} <= files

    config["train"].update(output_dir=str(tmp_path / "resumed"), resume=f"hub:{e2e.out_repo}@{commits[1].commit_id}")
    config["hub"].update(push_checkpoints=False)
    try:
        hubft.finetune(config)
    finally:
        reset_process_state()
    assert (tmp_path / "resumed" / "model.safetensors").read_bytes() == \
        (tmp_path / "run" / "model.safetensors").read_bytes()
    log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["type"] == "step"] == [2]  # it did resume: update 1 came from the Hub
