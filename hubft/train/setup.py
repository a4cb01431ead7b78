"""Setting a run up: short functions, each building one part from the config and the parts before it.

:func:`build_parts` calls them in order and returns the frozen :class:`~hubft.train.parts.RunParts`; the recipe
and :class:`~hubft.train.finetune.Finetuner` go through it. Each function is usable alone, e.g. to build the same
model or loaders in research code.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from hubft.config import FinetuneConfig
from hubft.errors import ConfigError, one_line
from hubft.tasks import Task, get_task
from hubft.train.parts import RunParts
from hubft.train.sampler import EpochSampler, SeededDataset
from hubft.train.stream import StreamingTrainData, create_train_stream

if TYPE_CHECKING:
    from accelerate import Accelerator

    from hubft.data import DataBundle
    from hubft.optim import Schedule
    from hubft.train.outputs import OutputWriter

__all__ = [
    "Loaders",
    "build_parts",
    "create_accelerator",
    "create_loaders",
    "create_run_adapter",
    "create_run_loss",
    "create_run_model",
    "create_run_optimizer",
    "create_run_param_groups",
    "create_run_schedule",
    "create_train_stream",
    "default_num_workers",
    "launched_processes",
    "load_run_data",
]


def create_accelerator(config: FinetuneConfig) -> Accelerator:
    """Accelerate's ``Accelerator`` for the run: devices, processes, precision, gradient accumulation, trackers.

    When a launcher started several processes (torchrun, ``accelerate launch``: ``WORLD_SIZE`` > 1) on a machine
    without an accelerator, the run trains on the CPU with gloo by itself, as ``train.cpu: true`` would: left alone,
    Accelerate would make every process a run of its own, all writing the same output directory.

    Raises:
        ConfigError: Accelerate refuses the precision or tracker (e.g. fp16 on CPU, a tracker not installed), or
            sees another number of processes than the launcher started (nothing is written then).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    c = config
    _warn_single_process_cpu_launch()
    launched = launched_processes()
    cpu = c.train.cpu or (launched > 1 and not _has_accelerator())
    # DDP registers only parameters that require grad when it is built; a body that a freeze schedule unfreezes
    # later must be registered too, and is "unused" until then (see prepare_for_training).
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if c.model.unfreezes else []
    try:
        with _accelerate_without_fsdp(c.train.fsdp):
            accelerator = Accelerator(cpu=cpu, mixed_precision=c.train.mixed_precision,
                                      gradient_accumulation_steps=c.train.grad_accum_steps,
                                      log_with=c.train.log_with, project_dir=c.train.output_dir,
                                      kwargs_handlers=handlers)
    except (ValueError, ImportError) as e:
        raise ConfigError(
            f"Accelerate refused train.cpu={c.train.cpu!r}, train.mixed_precision={c.train.mixed_precision!r}, "
            f"train.log_with={c.train.log_with!r}: {one_line(e)}",
            fix="use mixed_precision 'no' on CPU, and a log_with tracker that is installed (or null)") from None
    if launched > 1 and accelerator.num_processes != launched:
        raise ConfigError(f"the launcher started {launched} processes (WORLD_SIZE) but Accelerate sees "
                          f"{accelerator.num_processes} on device {accelerator.device}; every process would train "
                          "alone into the same output directory",
                          fix="set train.cpu: true to train on the CPU, or launch one process per accelerator")
    return accelerator


@contextlib.contextmanager
def _accelerate_without_fsdp(fsdp: bool):
    # hubft shards a train.fsdp model itself (hubft.train.sharding): Accelerate, told by `accelerate launch
    # --config_file recipes/fsdp.yaml` to shard too, would enter its own FSDP mode on a GPU.
    saved = os.environ.pop("ACCELERATE_USE_FSDP", None) if fsdp else None
    try:
        yield
    finally:
        if saved is not None:
            os.environ["ACCELERATE_USE_FSDP"] = saved


def _has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6; CUDA before that
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def launched_processes() -> int:
    """How many processes the launcher says this run has (``WORLD_SIZE``; 1 when it is unset or unreadable)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def load_run_data(config: FinetuneConfig, dataset: Any = None) -> tuple[DataBundle, Task]:
    """Load the dataset (``data.*``, or ``dataset`` given in Python) and the task as it applies to its labels.

    With ``data.streaming`` the train split is opened as a stream (:func:`~hubft.data.load_stream`).

    Raises:
        DataError: The data cannot be read, or does not suit the task (too few classes, multi-label data for a
            task that takes one target).
        ConfigError: An unknown ``model.task``; ``data.streaming`` for a task whose data is not streamed.
    """
    from hubft.data import load_data, load_stream

    task = get_task(config.model.task)
    d = config.data
    if task.load_data is not None:
        if d.streaming:
            raise ConfigError(f"data.streaming cannot be combined with model.task = {task.name!r}: only "
                              "classification data is streamed", fix="drop data.streaming")
        data = task.load_data(d, dataset, config.train.seed)
        task.check_labels(data.label_names)
        return data, task
    if d.streaming:
        data = load_stream(name=d.name, revision=d.revision, image_column=d.image_column, label_column=d.label_column,
                           train_split=d.train_split, eval_split=d.eval_split, max_eval_examples=d.max_eval_examples)
    else:
        data = load_data(
            name=d.name, path=d.path, dataset=dataset, revision=d.revision, image_column=d.image_column,
            label_column=d.label_column, train_split=d.train_split, eval_split=d.eval_split,
            eval_fraction=d.eval_fraction, classes=d.classes, max_per_class=d.max_per_class, seed=config.train.seed,
        )
    task = task.for_labels(data.multi_label)
    task.check_labels(data.label_names)
    return data, task


def create_run_model(config: FinetuneConfig, data: DataBundle, task: Task) -> tuple[nn.Module, bool]:
    """The backbone with the task's fresh head for the data's labels, frozen as ``model.freeze`` says, or wrapped
    in ``model.adapter``'s adapters (:func:`create_run_adapter`).

    Returns:
        The model (channels-last when that is used) and whether channels-last is used.

    Raises:
        ModelError: The backbone cannot be built or loaded.
        ConfigError: The adapter options do not fit the backbone.
    """
    from accelerate.utils import set_seed

    from hubft.models import freeze

    m = config.model
    # A backbone built without pretrained weights draws its init from the global RNGs: seed them first.
    set_seed(config.train.seed)
    timm_kwargs = {k: v for k, v in (("drop_rate", m.drop_rate), ("drop_path_rate", m.drop_path_rate)) if v is not None}
    model = task.create_model(
        m.name, label_names=list(data.label_names), pretrained=m.pretrained, revision=m.revision,
        head_init_seed=m.head_init_seed if m.head_init_seed is not None else config.train.seed, **timm_kwargs)
    if config.data.image_size:
        # The model is trained (and will be served) at this size: its preprocessing config says so from now on.
        size = config.data.image_size
        model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, size, size)}
        model.pretrained_cfg.pop("test_input_size", None)
    # What the model is for, written into its config.json (hubft eval / predict read it back).
    model.hubft_task = {"name": task.name, "multi_label": data.multi_label}
    if m.frozen.frozen:
        freeze(model, stages=m.frozen.stages)
    if config.train.grad_checkpointing:
        from hubft.train.sharding import enable_grad_checkpointing

        enable_grad_checkpointing(model)
    channels_last = _use_channels_last(model, config.train.channels_last)
    if m.adapter is not None:
        model = create_run_adapter(config, model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, channels_last


def create_run_adapter(config: FinetuneConfig, model: nn.Module) -> nn.Module:
    """``model`` wrapped in ``model.adapter``'s low-rank adapters (peft): only they and the head train.

    Prints the trainable-parameter count and fraction once.

    Raises:
        ConfigError: The options are unknown or refused, or the targets match no module of the backbone.
    """
    from accelerate import PartialState

    from hubft.models import add_adapter, trainable_parameters

    m = config.model
    model = add_adapter(model, m.adapter, **m.adapter_options)
    trainable, total = trainable_parameters(model)
    record = model.hubft_adapter
    PartialState().print(f"hubft: {m.adapter} adapter (r={record['r']}, alpha={record['alpha']}) on "
                         f"{record['modules']} modules ({record['targets']}) + the head: {trainable:,} of "
                         f"{total:,} parameters trainable ({trainable / max(total, 1):.2%})")
    return model


@dataclass(frozen=True)
class Loaders:
    """The run's data loaders before Accelerate prepares them, and what turns their uint8 batches into inputs."""

    train: torch.utils.data.DataLoader
    eval: torch.utils.data.DataLoader
    train_sampler: EpochSampler | StreamingTrainData
    train_normalize: Any
    eval_normalize: Any
    #: The streamed train data (``data.streaming``), which Accelerate must not prepare; else None.
    train_stream: StreamingTrainData | None = None


def create_loaders(config: FinetuneConfig, data: DataBundle, model: nn.Module, device: torch.device,
                   num_processes: int = 1) -> Loaders:
    """Train and eval loaders with the backbone's own preprocessing; augmentation on the train split only.

    A streamed train split (``data.streaming``) is read by :func:`create_train_stream`, in the training process.

    Raises:
        ConfigError: A batch size that leaves a last batch of one image for a model with BatchNorm.
        DataError: An image cannot be decoded, or a label is out of range; a stream's epoch length is unknown.
    """
    from hubft.data import ImageClassificationDataset, create_transforms

    d, t = config.data, config.train
    task = get_task(config.model.task)
    if task.create_datasets is not None:
        train_ds, eval_ds, train_normalize, eval_normalize = task.create_datasets(d, data, model.pretrained_cfg)
        return _loaders(config, model, device, num_processes, SeededDataset(train_ds), SeededDataset(eval_ds),
                        train_normalize, eval_normalize, eval_collate=task.eval_collate)
    aug = dict(auto_augment=d.auto_augment, re_prob=d.re_prob, re_mode=d.re_mode, color_jitter=d.color_jitter,
               hflip=d.hflip, scale=d.scale, ratio=d.ratio)
    train_tf = create_transforms(model.pretrained_cfg, image_size=d.image_size, training=True, **aug)
    eval_tf = create_transforms(model.pretrained_cfg, image_size=d.image_size, training=False)
    # normalize=False: cached images travel as uint8 (a quarter of the bytes to collate, pin and copy to the
    # device) and the loop normalises each batch on the device with the transform's own constants.
    ds_kwargs = dict(image_column=data.image_column, label_column=data.label_column, multi_label=data.multi_label,
                     num_classes=len(data.label_names), cache=d.cache, normalize=False)
    eval_ds = SeededDataset(ImageClassificationDataset(data.eval, eval_tf, split="eval", **ds_kwargs))
    if d.streaming:
        stream = create_train_stream(config, data, train_tf, num_processes)
        return _loaders(config, model, device, num_processes, stream, eval_ds, train_tf.normalize, eval_tf.normalize)
    train_ds = SeededDataset(ImageClassificationDataset(data.train, train_tf, split="train", **ds_kwargs))
    return _loaders(config, model, device, num_processes, train_ds, eval_ds, train_tf.normalize, eval_tf.normalize)


def _loaders(config: FinetuneConfig, model: nn.Module, device: torch.device, num_processes: int, train_ds: Any,
             eval_ds: SeededDataset, train_normalize: Any, eval_normalize: Any, eval_collate: Any = None) -> Loaders:
    from hubft.train.validation import check_no_batch_of_one

    d, t = config.data, config.train
    stream = train_ds if isinstance(train_ds, StreamingTrainData) else None
    # A stream is read in the training process: its position is what a checkpoint records (config refuses workers).
    workers = 0 if stream is not None else default_num_workers(device, num_processes) if d.num_workers == "auto" \
        else d.num_workers
    # Persistent workers: a short epoch must not pay for starting them again (the sampler lives in this process,
    # so set_epoch still reaches them).
    loader_kw = dict(num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    eval_ = torch.utils.data.DataLoader(eval_ds, batch_size=t.eval_batch_size or t.batch_size,
                                        sampler=EpochSampler(len(eval_ds), seed=t.seed, shuffle=False),
                                        collate_fn=eval_collate, **loader_kw)
    if stream is not None:
        train = torch.utils.data.DataLoader(stream, batch_size=t.batch_size, **loader_kw)
        return Loaders(train, eval_, stream, train_normalize, eval_normalize, train_stream=stream)
    check_no_batch_of_one(model, len(train_ds), t.batch_size, num_processes)
    train_sampler = EpochSampler(len(train_ds), seed=t.seed, shuffle=True)
    train = torch.utils.data.DataLoader(train_ds, batch_size=t.batch_size, sampler=train_sampler, **loader_kw)
    return Loaders(train, eval_, train_sampler, train_normalize, eval_normalize)


def create_run_loss(config: FinetuneConfig, task: Task, loss: Any = None) -> tuple[nn.Module, Any, float]:
    """The loss: ``loss`` given in Python, else ``loss.name``, else the task's default.

    Returns:
        ``(loss module, its label for the card, the label smoothing moved into batch mixing)``. With mixup /
        cutmix the targets are soft already, so ``label_smoothing`` moves from the loss's options into the mixing
        step (as in timm).

    Raises:
        ConfigError: The loss cannot be built, or is a registered loss for another kind of target than the task's.
    """
    from hubft.losses import create_loss, with_default_options
    from hubft.train.validation import check_loss_fits_task

    spec = loss if loss is not None else config.loss.name if config.loss.name is not None else task.default_loss
    options = dict(config.loss.options)
    smoothing = options.pop("label_smoothing", 0.0) if config.data.mixing else 0.0
    check_loss_fits_task(spec, task)
    label = spec if isinstance(spec, (str, dict, list)) else getattr(spec, "__name__", type(spec).__name__)
    spec, options = with_default_options(spec, options, dict(task.loss_defaults))
    return create_loss(spec, **options), label, smoothing


def create_run_param_groups(config: FinetuneConfig, model: nn.Module) -> list[dict]:
    """The named parameter groups (head LR, layer decay, no-decay), printed once as a table.

    Raises:
        ConfigError: A value out of range, or ``head_lr`` / ``layer_decay`` the model cannot take.
    """
    from accelerate import PartialState

    from hubft.optim import format_param_groups, param_groups

    c = config
    groups = param_groups(model, lr=c.optim.lr, weight_decay=c.optim.weight_decay, head_lr=c.optim.head_lr,
                          layer_decay=c.optim.layer_decay, include_frozen=c.model.unfreezes)
    PartialState().print(format_param_groups(groups))
    return groups


def create_run_optimizer(config: FinetuneConfig, model: nn.Module,
                         groups: list[dict] | None = None) -> tuple[torch.optim.Optimizer, tuple[str, ...]]:
    """The optimizer over named parameter groups (``groups``, else :func:`create_run_param_groups`), with their LR
    multipliers baked in (so any schedule keeps them).

    Returns:
        The optimizer and the groups' names, in order.

    Raises:
        ConfigError: Unknown optimizer or options, or torch's fused SGD with a freeze schedule.
    """
    from hubft.optim import create_optimizer, fused_options

    c = config
    groups = create_run_param_groups(config, model) if groups is None else groups
    optimizer = create_optimizer(groups, c.optim.name, **fused_options(c.optim.name, c.optim.fused, c.optim.options))
    if c.model.unfreezes and isinstance(optimizer, torch.optim.SGD) and any(
            g.get("fused") and g.get("momentum") for g in optimizer.param_groups):
        raise ConfigError("torch's fused SGD cannot start momentum for the parameters that model.unfreeze_epoch "
                          "unfreezes later (it starts a whole group's momentum at once)",
                          fix="set optim.fused: false (or auto) for SGD with a freeze schedule")
    return optimizer, tuple(g["name"] for g in groups)


def prepare_for_training(accelerator: Accelerator, config: FinetuneConfig, model: nn.Module,
                         optimizer: torch.optim.Optimizer, loaders: Loaders) -> tuple[nn.Module, Any, Any, Any]:
    """Accelerate's ``prepare`` of model, optimizer and loaders; returns ``(model, optimizer, train, eval)``.

    The training loader keeps its batches on the host: the loop moves them itself, one batch ahead on a side
    stream (:mod:`hubft.train.prefetch`). A streamed one is not prepared at all (see :mod:`hubft.train.stream`).
    """
    from hubft.train.sharding import is_sharded

    if is_sharded(model):  # sharded by hubft (train.fsdp); Accelerate would wrap it in DDP again
        optimizer, eval_loader = accelerator.prepare(optimizer, loaders.eval)
        return model, optimizer, accelerator.prepare_data_loader(loaders.train, device_placement=False), eval_loader
    # DDP registers only the parameters that require grad when it wraps the model: a body that a freeze schedule
    # unfreezes later must be registered now (and is "unused" until then).
    frozen = [p for p in model.parameters() if not p.requires_grad]
    if config.model.unfreezes and accelerator.num_processes > 1:
        for p in frozen:
            p.requires_grad_(True)
    model, optimizer, eval_loader = accelerator.prepare(model, optimizer, loaders.eval)
    # A stream is split across processes by hubft already: Accelerate would split it again and skip examples.
    train_loader = loaders.train if loaders.train_stream is not None else \
        accelerator.prepare_data_loader(loaders.train, device_placement=False)
    for p in frozen:
        p.requires_grad_(False)
    return model, optimizer, train_loader, eval_loader


def create_run_schedule(config: FinetuneConfig, task: Task, optimizer: torch.optim.Optimizer,
                        updates_per_epoch: int) -> tuple[Schedule, int]:
    """The LR schedule over the run's length; returns it and the run's total optimizer updates.

    Raises:
        ConfigError: Unknown schedule or options.
    """
    from hubft.optim import create_scheduler
    from hubft.train.finite import inner_optimizer

    c = config
    total = updates_per_epoch * c.train.epochs
    if c.train.max_updates is not None:
        total = min(total, c.train.max_updates)
    options = dict(c.schedule.options)
    if c.schedule.name in ("plateau", "ReduceLROnPlateau"):
        # It is fed the task's primary metric; torch's default mode "min" would cut the LR on progress.
        options.setdefault("mode", "max" if task.greater_is_better else "min")
    schedule = create_scheduler(
        inner_optimizer(optimizer), c.schedule.name, warmup_steps=c.schedule.warmup_steps,
        warmup_start_factor=c.schedule.warmup_start_factor, updates_per_epoch=updates_per_epoch,
        total_updates=total, interval=c.schedule.interval, **options)
    return schedule, total


def build_parts(config: FinetuneConfig, accelerator: Accelerator, data: DataBundle, task: Task, model: nn.Module,
                channels_last: bool, output: OutputWriter, *, loss: Any = None,
                reuses_host_memory: bool = False) -> RunParts:
    """Every remaining part, from the data and the model: loaders, loss, optimizer, preparation, schedule, EMA,
    batch mixing and the checkpoint pusher, assembled into the run's :class:`~hubft.train.parts.RunParts`.

    Raises:
        HubftError: A part cannot be built from the config (each function above names its errors).
    """
    from hubft.train.mixing import create_mixing

    acc = accelerator
    loaders = create_loaders(config, data, model, acc.device, acc.num_processes)
    loss_fn, loss_label, smoothing = create_run_loss(config, task, loss)
    groups = _shard_for_fsdp(config, acc, model)  # train.fsdp: the groups by name, then the model sharded in place
    optimizer, group_names = create_run_optimizer(config, model, groups)
    model, optimizer, train_loader, eval_loader = prepare_for_training(acc, config, model, optimizer, loaders)
    updates_per_epoch = math.ceil(len(train_loader) / config.train.grad_accum_steps)
    schedule, total = create_run_schedule(config, task, optimizer, updates_per_epoch)
    return RunParts(
        config=config, accelerator=acc, task=task, data=data, model=model, channels_last=channels_last,
        train_loader=train_loader, eval_loader=eval_loader, train_sampler=loaders.train_sampler,
        train_normalize=loaders.train_normalize, eval_normalize=loaders.eval_normalize, loss_fn=loss_fn,
        loss_label=loss_label, optimizer=optimizer, group_names=group_names, schedule=schedule,
        updates_per_epoch=updates_per_epoch, total_updates=total, ema=_create_ema(config, acc.unwrap_model(model)),
        mixing=create_mixing(config.data, task, loss_fn, smoothing, len(data.label_names), data.multi_label),
        output=output,
        checkpoint_pusher=_create_checkpoint_pusher(config, acc.is_main_process),
        reuses_host_memory=reuses_host_memory, train_stream=loaders.train_stream)


def _shard_for_fsdp(config: FinetuneConfig, accelerator: Accelerator, model: nn.Module) -> list[dict] | None:
    """With ``train.fsdp`` on several processes: the groups built by name, then the model sharded in place and the
    groups re-bound to its sharded parameters. None otherwise (the optimizer builds them)."""
    if not (config.train.fsdp and accelerator.num_processes > 1):
        return None
    from hubft.train.sharding import parameter_names, rebind_param_groups, shard_model

    groups, names = create_run_param_groups(config, model), parameter_names(model)
    shard_model(model, accelerator.device, config.train.mixed_precision)
    return rebind_param_groups(groups, names, model)


def _create_ema(config: FinetuneConfig, model: nn.Module) -> Any:
    if not config.train.ema:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=config.train.ema_decay)


def _create_checkpoint_pusher(config: FinetuneConfig, is_main_process: bool) -> Any:
    if not (config.hub.push_checkpoints and is_main_process):
        return None
    from hubft.train.hub_checkpoints import CheckpointPusher

    return CheckpointPusher(config.hub.repo_id, config.hub.checkpoint_branch, private=config.hub.private)


def _use_channels_last(model: nn.Module, setting: bool | str) -> bool:
    if setting != "auto":
        return bool(setting)
    # Convolutional backbones gain from NHWC kernels on CPU and GPU; a ViT's only conv is its patch embedding.
    conv = sum(p.numel() for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters(recurse=False))
    total = sum(p.numel() for p in model.parameters())
    return total > 0 and conv / total > 0.5


def default_num_workers(device: torch.device, num_processes: int = 1) -> int:
    """DataLoader workers for ``data.num_workers: auto``.

    0 on CPU: workers would decode on the cores the training step needs (hubft's uint8 cache makes the per-item
    work small). On an accelerator the training process mostly waits for the device, so each process gets its
    share of the cores less one for itself, at most 8.
    """
    if device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores // max(1, num_processes) - 1))


def _warn_single_process_cpu_launch() -> None:
    # `accelerate launch --cpu --num_processes N` uses its simple launcher: ONE process, and says nothing.
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in os.environ \
            and "WORLD_SIZE" not in os.environ:
        print("hubft: warning: `accelerate launch --cpu --num_processes N` starts a single process. For N CPU "
              "processes use `accelerate launch --multi_gpu --num_processes N` (or torchrun) with train.cpu: true.",
              flush=True)
