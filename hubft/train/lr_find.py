"""``hubft lr-find`` / :func:`lr_find`: the LR range test of a run, on its own model, data, loss and groups.

The run's parts are built as for training (:mod:`hubft.train.setup`), then :func:`hubft.optim.find_lr` sweeps one
multiplier over every parameter group, so the head / body ratio and layer decay keep the run's values. The run's
output directory is not touched: the curve goes to ``output_dir`` (default ``<train.output_dir>/lr-find``). With
several processes every process trains its shard at each step, the loss is averaged over the processes, and every
process computes the same curve and suggestions.
"""

from __future__ import annotations

import dataclasses
import difflib
import gc
import json
import os
from itertools import count
from pathlib import Path
from typing import Any

import yaml

from hubft.config import FinetuneConfig, config_to_dict
from hubft.errors import ConfigError
from hubft.files import atomic_write_text, make_dir
from hubft.optim import LRFindResult, check_sweep, find_lr
from hubft.tasks import get_task
from hubft.train.finetune import _resolve_config
from hubft.train.loop import model_inputs, seed_device_rng
from hubft.train.outputs import OutputWriter
from hubft.train.parts import RunParts
from hubft.train.sampler import mix_seed
from hubft.train.setup import build_parts, create_accelerator, create_run_model, load_run_data
from hubft.train.validation import check_data_source
from hubft.train.workers import plain_worker_errors

__all__ = ["lr_find", "suggested_config"]


def lr_find(
    config: FinetuneConfig | dict | str | os.PathLike,
    *,
    dataset: Any = None,
    loss: Any = None,
    start: float = 1e-7,
    end: float = 10.0,
    num_steps: int = 100,
    output_dir: str | os.PathLike | None = None,
) -> LRFindResult:
    """Run the LR range test of a fine-tuning config and write its curve.

    ``start`` / ``end`` and the suggestions are values of ``optim.lr`` (the body's LR before layer decay); every
    group's LR keeps its ratio to it. One optimizer update per step, on the training split in the run's order and
    with its augmentation (gradient accumulation is not used). Afterwards the model's weights, buffers and
    gradients, the optimizer's state and the RNG states are those of before the sweep.

    Writes (main process): ``lr_find.png`` (loss against each group's LR), ``lr_find.csv`` (every step) and
    ``lr_find.json`` (the suggestions) into ``output_dir``.

    Raises:
        ConfigError: A sweep setting out of range, or no data source, before anything is loaded.
        HubftError: A config, data or model error (as for :func:`hubft.finetune`).
    """
    check_sweep(start, end, num_steps)
    config = _resolve_config(config)
    check_data_source(config, has_dataset=dataset is not None)
    get_task(config.model.task)
    # The run's own outputs and checkpoint uploads are not this command's business.
    config = dataclasses.replace(config, hub=dataclasses.replace(config.hub, push=False, push_checkpoints=False))
    out = make_dir(output_dir if output_dir is not None else Path(config.train.output_dir) / "lr-find",
                   key="the lr-find output directory")
    accelerator = create_accelerator(config)
    try:
        result = _sweep(config, accelerator, dataset, loss, out, start=start, end=end, num_steps=num_steps)
    finally:
        # The run's parts (a DDP wrapper among them) are gone by now: leaving the process group while they were
        # alive could abort the process at exit.
        gc.collect()
        accelerator.wait_for_everyone()
        accelerator.end_training()  # leaves the process group of a multi-process run
    return result


def _sweep(config: FinetuneConfig, accelerator: Any, dataset: Any, loss: Any, out: Path, *, start: float,
           end: float, num_steps: int) -> LRFindResult:
    data, task = load_run_data(config, dataset)
    model, channels_last = create_run_model(config, data, task)
    parts = build_parts(config, accelerator, data, task, model, channels_last,
                        OutputWriter(out, is_main=accelerator.is_main_process), loss=loss)
    result = find_lr(parts.optimizer, _train_step(parts), reference_lr=config.optim.lr, start=start, end=end,
                     num_steps=num_steps, model=parts.model, schedule=parts.schedule, group_names=parts.group_names)
    if accelerator.is_main_process:
        _write(result, out)
    return result


def _train_step(parts: RunParts):
    """One update on the next training batch (cycling through epochs); returns the loss averaged over processes."""
    acc = parts.accelerator
    parts.model.train()

    def batches():
        for epoch in count():
            parts.train_sampler.set_epoch(epoch)
            if hasattr(parts.train_loader, "set_epoch"):
                parts.train_loader.set_epoch(epoch)
            for batch, (x, y) in enumerate(plain_worker_errors(parts.train_loader)):
                yield epoch, batch, x, y

    stream = batches()

    def step() -> float:
        epoch, batch, x, y = next(stream)
        seed_device_rng(acc.device, mix_seed(parts.config.train.seed, 3, epoch, batch, acc.process_index))
        x, y = model_inputs(parts, x.to(acc.device), y.to(acc.device), epoch, batch)
        with acc.autocast():
            loss = parts.loss_fn(parts.model(x), y)
        # One update per batch: undo the division by train.grad_accum_steps that Accelerate's backward applies.
        acc.backward(loss * acc.gradient_accumulation_steps)
        parts.optimizer.step()
        parts.optimizer.zero_grad(set_to_none=True)
        return float(acc.reduce(loss.detach().float(), "mean"))

    return step


def _write(result: LRFindResult, out: Path) -> None:
    result.write_csv(out / "lr_find.csv")
    result.plot(out / "lr_find.png")
    summary = {"steepest": result.steepest, "valley": result.valley, "stopped_early": result.stopped_early,
               "steps": len(result.lrs), "group_lrs_at_valley": result.group_lrs(result.valley)
               if result.valley is not None else None}
    atomic_write_text(out / "lr_find.json", json.dumps(summary, indent=1))


def suggested_config(config: FinetuneConfig, result: LRFindResult) -> tuple[FinetuneConfig, str]:
    """``config`` with ``optim.lr`` set to the valley suggestion (and ``optim.head_lr`` scaled with it, keeping
    the ratio), and the YAML diff between the two.

    Raises:
        ConfigError: The sweep made no suggestion (too few steps before the loss diverged).
    """
    if result.valley is None:
        raise ConfigError("the LR range test made no suggestion: the loss diverged within its first steps",
                          fix="start the sweep lower (--start) or with more steps (--num-steps)")
    scale = result.valley / config.optim.lr
    head_lr = config.optim.head_lr * scale if config.optim.head_lr is not None else None
    new = dataclasses.replace(config, optim=dataclasses.replace(config.optim, lr=result.valley, head_lr=head_lr))
    old_text, new_text = (yaml.safe_dump(config_to_dict(c), sort_keys=False) for c in (config, new))
    diff = "".join(difflib.unified_diff(old_text.splitlines(True), new_text.splitlines(True), "config.yaml",
                                        "config.lr-find.yaml"))
    return new, diff
