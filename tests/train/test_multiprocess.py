"""Two CPU processes through the ordinary launchers: clean exit, correct metrics, one schedule step per update."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import hubft

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _write_config(tmp_path: Path, images: Path, out: Path, **train) -> Path:
    cfg = {
        "model": {"name": "resnet10t", "pretrained": False},
        "data": {"path": str(images), "image_size": 16, "eval_fraction": 0.25, "hflip": 0.0},
        "optim": {"lr": 0.01, "head_lr": 0.02, "weight_decay": 0.0},
        "schedule": {"name": "cosine", "warmup_steps": 2},
        "train": {"epochs": 2, "batch_size": 4, "output_dir": str(out), "log_every": 1, "cpu": True, **train},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(cmd: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "terminate called" not in proc.stderr
    return proc


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from hubft.data import write_image_folder

    return write_image_folder(tmp_path_factory.mktemp("images"), num_classes=3, per_class=10, size=16)


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path, images, free_port):
    out = tmp_path / "run"
    cfg_path = _write_config(tmp_path, images, out)
    _run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
          "recipes/finetune.py", "--config", str(cfg_path)], tmp_path)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["processes"] == 2
    train_n = metrics["run"]["train_examples"]

    # The schedule advanced once per optimizer update: 2 processes x batch 4 per update.
    updates_per_epoch = math.ceil(math.ceil(train_n / 2) / 4)
    steps = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["type"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 2 * updates_per_epoch + 1))
    config = hubft.load_config(cfg_path)
    expected = hubft.lr_curve_for_config(config, updates_per_epoch=updates_per_epoch, num_classes=3)
    head = next(k for k in expected if k.startswith("head"))
    # The LR logged after update k is the one the next update uses: the curve's value at index k.
    assert [r["lr"][head] for r in steps][:-1] == pytest.approx(expected[head][1:])

    # The evaluation gathered over both processes equals a single-process evaluation of the saved weights.
    model = hubft.from_pretrained(f"local-dir:{out}").eval()
    data = hubft.load_data(path=str(images), eval_fraction=0.25, seed=0)
    transform = hubft.create_transforms(model.pretrained_cfg, training=False)
    correct = 0
    with torch.no_grad():
        for row in data.eval:
            x = transform(row[data.image_column]).unsqueeze(0)
            correct += int(model(x).argmax()) == row[data.label_column]
    assert metrics["final"]["num_samples"] == len(data.eval)
    assert metrics["final"]["accuracy"] == pytest.approx(correct / len(data.eval))


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tmp_path, images, free_port):
    out = tmp_path / "run"
    cfg_path = _write_config(tmp_path, images, out, epochs=1)
    _run([str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
          "recipes/finetune.py", "--config", str(cfg_path)], tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["processes"] == 2
    assert (out / "model.safetensors").is_file()
