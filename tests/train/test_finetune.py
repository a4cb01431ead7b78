"""The main job in-process: learning, outputs, exact resume, config and loss/schedule wiring."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

import hubft
from hubft.testing import reset_process_state
from hubft.errors import CheckpointError, ConfigError
from hubft.faults import FaultInjected


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _steps(output_dir) -> list[dict]:
    lines = open(os.path.join(output_dir, "log.jsonl")).read().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "step"]


@pytest.mark.slow
def test_finetune_learns_and_writes_a_timm_loadable_model(tmp_path, tiny_dataset, make_config):
    import timm

    cfg = make_config(tmp_path / "run", train={"epochs": 3})
    result = hubft.finetune(cfg, dataset=tiny_dataset)

    out = tmp_path / "run"
    for name in ("model.safetensors", "config.json", "config.yaml", "metrics.json", "log.jsonl", "README.md",
                 "lr_curve.png", "lr_curve.csv", "loss_curve.png", "confusion_matrix.png"):
        assert (out / name).is_file(), name
    steps = _steps(out)
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))
    first, last = steps[0]["loss"], steps[-1]["loss"]
    assert last < first
    assert result["final"]["accuracy"] > 0.5  # 4 classes: chance is 0.25
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["label_names"] == tiny_dataset.features["label"].names
    assert metrics["best"]["epoch"] == metrics["best_epoch"]

    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    mine = hubft.from_pretrained(f"local-dir:{out}").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), mine(x))
    assert "label_names" in json.loads((out / "config.json").read_text())


@pytest.mark.slow
def test_mid_epoch_resume_is_bit_identical(tmp_path, tiny_dataset, make_config, monkeypatch):
    # 36 train images / batch 4 = 9 updates per epoch; checkpoints every 2 updates; die at update 7 (epoch 0,
    # not an epoch or checkpoint boundary), so the run resumes from step 6, mid-epoch.
    sections = dict(train={"batch_size": 4, "checkpoint_every": 2, "keep_checkpoints": 2},
                    data={"image_size": 16, "eval_fraction": 0.25, "hflip": 0.5, "re_prob": 0.5},
                    model={"name": "resnet10t", "pretrained": False, "drop_rate": 0.2})
    straight = make_config(tmp_path / "straight", **sections)
    hubft.finetune(straight, dataset=tiny_dataset)

    interrupted = make_config(tmp_path / "resumed", **sections)
    monkeypatch.setenv("HUBFT_FAULT", "after_optimizer_step@7:raise")
    with pytest.raises(FaultInjected):
        hubft.finetune(interrupted, dataset=tiny_dataset)
    monkeypatch.delenv("HUBFT_FAULT")
    reset_process_state()
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["step-00000004",
                                                                                        "step-00000006"]
    interrupted["train"]["resume"] = "latest"
    hubft.finetune(interrupted, dataset=tiny_dataset)

    a, b = tmp_path / "straight", tmp_path / "resumed"
    assert _sha(a / "model.safetensors") == _sha(b / "model.safetensors")
    assert [(r["step"], r["loss"]) for r in _steps(a)] == [(r["step"], r["loss"]) for r in _steps(b)]
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["history"] == mb["history"]




def test_resume_with_a_changed_config_is_refused(tmp_path, tiny_dataset, make_config):
    cfg = make_config(tmp_path / "run", train={"epochs": 1, "max_updates": 2, "checkpoint_every": 1})
    hubft.finetune(cfg, dataset=tiny_dataset)
    reset_process_state()
    cfg["train"]["resume"] = "latest"
    cfg["train"]["batch_size"] = 4
    with pytest.raises(CheckpointError, match="train.batch_size"):
        hubft.finetune(cfg, dataset=tiny_dataset)


@pytest.mark.parametrize("section,key,value,needle", [
    ("train", "epochs", 0, "train.epochs"),
    ("optim", "lr", -1.0, "optim.lr"),
    ("data", "re_prob", 1.5, "data.re_prob"),
    ("model", "freeze", "all", "model.freeze"),
    ("hub", "push", True, "hub.repo_id"),
])
def test_invalid_values_fail_before_anything_runs(tmp_path, tiny_dataset, make_config, section, key, value, needle):
    cfg = make_config(tmp_path / "run")
    cfg.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        hubft.finetune(cfg, dataset=tiny_dataset)
    assert not (tmp_path / "run").exists()


def test_needs_exactly_one_data_source(tmp_path, make_config):
    with pytest.raises(ConfigError, match="data.name"):
        hubft.Finetuner(make_config(tmp_path / "run"))


def _classification_losses():
    from hubft.losses import get_loss_info, list_losses

    return [n for n in list_losses() if get_loss_info(n).target in ("class", "binary")]


@pytest.mark.parametrize("loss", _classification_losses())
def test_every_classification_loss_trains_from_yaml(tmp_path, tiny_dataset, make_config, loss):
    ft = hubft.Finetuner(make_config(tmp_path / "run", loss={"name": loss}, train={"epochs": 1, "max_updates": 2}),
                         dataset=tiny_dataset)
    ft.setup()
    ft.loop.train_epoch(0)
    ft.close()
    steps = [r for r in ft.parts.output.read_log() if r["type"] == "step"]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)


@pytest.mark.parametrize("schedule", hubft.list_schedulers())
def test_every_schedule_is_usable_from_yaml(tmp_path, schedule):
    cfg = hubft.load_config(None, {"model.name": "resnet10t", "model.pretrained": "false", "schedule.name": schedule,
                                   "schedule.warmup_steps": "3", "optim.head_lr": "0.01", "train.epochs": "2"})
    curves = hubft.lr_curve_for_config(cfg, updates_per_epoch=20)
    head = next(v for k, v in curves.items() if k.startswith("head"))
    body = next(v for k, v in curves.items() if k.startswith("body"))
    assert len(head) == len(body) == 40
    assert all(b == pytest.approx(h * cfg.optim.lr / 0.01) for h, b in zip(head, body))


def test_plateau_schedule_halves_the_lr_after_the_eval_metric_stalls(tmp_path, tiny_dataset, make_config,
                                                                    monkeypatch):
    from hubft.train.loop import TrainLoop

    # The eval accuracy is scripted (on top of a real evaluation) so that the run knows when it stalls: it rises in
    # epoch 1 and stalls in epoch 2. With patience 0, the LR must halve after epoch 2 and only then. The mode is
    # left to the run: accuracy is better when greater, and torch's default "min" would cut the LR after epoch 1.
    # A frozen body (a linear probe) keeps the run to a few seconds.
    accuracy = {0: 0.25, 1: 0.5, 2: 0.5, 3: 0.5}
    evaluate = TrainLoop.evaluate
    monkeypatch.setattr(TrainLoop, "evaluate",
                        lambda loop, model: evaluate(loop, model) | {"accuracy": accuracy[loop.state.epoch]})
    cfg = make_config(tmp_path / "run", schedule={"name": "plateau", "warmup_steps": 0,
                                                  "options": {"patience": 0, "factor": 0.5}},
                      model={"name": "resnet10t", "pretrained": False, "freeze": True},
                      train={"epochs": 4, "batch_size": 18})
    hubft.finetune(cfg, dataset=tiny_dataset)

    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["eval"]["accuracy"] for r in log if r["type"] == "epoch"] == [0.25, 0.5, 0.5, 0.5]
    # A step record holds the LRs after its update: those of the epoch's next update.
    lrs = {epoch: [r["lr"] for r in log if r["type"] == "step" and r["epoch"] == epoch] for epoch in accuracy}
    assert [len(v) for v in lrs.values()] == [2, 2, 2, 2]  # 36 training images in batches of 18
    first = lrs[0][0]
    assert first == {"head.no_decay": 0.01}  # the body is frozen; weight_decay 0
    assert all(r == first for epoch in (0, 1, 2) for r in lrs[epoch])  # no drop while the metric rose
    assert all(r == {name: lr * 0.5 for name, lr in first.items()} for r in lrs[3])  # halved once it stalled


@pytest.mark.slow
def test_head_lr_freeze_schedule_and_image_folder(tmp_path, make_config):
    from hubft.data import write_image_folder

    root = write_image_folder(tmp_path / "images", num_classes=3, per_class=8, size=16,
                              modes=("RGB", "L", "RGBA", "P"))
    cfg = make_config(tmp_path / "run", data={"path": str(root), "image_size": 16, "eval_fraction": 0.25},
                      model={"name": "resnet10t", "pretrained": False, "freeze": True, "unfreeze_epoch": 1},
                      optim={"lr": 0.001, "head_lr": 0.01})
    ft = hubft.Finetuner(cfg)
    ft.setup()
    body = [p for n, p in ft.parts.model.named_parameters() if not n.startswith("fc.")]
    before = [p.detach().clone() for p in body]
    assert not any(p.requires_grad for p in body)
    ft.loop.train_epoch(0)
    assert all(torch.equal(a, b) for a, b in zip(before, body)), "a frozen body must not move in epoch 0"
    ft.loop.end_epoch(0)
    ft.fit()
    assert any(not torch.equal(a, b) for a, b in zip(before, body)), "the body trains after unfreeze_epoch"
    lrs = {g["name"]: g.get("initial_lr", g["lr"]) for g in ft.parts.optimizer.param_groups}
    assert any("head" in n and lr == pytest.approx(0.01) for n, lr in lrs.items())
    ft.close()


def test_a_run_never_changes_the_callers_config_and_returns_a_frozen_result(tmp_path, tiny_dataset, make_config):
    import copy
    import dataclasses

    config = hubft.config_from_dict(make_config(tmp_path / "run", train={"epochs": 1, "max_updates": 2}))
    before = copy.deepcopy(config)
    ft = hubft.Finetuner(config, dataset=tiny_dataset)
    assert ft.config == config and ft.config is not config and ft.config.train is not config.train
    ft.setup()
    try:
        with pytest.raises(dataclasses.FrozenInstanceError):
            ft.parts.model = None  # type: ignore[misc]
        assert ft.parts.task.name == "image-classification" and ft.loop.parts is ft.parts
        ft.fit()
        ft.save()
    finally:
        ft.close()
    result = ft.result()
    assert config == before
    assert isinstance(result, hubft.FinetuneResult) and result.steps == 2
    assert result["final"] is result.final and result.get("nope", 7) == 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.steps = 3  # type: ignore[misc]
    facts = json.loads((tmp_path / "run" / "metrics.json").read_text())["run"]
    assert facts["task"] == "image-classification" and facts["loss"] == "cross_entropy"


def test_a_config_changed_in_python_is_checked_by_the_run(tmp_path, tiny_dataset, make_config):
    config = hubft.config_from_dict(make_config(tmp_path / "run"))
    config.train.epochs = 0
    with pytest.raises(ConfigError, match="train.epochs = 0 is invalid"):
        hubft.Finetuner(config, dataset=tiny_dataset)
    config.train.epochs, config.optim.lr = 1, "fast"
    with pytest.raises(ConfigError, match="optim.lr must be float"):
        hubft.Finetuner(config, dataset=tiny_dataset)
    assert not (tmp_path / "run").exists()
