"""Training features beyond the basic loop: EMA, early stopping, multi-label data, launcher warnings."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import hubft


def test_ema_is_evaluated_and_saved_when_asked(tmp_path, tiny_dataset, make_config):
    cfg = make_config(tmp_path / "run", train={"epochs": 1, "ema": True, "ema_decay": 0.5, "save_ema": True})
    ft = hubft.Finetuner(cfg, dataset=tiny_dataset)
    ft.setup()
    ft.fit()
    ft.save()
    ft.close()
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    ema = ft.parts.ema.module.state_dict()
    raw = ft.accelerator.unwrap_model(ft.parts.model).state_dict()
    assert all(torch.equal(saved[k], ema[k].contiguous()) for k in saved)
    assert any(not torch.equal(saved[k], raw[k].contiguous()) for k in saved if saved[k].is_floating_point())
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert "eval_ema" in history[0]


def test_early_stopping_stops_after_patience(tmp_path, tiny_dataset, make_config):
    # A near-zero LR: the metric soon stops improving, and the run must stop `patience` epochs after its best.
    cfg = make_config(tmp_path / "run", optim={"lr": 1e-12, "weight_decay": 0.0},
                      train={"epochs": 8, "early_stopping_patience": 1})
    result = hubft.finetune(cfg, dataset=tiny_dataset)
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    accuracies = [h["eval"]["accuracy"] for h in history]
    assert len(history) < 8
    assert history[-1]["epoch"] == result["best_epoch"] + 1
    assert accuracies[-1] <= max(accuracies[:-1])


def test_multi_label_data_trains_with_bce_and_reports_map(tmp_path, make_config):
    from hubft.data import make_synthetic_image_dataset

    data = make_synthetic_image_dataset(num_classes=3, per_class=12, size=16, multi_label=True)
    cfg = make_config(tmp_path / "run", train={"epochs": 2})
    result = hubft.finetune(cfg, dataset=data)
    assert {"map", "f1_micro", "f1_macro"} <= set(result["final"])
    card = (tmp_path / "run" / "README.md").read_text()
    assert "bce" in card


@pytest.mark.parametrize("loss", hubft.list_losses(target="dense"))
def test_every_dense_loss_trains_on_multi_label_targets(tmp_path, make_config, loss):
    """The losses built for targets of the output's shape have their task: multi-hot rows are such targets."""
    import math

    from hubft.data import make_synthetic_image_dataset

    data = make_synthetic_image_dataset(num_classes=3, per_class=8, size=16, multi_label=True)
    cfg = make_config(tmp_path / "run", loss={"name": loss}, train={"epochs": 1, "max_updates": 3})
    result = hubft.finetune(cfg, dataset=data)
    steps = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert result.steps == 3 and all(math.isfinite(r["loss"]) for r in steps if r["type"] == "step")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["run"]["loss"] == loss


def test_single_process_cpu_launch_is_warned(monkeypatch, capsys):
    from hubft.train.setup import _warn_single_process_cpu_launch

    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    _warn_single_process_cpu_launch()
    assert "starts a single process" in capsys.readouterr().out
    monkeypatch.setenv("WORLD_SIZE", "2")
    _warn_single_process_cpu_launch()
    assert capsys.readouterr().out == ""


def test_log_with_sends_step_and_epoch_records_to_accelerate_trackers(tmp_path, tiny_dataset, make_config,
                                                                      monkeypatch):
    import accelerate
    from accelerate.tracking import GeneralTracker

    class Recorder(GeneralTracker):
        name = "recorder"
        requires_logging_directory = False

        def __init__(self):
            super().__init__()
            self.config, self.logs = None, []

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            self.config = values

        def log(self, values, step=None, **kwargs):
            self.logs.append((step, values))

    recorder = Recorder()
    real = accelerate.Accelerator

    class WithRecorder(real):
        def __init__(self, *args, log_with=None, **kwargs):
            super().__init__(*args, log_with=[recorder] if log_with == "recorder" else log_with, **kwargs)

    monkeypatch.setattr(accelerate, "Accelerator", WithRecorder)
    hubft.finetune(make_config(tmp_path / "run", train={"epochs": 1, "log_with": "recorder"}), dataset=tiny_dataset)
    assert recorder.config["optim/lr"] == 0.01
    steps = [s for s, v in recorder.logs if "step/loss" in v]
    assert steps == list(range(1, len(steps) + 1)) and steps
    assert any("epoch/eval/accuracy" in v for _, v in recorder.logs)


@pytest.mark.parametrize("name,expected", [("resnet10t", True), ("mobilenetv3_small_050", True), ("test_vit", False)])
def test_channels_last_auto_picks_convolutional_backbones(name, expected):
    from hubft.train.setup import _use_channels_last

    model = hubft.create_model(name, num_classes=3, pretrained=False)
    assert _use_channels_last(model, "auto") is expected
    assert _use_channels_last(model, False) is False and _use_channels_last(model, True) is True


@pytest.mark.parametrize("device, processes, cores, expected", [
    ("cpu", 1, 16, 0),  # on CPU workers would take the training step's cores
    ("cuda", 1, 16, 8),  # capped
    ("cuda", 1, 4, 3),  # one core left for the training process
    ("cuda", 4, 16, 3),  # each process gets its share
    ("cuda", 8, 8, 0),
])
def test_num_workers_auto(monkeypatch, device, processes, cores, expected):
    from hubft.train.setup import default_num_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    assert default_num_workers(torch.device(device), processes) == expected


@pytest.mark.parametrize("value, ok", [("auto", True), (0, True), (3, True), (-1, False), ("four", False),
                                       (True, False)])
def test_num_workers_setting_is_validated(make_config, tmp_path, value, ok):
    from hubft.config import check_config, config_from_dict
    from hubft.errors import ConfigError

    section = {"data": {"name": "owner/digits", "num_workers": value}}
    if ok:
        check_config(config_from_dict(section))
    else:
        with pytest.raises(ConfigError, match="data.num_workers"):
            check_config(config_from_dict(section))


def test_a_failed_cli_run_frees_its_model_before_returning(tmp_path, make_config, monkeypatch):
    # The error's traceback keeps the run's objects in reference cycles; the CLI frees them before it returns, so
    # that a process group held by a DDP wrapper is not torn down during interpreter shutdown.
    import gc
    import weakref

    import yaml

    from hubft.cli import main
    from hubft.data import write_image_folder
    from hubft.train.finetune import Finetuner

    write_image_folder(tmp_path / "images", num_classes=2, per_class=4, size=16)
    cfg = make_config(tmp_path / "run", data={"path": str(tmp_path / "images")}, train={"epochs": 1})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    refs = []
    setup = Finetuner.setup
    monkeypatch.setattr(Finetuner, "setup", lambda self: (refs.append(weakref.ref(self)), setup(self))[1])
    monkeypatch.setenv("HUBFT_FAULT", "before_save@1:enospc")
    gc.disable()  # only the CLI's own collection may free the cycles
    try:
        assert main(["finetune", "--config", str(tmp_path / "c.yaml")]) == 3
        assert refs and refs[0]() is None, "the failed run's Finetuner outlived the command"
    finally:
        gc.enable()


def test_uint8_batches_train_exactly_as_float_batches(tmp_path, tiny_dataset, make_config, monkeypatch):
    """The loop normalises uint8 batches on the device: the run is bit-identical to one whose items are
    normalised one by one in the dataset."""
    from hubft.data import ImageTransform

    def first_batch_dtype(name: str) -> torch.dtype:
        ft = hubft.Finetuner(make_config(tmp_path / "probe" / name), dataset=tiny_dataset)
        try:
            ft.setup()
            return next(iter(ft.parts.train_loader))[0].dtype
        finally:
            ft.close()

    assert first_batch_dtype("uint8") == torch.uint8
    hubft.finetune(make_config(tmp_path / "uint8", train={"max_updates": 4}), dataset=tiny_dataset)
    original = ImageTransform.__init__

    def per_item(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.defers_normalize = False

    monkeypatch.setattr(ImageTransform, "__init__", per_item)
    assert first_batch_dtype("float") == torch.float32, "the comparison run must normalise per item"
    hubft.finetune(make_config(tmp_path / "float", train={"max_updates": 4}), dataset=tiny_dataset)
    a, b = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("uint8", "float"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _Unreadable(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        from hubft.errors import DataError

        raise DataError(f"cannot decode the image in row {index}", fix="replace the file")


def test_an_error_raised_in_a_worker_reads_as_the_original_one_liner():
    """torch folds a worker's traceback into the message; the loop gives back the error as it was raised."""
    from hubft.errors import DataError
    from hubft.train.workers import plain_worker_errors as _plain_worker_errors

    loader = torch.utils.data.DataLoader(_Unreadable(), batch_size=2, num_workers=1)
    with pytest.raises(DataError) as info:
        next(_plain_worker_errors(loader))
    assert str(info.value) == "cannot decode the image in row 0. Fix: replace the file"
    assert info.value.fix == "replace the file"


def test_freeze_1_freezes_one_stage_not_the_body(tmp_path, tiny_dataset, make_config):
    """1 == True in Python: model.freeze: 1 must still mean the first stage only."""
    ft = hubft.Finetuner(make_config(tmp_path, model={"freeze": 1}), dataset=tiny_dataset)
    try:
        ft.setup()
        frozen = {n for n, p in ft.parts.model.named_parameters() if not p.requires_grad}
        trainable = {n for n, p in ft.parts.model.named_parameters() if p.requires_grad}
        assert frozen and any(not n.startswith(("fc.", "head")) for n in trainable)
    finally:
        ft.close()


def test_fused_sgd_with_a_freeze_schedule_is_refused_and_auto_does_not_fuse_sgd(tmp_path, tiny_dataset, make_config):
    from hubft.errors import ConfigError

    schedule = {"freeze": 2, "unfreeze_epoch": 1}
    with pytest.raises(ConfigError, match="fused SGD"):
        hubft.finetune(make_config(tmp_path / "true", model=schedule, optim={"name": "sgd", "fused": True}),
                       dataset=tiny_dataset)
    result = hubft.finetune(make_config(tmp_path / "auto", model=schedule, optim={"name": "sgd"}),
                            dataset=tiny_dataset)
    assert result["steps"] > 0


def test_resume_puts_back_the_configured_optimizer_kernel(tmp_path, tiny_dataset, make_config):
    """A checkpoint written without the fused kernel brings fused=None back in its param_groups; resume restores
    the configured one (step counts as the kernel keeps them), so the sync-free check can still use it."""
    first = make_config(tmp_path, optim={"fused": False}, train={"epochs": 1, "checkpoint_every": 2})
    hubft.finetune(first, dataset=tiny_dataset)
    again = make_config(tmp_path, train={"epochs": 2, "resume": "latest"})
    ft = hubft.Finetuner(again, dataset=tiny_dataset)
    try:
        ft.setup()
        inner = ft.parts.optimizer.optimizer
        assert all(g["fused"] for g in inner.param_groups)
        assert all(s["step"].dtype == torch.float32 for s in inner.state.values())
        ft.loop.finite.deferred = True  # what CUDA would use: found_inf reaches the fused step
        ft.fit()
        assert ft.loop.state.epoch == 2
    finally:
        ft.close()
