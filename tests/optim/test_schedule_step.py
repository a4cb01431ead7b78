"""``Schedule.step()``: a hubft schedule in code written for torch schedulers (a plain loop, HF Trainer,
Accelerate) gives the LRs hubft's own loop gives, and cannot be stepped twice for one update.

Parametrised over every registered schedule, with and without warmup. The reference is hubft's own stepping
(``step_update`` after each update, ``step_epoch`` at each epoch end), which ``test_schedulers.py`` compares with
torch; without warmup the torch scheduler itself is compared too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import hubft
from hubft.errors import ConfigError
from hubft.optim import create_scheduler, list_schedulers

UPDATES_PER_EPOCH, EPOCHS = 4, 5
TOTAL = UPDATES_PER_EPOCH * EPOCHS
METRICS = [0.5, 0.6, 0.6, 0.6, 0.7]  # a plateau schedule is fed these at the epoch ends (mode max)


def _optimizer() -> torch.optim.Optimizer:
    w = torch.nn.Parameter(torch.zeros(3))
    return torch.optim.SGD([{"params": [w], "lr": 0.1}, {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 1.0}])


def _schedule(optimizer, name: str, warmup: int):
    options = {"mode": "max", "patience": 0} if name in ("plateau", "ReduceLROnPlateau") else {}
    return create_scheduler(optimizer, name, warmup_steps=warmup, updates_per_epoch=UPDATES_PER_EPOCH,
                            total_updates=TOTAL, **options)


def _update(optimizer) -> None:
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.ones_like(p)
    optimizer.step()


def _hubft_loop(name: str, warmup: int) -> list[list[float]]:
    """The LRs each update uses when stepped as hubft's loop steps it."""
    opt = _optimizer()
    sched = _schedule(opt, name, warmup)
    used = []
    for update in range(1, TOTAL + 1):
        used.append([g["lr"] for g in opt.param_groups])
        _update(opt)
        sched.step_update(update)
        if update % UPDATES_PER_EPOCH == 0:
            epoch = update // UPDATES_PER_EPOCH - 1
            sched.step_epoch(epoch, metric=METRICS[epoch])
    return used


def _torch_style(name: str, warmup: int, *, calls: int = 1, per_epoch: bool = False) -> list[list[float]]:
    """The LRs each update uses in a loop written for torch schedulers: ``step()`` after ``optimizer.step()``."""
    opt = _optimizer()
    sched = _schedule(opt, name, warmup)
    used = []
    for update in range(1, TOTAL + 1):
        used.append([g["lr"] for g in opt.param_groups])
        _update(opt)
        epoch_end = update % UPDATES_PER_EPOCH == 0
        if per_epoch and not epoch_end:
            continue
        metric = METRICS[(update - 1) // UPDATES_PER_EPOCH]
        for _ in range(calls):
            sched.step(metric) if sched.needs_metric else sched.step()
    return used


@pytest.fixture(autouse=True)
def _quiet_torch():
    with warnings.catch_warnings():
        # torch warns when a scheduler steps before its optimizer did (the schedules are built on a fresh one)
        warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*", category=UserWarning)
        yield


@pytest.mark.parametrize("warmup", [0, 3])
@pytest.mark.parametrize("name", list_schedulers())
def test_step_after_every_update_gives_hubfts_lrs(name, warmup):
    assert _torch_style(name, warmup) == _hubft_loop(name, warmup)


@pytest.mark.parametrize("name", list_schedulers())
def test_a_second_step_for_the_same_update_changes_nothing(name):
    """As when Accelerate's prepared scheduler calls it once per process, or a loop calls it twice by mistake."""
    assert _torch_style(name, 3, calls=2) == _hubft_loop(name, 3)


@pytest.mark.parametrize("name", [n for n in list_schedulers() if hubft.optim.get_scheduler_info(n).interval
                                  == "epoch"])
def test_an_epoch_schedule_stepped_once_per_epoch_gives_the_same_lrs(name):
    assert _torch_style(name, 0, per_epoch=True) == _hubft_loop(name, 0)


@pytest.mark.parametrize("name", list_schedulers())
def test_without_warmup_step_is_the_torch_scheduler_stepped_by_hand(name):
    opt = _optimizer()
    sched = _schedule(opt, name, 0)
    torch_opt = _optimizer()
    twin = sched.main.__class__(torch_opt, **sched.kwargs)
    for update in range(1, TOTAL + 1):
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in torch_opt.param_groups], update
        _update(opt)
        _update(torch_opt)
        sched.step(METRICS[(update - 1) // UPDATES_PER_EPOCH]) if sched.needs_metric else sched.step()
        epoch_end = update % UPDATES_PER_EPOCH == 0
        if sched.interval == "step":
            twin.step()
        elif epoch_end:
            twin.step(METRICS[update // UPDATES_PER_EPOCH - 1]) if sched.needs_metric else twin.step()
    assert sched.last_epoch == (TOTAL if sched.interval == "step" else EPOCHS)
    assert sched.get_last_lr() == [g["lr"] for g in opt.param_groups] == sched.get_lr()


def test_state_dict_continues_the_sequence_in_a_new_process(tmp_path):
    expected = _torch_style("cosine", 3)
    opt = _optimizer()
    sched = _schedule(opt, "cosine", 3)
    for _ in range(7):
        _update(opt)
        sched.step()
    torch.save((opt.state_dict(), sched.state_dict()), tmp_path / "state.pt")
    opt_state, sched_state = torch.load(tmp_path / "state.pt", weights_only=True)
    resumed_opt = _optimizer()
    resumed = _schedule(resumed_opt, "cosine", 3)
    resumed_opt.load_state_dict(opt_state)
    resumed.load_state_dict(sched_state)
    used = []
    for _ in range(7, TOTAL):
        used.append([g["lr"] for g in resumed_opt.param_groups])
        _update(resumed_opt)
        resumed.step()
    assert used == expected[7:]


def test_a_prepared_schedule_in_a_plain_accelerate_loop_gives_hubfts_lrs():
    from accelerate import Accelerator

    from hubft.testing import reset_process_state

    reset_process_state()
    try:
        accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
        model = torch.nn.Linear(3, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = create_scheduler(opt, "cosine", warmup_steps=3, total_updates=TOTAL)
        model, opt, prepared = accelerator.prepare(model, opt, sched)
        used = []
        for micro in range(2 * TOTAL):
            with accelerator.accumulate(model):
                accelerator.backward(model(torch.ones(4, 3)).sum())
                opt.step()
                prepared.step()
                opt.zero_grad()
            if micro % 2 == 1:
                used.append(sched.get_last_lr())
    finally:
        reset_process_state()
    reference = create_scheduler(torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.1), "cosine",
                                 warmup_steps=3, total_updates=TOTAL)
    expected = []
    for update in range(1, TOTAL + 1):
        reference.step_update(update)
        expected.append(reference.get_last_lr())
    assert used == expected


SCRIPT = Path(__file__).with_name("_accelerate_schedule.py")


@pytest.mark.slow
def test_two_processes_step_a_prepared_schedule_once_per_update(tmp_path, free_port):
    """Accelerate's prepared scheduler calls step() once per process per update; the LRs are still one update's."""
    out = tmp_path / "lrs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--master_port",
                           str(free_port()), str(SCRIPT), str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out.parent / f"{out.name}-{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0] == ranks[1]
    assert ranks[0]["processes"] == 2
    reference = create_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), "cosine",
                                 warmup_steps=2, total_updates=8)
    expected = []
    for update in range(1, 9):
        reference.step_update(update)
        expected.append(reference.get_last_lr()[0])
    assert ranks[0]["lrs"] == expected


def test_hf_trainer_steps_a_hubft_schedule_as_hubfts_loop_does(tmp_path):
    from transformers import Trainer, TrainingArguments

    from hubft.testing import reset_process_state

    model = _TinyClassifier()
    groups = hubft.param_groups(model, lr=0.01, head_lr=0.1)
    opt = hubft.create_optimizer(groups, "SGD")
    sched = create_scheduler(opt, "cosine", warmup_steps=3, total_updates=12)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=4,
                             logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    reset_process_state()
    try:
        trainer = Trainer(model=model, args=args, train_dataset=_Examples(48), optimizers=(opt, sched))
        trainer.train()
    finally:
        reset_process_state()
    logged = [r["learning_rate"] for r in trainer.state.log_history if "learning_rate" in r]
    curves = hubft.lr_curve(groups, schedule="cosine", warmup_steps=3, total_updates=12, updates_per_epoch=12)
    first = next(iter(curves))  # Trainer logs the first group's LR
    assert logged == pytest.approx(curves[first][:12], rel=1e-12)
    assert sched.num_updates == 12


def test_a_plateau_schedule_under_hf_trainer_is_refused_with_a_clear_message(tmp_path):
    from transformers import Trainer, TrainingArguments

    from hubft.testing import reset_process_state

    model = _TinyClassifier()
    opt = hubft.create_optimizer(hubft.param_groups(model, lr=0.01), "SGD")
    sched = create_scheduler(opt, "plateau", updates_per_epoch=2, total_updates=6)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, report_to=[],
                             use_cpu=True, save_strategy="no", disable_tqdm=True)
    reset_process_state()
    try:
        with pytest.raises(ConfigError, match="steps on a validation metric, but none was given"):
            Trainer(model=model, args=args, train_dataset=_Examples(24), optimizers=(opt, sched)).train()
    finally:
        reset_process_state()


class _TinyClassifier(torch.nn.Module):
    """A body and a head, with the timm attribute that marks the head; returns the loss as Trainer expects."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(4, 8)
        self.head = torch.nn.Linear(8, 2)
        self.pretrained_cfg = {"classifier": "head"}

    def forward(self, x, labels=None):
        logits = self.head(torch.relu(self.body(x)))
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


class _Examples(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 4, generator=g), torch.randint(2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "labels": self.y[i]}
