"""hubft: fine-tune pretrained image backbones from the Hugging Face Hub, and share them back.

The public API, by stage:

- Backbones: :func:`create_model` (timm name, timm tag, ``hf-hub:owner/name``, ``local-dir:PATH``) strips the
  classifier and re-initialises a head for your labels; :func:`freeze` / :func:`unfreeze`;
  :func:`save_pretrained` / :func:`from_pretrained` (safetensors + timm ``config.json``); :func:`add_adapter` /
  :func:`merge_adapter` (LoRA / DoRA through peft; an adapter saves and loads as a peft adapter).
- Losses: :func:`create_loss`, :func:`list_losses`, :func:`register_loss`.
- Learning rates: :func:`param_groups`, :func:`create_optimizer`, :func:`create_scheduler` (its ``step()`` works
  like a torch scheduler's), :func:`lr_curve`, :func:`find_lr` / :func:`lr_find` (the LR range test).
- Data: :func:`load_data`, :func:`create_transforms`.
- Tasks: :func:`get_task`, :func:`list_tasks`, :func:`register_task` (``model.task``: what the backbone is
  fine-tuned for, and everything that depends on it).
- Training: :class:`FinetuneConfig`, :func:`finetune`, :class:`Finetuner` (the staged run the recipe uses), and
  :class:`RunParts` (the frozen record of a set-up run's parts).
- The Hub: :func:`push_to_hub`, :func:`pull_from_hub`, ``hubft.testing.LocalHub``.
"""

from typing import TYPE_CHECKING

from hubft._version import __version__
from hubft.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    HubError,
    HubftError,
    ModelError,
    TrainingError,
    WeightsError,
)
from hubft.config import FinetuneConfig, config_from_dict, config_to_dict, load_config

# Everything below imports torch and timm (seconds): loaded on first use, so `hubft --help`, `hubft hub serve` and
# `import hubft.testing` start fast.
_LAZY = {
    "hubft.models": ("create_model", "freeze", "unfreeze", "save_pretrained", "from_pretrained", "add_adapter",
                     "merge_adapter"),
    "hubft.losses": ("create_loss", "list_losses", "register_loss"),
    "hubft.optim": ("param_groups", "format_param_groups", "create_optimizer", "list_optimizers",
                    "register_optimizer", "create_scheduler", "list_schedulers", "register_scheduler", "lr_curve",
                    "find_lr"),
    "hubft.data": ("load_data", "create_transforms"),
    "hubft.tasks": ("Task", "get_task", "list_tasks", "register_task"),
    "hubft.train.finetune": ("finetune", "Finetuner", "FinetuneResult", "PREEMPTED_EXIT_CODE"),
    "hubft.train.parts": ("RunParts",),
    "hubft.train.lr_preview": ("lr_curve_for_config",),
    "hubft.train.lr_find": ("lr_find",),
    "hubft.hub.push": ("push_to_hub", "pull_from_hub"),
    "hubft.train.hub_checkpoints": ("CheckpointPusher", "download_checkpoint"),
    "hubft.cli": ("parse_finetune_args",),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

if TYPE_CHECKING:  # the same names as _LAZY, for type checkers and IDEs (a test keeps the two equal)
    from hubft.cli import parse_finetune_args
    from hubft.data import create_transforms, load_data
    from hubft.hub.push import pull_from_hub, push_to_hub
    from hubft.losses import create_loss, list_losses, register_loss
    from hubft.models import (add_adapter, create_model, freeze, from_pretrained, merge_adapter, save_pretrained,
                              unfreeze)
    from hubft.optim import (create_optimizer, create_scheduler, find_lr, format_param_groups, list_optimizers,
                             list_schedulers, lr_curve, param_groups, register_optimizer, register_scheduler)
    from hubft.tasks import Task, get_task, list_tasks, register_task
    from hubft.train.finetune import PREEMPTED_EXIT_CODE, FinetuneResult, Finetuner, finetune
    from hubft.train.hub_checkpoints import CheckpointPusher, download_checkpoint
    from hubft.train.lr_find import lr_find
    from hubft.train.lr_preview import lr_curve_for_config
    from hubft.train.parts import RunParts


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hubft' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


__all__ = [
    "__version__",
    "HubftError", "ConfigError", "ModelError", "WeightsError", "DataError", "HubError", "CheckpointError",
    "TrainingError",
    "FinetuneConfig", "config_from_dict", "config_to_dict", "load_config", "parse_finetune_args",
    "create_model", "freeze", "unfreeze", "save_pretrained", "from_pretrained", "add_adapter", "merge_adapter",
    "create_loss", "list_losses", "register_loss",
    "param_groups", "format_param_groups", "create_optimizer", "list_optimizers", "register_optimizer",
    "create_scheduler", "list_schedulers", "register_scheduler", "lr_curve", "lr_curve_for_config", "find_lr", "lr_find",
    "load_data", "create_transforms",
    "Task", "get_task", "list_tasks", "register_task",
    "finetune", "Finetuner", "FinetuneResult", "PREEMPTED_EXIT_CODE", "RunParts",
    "push_to_hub", "pull_from_hub", "CheckpointPusher", "download_checkpoint",
]
