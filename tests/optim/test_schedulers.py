import io
import math
from dataclasses import dataclass

import pytest
import torch
from torch.optim import lr_scheduler as tls

from hubft.errors import CheckpointError, ConfigError
from hubft.optim import (
    TORCH_SCHEDULERS,
    SchedulerInfo,
    create_optimizer,
    create_scheduler,
    get_scheduler_info,
    list_schedulers,
    register_scheduler,
)

# The schedules step without a real optimizer.step(); torch warns about that order.
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")

BASE_LRS = (1e-3, 1e-2, 2.5e-4)  # e.g. body, head, a lower layer
UPE = 10  # updates per epoch
TOTAL = 300


def _optimizer(name: str = "adamw") -> torch.optim.Optimizer:
    groups = [{"name": f"g{i}", "params": [torch.zeros(2, requires_grad=True)], "lr": lr, "weight_decay": 0.0}
              for i, lr in enumerate(BASE_LRS)]
    return create_optimizer(groups, name)


def _metric(epoch: int) -> float:
    """Improves for 4 epochs, then stalls: plateau schedules reduce after their patience."""
    return 1.0 - 0.1 * min(max(epoch, 0), 4)


def _lrs(opt: torch.optim.Optimizer) -> list[float]:
    return [g["lr"] for g in opt.param_groups]


def _run(sched, updates: range, metric_shift: int = 0) -> list[list[float]]:
    """Drive a hubft schedule as the trainer does; return the LRs used by each update.

    The metric of epoch ``e`` is ``_metric(e - metric_shift)``, so that a run with warmup sees the same
    metrics in its main phase as a run without.
    """
    seen = []
    for u in updates:
        seen.append(_lrs(sched.optimizer))
        sched.step_update(u + 1)
        if (u + 1) % UPE == 0:
            epoch = (u + 1) // UPE - 1
            sched.step_epoch(epoch, metric=_metric(epoch - metric_shift))
    return seen


# Explicit torch arguments for the identity test: what a user would write in a config.
EXPLICIT = {
    "LambdaLR": {"lr_lambda": lambda e: 0.95**e},
    "MultiplicativeLR": {"lr_lambda": lambda e: 0.97},
    "StepLR": {"step_size": 7, "gamma": 0.5},
    "MultiStepLR": {"milestones": [5, 12, 20], "gamma": 0.3},
    "ExponentialLR": {"gamma": 0.9},
    "CosineAnnealingLR": {"T_max": 120, "eta_min": 1e-5},
    "ReduceLROnPlateau": {"patience": 2, "factor": 0.5},
    "CyclicLR": {"base_lr": 1e-4, "max_lr": 1e-2, "step_size_up": 25, "mode": "triangular2"},
    "OneCycleLR": {"max_lr": 0.01, "total_steps": TOTAL},
    "CosineAnnealingWarmRestarts": {"T_0": 40, "T_mult": 2},
    "LinearLR": {"start_factor": 0.25, "total_iters": 50},
    "ConstantLR": {"factor": 0.5, "total_iters": 30},
    "PolynomialLR": {"total_iters": 200, "power": 2.0},
}


@pytest.mark.parametrize("explicit", [True, False], ids=["given-kwargs", "derived-defaults"])
@pytest.mark.parametrize("name", TORCH_SCHEDULERS)
def test_torch_names_match_torch_value_for_value(name, explicit):
    kwargs = EXPLICIT[name] if explicit else {}
    sched = create_scheduler(_optimizer(), name, total_updates=TOTAL, updates_per_epoch=UPE, **kwargs)
    if explicit:
        assert sched.kwargs == kwargs
    twin_opt = _optimizer()
    twin = getattr(tls, name)(twin_opt, **sched.kwargs)
    ours = _run(sched, range(TOTAL))
    theirs = []
    for u in range(TOTAL):
        theirs.append(_lrs(twin_opt))
        if sched.interval == "step":
            twin.step()
        elif (u + 1) % UPE == 0:
            epoch = (u + 1) // UPE - 1
            twin.step(_metric(epoch)) if name == "ReduceLROnPlateau" else twin.step()
    assert ours == theirs
    assert len({tuple(lrs) for lrs in ours}) > 1 or name == "ConstantLR"  # the schedule really moves


def _assert_ratios_kept(seen: list[list[float]]) -> None:
    for lrs in seen:
        for lr, base in zip(lrs, BASE_LRS):
            assert lr == pytest.approx(lrs[0] * base / BASE_LRS[0], rel=1e-9, abs=1e-12 * base)


@pytest.mark.parametrize("name", list_schedulers())
def test_group_ratios_are_kept_at_every_step(name):
    sched = create_scheduler(_optimizer(), name, total_updates=TOTAL, updates_per_epoch=UPE)
    _assert_ratios_kept(_run(sched, range(TOTAL)))


@pytest.mark.parametrize("name", list_schedulers())
def test_warmup_then_exactly_the_shifted_main_schedule(name):
    warmup, start = 3 * UPE, 0.05
    plain = create_scheduler(_optimizer(), name, total_updates=TOTAL, updates_per_epoch=UPE)
    warm = create_scheduler(_optimizer(), name, total_updates=TOTAL + warmup, updates_per_epoch=UPE,
                            warmup_steps=warmup, warmup_start_factor=start)
    assert warm.kwargs.keys() == plain.kwargs.keys()
    main = _run(plain, range(TOTAL))
    seen = _run(warm, range(TOTAL + warmup), metric_shift=warmup // UPE)
    for u in range(warmup):
        factor = start + (1 - start) * u / warmup
        assert seen[u] == pytest.approx([lr * factor for lr in main[0]], rel=1e-12)
    assert seen[warmup:] == main
    _assert_ratios_kept(seen)


@pytest.mark.parametrize("warmup, stop", [(0, 137), (30, 17), (30, 30), (30, 143)])
@pytest.mark.parametrize("name", list_schedulers())
def test_state_dict_resume_continues_identically(name, warmup, stop):
    def build():
        return create_scheduler(_optimizer(), name, total_updates=TOTAL, updates_per_epoch=UPE,
                                warmup_steps=warmup)

    reference = _run(build(), range(TOTAL))
    first = build()
    _run(first, range(stop))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = build()  # fresh optimizer and schedule, as after a restart
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.num_updates == stop
    assert _run(resumed, range(stop, TOTAL)) == reference[stop:]


def test_step_update_replays_from_the_count_alone():
    reference = _run(create_scheduler(_optimizer(), "OneCycleLR", total_updates=TOTAL), range(TOTAL))
    sched = create_scheduler(_optimizer(), "OneCycleLR", total_updates=TOTAL, warmup_steps=0)
    sched.step_update(150)
    sched.step_update(150)  # idempotent
    assert _lrs(sched.optimizer) == reference[150]
    with pytest.raises(ValueError, match="cannot go back"):
        sched.step_update(149)


def test_state_of_another_schedule_is_refused():
    state = create_scheduler(_optimizer(), "cosine", total_updates=TOTAL).state_dict()
    with pytest.raises(CheckpointError, match="does not match"):
        create_scheduler(_optimizer(), "cosine", total_updates=TOTAL, warmup_steps=5).load_state_dict(state)


# -- custom schedules ----------------------------------------------------------------------------------------------


def step_decay_factor(epoch):
    return 0.1 ** (epoch // 30)


def adjust_learning_rate(optimizer, epoch):
    """The classic ImageNet-example function: sets every group to the same absolute LR."""
    lr = 0.05 * 0.1 ** (epoch // 30)
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr


def _per_epoch(spec, epochs: int = 100, **kwargs) -> list[list[float]]:
    sched = create_scheduler(_optimizer(), spec, updates_per_epoch=1, **kwargs)
    assert sched.interval == "epoch"
    seen = []
    for epoch in range(epochs):
        seen.append(_lrs(sched.optimizer))
        sched.step_update(epoch + 1)
        sched.step_epoch(epoch)
    return seen


@pytest.mark.parametrize("spec", [step_decay_factor, adjust_learning_rate], ids=["factor", "adjust"])
def test_custom_step_decay_gives_its_values_and_keeps_ratios(spec):
    seen = _per_epoch(spec)
    for epoch, lrs in enumerate(seen):
        assert lrs == pytest.approx([base * 0.1 ** (epoch // 30) for base in BASE_LRS], rel=1e-12)


def test_adjust_function_with_explicit_reference_lr():
    # The function's base is 0.05; telling hubft the base is 0.025 doubles every group's LR.
    seen = _per_epoch(adjust_learning_rate, epochs=40, reference_lr=0.025)
    assert seen[0] == pytest.approx([2 * b for b in BASE_LRS]) and seen[35] == pytest.approx([0.2 * b for b in BASE_LRS])


def test_custom_function_from_module_string(tmp_path, monkeypatch):
    (tmp_path / "my_schedules.py").write_text(
        "def factor(epoch):\n    return 0.1 ** (epoch // 30)\n\n"
        "class Holder:\n    @staticmethod\n    def adjust(optimizer, epoch):\n"
        "        for g in optimizer.param_groups:\n            g['lr'] = 0.2 * 0.1 ** (epoch // 30)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    expected = pytest.approx([base * 0.1 ** (e // 30) for e in range(100) for base in BASE_LRS], rel=1e-12)
    for spec, kwargs in [("my_schedules:factor", {}), ("my_schedules:Holder.adjust", {}),
                         ("torch.optim.lr_scheduler:StepLR", {"step_size": 30})]:
        assert sum(_per_epoch(spec, **kwargs), []) == expected, spec


def test_custom_function_with_warmup_and_step_interval():
    sched = create_scheduler(_optimizer(), lambda t: 0.5 ** (t // 10), interval="step", warmup_steps=5,
                             warmup_start_factor=0.0)
    assert _lrs(sched.optimizer) == [0.0, 0.0, 0.0]
    seen = _run(sched, range(40))
    assert seen[5] == list(BASE_LRS) and seen[15] == [b / 2 for b in BASE_LRS] and seen[35] == [b / 8 for b in BASE_LRS]


# -- intervals and units -------------------------------------------------------------------------------------------


def test_interval_sets_the_unit_of_durations_and_defaults():
    per_epoch = create_scheduler(_optimizer(), "cosine", interval="epoch", total_updates=TOTAL, updates_per_epoch=UPE)
    assert per_epoch.kwargs == {"T_max": TOTAL // UPE}
    seen = _run(per_epoch, range(TOTAL))
    assert all(seen[u] == seen[u - u % UPE] for u in range(TOTAL))  # constant within an epoch
    per_step = create_scheduler(_optimizer(), "step", interval="step", total_updates=TOTAL, step_size=25)
    seen = _run(per_step, range(TOTAL))
    assert seen[24][0] == BASE_LRS[0] and seen[25][0] == pytest.approx(BASE_LRS[0] * 0.1)


def test_plateau_needs_a_metric_and_epoch_interval():
    sched = create_scheduler(_optimizer(), "plateau")
    assert sched.needs_metric and not create_scheduler(_optimizer(), "cosine", total_updates=10).needs_metric
    with pytest.raises(ConfigError, match="validation metric"):
        sched.step_epoch(0)
    with pytest.raises(ConfigError, match="only at epoch ends"):
        create_scheduler(_optimizer(), "plateau", interval="step")


def test_registry_records_know_class_interval_and_defaults():
    names = list_schedulers()
    assert set(TORCH_SCHEDULERS) | {"cosine", "linear", "step", "multistep", "exponential", "plateau", "onecycle",
                                    "cyclic", "cosine_restarts", "poly", "constant", "none"} == set(names)
    for name in names:
        info = get_scheduler_info(name)
        assert issubclass(info.scheduler_class, tls.LRScheduler) and info.interval in ("step", "epoch")
    assert get_scheduler_info("OneCycleLR").interval == "step" and get_scheduler_info("StepLR").interval == "epoch"
    sched = create_scheduler(_optimizer(), "cosine", total_updates=TOTAL, warmup_steps=20)
    assert sched.kwargs == {"T_max": TOTAL - 20}
    assert create_scheduler(_optimizer(), "OneCycleLR", total_updates=TOTAL).kwargs["max_lr"] == list(BASE_LRS)
    assert create_scheduler(_optimizer(), None).name == "none"


def test_register_scheduler():
    info = SchedulerInfo("test_halving", tls.ExponentialLR, "epoch", "halve each epoch", {"gamma": lambda c: 0.5})
    register_scheduler(info)
    try:
        seen = _per_epoch("test_halving", epochs=3)
        assert seen == [list(BASE_LRS), [b / 2 for b in BASE_LRS], [b / 4 for b in BASE_LRS]]
        with pytest.raises(ConfigError, match="already registered"):
            register_scheduler(info)
        with pytest.raises(ConfigError, match="interval"):
            register_scheduler(SchedulerInfo("test_bad", tls.StepLR, "update"))  # type: ignore[arg-type]
    finally:
        from hubft.optim._schedulers import _REGISTRY

        _REGISTRY._records.pop("test_halving")


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("cosin", {}, r"unknown schedule 'cosin'.*'cosine'"),
        ("cosineannealinglr", {}, r"'CosineAnnealingLR'"),
        ("cosine", {"T_maxx": 10}, r"no argument 'T_maxx'.*T_max"),
        ("StepLR", {"step_size": 5, "last_epoch": 3}, r"no argument 'last_epoch'"),
        ("cosine", {}, r"needs 'T_max'.*total_updates"),
        ("step", {"total_updates": TOTAL}, r"needs 'step_size'.*updates_per_epoch"),
        ("cosine", {"total_updates": TOTAL, "interval": "epochs"}, r"interval='epochs'"),
        ("cosine", {"total_updates": TOTAL, "warmup_steps": -1}, r"warmup_steps"),
        ("cosine", {"total_updates": TOTAL, "warmup_start_factor": 2}, r"warmup_start_factor"),
        ("cosine", {"total_updates": 0}, r"total_updates"),
        ("ExponentialLR", {"gamma": "fast"}, r"gamma='fast' is not a float"),
        ("CyclicLR", {"total_updates": TOTAL, "optimizer": "Rprop"}, r"momentum"),
        ("no_such_module_xyz:f", {}, r"cannot import module"),
        ("math:no_such_fn", {}, r"no attribute"),
        ("math:pi", {}, r"not a function"),
        (lambda a, b, c: 1.0, {}, r"3 required positional"),
        (step_decay_factor, {"reference_lr": 0.1}, r"reference_lr only applies"),
        # Starts at 0 (its own warmup): the LR it sets at epoch 0 cannot serve as its base.
        (lambda optimizer, epoch: optimizer.param_groups[0].update(lr=0.1 * epoch), {}, r"reference LR"),
        ("StepLR", {"step_size": 2.5}, r"step_size=2.5 is not an int"),
    ],
)
def test_bad_schedules_raise_config_error(name, kwargs, match):
    kwargs = dict(kwargs)
    optimizer = kwargs.pop("optimizer", "adamw")
    opt = _optimizer(optimizer) if optimizer != "Rprop" else create_optimizer(
        [{"params": [torch.zeros(2, requires_grad=True)], "lr": 0.01}], "Rprop")
    with pytest.raises(ConfigError, match=match):
        create_scheduler(opt, name, **kwargs)


def test_ratio_check_would_catch_a_torch_scalar_max_lr():
    # A single max_lr is torch's semantics (every group peaks at it): hubft passes it through unchanged.
    sched = create_scheduler(_optimizer(), "OneCycleLR", max_lr=0.01, total_updates=TOTAL)
    peak = max(_run(sched, range(TOTAL)), key=lambda lrs: lrs[0])
    assert peak == pytest.approx([0.01] * 3) and not math.isclose(peak[1] / peak[0], BASE_LRS[1] / BASE_LRS[0])


# -- aliases against torch, with the lengths a run derives ---------------------------------------------------------


@dataclass(frozen=True)
class RunLength:
    """A run's length as a config gives it: epochs of ``per_epoch`` updates, an optional cap, a warmup."""

    epochs: int
    per_epoch: int
    max_updates: int | None = None
    warmup: int = 0

    @property
    def total(self) -> int:
        return min(self.epochs * self.per_epoch, self.max_updates or math.inf)

    @property
    def main_updates(self) -> int:
        """Updates after warmup: the length of a per-update schedule."""
        return self.total - self.warmup

    @property
    def main_epochs(self) -> int:
        """Epochs that begin after warmup (and before the cap): each ends with one step of a per-epoch schedule,
        the last at the end of the run."""
        return sum(1 for e in range(self.epochs) if self.warmup <= e * self.per_epoch < self.total)

    def __str__(self) -> str:
        cap = f"-cap{self.max_updates}" if self.max_updates else ""
        return f"{self.epochs}x{self.per_epoch}{cap}-warmup{self.warmup}"


RUN_LENGTHS = [
    RunLength(3, 7),
    RunLength(3, 7, warmup=4),  # warmup ends mid-epoch
    RunLength(3, 7, max_updates=16),  # the cap ends the run mid-epoch
    RunLength(3, 7, max_updates=16, warmup=7),
    RunLength(5, 4),
    RunLength(6, 5, warmup=3),
    RunLength(16, 2),  # long enough in epochs for plateau's default patience to act
    RunLength(16, 2, max_updates=27, warmup=3),
]
WARMUP_START = 0.05


def _run_metric(epoch: int) -> float:
    """An accuracy that improves once, then stalls for good."""
    return 0.5 + 0.1 * min(epoch, 1)


# What each alias stands for, written out from its description (list_schedulers() / the alias table): the torch
# class and its arguments, given the run's length after warmup in updates (u) and epochs (e), and the groups' LRs.
ALIAS_TWINS = {
    # "half cosine from the LR to 0 over the run"
    "cosine": ("step", lambda opt, u, e, lrs: tls.CosineAnnealingLR(opt, T_max=u)),
    # "linear from the LR to 0 over the run"
    "linear": ("step", lambda opt, u, e, lrs: tls.LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters=u)),
    # "polynomial (power 1) decay to 0 over the run"
    "poly": ("step", lambda opt, u, e, lrs: tls.PolynomialLR(opt, total_iters=u, power=1.0)),
    # "x0.1 three times over the run (epochs)": a drop every whole third of the run, at least every epoch
    "step": ("epoch", lambda opt, u, e, lrs: tls.StepLR(opt, step_size=max(1, e // 3), gamma=0.1)),
    # "x0.1 at 1/2 and 3/4 of the run (epochs)", at the epoch boundaries at or before those points
    "multistep": ("epoch", lambda opt, u, e, lrs: tls.MultiStepLR(
        opt, milestones=sorted({max(1, e // 2), max(1, 3 * e // 4)}), gamma=0.1)),
    # "exponential decay to 1% over the run (epochs)"
    "exponential": ("epoch", lambda opt, u, e, lrs: tls.ExponentialLR(opt, gamma=0.01 ** (1 / e))),
    # "x0.1 when the validation metric stalls for 10 epochs", fed accuracy (greater is better)
    "plateau": ("epoch", lambda opt, u, e, lrs: tls.ReduceLROnPlateau(opt, mode="max", factor=0.1, patience=10)),
    # "one cycle peaking at each group's LR"
    "onecycle": ("step", lambda opt, u, e, lrs: tls.OneCycleLR(opt, max_lr=lrs, total_steps=u)),
    # "4 triangles between LR/10 and the LR" (whole updates per half-triangle, at least one)
    "cyclic": ("step", lambda opt, u, e, lrs: tls.CyclicLR(
        opt, base_lr=[lr / 10 for lr in lrs], max_lr=lrs, step_size_up=max(1, u // 8))),
    # "cosine with 4 warm restarts" (whole updates per cycle, at least one)
    "cosine_restarts": ("step", lambda opt, u, e, lrs: tls.CosineAnnealingWarmRestarts(opt, T_0=max(1, u // 4))),
    # "the LR stays constant"; "none": the same, warmup still applies
    "constant": ("step", lambda opt, u, e, lrs: tls.ConstantLR(opt, factor=1.0, total_iters=0)),
    "none": ("step", lambda opt, u, e, lrs: tls.ConstantLR(opt, factor=1.0, total_iters=0)),
}
ALIASES = [name for name in list_schedulers() if name.islower()]


def test_every_alias_has_a_torch_twin_written_out():
    assert sorted(ALIAS_TWINS) == sorted(ALIASES)


def _hubft_run_lrs(name: str, run: RunLength) -> list[list[float]]:
    """The LRs of every update of a run configured with schedule ``name``, stepped as the training loop does."""
    from hubft import config_from_dict, get_task
    from hubft.train.setup import create_run_schedule

    config = config_from_dict({
        "schedule": {"name": name, "warmup_steps": run.warmup, "warmup_start_factor": WARMUP_START},
        "train": {"epochs": run.epochs, "max_updates": run.max_updates},
    })
    opt = _optimizer()
    sched, total = create_run_schedule(config, get_task("image-classification"), opt, run.per_epoch)
    assert total == run.total
    seen = []
    for u in range(total):
        seen.append(_lrs(opt))
        sched.step_update(u + 1)
        if (u + 1) % run.per_epoch == 0 or u + 1 == total:  # an epoch ends (or the capped run does)
            epoch = u // run.per_epoch
            sched.step_epoch(epoch, metric=_run_metric(epoch))
    return seen


def _torch_run_lrs(name: str, run: RunLength) -> list[list[float]]:
    """The same run by hand: linear warmup to where the torch scheduler starts, then the scheduler, stepped after
    every update past warmup (per-update) or at the end of every epoch that began after warmup (per-epoch)."""
    interval, build = ALIAS_TWINS[name]
    opt = _optimizer()
    main = build(opt, run.main_updates, run.main_epochs, list(BASE_LRS))
    start = main.get_last_lr()
    seen = []
    for u in range(run.total):
        if u < run.warmup:
            factor = WARMUP_START + (1 - WARMUP_START) * u / run.warmup
            seen.append([lr * factor for lr in start])
        else:
            seen.append(_lrs(opt))
        if interval == "step" and u >= run.warmup:
            main.step()
        epoch = u // run.per_epoch
        if interval == "epoch" and ((u + 1) % run.per_epoch == 0 or u + 1 == run.total) \
                and epoch * run.per_epoch >= run.warmup:
            main.step(_run_metric(epoch)) if name == "plateau" else main.step()
    return seen


@pytest.mark.parametrize("run", RUN_LENGTHS, ids=str)
@pytest.mark.parametrize("name", ALIASES)
def test_alias_is_its_torch_scheduler_over_the_run_length(name, run):
    ours, theirs = _hubft_run_lrs(name, run), _torch_run_lrs(name, run)
    assert len(ours) == run.total
    assert ours == theirs
    if run == RunLength(16, 2) and name not in ("constant", "none"):
        assert len({tuple(lrs) for lrs in ours}) > 1  # the comparison is not between two constants
