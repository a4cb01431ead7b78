"""Checks of a run that the config's own rules cannot make: against the file system, the data and the task."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.nn as nn

from hubft.config import FinetuneConfig
from hubft.errors import ConfigError
from hubft.files import make_dir
from hubft.tasks import Task, get_task
from hubft.train.checkpoint import interrupted_run

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["check_run_config", "check_data_source", "check_loss_fits_task", "check_no_batch_of_one",
           "check_shared_output_dir"]


def check_run_config(config: FinetuneConfig, *, has_dataset: bool = False) -> None:
    """Checks of a run's config against the world, before any data, model or file is touched (the values' own
    rules were checked when the config was built, see :func:`~hubft.config.check_config`).

    Args:
        config: The run's config.
        has_dataset: A dataset object is given in Python, so neither ``data.name`` nor ``data.path`` is needed.

    The output directory is created here, once every other check passed (see :func:`~hubft.files.make_dir`).

    Raises:
        ConfigError: ``model.task`` names no task; the output directory cannot be created or written, or holds an
            interrupted run; the data source is missing or given twice; ``model.adapter_options`` holds an unknown
            or refused option; or a Hub repo id or checkpoint source is malformed.
    """
    c = config
    get_task(c.model.task)  # an unknown task is named now, not after the data is loaded
    out = Path(c.train.output_dir)
    if out.exists() and not out.is_dir():
        make_dir(out, key="train.output_dir")  # raises, naming the file
    unfinished = None if c.train.resume else interrupted_run(out)
    if unfinished is not None:
        raise ConfigError(
            f"train.output_dir {str(out)!r} holds an interrupted run (latest checkpoint {unfinished.name}); a new "
            "run there would mix its checkpoints with that run's",
            fix="continue it with --train.resume latest, or start over in another train.output_dir (or delete "
                "its checkpoints/ folder)")
    check_data_source(c, has_dataset=has_dataset)
    if c.model.adapter is not None:
        from hubft.models import lora_config

        lora_config(c.model.adapter, c.model.adapter_options)  # unknown or refused options, before any loading
    if c.hub.push or c.hub.push_checkpoints:
        from hubft.hub.repo_id import check_repo_id

        check_repo_id(c.hub.repo_id, key="hub.repo_id")
    if c.train.resume and c.train.resume.startswith("hub:"):
        from hubft.train.hub_checkpoints import parse_checkpoint_spec

        parse_checkpoint_spec(c.train.resume)
    # Last: the one check that writes (a directory), once nothing else refuses the run.
    make_dir(out, key="train.output_dir")


def check_data_source(config: FinetuneConfig, *, has_dataset: bool = False) -> None:
    """Exactly one source of data: ``data.name``, ``data.path``, or a dataset passed in Python (not streamed).

    Raises:
        ConfigError: None or several are given, or a dataset passed in Python with ``data.streaming``.
    """
    given = (config.data.name is not None) + (config.data.path is not None)
    if has_dataset and given:
        raise ConfigError("a dataset was passed in Python, so data.name and data.path must be null",
                          fix="drop data.name / data.path, or do not pass a dataset")
    if has_dataset and config.data.streaming:
        raise ConfigError("data.streaming streams data.name from the Hub, but a dataset was passed in Python",
                          fix="drop data.streaming, or set data.name instead of passing a dataset")
    if not has_dataset and given != 1:
        raise ConfigError("give exactly one of data.name (a Hub dataset id) and data.path (a local folder or file)",
                          fix="set data.name or data.path in the config, not both")


# How a loss's target kind reads in an error (see hubft.losses.LossInfo.target).
_TARGET_WORDS = {
    "class": "class labels",
    "binary": "0/1 labels of the output's shape",
    "dense": "a target of its own shape (regression)",
}


def check_loss_fits_task(spec: Any, task: Task) -> None:
    """Refuse, before anything is written, a registered loss built for another kind of target than the task's.

    Losses given as functions, modules or ``module:attr`` paths are the user's business and pass.

    Raises:
        ConfigError: Naming the loss, what it compares the output with, and the losses that fit.
    """
    from hubft.losses import get_loss_info, list_losses

    names = [spec] if isinstance(spec, str) else [k for k in spec if isinstance(k, str)] if isinstance(spec, dict) \
        else []
    for name in (n for n in names if ":" not in n):
        try:
            info = get_loss_info(name)  # any spelling the registry resolves ("MSE", "Focal")
        except ConfigError:
            continue  # unknown: create_loss says so, with close matches
        if info.target not in task.loss_targets:
            usable = ", ".join(n for n in list_losses() if get_loss_info(n).target in task.loss_targets)
            raise ConfigError(f"loss {info.name!r} compares the output with {_TARGET_WORDS[info.target]}, but the "
                              f"target here is {task.target}", fix=f"use a loss for these targets: {usable}")


def check_no_batch_of_one(model: nn.Module, examples: int, batch_size: int, processes: int) -> None:
    """A last batch of one image makes BatchNorm fail mid-epoch: refuse it now, suggesting a batch size that works.

    Several processes never see one (Accelerate completes every process's last batch); one process does when
    ``examples % batch_size == 1``.
    """
    if processes > 1 or examples % batch_size != 1 or batch_size == 1 or \
            not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    near = min((b for b in range(2, 2 * batch_size + 2) if examples % b != 1), key=lambda b: abs(b - batch_size))
    raise ConfigError(f"train.batch_size = {batch_size} leaves a last batch of 1 image ({examples} training "
                      "examples), which the model's BatchNorm layers cannot train on",
                      fix=f"set train.batch_size to e.g. {near}")


def check_shared_output_dir(accelerator: Accelerator, output_dir: str) -> None:
    """With several processes (one machine or several): every process must see ``output_dir`` as one directory.

    hubft requires one shared run directory: a checkpoint is published by the main process only after every
    process wrote its part into it (the manifest lists every process's files), and the finished model, logs and
    push come from there. Separate disks per machine would leave each machine with a part. The main process writes a
    marker of a fresh name; every process looks for it. A collective: every process calls it.

    Raises:
        ConfigError: On every process: some process cannot see the marker (naming which), or the main process cannot
            write the directory.
    """
    import uuid

    import torch
    from accelerate.utils import broadcast_object_list

    acc = accelerator
    if acc.num_processes == 1:
        return
    name = broadcast_object_list([f".hubft-shared-{uuid.uuid4().hex[:12]}" if acc.is_main_process else None])[0]
    marker, error = Path(output_dir) / name, 0
    if acc.is_main_process:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("every process of the run looks for this file\n")
        except OSError:
            error = 1
    acc.wait_for_everyone()
    seen = acc.gather(torch.tensor([int(marker.is_file()) - 2 * error], device=acc.device)).tolist()
    if acc.is_main_process:
        marker.unlink(missing_ok=True)
    if seen[0] < 0:
        raise ConfigError(f"train.output_dir {output_dir!r} cannot be written by the main process",
                          fix="make it writable, or choose another train.output_dir")
    blind = [rank for rank, s in enumerate(seen) if s != 1]
    if blind:
        raise ConfigError(
            f"train.output_dir {output_dir!r} is not one directory shared by every process: process(es) "
            f"{', '.join(map(str, blind))} (on another machine) cannot see what process 0 writes there, and hubft "
            "writes every process's checkpoint part and the finished model into one run directory",
            fix="put train.output_dir on storage that every machine mounts at the same path (NFS, a cluster file "
                "system)")
