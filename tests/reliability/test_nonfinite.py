"""A NaN or inf at update k stops every process at k, before the optimizer moves anything; nothing is written or
pushed afterwards, and the message names the step."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import hubft
from hubft.errors import TrainingError


def _config(rel, images, out, **train) -> dict:
    cfg = copy.deepcopy(rel.BASE)
    cfg["data"]["path"] = str(images)
    cfg["train"].update({"output_dir": str(out), "grad_accum_steps": 1, "checkpoint_every": 1, "keep_checkpoints": 5}
                        | train)
    return cfg


@pytest.mark.parametrize("point", ["loss", "gradients"])
def test_a_non_finite_update_applies_nothing_and_writes_nothing(point, tmp_path, images, rel, hub, repo_id,
                                                                monkeypatch, survival):
    what = {"loss": "a NaN loss", "gradients": "an inf gradient under a finite loss"}[point]
    survival(f"{what} at update 3 of a run that checkpoints every update and pushes to the Hub",
             "stops at update 3 naming the step; parameters, optimizer and BatchNorm statistics equal their "
             "update-2 values; no checkpoint, model file, log record or push after update 2")
    cfg = _config(rel, images, tmp_path / "run")
    cfg["hub"] = {"push": True, "repo_id": repo_id}
    monkeypatch.setenv("HUBFT_FAULT", f"{point}@3:nan")
    ft = hubft.Finetuner(cfg)
    try:
        ft.setup()
        with pytest.raises(TrainingError, match=r"non-finite loss or gradients at epoch 0, step 3"):
            ft.fit()
        step2 = load_file(str(tmp_path / "run" / "checkpoints" / "step-00000002" / "model.safetensors"))
        now = ft.accelerator.unwrap_model(ft.parts.model).state_dict()
        assert step2.keys() == now.keys()
        assert all(torch.equal(step2[k], now[k]) for k in now), "the model moved at the poisoned update"
        assert all(p.grad is None for p in ft.parts.model.parameters())
        opt = torch.load(tmp_path / "run" / "checkpoints" / "step-00000002" / "optimizer.bin", weights_only=True)
        state = ft.parts.optimizer.state_dict()["state"]
        assert opt["state"].keys() == state.keys()
        assert all(torch.equal(opt["state"][k][n], state[k][n]) for k in state for n in ("exp_avg", "exp_avg_sq"))
    finally:
        ft.close()
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
    assert not (run / "model.safetensors").exists()
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert not hub.requests, "nothing may reach the Hub"


@pytest.mark.parametrize("point", ["loss", "gradients"])
def test_the_deferred_check_skips_on_the_device_and_stops_one_update_later(point, tmp_path, images, rel,
                                                                           monkeypatch, survival):
    survival(f"{'a NaN loss' if point == 'loss' else 'an inf gradient'} at update 3 with the sync-free check CUDA "
             "uses (run here on CPU): the flag is read one update late",
             "the fused optimizer skips update 3; update 4's check stops the run naming step 3; parameters, AdamW "
             "state (step counts too) and BatchNorm statistics, moved by two forward passes since, equal update 2's")
    # No log line or checkpoint at update 3, both of which would read the flag at once.
    cfg = _config(rel, images, tmp_path / "run", checkpoint_every=2, log_every=100)
    monkeypatch.setenv("HUBFT_FAULT", f"{point}@3:nan")
    ft = hubft.Finetuner(cfg)
    try:
        ft.setup()
        assert not ft.loop.finite.deferred, "on CPU the check reads its flag at once"
        ft.loop.finite.deferred = True
        with pytest.raises(TrainingError, match=r"non-finite loss or gradients at epoch 0, step 3"):
            ft.fit()
        # Update 3 was counted as done (its flag not read yet); update 4 ran forward and backward, and its check
        # raised before the micro-batch was counted.
        assert (ft.loop.state.update, ft.loop.state.batches_in_epoch) == (3, 3)
        step2 = tmp_path / "run" / "checkpoints" / "step-00000002"
        saved = load_file(str(step2 / "model.safetensors"))
        now = ft.accelerator.unwrap_model(ft.parts.model).state_dict()
        assert saved.keys() == now.keys()
        assert all(torch.equal(saved[k], now[k]) for k in now), "weights or BatchNorm statistics moved"
        opt = torch.load(step2 / "optimizer.bin", weights_only=True)["state"]
        state = ft.parts.optimizer.state_dict()["state"]
        assert all(torch.equal(opt[k][n], state[k][n]) for k in state for n in ("exp_avg", "exp_avg_sq", "step"))
    finally:
        ft.close()
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002"]
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == [1]


def test_only_fused_optimizers_take_the_deferred_check(tmp_path, images, rel):
    from hubft.train.finite import takes_found_inf

    for fused, expected in (("auto", True), (False, False)):
        cfg = _config(rel, images, tmp_path / f"run-{fused}")
        cfg["optim"]["fused"] = fused
        ft = hubft.Finetuner(cfg)
        try:
            ft.setup()
            assert takes_found_inf(ft.parts.optimizer) is expected
        finally:
            ft.close()


def test_without_the_gradient_check_an_inf_gradient_is_caught_one_update_later(tmp_path, images, rel, monkeypatch):
    # train.check_gradients: false trades the per-update read of every gradient for speed: the poisoned update is
    # applied, and the loss of the next one is what stops the run.
    cfg = _config(rel, images, tmp_path / "run", check_gradients=False)
    monkeypatch.setenv("HUBFT_FAULT", "gradients@3:nan")
    ft = hubft.Finetuner(cfg)
    try:
        ft.setup()
        with pytest.raises(TrainingError, match=r"non-finite loss or gradients at epoch \d+, step 4"):
            ft.fit()
    finally:
        ft.close()
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints[-1] == "step-00000003"  # the poisoned update was applied and checkpointed


@pytest.mark.slow
def test_the_cli_exits_3_with_the_step_and_no_traceback(tmp_path, make_config, hubft_cli, survival):
    survival("a NaN loss in micro-batch 3 (update 2) of a CLI run",
             "exit 3, one line naming epoch 0 and step 2, no traceback, no checkpoint or model written")
    result = hubft_cli("finetune", "--config", make_config(tmp_path), fault="loss@3:nan")
    assert result.returncode == 3, result.output[-3000:]
    errors = [line for line in result.output.splitlines() if line.startswith("hubft: error:")]
    assert len(errors) == 1 and "non-finite loss or gradients at epoch 0, step 2" in errors[0]
    assert "Traceback" not in result.output
    run = tmp_path / "run"
    assert not (run / "checkpoints").exists() and not (run / "model.safetensors").exists()


@pytest.mark.slow
def test_an_inf_gradient_on_one_of_two_processes_stops_both(tmp_path, make_config, rel, survival, free_port):
    survival("an inf gradient on process 1 only (after DDP's all-reduce), update 3 of a 2-process torchrun run",
             "both processes stop at update 3 with the step named; checkpoints end at update 2; no model written")
    config = make_config(tmp_path, train={"grad_accum_steps": 1, "checkpoint_every": 1, "keep_checkpoints": 5})
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = rel.run_env(HUBFT_FAULT="gradients@3:nan", HUBFT_FAULT_RANK="1")
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "--redirects", "3",
                           "--log-dir", str(tmp_path / "logs"), "-m", "hubft.cli", "finetune", "--config",
                           str(config)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    run = tmp_path / "run"
    per_rank = {int(p.parent.name): p.read_text() for p in (tmp_path / "logs").rglob("stderr.log")}
    assert sorted(per_rank) == [0, 1], proc.stdout[-2000:] + proc.stderr[-2000:]
    for rank, text in per_rank.items():
        assert "hubft: error: non-finite loss or gradients at epoch 0, step 3" in text, (rank, text[-2000:])
        assert "Traceback" not in text
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert not (run / "model.safetensors").exists()
