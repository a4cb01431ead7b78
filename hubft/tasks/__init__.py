"""Tasks: the kinds of work hubft fine-tunes a backbone for, selected by ``model.task``.

- :class:`Task` is the record of one task (targets, head, losses, metrics, model card); :func:`get_task`,
  :func:`list_tasks` and :func:`register_task` are its registry.
- ``image-classification`` (:data:`IMAGE_CLASSIFICATION`) is the default, for single- and multi-label data.
- ``semantic-segmentation`` (:data:`SEMANTIC_SEGMENTATION`): a class per pixel, with :func:`segmentation_metrics`.
"""

from hubft.tasks._classification_metrics import classification_metrics, multilabel_metrics
from hubft.tasks._task import DEFAULT_TASK, CardMetric, Task, get_task, list_tasks, register_task
from hubft.tasks._segmentation_metrics import confusion_matrices, metrics_from_confusion, segmentation_metrics
from hubft.tasks.classification import IMAGE_CLASSIFICATION
from hubft.tasks.segmentation import SEMANTIC_SEGMENTATION

__all__ = [
    "DEFAULT_TASK",
    "IMAGE_CLASSIFICATION",
    "SEMANTIC_SEGMENTATION",
    "confusion_matrices",
    "metrics_from_confusion",
    "segmentation_metrics",
    "CardMetric",
    "Task",
    "classification_metrics",
    "get_task",
    "list_tasks",
    "multilabel_metrics",
    "register_task",
]
