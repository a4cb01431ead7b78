"""Distributed and numeric equivalences: 2 processes x batch B train the model 1 process x batch 2B trains, so
does gradient accumulation, and a 2-process run killed and resumed ends bit-identical to an uninterrupted one.

The model is ``test_vit`` (LayerNorm, no dropout): BatchNorm statistics and dropout masks are per process by
design, so only a model without them can be compared across process counts. The optimizer is plain SGD, whose
update is linear in the gradient: the runs differ only in the order the per-sample gradients are summed (DDP
averages two half-batch means where one process takes the mean of the whole batch), which fp32 rounds at about
1e-7 relative per operation. Six updates at lr 0.1 keep that well inside ``atol=1e-5, rtol=1e-4``; AdamW would
not do, since its update divides by sqrt(v) and turns rounding noise in near-zero gradients into whole steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import hubft
from hubft.cli import main
from hubft.testing import reset_process_state

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).parent / "torchrun"
BATCH = 4  # per process; 24 training images -> 3 updates of 8 images per epoch, 2 epochs


def _config(out: Path, images: Path, **train) -> dict:
    return {
        "model": {"name": "test_vit", "pretrained": False},
        "data": {"path": str(images), "image_size": 32, "eval_fraction": 0.25, "hflip": 0.5},
        "optim": {"name": "SGD", "lr": 0.1, "weight_decay": 0.0},
        "schedule": {"name": "cosine", "warmup_steps": 1},
        "train": {"epochs": 2, "batch_size": BATCH, "output_dir": str(out), "log_every": 1, "cpu": True,
                  "checkpoint_every": 2, **train},
    }


def _write(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def _torchrun(config: Path, port: int, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(port),
                           "recipes/finetune.py", "--config", str(config), *extra],
                          cwd=REPO, env=environ, capture_output=True, text=True, timeout=600)


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _finetune_in_process(config: dict) -> None:
    try:
        hubft.finetune(config)
    finally:
        reset_process_state()


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from hubft.data import write_image_folder

    # 4 classes x 8: a quarter (2 per class) is carved out for evaluation, 24 images train.
    return write_image_folder(tmp_path_factory.mktemp("images"), num_classes=4, per_class=8, size=16)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, images, free_port_factory) -> Path:
    """An uninterrupted 2-process run (batch 4 each), checkpointing every 2 updates."""
    out = tmp_path_factory.mktemp("two") / "run"
    _ok(_torchrun(_write(out.parent / "config.yaml", _config(out, images)), free_port_factory()))
    return out


@pytest.mark.slow
def test_two_processes_train_the_model_one_process_trains_on_the_joint_batch(two_processes, tmp_path, images):
    facts = json.loads((two_processes / "metrics.json").read_text())["run"]
    assert facts["processes"] == 2 and facts["effective_batch_size"] == 2 * BATCH and facts["updates"] == 6
    one = tmp_path / "one" / "run"
    _finetune_in_process(_config(one, images, batch_size=2 * BATCH))
    two, single = _weights(two_processes), _weights(one)
    assert two.keys() == single.keys()
    initial = _weights_at_start(tmp_path, images)
    for key in two:
        torch.testing.assert_close(two[key], single[key], atol=1e-5, rtol=1e-4, msg=key)
    # The comparison is not vacuous: training moved the weights by far more than the tolerance.
    moved = max(float((single[k] - initial[k]).abs().max()) for k in single)
    assert moved > 1e-2


@pytest.mark.slow
def test_gradient_accumulation_trains_the_model_one_batch_of_the_same_images_trains(tmp_path, images):
    accumulated, joint = tmp_path / "accumulated" / "run", tmp_path / "joint" / "run"
    _finetune_in_process(_config(accumulated, images, grad_accum_steps=2))
    _finetune_in_process(_config(joint, images, batch_size=2 * BATCH))
    a, b = _weights(accumulated), _weights(joint)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4, msg=key)
    steps = [json.loads(line) for line in (accumulated / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["type"] == "step"] == list(range(1, 7))


def _weights_at_start(tmp_path: Path, images: Path) -> dict[str, torch.Tensor]:
    """The weights the runs start from: the same seeded init (one update at lr ~0 leaves them as they were)."""
    out = tmp_path / "start" / "run"
    config = _config(out, images, batch_size=2 * BATCH, max_updates=1)
    config["optim"]["lr"] = 1e-12
    _finetune_in_process(config)
    return _weights(out)


@pytest.mark.slow
def test_a_two_process_run_killed_mid_epoch_resumes_bit_identical(two_processes, tmp_path, images,
                                                                   free_port_factory):
    out = tmp_path / "run"
    config = _write(tmp_path / "config.yaml", _config(out, images))
    # Both processes are killed at once after update 5 (mid-epoch 1, between the checkpoints of updates 4 and 6):
    # a lost machine. The resume starts from step 4, in the middle of epoch 1 (updates 4-6).
    killed = _torchrun(config, free_port_factory(), env={"HUBFT_FAULT": "after_optimizer_step@5:kill"})
    assert killed.returncode != 0
    assert not (out / "model.safetensors").exists()
    resumed = _torchrun(config, free_port_factory(), "--train.resume", "latest")
    _ok(resumed)
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert (out / "model.safetensors").read_bytes() == (two_processes / "model.safetensors").read_bytes()
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (two_processes / "log.jsonl").read_text().splitlines()]
    for r in logged + reference:
        r.pop("images_per_s", None)
        r.pop("time", None)
    assert logged == reference


@pytest.mark.slow
def test_a_two_process_checkpoint_is_refused_by_one_process_with_the_difference_named(two_processes, tmp_path,
                                                                                       images, capsys):
    """Resuming at another process count would change the per-process batches, the data each process reads and
    the RNG streams: hubft refuses it rather than continue a different run."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(two_processes, out)
    (out / "metrics.json").unlink()  # an interrupted run, as a kill would leave it
    config = _write(tmp_path / "config.yaml", _config(out, images))
    code = main(["finetune", "--config", str(config), "--train.resume", "latest"])
    err = capsys.readouterr().err
    assert code == 2 and "num_processes: checkpoint 2 vs now 1" in err
    assert len([line for line in err.splitlines() if line.startswith("hubft: error:")]) == 1


@pytest.mark.slow
def test_torchrun_without_train_cpu_runs_two_cpu_processes_on_a_machine_without_a_gpu(two_processes, tmp_path,
                                                                                       images, free_port_factory):
    """Exactly ``torchrun --nproc_per_node 2 recipes/finetune.py --config C.yaml``, no ``--train.cpu``, with no GPU
    visible: Accelerate alone would make each rank a single-process run writing the same directory; hubft runs
    as 2 processes on the CPU, and trains the model the ``train.cpu: true`` run trains."""
    out = tmp_path / "run"
    config = _write(tmp_path / "config.yaml", _config(out, images, cpu=False))
    _ok(_torchrun(config, free_port_factory(), env={"CUDA_VISIBLE_DEVICES": ""}))
    facts = json.loads((out / "metrics.json").read_text())["run"]
    assert facts["processes"] == 2 and facts["device"] == "cpu"
    assert (out / "model.safetensors").read_bytes() == (two_processes / "model.safetensors").read_bytes()
