import csv
import sys

import pytest
import timm
import torch

from hubft.errors import ConfigError
from hubft.optim import create_optimizer, create_scheduler, list_schedulers, lr_curve, param_groups, plot_all_schedules
from hubft.optim import plot_lr_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")


@pytest.fixture(scope="module")
def model():
    return timm.create_model("resnet10t", pretrained=False, num_classes=3)


def test_lr_curve_per_group_matches_a_real_schedule(model):
    before = [p.detach().clone() for p in model.parameters()]
    curves = lr_curve(model, schedule="cosine", total_updates=120, updates_per_epoch=12, warmup_steps=20, lr=1e-3,
                      head_lr=1e-2, layer_decay=0.6)
    groups = param_groups(model, lr=1e-3, head_lr=1e-2, layer_decay=0.6, include_frozen=True)
    assert list(curves) == [g["name"] for g in groups]
    assert all(len(v) == 120 for v in curves.values())
    assert curves["head.decay"][20] == 1e-2 and curves["head.decay"][0] == pytest.approx(1e-4)
    # Same numbers as the schedule the trainer would step, and the model is untouched.
    sched = create_scheduler(create_optimizer(groups, "adamw"), "cosine", warmup_steps=20, total_updates=120,
                             updates_per_epoch=12)
    expected = []
    for u in range(120):
        expected.append(sched.get_last_lr())
        sched.step_update(u + 1)
    assert [list(step) for step in zip(*curves.values())] == expected
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert all("initial_lr" not in g for g in groups)


def test_lr_curve_plateau_assumes_a_constant_metric():
    curve = lr_curve([{"name": "all", "lr": 1.0}], schedule="plateau", total_updates=60, updates_per_epoch=2,
                     patience=3)["all"]
    # Metric never improves after the first epoch: x0.1 after every patience + 1 epochs (8 updates).
    assert curve[:10] == [1.0] * 10 and curve[10] == pytest.approx(0.1) and curve[18] == pytest.approx(0.01)


def test_lr_curve_rejects_model_options_for_groups_and_duplicate_names():
    with pytest.raises(ConfigError, match="head_lr and layer_decay"):
        lr_curve([{"name": "a", "lr": 1.0}], total_updates=10, updates_per_epoch=5, head_lr=1.0)
    with pytest.raises(ConfigError, match="not unique"):
        lr_curve([{"name": "a", "lr": 1.0}, {"name": "a", "lr": 2.0}], total_updates=10, updates_per_epoch=5)
    with pytest.raises(ConfigError, match="updates_per_epoch"):
        lr_curve([{"name": "a", "lr": 1.0}], total_updates=10, updates_per_epoch=0)


def test_plot_lr_curves_writes_png_and_csv(model, tmp_path):
    curves = lr_curve(model, schedule="onecycle", total_updates=50, updates_per_epoch=10, head_lr=1e-2)
    png, table = tmp_path / "plots" / "lr.png", tmp_path / "lr.csv"
    plot_lr_curves(curves, png, table)
    assert png.read_bytes()[:8] == PNG_MAGIC
    with open(table, newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["step", *curves]
    assert len(rows) == 51 and [int(r[0]) for r in rows[1:]] == list(range(50))
    for column, name in enumerate(curves, start=1):
        assert [float(r[column]) for r in rows[1:]] == curves[name]


def test_plot_all_schedules_draws_every_registered_schedule(tmp_path):
    png = tmp_path / "schedules.png"
    names = plot_all_schedules(png, total_updates=400, updates_per_epoch=20, warmup_steps=20)
    assert names == list_schedulers()
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_plots_without_matplotlib_say_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` raise ImportError
    monkeypatch.delitem(sys.modules, "matplotlib.figure", raising=False)
    monkeypatch.delitem(sys.modules, "matplotlib.backends.backend_agg", raising=False)
    with pytest.raises(ConfigError, match=r"hubft\[plots\]"):
        plot_lr_curves({"a": [1.0, 0.5]}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_lr_curves_rejects_ragged_curves(tmp_path):
    with pytest.raises(ConfigError, match="one length"):
        plot_lr_curves({"a": [1.0, 0.5], "b": [1.0]}, tmp_path / "x.png")
