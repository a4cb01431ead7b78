"""Every registered task is a consistent record: its default loss fits its targets, its metrics hold what it
publishes, and it picks the best epoch by a metric it computes (parametrised over the registry and its
multi-label variants, so a new task is covered by registering it)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import hubft
from hubft.errors import ConfigError, DataError
from hubft.losses import create_loss, get_loss_info, with_default_options
from hubft.tasks import DEFAULT_TASK, Task, get_task, list_tasks, register_task

LABELS = ["a", "b", "c", "d", "e", "f"]


def _records() -> list[Task]:
    records = []
    for name in list_tasks():
        task = get_task(name)
        records += [task] + ([task.multi_label] if task.multi_label is not None else [])
    return records


RECORDS = _records()
IDS = [f"{t.name}{'-multi-label' if t is not get_task(t.name) else ''}" for t in RECORDS]


def _targets(task: Task, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if task is get_task(task.name).multi_label:
        return (torch.rand(n, len(LABELS), generator=g) > 0.5).float()
    return torch.randint(len(LABELS), (n, *_dense(task)), generator=g)


def _dense(task: Task) -> tuple[int, ...]:
    """The spatial size of a task's outputs and targets: ``(4, 4)`` for a dense task (masks), else none."""
    return (4, 4) if task.eval_statistics is not None else ()


def _outputs(task: Task, n: int) -> torch.Tensor:
    return torch.randn(n, len(LABELS), *_dense(task), generator=torch.Generator().manual_seed(1))


def _loss_names(spec) -> list[str]:
    return [spec] if isinstance(spec, str) else list(spec)


def test_the_default_task_is_registered_and_is_the_config_default():
    assert DEFAULT_TASK in list_tasks()
    assert hubft.FinetuneConfig().model.task == DEFAULT_TASK


@pytest.mark.parametrize("task", RECORDS, ids=IDS)
def test_the_default_loss_is_registered_for_the_task_targets(task):
    assert all(get_loss_info(name).target in task.loss_targets for name in _loss_names(task.default_loss))
    outputs, targets = _outputs(task, 8), _targets(task, 8)
    spec, options = with_default_options(task.default_loss, {}, dict(task.loss_defaults))
    assert torch.isfinite(create_loss(spec, **options)(outputs, targets))


@pytest.mark.parametrize("task", RECORDS, ids=IDS)
def test_metrics_hold_the_primary_metric_and_everything_the_card_publishes(task):
    outputs, targets = _outputs(task, 40), _targets(task, 40)
    if task.eval_statistics is not None:
        outputs, targets = task.eval_statistics(outputs, targets, len(LABELS)), None
    metrics = task.compute_metrics(outputs, targets, LABELS)
    assert isinstance(metrics[task.primary_metric], float)
    for metric in task.card_metrics:
        assert isinstance(metrics[metric.key], float), metric.key
    if task.per_class is not None:
        assert list(metrics[task.per_class[0]]) == LABELS
    assert task.pipeline_tag and task.title and task.summary


@pytest.mark.parametrize("task", RECORDS, ids=IDS)
def test_better_follows_the_direction_of_the_primary_metric(task):
    high, low = (0.9, 0.1) if task.greater_is_better else (0.1, 0.9)
    assert task.is_better(high, low) and not task.is_better(low, high) and task.is_better(low, None)


def test_classification_takes_multi_label_data_through_its_variant():
    task = get_task("image-classification")
    assert task.for_labels(False) is task
    assert task.for_labels(True).default_loss == "bce" and task.for_labels(True).primary_metric == "map"
    single_only = dataclasses.replace(task, name="single-only", multi_label=None)
    with pytest.raises(DataError, match="several labels per example"):
        single_only.for_labels(True)


def test_too_few_labels_are_refused_with_the_labels_named():
    with pytest.raises(DataError, match=r"1 class\(es\) \['cat'\]"):
        get_task("image-classification").check_labels(["cat"])
    get_task("image-classification").for_labels(True).check_labels(["cat"])  # one label is enough there


def test_registering_a_task_adds_it_and_a_non_record_is_refused(monkeypatch):
    from hubft.tasks import _task

    monkeypatch.setattr(_task, "_TASKS", _task._TASKS.copy())
    custom = register_task(dataclasses.replace(get_task("image-classification"), name="my-task"))
    assert get_task("My_Task") is custom and "my-task" in list_tasks()
    with pytest.raises(ConfigError, match="Task record"):
        register_task({"name": "x"})  # type: ignore[arg-type]
