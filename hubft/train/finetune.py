"""The fine-tuning run: config -> data -> model -> optimisation -> loop -> outputs, on 1..N processes.

:class:`Finetuner` holds one run. Its stages are separate methods so that ``recipes/finetune.py`` reads top to
bottom, and :func:`finetune` calls them all. Everything device-, process- and precision-related is Accelerate's;
hubft adds what Accelerate does not do: exact mid-epoch resume (a sampler and augmentation seeded from
``(seed, epoch, index)``, atomic verified checkpoints), a schedule stepped once per optimizer update whatever the
number of processes, a non-finite-loss stop that applies no update, and the output directory.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
import signal
import threading
from pathlib import Path

import torch
import torch.nn as nn

from hubft.config import FinetuneConfig, config_from_dict, config_to_dict, load_config
from hubft.errors import ConfigError, DataError, HubftError, TrainingError, one_line
from hubft.faults import fault_point
from hubft.train.checkpoint import (find_latest_checkpoint, recover_interrupted_checkpoints, remove_checkpoints,
                                    run_agreed, verify_checkpoint)
from hubft.train.host_memory import reuse_host_memory
from hubft.train.loop import TrainLoop
from hubft.train.outputs import OutputWriter
from hubft.train.mixing import check_mixing_loss, mixing_enabled
from hubft.train.sampler import EpochSampler, SeededDataset
from hubft.train.validation import check_loss_takes_labels, check_no_batch_of_one, validate_config

__all__ = ["Finetuner", "finetune", "FinetuneResult", "PREEMPTED_EXIT_CODE"]

logger = logging.getLogger(__name__)

# Exit code of a run stopped by SIGTERM after writing a checkpoint (EX_TEMPFAIL: "try again later").
PREEMPTED_EXIT_CODE = 75


class FinetuneResult(dict):
    """What :func:`finetune` returns: ``output_dir``, ``final`` and ``best`` eval metrics, ``best_epoch``,
    ``steps`` (optimizer updates) and ``url`` (of the pushed commit, or None)."""


def _resolve_config(config: FinetuneConfig | dict | str | os.PathLike) -> FinetuneConfig:
    if isinstance(config, FinetuneConfig):
        return config
    if isinstance(config, dict):
        return config_from_dict(config)
    return load_config(config)


def _os_errors(what: str):
    """Turn an ``OSError`` of a stage (disk full, permissions) into a one-line :class:`TrainingError`."""

    def decorate(method):
        @functools.wraps(method)
        def wrapper(self: "Finetuner", *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except OSError as e:
                full = e.errno in (errno.ENOSPC, errno.EDQUOT)
                where = f" ({e.filename})" if e.filename else ""
                raise TrainingError(
                    f"{what} failed: {'the disk is full' if full else e.strerror or type(e).__name__}{where}; "
                    "every checkpoint already written is intact",
                    fix=("free disk space, then " if full else "fix the file system problem, then ")
                    + "resume with --train.resume latest") from None

        return wrapper

    return decorate


class Finetuner:
    """One fine-tuning run, staged.

    Args:
        config: A :class:`~hubft.config.FinetuneConfig`, a plain dict of sections, or a YAML path.
        dataset: Optional ``datasets.Dataset`` / ``DatasetDict`` to train on instead of ``data.name`` / ``data.path``.
        loss: Optional loss (any spec :func:`hubft.create_loss` accepts: a function, module, class) that replaces
            ``loss.name``.

    Raises:
        ConfigError: An invalid config, before any data or model is loaded.

    Examples:
        >>> ft = Finetuner({"model": {"name": "resnet10t", "pretrained": False}, "data": {"path": "images/"}})
        >>> ft.setup(); ft.fit(); ft.save()  # doctest: +SKIP
    """

    def __init__(self, config: FinetuneConfig | dict | str | os.PathLike, *, dataset=None, loss=None) -> None:
        self.config = _resolve_config(config)
        if dataset is not None and self.config.data.name is None and self.config.data.path is None:
            self.config.data.path = "<in-memory dataset>"  # satisfies the exclusivity check; never read
        validate_config(self.config)
        check_mixing_loss(self.config, loss)
        if dataset is not None:
            self.config.data.path = None
        self.dataset = dataset
        self.loss_override = loss
        self.preempted = False
        self.checkpoint_pusher = None

        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        c = self.config
        _warn_single_process_cpu_launch()
        kwargs_handlers = []
        if c.model.unfreeze_epoch is not None and c.model.freeze not in (False, "none"):
            # DDP registers only parameters that require grad when it is built; the body unfrozen later must be
            # registered too, and is "unused" until then.
            kwargs_handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
        try:
            self.accelerator = Accelerator(
                cpu=c.train.cpu,
                mixed_precision=c.train.mixed_precision,
                gradient_accumulation_steps=c.train.grad_accum_steps,
                log_with=c.train.log_with,
                project_dir=c.train.output_dir,
                kwargs_handlers=kwargs_handlers,
            )
        except (ValueError, ImportError) as e:
            raise ConfigError(
                f"Accelerate refused train.cpu={c.train.cpu!r}, train.mixed_precision={c.train.mixed_precision!r}, "
                f"train.log_with={c.train.log_with!r}: {one_line(e)}",
                fix="use mixed_precision 'no' on CPU, and a log_with tracker that is installed (or null)") from None
        self.output = OutputWriter(Path(c.train.output_dir), is_main=self.accelerator.is_main_process)

    # -- stages -------------------------------------------------------------------------------------------------
    def setup_data(self) -> None:
        """Load the dataset, its labels and splits (``data.*``)."""
        from hubft.data import load_data

        d = self.config.data
        self.data = load_data(
            name=d.name, path=d.path, dataset=self.dataset, revision=d.revision, image_column=d.image_column,
            label_column=d.label_column, train_split=d.train_split, eval_split=d.eval_split,
            eval_fraction=d.eval_fraction, classes=d.classes, max_per_class=d.max_per_class, seed=self.config.train.seed,
        )
        names = list(self.data.label_names)
        if len(names) < 2 and not self.data.multi_label:
            raise DataError(f"the data has {len(names)} class(es) {names}: a classifier needs at least 2",
                            fix="add examples of another class, or check data.classes and data.label_column")

    def setup_model(self) -> None:
        """Create the backbone with a fresh head for the data's labels; freeze and set the memory format."""
        from hubft.models import create_model, freeze

        from accelerate.utils import set_seed

        m = self.config.model
        # A backbone built without pretrained weights draws its init from the global RNGs: seed them first.
        set_seed(self.config.train.seed)
        timm_kwargs = {k: v for k, v in (("drop_rate", m.drop_rate), ("drop_path_rate", m.drop_path_rate)) if v is not None}
        self.model = create_model(
            m.name, label_names=list(self.data.label_names), pretrained=m.pretrained, revision=m.revision,
            head_init_seed=m.head_init_seed if m.head_init_seed is not None else self.config.train.seed, **timm_kwargs,
        )
        if self.config.data.image_size:
            # The model is trained (and will be served) at this size: its preprocessing config says so from now on.
            size = self.config.data.image_size
            self.model.pretrained_cfg = {**self.model.pretrained_cfg, "input_size": (3, size, size)}
            self.model.pretrained_cfg.pop("test_input_size", None)
        if m.freeze not in (False, "none"):
            freeze(self.model, stages=None if m.freeze is True or m.freeze == "body" else int(m.freeze))
        self.channels_last = _use_channels_last(self.model, self.config.train.channels_last)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def setup_training(self) -> None:
        """Loss, parameter groups, optimizer, schedule, data loaders, EMA, Accelerate preparation and resume."""
        from hubft.data import ImageClassificationDataset, create_transforms
        from hubft.losses import create_loss
        from hubft.optim import create_optimizer, create_scheduler, format_param_groups, fused_options, param_groups

        c, acc = self.config, self.accelerator
        # Transforms follow the backbone's own preprocessing; augmentation applies to the train split only.
        d = c.data
        aug = dict(auto_augment=d.auto_augment, re_prob=d.re_prob, re_mode=d.re_mode, color_jitter=d.color_jitter,
                   hflip=d.hflip, scale=d.scale, ratio=d.ratio)
        train_tf = create_transforms(self.model.pretrained_cfg, image_size=d.image_size, training=True, **aug)
        eval_tf = create_transforms(self.model.pretrained_cfg, image_size=d.image_size, training=False)
        num_classes = len(self.data.label_names)
        # normalize=False: cached images travel as uint8 (a quarter of the bytes to collate, pin and copy to the
        # device) and the loop normalises each batch on the device with the transform's own constants.
        ds_kwargs = dict(image_column=self.data.image_column, label_column=self.data.label_column,
                         multi_label=self.data.multi_label, num_classes=num_classes, cache=d.cache, normalize=False)
        train_ds = SeededDataset(ImageClassificationDataset(self.data.train, train_tf, split="train", **ds_kwargs))
        check_no_batch_of_one(self.model, len(train_ds), c.train.batch_size, acc.num_processes)
        eval_ds = SeededDataset(ImageClassificationDataset(self.data.eval, eval_tf, split="eval", **ds_kwargs))
        self.train_normalize, self.eval_normalize = train_tf.normalize, eval_tf.normalize
        self.train_sampler = EpochSampler(len(train_ds), seed=c.train.seed, shuffle=True)
        eval_sampler = EpochSampler(len(eval_ds), seed=c.train.seed, shuffle=False)
        workers = default_num_workers(acc.device, acc.num_processes) if d.num_workers == "auto" else d.num_workers
        # Persistent workers: a short epoch must not pay for starting them again (the sampler lives in this process,
        # so set_epoch still reaches them).
        loader_kw = dict(num_workers=workers, pin_memory=acc.device.type == "cuda", persistent_workers=workers > 0)
        train_dl = torch.utils.data.DataLoader(train_ds, batch_size=c.train.batch_size, sampler=self.train_sampler,
                                               **loader_kw)
        eval_dl = torch.utils.data.DataLoader(eval_ds, batch_size=c.train.eval_batch_size or c.train.batch_size,
                                              sampler=eval_sampler, **loader_kw)

        # Loss: multi-label data needs a loss that takes multi-hot targets.
        loss_spec = self.loss_override if self.loss_override is not None else c.loss.name
        if self.data.multi_label and loss_spec == "cross_entropy":
            loss_spec = "bce"
            acc.print("hubft: multi-label data: using loss 'bce' instead of the default 'cross_entropy'")
        loss_options = dict(c.loss.options)
        # With mixup/cutmix the targets are soft already: label smoothing moves into the mixing step (as in timm).
        self.mixing_label_smoothing = loss_options.pop("label_smoothing", 0.0) if mixing_enabled(c.data) else 0.0
        # What the card and metrics.json report: the spec itself, or the name of a function / class passed in.
        self.loss_spec = loss_spec if isinstance(loss_spec, (str, dict, list)) else getattr(
            loss_spec, "__name__", type(loss_spec).__name__)
        if not self.data.multi_label:  # multi-hot targets have the output's shape: any loss fits them
            check_loss_takes_labels(loss_spec)
        self.loss_fn = create_loss(loss_spec, **loss_options)

        # Parameter groups carry their LR multipliers baked in, so any torch scheduler honours them.
        schedule_unfreezes = c.model.unfreeze_epoch is not None and c.model.freeze not in (False, "none")
        groups = param_groups(self.model, lr=c.optim.lr, weight_decay=c.optim.weight_decay, head_lr=c.optim.head_lr,
                              layer_decay=c.optim.layer_decay, include_frozen=schedule_unfreezes)
        acc.print(format_param_groups(groups))
        self.group_names = [g["name"] for g in groups]
        optimizer = create_optimizer(groups, c.optim.name, **fused_options(c.optim.name, c.optim.fused,
                                                                           c.optim.options))
        if schedule_unfreezes and isinstance(optimizer, torch.optim.SGD) and any(
                g.get("fused") and g.get("momentum") for g in optimizer.param_groups):
            raise ConfigError("torch's fused SGD cannot start momentum for the parameters that model.unfreeze_epoch "
                              "unfreezes later (it starts a whole group's momentum at once)",
                              fix="set optim.fused: false (or auto) for SGD with a freeze schedule")

        # DDP registers only the parameters that require grad when it wraps the model: a body that a freeze schedule
        # unfreezes later must be registered now (and is "unused" until then).
        frozen = [p for p in self.model.parameters() if not p.requires_grad]
        if schedule_unfreezes and acc.num_processes > 1:
            for p in frozen:
                p.requires_grad_(True)
        self.model, self.optimizer, self.eval_dl = acc.prepare(self.model, optimizer, eval_dl)
        # The loop moves training batches itself, one batch ahead on a side stream (hubft.train.prefetch).
        self.train_dl = acc.prepare_data_loader(train_dl, device_placement=False)
        for p in frozen:
            p.requires_grad_(False)
        # The schedule is stepped by hubft once per optimizer update; preparing it would step it once per process.
        updates_per_epoch = math.ceil(len(self.train_dl) / c.train.grad_accum_steps)
        total = updates_per_epoch * c.train.epochs
        if c.train.max_updates is not None:
            total = min(total, c.train.max_updates)
        self.updates_per_epoch, self.total_updates = updates_per_epoch, total
        schedule_options = dict(c.schedule.options)
        if c.schedule.name in ("plateau", "ReduceLROnPlateau"):
            # It is fed accuracy / mAP (higher is better); torch's default mode "min" would cut the LR on progress.
            schedule_options.setdefault("mode", "max")
        self.scheduler = create_scheduler(
            self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer, c.schedule.name,
            warmup_steps=c.schedule.warmup_steps, warmup_start_factor=c.schedule.warmup_start_factor,
            updates_per_epoch=updates_per_epoch, total_updates=total, interval=c.schedule.interval,
            **schedule_options,
        )
        self.ema = None
        if c.train.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(acc.unwrap_model(self.model), decay=c.train.ema_decay)

        self.loop = TrainLoop(self)
        self.loop.state.compat = self.compat_fields()
        if c.train.resume:
            self.loop.resume(self.resolve_resume(c.train.resume))
        elif acc.is_main_process:
            # A new run where a finished one was (an interrupted one is refused in validate_config): the old
            # checkpoints must not be kept over the new ones by pruning, nor found by "latest", and the old log must
            # not be continued.
            if remove_checkpoints(Path(c.train.output_dir) / "checkpoints"):
                acc.print(f"hubft: removed the checkpoints of the earlier, finished run in {c.train.output_dir}")
            self.output.truncate_log(0)
        if c.hub.push_checkpoints and acc.is_main_process:
            from hubft.train.hub_checkpoints import CheckpointPusher

            self.checkpoint_pusher = CheckpointPusher(c.hub.repo_id, c.hub.checkpoint_branch, private=c.hub.private)
        if c.train.log_with:
            acc.init_trackers("hubft", config=_flat(config_to_dict(c), scalars_only=True))
            self.output.tracker = acc.log
        self.output.start(self)

    def setup(self) -> None:
        """Every stage before training: data, model, training objects."""
        self.reuses_host_memory = reuse_host_memory(self.config.train.reuse_host_memory, self.accelerator.device)
        self.setup_data()
        self.setup_model()
        self.setup_training()

    @_os_errors("training")
    def fit(self) -> dict:
        """Train for ``train.epochs``; returns the final epoch's record.

        A SIGTERM (preemption) lets the current update finish, writes a checkpoint and returns with ``preempted``
        set; callers exit with :data:`PREEMPTED_EXIT_CODE`. Signal handlers exist only in the main thread: from
        another thread SIGTERM keeps its usual meaning.
        """
        if threading.current_thread() is not threading.main_thread():
            return self.loop.run()
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            return self.loop.run()
        finally:
            signal.signal(signal.SIGTERM, previous)

    @_os_errors("writing the finished model")
    def save(self) -> Path:
        """Write the finished model directory (weights, config.json, card, metrics, logs, plots).

        With several processes, a write that fails on one of them stops every process with the same error.
        """
        exchange = self.loop.failure_exchange()
        run_agreed(lambda: fault_point("before_save"), exchange)
        return self.output.finish(self, exchange)

    def push(self) -> str | None:
        """Push the output directory to ``hub.repo_id`` when ``hub.push`` is set (main process; others wait)."""
        c = self.config
        url = None
        if c.hub.push:
            try:
                if self.accelerator.is_main_process:
                    from hubft.hub.push import push_to_hub

                    url = push_to_hub(c.train.output_dir, c.hub.repo_id, private=c.hub.private,
                                      revision=c.hub.revision)
            finally:
                # A failed push must still meet the other processes here, or they would wait forever.
                self.accelerator.wait_for_everyone()
        return url

    def close(self) -> None:
        """Finish checkpoint uploads, wait for every process and leave the process group (so N processes exit 0)."""
        acc = self.accelerator
        if self.checkpoint_pusher is not None:
            self.checkpoint_pusher.close()
            for error in self.checkpoint_pusher.errors:
                acc.print(f"hubft: warning: a checkpoint upload failed: {error}")
        acc.wait_for_everyone()
        acc.end_training()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    # -- helpers ------------------------------------------------------------------------------------------------
    def _on_sigterm(self, signum, frame) -> None:
        self.preempted = True

    def compat_fields(self) -> dict:
        """Settings a checkpoint must share with the run that resumes it."""
        c = self.config
        return {
            "model.name": c.model.name,
            "label_names": list(self.data.label_names),
            "train.batch_size": c.train.batch_size,
            "train.grad_accum_steps": c.train.grad_accum_steps,
            "train.seed": c.train.seed,
            "num_processes": self.accelerator.num_processes,
            "train_examples": len(self.data.train),
            "optim.name": c.optim.name,
            "schedule.name": c.schedule.name if isinstance(c.schedule.name, str) else repr(c.schedule.name),
            "param_groups": self.group_names,
        }

    def resolve_resume(self, resume: str) -> Path:
        """Turn ``train.resume`` (``latest``, a path or ``hub:owner/name[@branch]``) into a verified checkpoint.

        Raises:
            CheckpointError: The named checkpoint is incomplete or corrupt.
            ConfigError: ``latest`` was asked for but there is no complete checkpoint.
        """
        root, acc = Path(self.config.train.output_dir) / "checkpoints", self.accelerator
        if resume.startswith("hub:"):
            from hubft.train.hub_checkpoints import download_checkpoint

            with acc.main_process_first():  # one download into the shared cache, then the others read it
                return download_checkpoint(resume)
        if resume == "latest":
            if acc.is_main_process:
                recover_interrupted_checkpoints(root, report=acc.print)
            acc.wait_for_everyone()
            found = find_latest_checkpoint(root, report=acc.print if acc.is_main_process else lambda _: None)
            if found is None:
                raise ConfigError(f"train.resume is 'latest' but {str(root)!r} holds no complete checkpoint",
                                  fix="start without train.resume, or point it at a checkpoint directory")
            return found
        path = Path(resume)
        if not path.is_dir():
            raise ConfigError(f"train.resume {resume!r} is not a checkpoint directory",
                              fix="use 'latest' or the path of a checkpoints/step-N directory")
        verify_checkpoint(path)
        return path


def _flat(data: dict, prefix: str = "", *, scalars_only: bool = False) -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``; with ``scalars_only`` lists and None become strings (tracker hparams)."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}/", scalars_only=scalars_only))
        elif not scalars_only or isinstance(value, (int, float, str, bool)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


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


def finetune(config: FinetuneConfig | dict | str | os.PathLike, *, dataset=None, loss=None) -> FinetuneResult:
    """Fine-tune a backbone as the config says and write the output directory (and push, if asked).

    Args:
        config: A :class:`~hubft.config.FinetuneConfig`, a dict of sections or a YAML path.
        dataset: A ``datasets.Dataset`` / ``DatasetDict`` used instead of ``data.name`` / ``data.path``.
        loss: A loss spec that replaces ``loss.name`` (a function or module written in Python).

    Returns:
        A :class:`FinetuneResult` with ``output_dir``, ``final`` and ``best`` metrics and ``steps``.

    Raises:
        HubftError: Bad config or input (before training starts), a non-finite loss or a failed write
            (``TrainingError``; the checkpoints written so far are intact).
        SystemExit: With :data:`PREEMPTED_EXIT_CODE` after a SIGTERM, once a checkpoint is written.
    """
    ft = Finetuner(config, dataset=dataset, loss=loss)
    try:
        ft.setup()
        ft.fit()
        if ft.preempted:
            raise SystemExit(PREEMPTED_EXIT_CODE)
        out = ft.save()
        url = ft.push()
    finally:
        ft.close()
    best = ft.loop.best_record()
    return FinetuneResult(output_dir=str(out), final=getattr(ft.loop, "last_metrics", None),
                          best=best["eval"] if best else None, best_epoch=ft.loop.state.best_epoch,
                          steps=ft.loop.state.update, url=url)
