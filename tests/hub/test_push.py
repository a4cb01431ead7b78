"""push_to_hub / `hubft push` against the session's local Hub, with the real huggingface_hub client over HTTP.

Every push here uploads one small run directory (a ``test_resnet`` saved by hubft, fake metrics and plots, and the
things that must stay local: a ``.env``, a checkpoint, a log). Retries are recorded instead of slept where hubft
waits; huggingface_hub's own backoff sleeps 1 s per fault on the endpoints it retries itself.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil

import pytest
import torch

import hubft
from hubft.errors import ConfigError, HubError, WeightsError
from hubft.hub.card import PLOTS
from hubft.hub.push import UPLOAD_ALLOWLIST, RetryPolicy, push_to_hub
from hubft.testing import FaultPlan

LOCAL_ONLY = (".env", "log.jsonl", "checkpoints/step-00000002/model.safetensors", "lr_curve.csv", "notes.txt")


def _write_run(out, *, labels=("cat", "dog", "fox")):
    from PIL import Image

    model = hubft.create_model("test_resnet", label_names=list(labels), pretrained=False)
    hubft.save_pretrained(model, out)
    (out / "metrics.json").write_text(json.dumps({
        "final": {"accuracy": 0.75, "f1_macro": 0.7, "loss": 0.9, "per_class_accuracy": {n: 0.75 for n in labels}},
        "best": {"epoch": 0, "eval": {"accuracy": 0.75}}, "best_epoch": 0,
    }))
    (out / "config.yaml").write_text("model:\n  name: test_resnet\nhub:\n  license: mit\n")
    for i, name in enumerate(PLOTS):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(out / name)
    (out / ".env").write_text("AWS_SECRET_ACCESS_KEY=do-not-upload\n")
    (out / "log.jsonl").write_text('{"type": "step", "step": 1, "loss": 1.0}\n')
    (out / "lr_curve.csv").write_text("update,head\n0,0.1\n")
    (out / "notes.txt").write_text("scratch\n")
    ckpt = out / "checkpoints" / "step-00000002"
    ckpt.mkdir(parents=True)
    shutil.copy(out / "model.safetensors", ckpt / "model.safetensors")
    return out


def _digest(root) -> dict[str, str]:
    """Every file under ``root`` (hidden ones included) -> SHA-256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return _write_run(tmp_path_factory.mktemp("run"))


@pytest.fixture
def hf_token_env(monkeypatch):
    """Set HF_TOKEN and let it reach requests as it does for users (tests/conftest.py turns implicit tokens off)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
    return lambda token: monkeypatch.setenv("HF_TOKEN", token)


class Sleeps(list):
    """A RetryPolicy.sleep that records the waits instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def _fast_retry(**kwargs) -> tuple[RetryPolicy, Sleeps]:
    sleeps = Sleeps()
    return RetryPolicy(sleep=sleeps, **kwargs), sleeps


def _assert_pushed_exactly_once(api, repo_id, run_dir, tmp_path, message="Upload fine-tuned model with hubft"):
    from huggingface_hub import snapshot_download

    commits = api.list_repo_commits(repo_id)
    assert [c.title for c in commits] == [message, "initial commit"]
    remote = snapshot_download(repo_id, cache_dir=str(tmp_path / "check"), token=api.token)
    expected = {n: (run_dir / n).read_bytes() for n in UPLOAD_ALLOWLIST if (run_dir / n).is_file() and n != "README.md"}
    got = {p: open(os.path.join(remote, p), "rb").read() for p in os.listdir(remote) if p != ".gitattributes"}
    card = got.pop("README.md").decode()
    assert got == expected
    # The card was rendered again for this repo: parsed as the Hub parses it, it names the repo and the run's results.
    from huggingface_hub import ModelCard

    data = ModelCard(card).data
    assert data.model_name == repo_id.split("/")[-1] and data.library_name == "timm"
    assert data.pipeline_tag == "image-classification"
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    results = {r.metric_type: r.metric_value for r in data.eval_results}
    assert results["accuracy"] == pytest.approx(final["accuracy"], abs=1e-6)
    assert f"{repo_id}" in card  # the loading snippets use the real id


def test_only_the_allowlist_is_uploaded_and_the_run_directory_is_untouched(hub, api, repo_id, run_dir, tmp_path):
    before = _digest(run_dir)
    url = push_to_hub(run_dir, repo_id, token=hub.token)

    assert url.startswith(f"{hub.endpoint}/{repo_id}/commit/")
    files = set(api.list_repo_files(repo_id)) - {".gitattributes"}
    assert files == {"model.safetensors", "config.json", "README.md", "config.yaml", "metrics.json", *PLOTS}
    assert not files & set(LOCAL_ONLY)
    _assert_pushed_exactly_once(api, repo_id, run_dir, tmp_path)
    assert _digest(run_dir) == before
    # Pushing the same directory again changes nothing and makes no commit.
    assert push_to_hub(run_dir, repo_id, token=hub.token) == url
    assert len(api.list_repo_commits(repo_id)) == 2


_ALL_KINDS = ("429", "500", "502", "503", "504", "drop", "drop-after")


@pytest.mark.parametrize("plan", [
    # Steps hubft retries itself (the commit is never retried by huggingface_hub: a lost answer is ambiguous).
    FaultPlan(kinds=("503",), targets=("commit",)),
    FaultPlan(kinds=("drop",), targets=("commit",)),
    FaultPlan(kinds=("drop-after",), targets=("commit",)),  # the commit lands, its answer is lost
    FaultPlan(kinds=("drop-after",), targets=("repo-create",)),
    FaultPlan(kinds=("500",), targets=("repo-info",)),
    # Steps huggingface_hub retries with its own backoff.
    FaultPlan(kinds=("429",), targets=("lfs-upload",)),
    FaultPlan(kinds=("drop",), targets=("preupload",)),
    # A fraction of every request, every kind.
    FaultPlan(rate=0.25, kinds=_ALL_KINDS, seed=3),
], ids=lambda p: f"{p.rate}-{'+'.join(p.kinds) if len(p.kinds) < 3 else 'all'}-{'+'.join(p.targets or ['all'])}")
def test_faults_still_give_exactly_one_commit_with_identical_files(hub, api, repo_id, run_dir, tmp_path, plan):
    if plan.targets is None:
        # Which requests fail depends on their paths: a fixed repo id keeps the mixed plan reproducible.
        repo_id = f"{hub.user}/mixed-faults-{plan.seed}"
    policy, _ = _fast_retry()
    hub.set_faults(plan)
    push_to_hub(run_dir, repo_id, token=hub.token, retry=policy)
    injected = hub.faults_injected
    hub.set_faults(None)

    assert injected >= 1
    _assert_pushed_exactly_once(api, repo_id, run_dir, tmp_path)


@pytest.mark.parametrize("retry_after,expected", [(3, [3.0]), (None, [1.0])])
def test_retry_after_is_honoured_else_exponential_backoff(hub, api, repo_id, run_dir, retry_after, expected):
    policy, sleeps = _fast_retry()
    hub.set_faults(FaultPlan(kinds=("429",), targets=("repo-create",), retry_after=retry_after))
    push_to_hub(run_dir, repo_id, token=hub.token, retry=policy)

    assert sleeps == expected
    assert len(api.list_repo_commits(repo_id)) == 2


def test_backoff_doubles_up_to_its_cap():
    from huggingface_hub.errors import HfHubHTTPError

    policy = RetryPolicy()
    dropped = ConnectionError("connection reset")
    assert [policy.wait_before(n, dropped) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 8.0]

    class Response:
        status_code, headers, request = 429, {"Retry-After": "7"}, None

    assert policy.wait_before(1, HfHubHTTPError("429", response=Response())) == 7.0


@pytest.mark.parametrize("mode,cause", [("refuse", "unreachable"), ("503", "HTTP 503")])
def test_hub_down_gives_a_clear_error_and_a_later_cli_push_finishes(hub, api, repo_id, run_dir, tmp_path,
                                                                    hf_token_env, capsys, mode, cause):
    before = _digest(run_dir)
    policy, sleeps = _fast_retry()
    hub.down(mode)
    try:
        with pytest.raises(HubError, match=cause) as err:
            push_to_hub(run_dir, repo_id, token=hub.token, retry=policy)
    finally:
        hub.up()
    message = str(err.value)
    assert "unchanged" in message and f"hubft push {run_dir} {repo_id}" in message
    assert len(sleeps) == policy.max_retries
    assert _digest(run_dir) == before
    assert not api.repo_exists(repo_id)

    hf_token_env(hub.token)
    from hubft.cli import main

    assert main(["push", str(run_dir), repo_id]) == 0
    assert repo_id in capsys.readouterr().out
    _assert_pushed_exactly_once(api, repo_id, run_dir, tmp_path)


def test_a_private_repo_is_invisible_to_anonymous_clients(hub, api, repo_id, run_dir, tmp_path):
    import timm
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    push_to_hub(run_dir, repo_id, private=True, token=hub.token)

    assert api.model_info(repo_id).private is True
    anonymous = HfApi(token=False)
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info(repo_id)
    assert repo_id not in {m.id for m in anonymous.list_models(author=hub.user)}
    with pytest.raises(RepositoryNotFoundError):  # timm sends no token: HF_TOKEN is blank in tests
        timm.create_model(f"hf-hub:{repo_id}", pretrained=True)
    with pytest.raises(HubError, match="private"):
        hubft.pull_from_hub(repo_id, tmp_path / "pulled", token=False)
    assert not (tmp_path / "pulled" / "model.safetensors").exists()


def test_branch_and_pull_request(hub, api, repo_id, run_dir, tmp_path):
    push_to_hub(run_dir, repo_id, revision="v1", token=hub.token)
    assert "model.safetensors" in api.list_repo_files(repo_id, revision="v1")
    assert "model.safetensors" not in api.list_repo_files(repo_id)

    # The pull request's commit lands but its answer is lost: the retry must find it, not open a second one.
    other = _write_run(tmp_path / "other", labels=("a", "b"))
    policy, _ = _fast_retry()
    hub.set_faults(FaultPlan(kinds=("drop-after",), targets=("commit",)))
    url = push_to_hub(other, repo_id, create_pr=True, token=hub.token, retry=policy)
    hub.set_faults(None)

    prs = api.list_repo_refs(repo_id, include_pull_requests=True).pull_requests
    assert [p.ref for p in prs] == ["refs/pr/1"] and url.endswith("/discussions/1")
    assert json.loads(open(api.hf_hub_download(repo_id, "config.json", revision="refs/pr/1")).read())[
        "label_names"] == ["a", "b"]


def test_a_read_only_token_is_refused_with_a_clear_error(hub, repo_id, run_dir):
    with pytest.raises(HubError, match="not authorised"):
        push_to_hub(run_dir, repo_id, token=hub.read_token, retry=_fast_retry()[0])


def test_a_staged_file_holding_the_token_is_never_uploaded(hub, api, repo_id, run_dir, tmp_path):
    leaky = tmp_path / "leaky"
    shutil.copytree(run_dir, leaky)
    (leaky / "config.yaml").write_text(f"hub:\n  token: {hub.token}\n")
    with pytest.raises(HubError, match="config.yaml contains the Hub token") as err:
        push_to_hub(leaky, repo_id, token=hub.token)
    assert hub.token not in str(err.value)
    assert not api.repo_exists(repo_id)


def test_the_token_in_safetensors_metadata_is_found(hub, api, repo_id, run_dir, tmp_path):
    """Tensor data is not searched, but the header's metadata (the file's only text) is."""
    from safetensors.torch import load_file, save_file

    leaky = tmp_path / "leaky"
    shutil.copytree(run_dir, leaky)
    save_file(load_file(str(leaky / "model.safetensors")), str(leaky / "model.safetensors"),
              metadata={"format": "pt", "note": f"pushed with {hub.token}"})
    with pytest.raises(HubError, match="model.safetensors contains the Hub token"):
        push_to_hub(leaky, repo_id, token=hub.token)
    assert not api.repo_exists(repo_id)


def test_finite_weights_whose_sum_overflows_are_pushed(hub, api, repo_id, tmp_path):
    """The fast check sums each tensor: finite values summing past float32's range must not be mistaken for inf."""
    model = hubft.create_model("test_resnet", num_classes=2, pretrained=False)
    with torch.no_grad():
        model.fc.weight[0, :2] = 3e38
    assert not torch.isfinite(model.fc.weight.sum()) and torch.isfinite(model.fc.weight).all()
    hubft.save_pretrained(model, tmp_path / "big")
    push_to_hub(tmp_path / "big", repo_id, token=hub.token)
    assert api.file_exists(repo_id, "model.safetensors")


@pytest.mark.parametrize("values", [[math.nan], [math.inf], [-math.inf], [math.inf, -math.inf]])
def test_non_finite_weights_are_refused_before_any_request(hub, repo_id, tmp_path, values):
    model = hubft.create_model("test_resnet", num_classes=2, pretrained=False)
    with torch.no_grad():
        for i, value in enumerate(values):  # +inf and -inf together: their sum is NaN, still refused
            model.fc.weight[0, i] = value
    hubft.save_pretrained(model, tmp_path / "nan")
    with pytest.raises(WeightsError, match="non-finite"):
        push_to_hub(tmp_path / "nan", repo_id, token=hub.token)
    assert hub.requests == []


def test_a_directory_without_a_model_is_refused(hub, repo_id, tmp_path):
    with pytest.raises(HubError, match="model.safetensors"):
        push_to_hub(tmp_path, repo_id, token=hub.token)
    assert hub.requests == []


def test_a_directory_holding_a_model_and_an_adapter_is_refused(hub, repo_id, tmp_path):
    """A push carries one model: never the base weights next to an adapter, nor a stale adapter next to a model."""
    for name in ("model.safetensors", "config.json", "adapter_model.safetensors", "adapter_config.json"):
        (tmp_path / name).write_text("{}")
    with pytest.raises(HubError, match="holds both a full model .* and an adapter"):
        push_to_hub(tmp_path, repo_id, token=hub.token)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "config.json").unlink()
    (tmp_path / "adapter_config.json").unlink()
    with pytest.raises(HubError, match="adapter_config.json' is missing"):
        push_to_hub(tmp_path, repo_id, token=hub.token)
    assert hub.requests == []


@pytest.mark.parametrize("repo_id,rule", [
    ("", "missing"),
    ("owner/name/extra", "form"),
    ("owner/resnet pets", "alphanumeric"),
    ("owner/-resnet", "start or end"),
    ("owner/resnet..pets", r"\.\."),
    ("owner/resnet.git", r"\.git"),
    ("owner/" + "a" * 97, "96"),
    ("hf-hub:owner/resnet", "hf-hub:"),
])
def test_invalid_repo_ids_are_refused_before_anything_runs(hub, tmp_path, run_dir, repo_id, rule):
    from hubft.hub.repo_id import check_repo_id

    with pytest.raises(ConfigError, match=rule):
        check_repo_id(repo_id)
    with pytest.raises(ConfigError, match="repo_id"):
        push_to_hub(run_dir, repo_id, token=hub.token)
    # A fine-tune with this repo id fails at once: no data, no model, nothing written.
    config = {"model": {"name": "test_resnet", "pretrained": False}, "data": {"name": "owner/never-loaded"},
              "train": {"output_dir": str(tmp_path / "run"), "cpu": True}, "hub": {"push": True, "repo_id": repo_id}}
    with pytest.raises(ConfigError, match=r"hub\.repo_id"):
        hubft.finetune(config)
    assert not (tmp_path / "run").exists()
    assert hub.requests == []


@pytest.mark.parametrize("repo_id", ["owner/name", "name", "Owner-1/res_net.v2"])
def test_valid_repo_ids_pass(repo_id):
    from hubft.hub.repo_id import check_repo_id

    assert check_repo_id(repo_id) == repo_id


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float64])
def test_the_finite_check_reads_every_float_width(tmp_path, dtype):
    from safetensors.torch import save_file

    from hubft.hub.push import _check_finite_weights

    big = torch.full((64,), 400.0).to(dtype)  # finite, but its float16 sum would overflow
    save_file({"w": big, "steps": torch.arange(3)}, str(tmp_path / "ok.safetensors"))
    _check_finite_weights(tmp_path / "ok.safetensors")
    bad = big.clone()
    bad[3] = float("nan")
    save_file({"w": bad}, str(tmp_path / "nan.safetensors"))
    with pytest.raises(WeightsError, match="non-finite"):
        _check_finite_weights(tmp_path / "nan.safetensors")


def test_a_safetensors_file_with_an_implausible_header_length_is_searched_whole(tmp_path):
    from hubft.hub.push import _refuse_token_in

    token = "hf_" + "s" * 30
    (tmp_path / "model.safetensors").write_bytes((2**62).to_bytes(8, "little") + b"{}" + token.encode())
    with pytest.raises(HubError, match="model.safetensors contains the Hub token"):
        _refuse_token_in(tmp_path, token)


@pytest.mark.parametrize("where", ["/home/alice/projects/pets", "~/projects/pets", "C:\\Users\\alice\\pets"])
def test_uploaded_configs_and_metrics_keep_only_the_last_component_of_local_paths(hub, api, repo_id, tmp_path, where):
    import yaml
    from huggingface_hub import hf_hub_download

    out = _write_run(tmp_path / "run", labels=("/r/aww", "dog", "fox"))  # a label is not a path, whatever it looks like
    sep = "\\" if ":" in where else "/"
    config = {"model": {"name": f"local-dir:{where}{sep}backbone"},
              "data": {"name": None, "path": f"{where}{sep}images", "classes": ["/r/aww", "dog"]},
              "train": {"output_dir": f"{where}{sep}runs{sep}pets", "resume": f"{where}{sep}runs{sep}old{sep}step-3",
                        "epochs": 2},
              "hub": {"license": "mit"}}
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    model_config = json.loads((out / "config.json").read_text())
    model_config["hubft"]["source"] = {"kind": "local", "source": f"local-dir:{where}{sep}backbone",
                                       "path": f"{where}{sep}backbone"}
    (out / "config.json").write_text(json.dumps(model_config, indent=2))
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["run"] = {"base_model": model_config["hubft"]["source"], "dataset": {"kind": "folder",
                                                                                 "dataset": f"{where}{sep}images"}}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    before = _digest(out)

    push_to_hub(out, repo_id, token=hub.token)

    def uploaded(name: str) -> str:
        return open(hf_hub_download(repo_id, name, cache_dir=str(tmp_path / "dl"), token=hub.token)).read()

    for name in ("config.yaml", "config.json", "metrics.json", "README.md"):
        text = uploaded(name)
        assert "alice" not in text and "Users" not in text and "~" not in text, name
    assert yaml.safe_load(uploaded("config.yaml")) == {
        "model": {"name": "local-dir:backbone"}, "data": {"name": None, "path": "images", "classes": ["/r/aww", "dog"]},
        "train": {"output_dir": "pets", "resume": "step-3", "epochs": 2}, "hub": {"license": "mit"}}
    pushed_config = json.loads(uploaded("config.json"))
    assert pushed_config["hubft"]["source"] == {"kind": "local", "source": "local-dir:backbone", "path": "backbone"}
    assert pushed_config["label_names"] == ["/r/aww", "dog", "fox"]
    assert {k: v for k, v in pushed_config.items() if k != "hubft"} == \
        {k: v for k, v in model_config.items() if k != "hubft"}  # the rest of timm's config is untouched
    assert json.loads(uploaded("metrics.json"))["run"]["dataset"] == {"kind": "folder", "dataset": "images"}
    assert _digest(out) == before  # the local run keeps its paths


def test_files_without_absolute_paths_are_uploaded_as_they_are(tmp_path):
    from hubft.hub.push import _public_copy

    path = tmp_path / "config.yaml"
    path.write_text("# mine\ntrain:\n  output_dir: outputs/run\n  resume: latest\ndata:\n  path: data/pets\n")
    assert _public_copy(path) is None  # no copy: the file is linked, comments and all
    path.write_text("[not, a, mapping: [\n")
    assert _public_copy(path) is None
