"""Tasks: the kinds of work hubft fine-tunes a backbone for, selected by ``model.task``.

- :class:`Task` is the record of one task (targets, head, losses, metrics, model card); :func:`get_task`,
  :func:`list_tasks` and :func:`register_task` are its registry.
- ``image-classification`` (:data:`IMAGE_CLASSIFICATION`) is the default, for single- and multi-label data.
"""

from hubft.tasks._classification_metrics import classification_metrics, multilabel_metrics
from hubft.tasks._task import DEFAULT_TASK, CardMetric, Task, get_task, list_tasks, register_task
from hubft.tasks.classification import IMAGE_CLASSIFICATION

__all__ = [
    "DEFAULT_TASK",
    "IMAGE_CLASSIFICATION",
    "CardMetric",
    "Task",
    "classification_metrics",
    "get_task",
    "list_tasks",
    "multilabel_metrics",
    "register_task",
]
