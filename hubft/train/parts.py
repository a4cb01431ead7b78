"""The parts of a run: one frozen record of everything :mod:`hubft.train.setup` builds from the config.

The loop, the evaluation, the checkpoints and the output writer read the pieces they need from it; none of them
writes anything back. A part that changes during the run changes itself (the model's weights, the optimizer's
state, the schedule's counters); which part is which never changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

    from hubft.config import FinetuneConfig
    from hubft.data import DataBundle
    from hubft.optim import Schedule
    from hubft.tasks import Task
    from hubft.train.hub_checkpoints import CheckpointPusher
    from hubft.train.mixing import BatchMixing
    from hubft.train.outputs import OutputWriter
    from hubft.train.sampler import EpochSampler
    from hubft.train.stream import StreamingTrainData

__all__ = ["RunParts"]


@dataclass(frozen=True)
class RunParts:
    """Everything a set-up run is made of, in the order :func:`~hubft.train.setup.build_parts` builds it.

    Attributes:
        config: The run's own checked copy of the config (never the caller's object).
        accelerator: Accelerate's view of devices, processes, precision and accumulation.
        task: The task, as it applies to this data (:meth:`~hubft.tasks.Task.for_labels`).
        data: The train and eval splits with their label names.
        model: The model, prepared by Accelerate (wrapped for several processes).
        channels_last: Whether batches are converted to channels-last before the forward pass.
        train_loader: Prepared; yields one process's ``(images, targets)`` batches, left on the host (the loop
            moves them itself, a batch ahead).
        eval_loader: Prepared; yields device batches.
        train_sampler: The epoch sampler of the training split (its order is a function of seed and epoch).
        train_normalize: Turns a uint8 training batch into the model's input, on the device.
        eval_normalize: The same for evaluation batches.
        loss_fn: The loss module.
        loss_label: What the card and ``metrics.json`` call the loss (a spec, or the name of a user object).
        optimizer: Prepared by Accelerate.
        group_names: The parameter groups' names, in the optimizer's order.
        schedule: Stepped by the loop once per optimizer update (never prepared: that would step it per process).
        updates_per_epoch: Optimizer updates per epoch on each process.
        total_updates: Optimizer updates of the whole run (``train.max_updates`` applied).
        ema: timm's ``ModelEmaV3`` of the weights, when ``train.ema`` is set.
        mixing: Mixup / CutMix of training batches, when the data config turns it on.
        output: Writes the run directory.
        checkpoint_pusher: Uploads checkpoints to the Hub in the background (main process, ``hub.push_checkpoints``).
        reuses_host_memory: Whether ``train.reuse_host_memory`` is in force.
        train_stream: This process's part of the streamed train split (``data.streaming``; also ``train_sampler``),
            whose position checkpoints record; None otherwise.
    """

    config: FinetuneConfig
    accelerator: Accelerator
    task: Task
    data: DataBundle
    model: torch.nn.Module
    channels_last: bool
    train_loader: Any
    eval_loader: Any
    train_sampler: EpochSampler | StreamingTrainData
    train_normalize: Callable[[torch.Tensor], torch.Tensor]
    eval_normalize: Callable[[torch.Tensor], torch.Tensor]
    loss_fn: torch.nn.Module
    loss_label: Any
    optimizer: torch.optim.Optimizer
    group_names: tuple[str, ...]
    schedule: Schedule
    updates_per_epoch: int
    total_updates: int
    ema: Any
    mixing: BatchMixing | None
    output: OutputWriter
    checkpoint_pusher: CheckpointPusher | None
    reuses_host_memory: bool
    train_stream: StreamingTrainData | None = None

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        """The model without Accelerate's wrappers (what is saved and pushed)."""
        return self.accelerator.unwrap_model(self.model)
