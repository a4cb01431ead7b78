"""The `hubft` command: sub-commands, exit codes, and one-line errors without tracebacks."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from hubft.cli import main

HUBFT = Path(sys.executable).parent / "hubft"


def test_plot_lr_writes_a_png_and_a_csv_with_one_column_per_group(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: resnet10t}\noptim: {lr: 0.001, head_lr: 0.01}\n"
                   "schedule: {name: cosine, warmup_steps: 5}\ntrain: {epochs: 2}\n")
    out = tmp_path / "lr.png"
    assert main(["plot-lr", "--config", str(cfg), "-o", str(out), "--updates-per-epoch", "10"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.reader(open(out.with_suffix(".csv"))))
    assert rows[0][0] == "step" and any(c.startswith("head") for c in rows[0]) and any(
        c.startswith("body") for c in rows[0])
    assert len(rows) == 1 + 20


def test_plot_lr_all_draws_every_schedule(tmp_path):
    out = tmp_path / "all.png"
    assert main(["plot-lr", "--all", "-o", str(out)]) == 0
    assert out.stat().st_size > 10_000


def test_config_prints_the_resolved_config(capsys):
    assert main(["config", "--optim.lr", "0.5", "--model.name", "test_vit"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.5" in out and "name: test_vit" in out


@pytest.mark.parametrize("argv,needle", [
    (["config", "--optim.lrr", "1"], "--optim.lr"),
    (["config", "--train.epochs", "many"], "train.epochs must be int"),
    (["config", "--config", "/nonexistent.yaml"], "does not exist"),
    (["push", "/nonexistent-dir", "bad//id"], "not a valid Hub repo id"),
    (["plot-lr", "--model.name", "resnet_does_not_exist", "-o", "x.png"], "resnet_does_not_exist"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_console_script_exit_codes_and_debug(tmp_path):
    bad = subprocess.run([str(HUBFT), "finetune", "--train.epochs", "0", "--data.path", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "train.epochs" in bad.stderr and "Traceback" not in bad.stderr
    debug = subprocess.run([str(HUBFT), "--debug", "config", "--optim.lr", "x"], capture_output=True, text=True)
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    helped = subprocess.run([str(HUBFT), "finetune", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--optim.head_lr" in helped.stdout
