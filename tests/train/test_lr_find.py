"""``hubft lr-find`` / ``hubft.lr_find``: the range test of a config, its files, ``--write``, and the same answer
on 1 and 2 processes."""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import hubft
from hubft.cli import main
from hubft.testing import reset_process_state

REPO = Path(__file__).resolve().parents[2]


def _config(out: Path, **sections) -> dict:
    cfg = {
        "model": {"name": "test_vit", "pretrained": False},
        "data": {"image_size": 32, "eval_fraction": 0.25, "hflip": 0.0},
        "optim": {"name": "SGD", "lr": 0.01, "head_lr": 0.1, "weight_decay": 0.0},
        "schedule": {"name": "cosine", "warmup_steps": 2},
        "train": {"epochs": 1, "batch_size": 8, "output_dir": str(out), "cpu": True},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def test_lr_find_writes_its_curve_and_leaves_the_run_directory_alone(tmp_path, tiny_dataset):
    run = tmp_path / "run"
    try:
        result = hubft.lr_find(_config(run), dataset=tiny_dataset, start=1e-5, end=10, num_steps=25)
    finally:
        reset_process_state()
    out = run / "lr-find"
    assert sorted(p.name for p in run.iterdir()) == ["lr-find"]  # no config.yaml, log or checkpoint of a run
    assert {"lr_find.png", "lr_find.csv", "lr_find.json"} <= {p.name for p in out.iterdir()}
    rows = list(csv.DictReader((out / "lr_find.csv").open()))
    assert len(rows) == len(result.lrs) >= 5
    for row in rows:  # every step keeps the run's head / body ratio
        assert float(row["lr[head.no_decay]"]) == pytest.approx(10 * float(row["lr[body.no_decay]"]), rel=1e-9)
        assert float(row["lr[body.no_decay]"]) == pytest.approx(float(row["lr"]), rel=1e-9)
    summary = json.loads((out / "lr_find.json").read_text())
    assert summary["valley"] == result.valley and summary["steepest"] == result.steepest
    assert summary["group_lrs_at_valley"]["head.no_decay"] == pytest.approx(10 * result.valley)


def test_the_cli_prints_the_suggestions_and_write_gives_a_config_with_the_ratio_kept(tmp_path, tiny_dataset,
                                                                                  capsys):
    from hubft.data import write_image_folder

    images = write_image_folder(tmp_path / "images", num_classes=3, per_class=8, size=16)
    cfg = _config(tmp_path / "run", data={"path": str(images), "image_size": 32, "eval_fraction": 0.25})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    try:
        code = main(["lr-find", "--config", str(path), "--num-steps", "20", "--start", "1e-5", "--write",
                     "-o", str(tmp_path / "found")])
    finally:
        reset_process_state()
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads((tmp_path / "found" / "lr_find.json").read_text())
    assert f"valley {summary['valley']:.3g}" in out
    written = yaml.safe_load((tmp_path / "found" / "config.lr-find.yaml").read_text())
    assert written["optim"]["lr"] == summary["valley"]
    assert written["optim"]["head_lr"] == pytest.approx(10 * summary["valley"])
    assert "-  lr: 0.01\n" in out and f"+  lr: {summary['valley']}\n" in out  # the diff, printed
    assert written["data"] == cfg["data"] | {k: v for k, v in written["data"].items() if k not in cfg["data"]}


@pytest.mark.slow
def test_two_processes_give_the_suggestion_one_process_gives_for_the_same_batches(tmp_path, free_port):
    """2 processes x batch 4 see, at every step, the 8 images 1 process x batch 8 sees; the loss is averaged over
    the processes, so the curve and the suggestions are the same (test_vit: no BatchNorm, no dropout)."""
    from hubft.data import write_image_folder

    images = write_image_folder(tmp_path / "images", num_classes=4, per_class=8, size=16)
    two = _config(tmp_path / "two", data={"path": str(images), "image_size": 32, "eval_fraction": 0.25},
                  train={"batch_size": 4})
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(two))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--master_port",
                           str(free_port()), "-m", "hubft.cli", "lr-find", "--config", str(path), "--num-steps", "20",
                           "--start-lr", "1e-5"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("hubft: lr-find:") == 1  # printed by the main process only
    one = copy.deepcopy(two)
    one["train"] |= {"batch_size": 8, "output_dir": str(tmp_path / "one")}
    try:
        single = hubft.lr_find(one, start=1e-5, num_steps=20)
    finally:
        reset_process_state()
    both = json.loads((tmp_path / "two" / "lr-find" / "lr_find.json").read_text())
    assert (both["valley"], both["steepest"], both["steps"]) == (single.valley, single.steepest, len(single.lrs))
    rows = list(csv.DictReader((tmp_path / "two" / "lr-find" / "lr_find.csv").open()))
    assert [float(r["loss"]) for r in rows] == pytest.approx(single.losses, rel=1e-4)
