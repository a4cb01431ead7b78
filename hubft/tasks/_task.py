"""The :class:`Task` record, and the registry of tasks (``model.task``).

A task is a kind of work hubft fine-tunes a backbone for. Its record says everything that differs between kinds of
work, so that no other code asks "is this classification?": what a target is, how the head is built on the
backbone, which losses fit and which is the default, the metrics with the one that picks the best epoch, and what
the model card declares (``pipeline_tag``, the ``model-index`` metric types).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hubft.errors import ConfigError, DataError
from hubft.registry import Registry

__all__ = ["CardMetric", "Task", "get_task", "list_tasks", "register_task", "DEFAULT_TASK"]

DEFAULT_TASK = "image-classification"


@dataclass(frozen=True)
class CardMetric:
    """How one evaluation metric appears in the model card's ``model-index``.

    Attributes:
        key: The key in the run's eval metrics.
        metric_type: The Hub metric id (``EvalResult.metric_type``).
        name: The pretty name shown on the Hub.
        args: ``EvalResult.metric_args`` (e.g. the F1 average).
    """

    key: str
    metric_type: str
    name: str
    args: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Task:
    """One kind of work, and everything about it that the rest of hubft asks of it.

    Attributes:
        name: Registry name, the value of ``model.task``.
        description: One line for listings.
        target: What one example's target is, in words (for docs and errors).
        create_model: Builds the model: the backbone with this task's head, called like
            :func:`hubft.create_model` (``name, *, label_names, pretrained, revision, head_init_seed, **kwargs``).
        compute_metrics: ``(outputs, targets, label_names) -> dict`` over a whole evaluation split.
        primary_metric: The metric that picks the best epoch, early stopping and a plateau schedule's steps.
        greater_is_better: Whether a larger ``primary_metric`` is better.
        default_loss: The loss used when ``loss.name`` is not set (a registry name or a weighted mix of them).
        loss_targets: The target kinds of registered losses that fit this task's targets (see
            :class:`~hubft.losses.LossInfo`); a registered loss of another kind is refused before training.
        min_labels: The fewest labels a dataset must have.
        batch_mixing: Whether mixup / cutmix apply (they mix targets as class distributions).
        pipeline_tag: The Hub pipeline tag the card declares.
        title: The task's name in the card's ``model-index``.
        card_metrics: The eval metrics published as ``model-index`` results, in order.
        per_class: ``(metrics key, table title, column name)`` of the card's per-label table, if any.
        summary: What the model is, in the card's first line ("image classifier").
        activation: How an output becomes probabilities: ``"softmax"`` over the labels or ``"sigmoid"`` per label.
        tags: Card tags besides ``hubft`` and ``timm``.
        multi_label: The record for multi-label data, when the task takes it; None refuses such data.
        load_data: ``(data_config, dataset, seed) -> DataBundle``: how the task reads ``data.*`` (or a dataset
            passed in Python); None: :func:`hubft.data.load_data`, one label per image.
        create_datasets: ``(data_config, bundle, pretrained_cfg) -> (train, eval, train_normalize,
            eval_normalize)``: the torch datasets of uint8 images and targets, and what normalises a batch on the
            device; None: :class:`hubft.data.ImageClassificationDataset` with timm's transforms.
        eval_statistics: ``(outputs, targets, num_labels) -> Tensor [B, ...]``: one evaluation batch reduced to
            per-example statistics, gathered instead of the outputs (dense outputs are too large to hold for a
            split); :attr:`compute_metrics` then receives ``(statistics, None, label_names)`` and the eval loss
            is the mean of the batches'. None: outputs and targets are gathered whole.
        eval_collate: The eval loader's ``collate_fn`` (targets of several sizes); None: torch's default.
        eval_outputs: ``(outputs, targets) -> (outputs, targets)``: one eval batch's outputs brought to its
            targets (masks at their own resolution), before the loss and :attr:`eval_statistics`; None: as they are.
        sample_plot: ``(model, eval_dataset, normalize, label_names, out_dir)``: draws a sample prediction into
            the run directory for the card (:data:`hubft.hub.card.SAMPLE_PLOTS` lists the file); None: no sample.
        loss_defaults: Options given to every registered loss (and component of a weighted mix) whose factory
            takes them, unless ``loss.options`` or the component's own options set them.
    """

    name: str
    description: str
    target: str
    create_model: Callable[..., Any]
    compute_metrics: Callable[[Any, Any, Sequence[str]], dict]
    primary_metric: str
    default_loss: str | dict
    loss_targets: tuple[str, ...]
    pipeline_tag: str
    title: str
    card_metrics: tuple[CardMetric, ...]
    summary: str
    greater_is_better: bool = True
    min_labels: int = 1
    batch_mixing: bool = False
    per_class: tuple[str, str, str] | None = None
    tags: tuple[str, ...] = ()
    activation: str = "softmax"
    multi_label: Task | None = None
    load_data: Callable[..., Any] | None = None
    create_datasets: Callable[..., tuple[Any, Any, Any, Any]] | None = None
    eval_statistics: Callable[[Any, Any, int], Any] | None = None
    eval_collate: Callable[[Any], Any] | None = None
    eval_outputs: Callable[[Any, Any], tuple[Any, Any]] | None = None
    loss_defaults: tuple[tuple[str, Any], ...] = ()
    sample_plot: Callable[..., Any] | None = None

    def for_labels(self, multi_label: bool) -> Task:
        """The record for data with single labels (``self``) or multi-label data (:attr:`multi_label`).

        Raises:
            DataError: ``multi_label`` is true and the task takes no multi-label data.
        """
        if not multi_label:
            return self
        if self.multi_label is None:
            raise DataError(f"task {self.name!r} takes one target per example, but the data has several labels "
                            "per example", fix="pick a label column with one label per example, or another task")
        return self.multi_label

    def check_labels(self, label_names: Sequence[str]) -> None:
        """Refuse data with fewer labels than the task needs.

        Raises:
            DataError: Naming the labels found and the fix.
        """
        names = list(label_names)
        if len(names) < self.min_labels:
            raise DataError(f"the data has {len(names)} class(es) {names}: task {self.name!r} needs at least "
                            f"{self.min_labels}",
                            fix="add examples of another class, or check data.classes and data.label_column")

    def probabilities(self, outputs: Any) -> Any:
        """``outputs`` (``[N, C, ...]`` logits) as probabilities, by :attr:`activation`."""
        return outputs.sigmoid() if self.activation == "sigmoid" else outputs.softmax(dim=1)

    def is_better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` of :attr:`primary_metric` beats ``best`` (None: nothing to beat)."""
        return best is None or (value > best if self.greater_is_better else value < best)


_TASKS: Registry[Task] = Registry("task", "list_tasks")


def register_task(task: Task, *, overwrite: bool = False) -> Task:
    """Add a task so that ``model.task`` can name it.

    Raises:
        ConfigError: ``task`` is not a :class:`Task`, or its name is malformed or taken (without ``overwrite``).
    """
    if not isinstance(task, Task):
        raise ConfigError(f"register_task takes a Task record, got {type(task).__name__}")
    return _TASKS.register(task, overwrite=overwrite)


def get_task(name: str) -> Task:
    """The task that ``name`` denotes (looked up as :mod:`hubft.registry` says).

    Raises:
        ConfigError: Unknown name; the message lists the tasks.
    """
    return _TASKS.get(name)


def list_tasks(pattern: str | None = None) -> list[str]:
    """Names of the registered tasks, sorted; ``pattern`` filters with shell wildcards, ignoring case."""
    return _TASKS.names(pattern)
