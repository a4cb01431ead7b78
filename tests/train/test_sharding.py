"""Sharded training (``train.fsdp``, torch FSDP2) on CPU with gloo, and a run over two "machines" on localhost.

One uninterrupted 2-process FSDP run of ``test_vit`` (layer decay, head LR, no-decay norms and biases, SGD with
momentum, gradient checkpointing) is the reference; it runs as two machines of one process each (``torchrun
--nnodes 2``) sharing one output directory, and pushes to the local Hub. The other runs are compared with it:

- a plain (unsharded) one-process run on the joint batch, and resumes at 2 and at 1 process of a 2-process run
  killed mid-epoch, and at 2 processes of a 1-process run stopped mid-epoch.

Tolerance: the optimizer is SGD (momentum, weight decay), whose update is linear in the gradient, so runs at
different process counts differ only in the order per-sample gradients are summed (gloo's reduce-scatter of two
half-batch means vs one mean over the whole batch): fp32 rounding, ~1e-7 relative per operation. Six updates at LR
<= 0.2 keep that far inside ``atol=1e-5, rtol=1e-4`` (test_equivalence.py makes the same argument for DDP); a
resume at the same process count is bit-identical. The step records' ``loss`` is process 0's micro-batch loss,
which depends on the process count, so across counts the epoch records (train and eval loss) are compared.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

import hubft
from hubft.errors import ConfigError
from hubft.testing import reset_process_state

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BATCH = 4  # per process; 24 training images -> 3 updates of 8 images per epoch, 2 epochs
CLOSE = dict(atol=1e-5, rtol=1e-4)


def _config(out: Path, images: Path, *, fsdp: bool = True, **train) -> dict:
    return {
        "model": {"name": "test_vit", "pretrained": False},
        "data": {"path": str(images), "image_size": 32, "eval_fraction": 0.25, "hflip": 0.5},
        "optim": {"name": "SGD", "lr": 0.05, "head_lr": 0.2, "weight_decay": 0.05, "layer_decay": 0.75,
                  "options": {"momentum": 0.9}},
        "schedule": {"name": "cosine", "warmup_steps": 1},
        "train": {"epochs": 2, "batch_size": BATCH, "output_dir": str(out), "log_every": 1, "cpu": True,
                  "checkpoint_every": 2, "fsdp": fsdp, "grad_checkpointing": fsdp, **train},
    }


def _write(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def _env(**extra: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]), **extra}


def _recipe(launcher: list[str], config: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([*launcher, "recipes/finetune.py", "--config", str(config), *extra], cwd=REPO,
                            env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(*procs: subprocess.Popen, ok: bool = True) -> list[str]:
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    if ok:
        for p, out in zip(procs, outputs):
            assert p.returncode == 0, f"exit {p.returncode}\n{out[-4000:]}"
    return outputs


def _accelerate_fsdp(port: int) -> list[str]:
    # The Accelerate way: the shipped launcher config selects FSDP (the hubft config says fsdp: false).
    return [str(BIN / "accelerate"), "launch", "--config_file", "recipes/fsdp.yaml", "--main_process_port",
            str(port)]


def _torchrun(port: int) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(port)]


def _machine(rank: int, port: int) -> list[str]:
    return [str(BIN / "torchrun"), "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1",
            "--master_addr", "127.0.0.1", "--master_port", str(port)]


def _records(run: Path, kind: str) -> list[dict]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    # Wall-clock fields differ between any two runs.
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "time")} for r in records if r["type"] == kind]


def _assert_same_run(run: Path, reference: Path) -> None:
    """Weights and per-epoch train / eval losses within the tolerance of the module docstring."""
    a, b = load_file(str(run / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], **CLOSE, msg=key)
    for mine, ref in zip(_records(run, "epoch"), _records(reference, "epoch"), strict=True):
        assert mine["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-4)
        assert mine["eval"]["loss"] == pytest.approx(ref["eval"]["loss"], rel=1e-4)


def _finetune_in_process(config: dict) -> None:
    try:
        hubft.finetune(config)
    finally:
        reset_process_state()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from hubft.data import write_image_folder

    return write_image_folder(tmp_path_factory.mktemp("images"), num_classes=4, per_class=8, size=16)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, images, local_hub, free_port_factory) -> tuple[Path, str]:
    """The reference: two machines (one process each) on localhost, one shared output directory, pushing."""
    local_hub.up()
    repo_id = f"{local_hub.user}/fsdp-two-machines"
    out = tmp_path_factory.mktemp("machines") / "run"
    config = _config(out, images)
    config["hub"] = {"push": True, "repo_id": repo_id}
    path, port = _write(out.parent / "config.yaml", config), free_port_factory()
    env = _env(HF_TOKEN=local_hub.token, HF_HUB_DISABLE_IMPLICIT_TOKEN="")
    _finish(*(_recipe(_machine(rank, port), path, env=env) for rank in (0, 1)))
    return out, repo_id


@pytest.mark.slow
def test_two_machines_train_one_sharded_run_and_only_machine_0_pushes_one_consolidated_model(pushed, local_hub):
    from huggingface_hub import HfApi

    out, repo_id = pushed
    facts = json.loads((out / "metrics.json").read_text())["run"]
    assert facts["processes"] == 2 and facts["updates"] == 6
    # Every checkpoint holds both machines' shards, listed in the manifest the main process wrote after both.
    for step in ("step-00000004", "step-00000006"):
        manifest = json.loads((out / "checkpoints" / step / "manifest.json").read_text())["files"]
        assert {"sharded/__0_0.distcp", "sharded/__1_0.distcp", "sharded/.metadata"} <= set(manifest)
    commits = HfApi(token=local_hub.token).list_repo_commits(repo_id)
    assert len(commits) == 2  # the repo's creation and one upload: machine 1's local main process pushed nothing
    model = timm.create_model(f"hf-hub:{repo_id}", pretrained=True).eval()
    local = load_file(str(out / "model.safetensors"))
    assert model.state_dict().keys() == local.keys()  # one consolidated file: full tensors, plain timm names
    for key, value in model.state_dict().items():
        assert torch.equal(value, local[key]), key


@pytest.mark.slow
def test_sharded_training_trains_what_unsharded_training_on_the_joint_batch_trains(pushed, tmp_path, images):
    out = tmp_path / "plain"
    _finetune_in_process(_config(out, images, fsdp=False, batch_size=2 * BATCH))
    _assert_same_run(out, pushed[0])
    plain, sharded = (json.loads((r / "metrics.json").read_text())["run"]["param_groups"] for r in (out, pushed[0]))
    assert sharded == plain and len(plain) == 16  # 7 layers + head, decay / no_decay each
    start = hubft.create_model("test_vit", label_names=["a", "b", "c", "d"], pretrained=False)
    moved = max(float((load_file(str(out / "model.safetensors"))[k] - v).abs().max())
                for k, v in start.state_dict().items() if k.startswith("blocks.0."))
    assert moved > 1e-3  # the comparison is not vacuous: the lowest layer's weights moved far beyond the tolerance


@pytest.mark.slow
def test_a_frozen_body_unfrozen_mid_run_trains_sharded_what_it_trains_unsharded(tmp_path, images, free_port):
    """model.freeze + unfreeze_epoch under FSDP2: the body stays put in epoch 0 and trains from epoch 1 (FSDP2
    reads each parameter's requires_grad when it unshards), as in an unsharded run on the joint batch."""
    def frozen(out: Path, **train) -> dict:
        config = _config(out, images, **train)
        config["model"].update(freeze=True, unfreeze_epoch=1)
        return config

    sharded, plain = tmp_path / "sharded", tmp_path / "plain"
    _finish(_recipe(_torchrun(free_port()), _write(tmp_path / "config.yaml", frozen(sharded, checkpoint_every=3))))
    _finetune_in_process(frozen(plain, fsdp=False, batch_size=2 * BATCH, checkpoint_every=3))
    _assert_same_run(sharded, plain)
    # Not vacuous: the body moved far beyond the tolerance once unfrozen (a body left frozen, or trained in
    # epoch 0, under FSDP would not match the plain run).
    start = hubft.create_model("test_vit", label_names=["a", "b", "c", "d"], pretrained=False).state_dict()
    final = load_file(str(sharded / "model.safetensors"))
    assert float((final["blocks.0.attn.qkv.weight"] - start["blocks.0.attn.qkv.weight"]).abs().max()) > 1e-3


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_at_two_processes_bit_identical_and_at_one_within_tolerance(
        pushed, tmp_path, images, free_port_factory):
    killed = tmp_path / "killed"
    config = _write(tmp_path / "config.yaml", _config(killed, images, fsdp=False))
    # Both processes die after update 5, mid-epoch 1, between the checkpoints of updates 4 and 6.
    proc = _recipe(_accelerate_fsdp(free_port_factory()), config, env=_env(HUBFT_FAULT="after_optimizer_step@5:kill"))
    _finish(proc, ok=False)
    assert proc.returncode != 0 and not (killed / "model.safetensors").exists()
    one = tmp_path / "one"
    shutil.copytree(killed, one)

    _finish(_recipe(_torchrun(free_port_factory()), config, "--train.resume", "latest", "--train.fsdp", "true"))
    assert (killed / "model.safetensors").read_bytes() == (pushed[0] / "model.safetensors").read_bytes()
    assert _records(killed, "step") == _records(pushed[0], "step")

    # The same checkpoint at one process: the joint batch (8) keeps the run's images per update.
    resumed = _config(one, images, batch_size=2 * BATCH, resume="latest")
    _finetune_in_process(resumed)
    state = json.loads((one / "checkpoints" / "step-00000006" / "hubft_state.json").read_text())
    assert state["layout"] == {"processes": 1, "grad_accum_steps": 1}
    _assert_same_run(one, pushed[0])


@pytest.mark.slow
def test_a_one_process_run_stopped_mid_epoch_resumes_at_two_processes(pushed, tmp_path, images, free_port_factory,
                                                                      monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setenv("HUBFT_FAULT", "after_optimizer_step@5:raise")
        with pytest.raises(Exception, match="fault"):
            _finetune_in_process(_config(out, images, batch_size=2 * BATCH))
    assert not (out / "metrics.json").exists() and (out / "checkpoints" / "step-00000004").is_dir()
    config = _write(tmp_path / "config.yaml", _config(out, images))
    _finish(_recipe(_torchrun(free_port_factory()), config, "--train.resume", "latest"))
    assert json.loads((out / "metrics.json").read_text())["run"]["processes"] == 2
    _assert_same_run(out, pushed[0])


@pytest.mark.slow
def test_two_machines_with_separate_output_directories_are_refused_at_start(tmp_path, images, free_port):
    config, port = _write(tmp_path / "config.yaml", _config(tmp_path / "unused", images)), free_port()
    procs = [_recipe(_machine(rank, port), config, "--train.output_dir", str(tmp_path / f"disk{rank}"))
             for rank in (0, 1)]
    for proc, output in zip(procs, _finish(*procs, ok=False)):
        assert proc.returncode != 0
        assert "is not one directory shared by every process: process(es) 1" in output
        assert not re.search(r'File ".*/hubft/', output)  # hubft's one line; the traceback is torchrun's own
    assert not any((tmp_path / f"disk{rank}" / "checkpoints").exists() for rank in (0, 1))


def _per_parameter(model: torch.nn.Module, groups: list[dict]) -> dict[str, tuple[float, float]]:
    names = {id(p): n for n, p in model.named_parameters()}
    settings = [(names[id(p)], (g["lr"], g["weight_decay"])) for g in groups for p in g["params"]]
    assert len(settings) == len(dict(settings)) == len(names)  # every parameter in exactly one group
    return dict(settings)


def test_param_groups_built_before_sharding_give_every_parameter_its_unsharded_lr_and_weight_decay(tmp_path):
    from torch.distributed.tensor import DTensor

    from hubft.config import config_from_dict
    from hubft.train.setup import create_run_optimizer, create_run_param_groups
    from hubft.train.sharding import is_sharded, parameter_names, rebind_param_groups, shard_model

    config = config_from_dict(_config(tmp_path, tmp_path))
    plain, model = (hubft.create_model("test_vit", label_names=list("abcd"), pretrained=False) for _ in range(2))
    expected = _per_parameter(plain, create_run_param_groups(config, plain))
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        groups, names = create_run_param_groups(config, model), parameter_names(model)
        shard_model(model, torch.device("cpu"))
        optimizer, _ = create_run_optimizer(config, model, rebind_param_groups(groups, names, model))
        assert is_sharded(model) and all(isinstance(p, DTensor) for p in model.parameters())
        assert _per_parameter(model, optimizer.param_groups) == expected
    finally:
        torch.distributed.destroy_process_group()
    assert len({lr for lr, _ in expected.values()}) == 8  # layer decay over 7 layers, and the head
    assert expected["blocks.0.norm1.weight"][1] == 0 and expected["blocks.0.attn.qkv.weight"][1] == 0.05


@pytest.mark.parametrize("name, first, last", [
    ("test_vit", "blocks.0", "norm"),
    ("resnet10t", "layer1.0", "layer4.0"),
    ("test_convnext", "stages.0.downsample", "norm_pre"),
])
def test_the_blocks_to_shard_are_read_from_timm_group_matcher(name, first, last):
    from hubft.train.sharding import block_module_names

    model = timm.create_model(name, pretrained=False)
    blocks = block_module_names(model)
    assert blocks[0] == first and blocks[-1] == last
    assert not any(b.startswith(a + ".") for a in blocks for b in blocks)  # no unit inside another


def test_a_model_without_group_matcher_or_an_fsdp1_launcher_is_refused(monkeypatch):
    from hubft.train.sharding import block_module_names, fsdp_from_launcher

    with pytest.raises(ConfigError, match="no timm group_matcher"):
        block_module_names(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="FSDP version 1"):
        fsdp_from_launcher()
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert fsdp_from_launcher()
