"""Evaluation of a run's model on its eval split, with the task's metrics."""

from __future__ import annotations

import torch

from hubft.train.parts import RunParts
from hubft.train.workers import plain_worker_errors

__all__ = ["evaluate", "metric_summary"]


@torch.no_grad()
def evaluate(parts: RunParts, model: torch.nn.Module) -> dict:
    """The task's metrics of ``model`` on the whole eval split, gathered from every process.

    ``model`` is the run's model or its EMA copy; its train / eval mode is left as it was. The eval loss is added
    as ``loss`` (None when the loss cannot run on the gathered CPU tensors).
    """
    acc = parts.accelerator
    was_training = model.training
    model.eval()
    if parts.task.eval_statistics is not None:
        try:
            return _evaluate_statistics(parts, model)
        finally:
            model.train(was_training)
    outputs, targets = [], []
    for x, y in plain_worker_errors(parts.eval_loader):
        out = _forward(parts, model, x)
        if parts.task.eval_outputs is not None:
            out, y = parts.task.eval_outputs(out, y)
        out, y = acc.gather_for_metrics((out.float().contiguous(), y.contiguous()))
        outputs.append(out.cpu())
        targets.append(y.cpu())
    model.train(was_training)
    output, target = torch.cat(outputs), torch.cat(targets)
    metrics = parts.task.compute_metrics(output, target, list(parts.data.label_names))
    try:
        metrics["loss"] = float(parts.loss_fn(output, target))
    except Exception:  # a user loss may not run on CPU tensors outside its device; the metric is optional
        metrics["loss"] = None
    return metrics


def _forward(parts: RunParts, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's output for one eval batch: normalised on the device when it came as uint8, in the run's memory
    format and precision."""
    if x.dtype == torch.uint8:
        x = parts.eval_normalize(x)
    if parts.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with parts.accelerator.autocast():
        return model(x)


def _evaluate_statistics(parts: RunParts, model: torch.nn.Module) -> dict:
    """Evaluation for a task that reduces each batch to per-example statistics (see ``Task.eval_statistics``): the
    statistics are gathered, not the outputs, and the loss is the mean of the batches' losses."""
    acc, task = parts.accelerator, parts.task
    statistics, losses = [], []
    for x, y in plain_worker_errors(parts.eval_loader):
        out = _forward(parts, model, x).float()
        if task.eval_outputs is not None:
            out, y = task.eval_outputs(out, y)
        statistics.append(acc.gather_for_metrics(task.eval_statistics(out, y, len(parts.data.label_names))).cpu())
        losses.append(parts.loss_fn(out, y).detach().reshape(1))
    metrics = task.compute_metrics(torch.cat(statistics), None, list(parts.data.label_names))
    loss = torch.cat(losses).mean() if losses else torch.zeros((), device=acc.device)
    metrics["loss"] = float(acc.reduce(loss, "mean")) if acc.num_processes > 1 else float(loss)
    return metrics


def metric_summary(metrics: dict) -> dict:
    """The scalar metrics (what the log, the history and the progress line show)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) or v is None}
