"""Learning rates for fine-tuning: parameter groups, optimizers and schedules by name, and their LR curves.

- :func:`param_groups` splits a model into named groups (head / body or per layer, decay / no decay) with each
  group's LR multiplier baked into its own ``lr`` (a peft adapter model is split by the layers it adapts,
  :func:`plain_parameter_name`); :func:`format_param_groups` prints them as a table.
- :func:`create_optimizer` builds any torch optimizer (``"AdamW"``) or timm registry optimizer (``"adamw"``,
  ``"lamb"``) by name over those groups.
- :func:`create_scheduler` builds any torch LR scheduler by class name or alias, or a custom function, behind an
  optional warmup, as a :class:`Schedule` the trainer steps with ``step_update`` / ``step_epoch``.
- :func:`lr_curve`, :func:`plot_lr_curves` and :func:`plot_all_schedules` show the LRs before training.
- :func:`find_lr` runs an LR range test over the groups, keeping their ratios, and restores what it changed.
"""

from hubft.optim._curves import lr_curve, plot_all_schedules, plot_lr_curves
from hubft.optim._lr_find import LRFindResult, check_sweep, find_lr, steepest_lr, valley_lr
from hubft.optim._optimizers import (
    OptimizerInfo,
    create_optimizer,
    fused_options,
    get_optimizer_info,
    list_optimizers,
    register_optimizer,
)
from hubft.optim._param_groups import format_param_groups, param_groups, plain_parameter_name
from hubft.optim._schedule import Schedule, create_scheduler
from hubft.optim._schedulers import (
    TORCH_SCHEDULERS,
    ScheduleContext,
    SchedulerInfo,
    get_scheduler_info,
    list_schedulers,
    register_scheduler,
)

__all__ = [
    "LRFindResult",
    "OptimizerInfo",
    "Schedule",
    "ScheduleContext",
    "check_sweep",
    "SchedulerInfo",
    "TORCH_SCHEDULERS",
    "create_optimizer",
    "create_scheduler",
    "find_lr",
    "format_param_groups",
    "plain_parameter_name",
    "fused_options",
    "get_optimizer_info",
    "get_scheduler_info",
    "list_optimizers",
    "list_schedulers",
    "lr_curve",
    "param_groups",
    "plot_all_schedules",
    "plot_lr_curves",
    "register_optimizer",
    "register_scheduler",
    "steepest_lr",
    "valley_lr",
]
