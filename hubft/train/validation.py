"""Checks of a fine-tuning config that types cannot express, run before any data, model or file is touched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from hubft.config import FinetuneConfig
from hubft.errors import ConfigError
from hubft.train.checkpoint import interrupted_run

__all__ = ["validate_config", "check_loss_takes_labels", "check_no_batch_of_one"]


def validate_config(config: FinetuneConfig) -> None:
    """Value checks that the type system cannot express, done before anything heavy starts.

    Raises:
        ConfigError: Naming the field, the value and the accepted range.
    """
    c = config

    def need(ok: bool, key: str, value: Any, rule: str) -> None:
        if not ok:
            raise ConfigError(f"{key} = {value!r} is invalid: it must be {rule}", fix=f"set {key} to {rule}")

    need(c.train.epochs >= 1, "train.epochs", c.train.epochs, ">= 1")
    need(c.train.batch_size >= 1, "train.batch_size", c.train.batch_size, ">= 1")
    need(c.train.eval_batch_size is None or c.train.eval_batch_size >= 1, "train.eval_batch_size",
         c.train.eval_batch_size, "null or >= 1")
    need(c.train.max_updates is None or c.train.max_updates >= 1, "train.max_updates", c.train.max_updates,
         "null or >= 1")
    need(c.train.grad_accum_steps >= 1, "train.grad_accum_steps", c.train.grad_accum_steps, ">= 1")
    need(c.train.keep_checkpoints >= 1, "train.keep_checkpoints", c.train.keep_checkpoints, ">= 1")
    need(c.train.checkpoint_every is None or c.train.checkpoint_every >= 1, "train.checkpoint_every",
         c.train.checkpoint_every, "null or >= 1")
    need(c.train.log_every >= 1, "train.log_every", c.train.log_every, ">= 1")
    need(0 < c.train.ema_decay < 1, "train.ema_decay", c.train.ema_decay, "in (0, 1)")
    need(c.train.channels_last in ("auto", True, False), "train.channels_last", c.train.channels_last,
         "auto, true or false")
    need(c.train.reuse_host_memory in ("auto", True, False), "train.reuse_host_memory", c.train.reuse_host_memory,
         "auto, true or false")
    need(c.optim.lr > 0, "optim.lr", c.optim.lr, "> 0")
    need(c.optim.head_lr is None or c.optim.head_lr > 0, "optim.head_lr", c.optim.head_lr, "null or > 0")
    need(c.optim.layer_decay is None or 0 < c.optim.layer_decay <= 1, "optim.layer_decay", c.optim.layer_decay,
         "null or in (0, 1]")
    need(c.optim.weight_decay >= 0, "optim.weight_decay", c.optim.weight_decay, ">= 0")
    # A negative clip norm would not fail: torch would flip every gradient.
    need(c.optim.clip_grad_norm is None or c.optim.clip_grad_norm > 0, "optim.clip_grad_norm",
         c.optim.clip_grad_norm, "null or > 0")
    need(c.schedule.warmup_steps >= 0, "schedule.warmup_steps", c.schedule.warmup_steps, ">= 0")
    need(0 < c.data.eval_fraction < 1, "data.eval_fraction", c.data.eval_fraction, "in (0, 1)")
    need(c.data.num_workers == "auto" or (type(c.data.num_workers) is int and c.data.num_workers >= 0),
         "data.num_workers", c.data.num_workers, "auto or a number >= 0")
    need(c.data.cache in ("auto", True, False), "data.cache", c.data.cache, "auto, true or false")
    need(c.data.mixup_off_epoch is None or c.data.mixup_off_epoch >= 0, "data.mixup_off_epoch",
         c.data.mixup_off_epoch, "null or >= 0")
    need(c.data.image_size is None or c.data.image_size >= 8, "data.image_size", c.data.image_size, "null or >= 8")
    for key in ("re_prob", "hflip", "mixup_prob", "mixup_switch_prob"):
        v = getattr(c.data, key)
        need(0 <= v <= 1, f"data.{key}", v, "in [0, 1]")
    need(c.data.mixup_alpha >= 0, "data.mixup_alpha", c.data.mixup_alpha, ">= 0")
    need(c.data.cutmix_alpha >= 0, "data.cutmix_alpha", c.data.cutmix_alpha, ">= 0")
    for key in ("drop_rate", "drop_path_rate"):
        v = getattr(c.model, key)
        need(v is None or 0 <= v < 1, f"model.{key}", v, "null or in [0, 1)")
    freeze = c.model.freeze
    need(freeze in (True, False, "body", "none") or (isinstance(freeze, int) and freeze >= 0), "model.freeze",
         freeze, "false, true, 'body' or a number of stages >= 0")
    need(c.model.unfreeze_epoch is None or (freeze not in (False, "none") and c.model.unfreeze_epoch >= 0),
         "model.unfreeze_epoch", c.model.unfreeze_epoch, "null, or an epoch >= 0 together with model.freeze")
    out = Path(c.train.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"train.output_dir {str(out)!r} is a file, not a directory",
                          fix="set train.output_dir to a new or existing directory")
    unfinished = None if c.train.resume else interrupted_run(out)
    if unfinished is not None:
        raise ConfigError(
            f"train.output_dir {str(out)!r} holds an interrupted run (latest checkpoint {unfinished.name}); a new "
            "run there would mix its checkpoints with that run's",
            fix="continue it with --train.resume latest, or start over in another train.output_dir (or delete "
                "its checkpoints/ folder)")
    if (c.data.name is None) == (c.data.path is None):
        raise ConfigError("give exactly one of data.name (a Hub dataset id) and data.path (a local folder or file)",
                          fix="set data.name or data.path in the config, not both")
    if c.data.auto_augment and c.data.color_jitter and "3a" not in c.data.auto_augment:
        # timm turns colour jitter off under a policy; the card would record jitter that was never applied.
        raise ConfigError(f"data.color_jitter = {c.data.color_jitter!r} would be ignored: timm turns colour jitter "
                          f"off when data.auto_augment ({c.data.auto_augment!r}) is set",
                          fix="remove data.color_jitter, or data.auto_augment (a '3a' policy keeps jitter)")
    if c.hub.push or c.hub.push_checkpoints:
        from hubft.hub.repo_id import check_repo_id

        check_repo_id(c.hub.repo_id, key="hub.repo_id")
    if c.train.resume and c.train.resume.startswith("hub:"):
        from hubft.train.hub_checkpoints import parse_checkpoint_spec

        parse_checkpoint_spec(c.train.resume)


def check_loss_takes_labels(spec: Any) -> None:
    """Refuse, before anything is written, a registered loss that needs dense (regression) targets."""
    from hubft.losses import get_loss_info, list_losses

    registered = set(list_losses())
    names = [spec] if isinstance(spec, str) else [k for k in spec if isinstance(k, str)] if isinstance(spec, dict) \
        else []
    for name in (n for n in names if n in registered and get_loss_info(n).target == "dense"):
        usable = ", ".join(n for n in sorted(registered) if get_loss_info(n).target != "dense")
        raise ConfigError(f"loss {name!r} compares the output with a target of its own shape (regression), but "
                          "the data has class labels", fix=f"use a classification loss: {usable}")


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
