"""The fine-tuning run: config -> data -> model -> optimisation -> loop -> outputs, on 1..N processes.

:class:`Finetuner` holds one run and calls :mod:`hubft.train.setup`'s functions in stages, so that
``recipes/finetune.py`` reads top to bottom; :func:`finetune` calls them all. Everything device-, process- and
precision-related is Accelerate's; hubft adds what Accelerate does not do: exact mid-epoch resume (a sampler and
augmentation seeded from ``(seed, epoch, index)``, atomic verified checkpoints), a schedule stepped once per
optimizer update whatever the number of processes, a non-finite-loss stop that applies no update, and the output
directory.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hubft.config import (FinetuneConfig, check_config, config_from_dict, config_to_dict, copy_config,
                          load_config)
from hubft.errors import ConfigError, TrainingError
from hubft.faults import fault_point
from hubft.train.checkpoint import remove_checkpoints, run_agreed
from hubft.train.host_memory import reuse_host_memory
from hubft.train.loop import StopRequest, TrainLoop
from hubft.train.mixing import check_mixing_loss
from hubft.train.outputs import OutputWriter, flat_dict
from hubft.train.parts import RunParts
from hubft.train.run_checkpoint import failure_exchange, resolve_resume
from hubft.train.setup import build_parts, create_accelerator, create_run_model, load_run_data
from hubft.train.validation import check_run_config, check_shared_output_dir

__all__ = ["Finetuner", "finetune", "FinetuneResult", "PREEMPTED_EXIT_CODE"]

# Exit code of a run stopped by SIGTERM after writing a checkpoint (EX_TEMPFAIL: "try again later").
PREEMPTED_EXIT_CODE = 75


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        output_dir: The run directory.
        final: The last evaluation's metrics.
        best: The best epoch's summary metrics (by the task's primary metric).
        best_epoch: The best epoch (0-based), or None.
        steps: Optimizer updates made.
        url: The pushed commit's URL, or None when nothing was pushed.
    """

    output_dir: str
    final: dict | None
    best: dict | None
    best_epoch: int | None
    steps: int
    url: str | None

    def __getitem__(self, key: str) -> Any:
        """``result["final"]``: the attribute of that name (results were once plain dicts)."""
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """Like ``dict.get``, for code written when results were plain dicts."""
        return getattr(self, key) if key in self.__dataclass_fields__ else default


def _resolve_config(config: FinetuneConfig | dict | str | os.PathLike) -> FinetuneConfig:
    """The run's own checked copy of ``config``: the caller's object is never changed."""
    if isinstance(config, FinetuneConfig):
        config = copy_config(config)
    elif isinstance(config, dict):
        config = config_from_dict(config)
    else:
        config = load_config(config)
    from hubft.train.sharding import fsdp_from_launcher

    if not config.train.fsdp and fsdp_from_launcher():
        # `accelerate launch --config_file recipes/fsdp.yaml`: the launcher's choice, written into the run's config.
        config.train.fsdp = True
        check_config(config)
    return config


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
    """One fine-tuning run, staged: ``setup_data``, ``setup_model``, ``setup_training`` (or ``setup``), ``fit``,
    ``save``, ``push``, ``close``.

    After :meth:`setup_training`, :attr:`parts` holds every part of the run (a frozen
    :class:`~hubft.train.parts.RunParts`) and :attr:`loop` the loop over them.

    Args:
        config: A :class:`~hubft.config.FinetuneConfig`, a plain dict of sections, or a YAML path. The run works on
            its own checked copy (:attr:`config`); the object passed is never changed.
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
        check_run_config(self.config, has_dataset=dataset is not None)
        check_mixing_loss(self.config, loss)
        self._dataset, self._loss = dataset, loss
        self.stop = StopRequest()
        self.accelerator = create_accelerator(self.config)
        try:
            check_shared_output_dir(self.accelerator, self.config.train.output_dir)
        except ConfigError:
            _leave_process_group()  # every process raises it: exit cleanly, not with gloo's abort
            raise
        #: Whether ``train.reuse_host_memory`` is in force (process-wide, so applied once the run is created).
        self.reuses_host_memory = reuse_host_memory(self.config.train.reuse_host_memory, self.accelerator.device)
        self.data = self.task = None
        self._model: torch.nn.Module | None = None
        self._channels_last = False
        self.parts: RunParts | None = None
        self.loop: TrainLoop | None = None

    # -- stages -------------------------------------------------------------------------------------------------
    def setup_data(self) -> None:
        """Load the dataset, its labels and splits (``data.*``), and the task as it applies to them."""
        self.data, self.task = load_run_data(self.config, self._dataset)

    def setup_model(self) -> None:
        """Create the backbone with the task's fresh head for the data's labels; freeze; set the memory format."""
        self._model, self._channels_last = create_run_model(self.config, self.data, self.task)

    def setup_training(self) -> None:
        """Every other part (loaders, loss, optimizer, schedule, EMA, ...), the loop, resume, and the run directory's
        config and LR curves."""
        c, acc = self.config, self.accelerator
        output = OutputWriter(Path(c.train.output_dir), is_main=acc.is_main_process)
        self.parts = build_parts(c, acc, self.data, self.task, self._model, self._channels_last, output,
                                 loss=self._loss, reuses_host_memory=self.reuses_host_memory)
        self._model = None  # the prepared model is parts.model
        self.loop = TrainLoop(self.parts, self.stop)
        if c.train.resume:
            self.loop.resume(resolve_resume(self.parts, c.train.resume))
        elif acc.is_main_process:
            # A new run where a finished one was (an interrupted one is refused by check_run_config): the old
            # checkpoints must not be kept over the new ones by pruning, nor found by "latest", and the old log must
            # not be continued.
            if remove_checkpoints(Path(c.train.output_dir) / "checkpoints"):
                acc.print(f"hubft: removed the checkpoints of the earlier, finished run in {c.train.output_dir}")
            output.truncate_log(0)
        if c.train.log_with:
            acc.init_trackers("hubft", config=flat_dict(config_to_dict(c), scalars_only=True))
            output.tracker = acc.log
        output.start(self.parts)

    def setup(self) -> None:
        """Every stage before training: data, model, training objects."""
        self.setup_data()
        self.setup_model()
        self.setup_training()

    @property
    def preempted(self) -> bool:
        """Whether :meth:`fit` returned early for a SIGTERM, after writing a checkpoint."""
        return self.loop is not None and self.loop.preempted

    @_os_errors("training")
    def fit(self) -> dict:
        """Train for ``train.epochs``; returns the final epoch's record.

        A SIGTERM (preemption) lets the current update finish, writes a checkpoint and returns with
        :attr:`preempted` set; callers exit with :data:`PREEMPTED_EXIT_CODE`. Signal handlers exist only in the main
        thread: from another thread SIGTERM keeps its usual meaning.
        """
        loop = self._require_loop()
        if threading.current_thread() is not threading.main_thread():
            return loop.run()
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self.stop)
        try:
            return loop.run()
        finally:
            signal.signal(signal.SIGTERM, previous)

    @_os_errors("writing the finished model")
    def save(self) -> Path:
        """Write the finished model directory (weights, config.json, card, metrics, logs, plots).

        With several processes, a write that fails on one of them stops every process with the same error.
        """
        loop = self._require_loop()
        loop.release_host_memory()  # the last epoch's memory: the weights, card and plots start from less
        exchange = failure_exchange(self.parts)
        run_agreed(lambda: fault_point("before_save"), exchange)
        return self.parts.output.finish(self.parts, loop, exchange)

    def push(self) -> str | None:
        """Push the output directory to ``hub.repo_id`` when ``hub.push`` is set (main process; others wait).

        With ``hub.merge_adapter`` the merged model (``<output_dir>/merged``) is pushed instead of the adapter.
        """
        c = self.config
        url = None
        if c.hub.push:
            try:
                if self.accelerator.is_main_process:
                    from hubft.hub.push import push_to_hub
                    from hubft.train.outputs import MERGED_DIR

                    out = Path(c.train.output_dir) / (MERGED_DIR if c.hub.merge_adapter else "")
                    url = push_to_hub(out, c.hub.repo_id, private=c.hub.private, revision=c.hub.revision)
            finally:
                # A failed push must still meet the other processes here, or they would wait forever.
                self.accelerator.wait_for_everyone()
        return url

    def close(self) -> None:
        """Finish checkpoint uploads, wait for every process and leave the process group (so N processes exit 0)."""
        acc = self.accelerator
        if self.parts is not None and self.parts.train_stream is not None:
            self.parts.train_stream.close()
        pusher = self.parts.checkpoint_pusher if self.parts is not None else None
        if pusher is not None:
            pusher.close()
            for error in pusher.errors:
                acc.print(f"hubft: warning: a checkpoint upload failed: {error}")
        acc.wait_for_everyone()
        acc.end_training()
        _leave_process_group()

    def result(self, url: str | None = None) -> FinetuneResult:
        """The run's :class:`FinetuneResult` (after :meth:`fit`, and :meth:`save` for ``output_dir``)."""
        loop = self._require_loop()
        best = loop.best_record()
        return FinetuneResult(output_dir=str(Path(self.config.train.output_dir)), final=loop.last_metrics,
                              best=best["eval"] if best else None, best_epoch=loop.state.best_epoch,
                              steps=loop.state.update, url=url)

    def _require_loop(self) -> TrainLoop:
        if self.loop is None:
            raise ConfigError("the run is not set up", fix="call setup() (or the setup_* stages) first")
        return self.loop


def _leave_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


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
        ft.save()
        url = ft.push()
    finally:
        ft.close()
    return ft.result(url)
