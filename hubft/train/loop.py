"""The training and evaluation loop of a :class:`~hubft.train.finetune.Finetuner`.

Time is explicit: the optimizer-update count drives the schedule, logging and checkpoints; dropout is seeded from
``(seed, epoch, batch, process)`` and augmentation from ``(seed, epoch, index)``, so an interrupted run resumed from a
checkpoint replays exactly what the uninterrupted run would have done.

A non-finite loss or gradient stops the run before the optimizer moves anything: parameters, optimizer state and
the buffers the update's forward passes touched (BatchNorm statistics) are those of the previous update, and no
checkpoint or output is written from them. On CUDA with a fused optimizer the check costs no host sync: the fused
kernel skips a flagged update on the device, and the flag is read one update later, or at the next log line,
checkpoint or epoch end (see :mod:`hubft.train.finite`).

With ``HUBFT_TRACE_INPUTS=1`` every logged step record carries ``inputs``, a digest of the exact batches (images
and targets) the update consumed: sample order and augmentation made visible, for the reliability tests that
compare a resumed run with an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from hubft.errors import CheckpointError, HubftError, TrainingError, one_line
from hubft.faults import fault_point, fault_points_after_writes
from hubft.losses import class_range_checked_upstream
from hubft.train.checkpoint import Exchange, prune_checkpoints, run_agreed, write_checkpoint
from hubft.train.finite import BufferSnapshot, PendingCheck, defers_check, gradients_not_finite, inner_optimizer
from hubft.train.metrics import classification_metrics, multilabel_metrics
from hubft.train.prefetch import prefetch_to_device
from hubft.train.sampler import mix_seed
from hubft.train.state import STATE_FILE, TrainState

if TYPE_CHECKING:
    from hubft.train.finetune import Finetuner

__all__ = ["TrainLoop"]


class TrainLoop:
    """Runs epochs, evaluates, checkpoints and resumes for one :class:`Finetuner` (set up already)."""

    def __init__(self, ft: "Finetuner") -> None:
        self.ft = ft
        self.state = TrainState()
        self.mixup = _create_mixup(ft)
        self._loss_sum = torch.zeros((), dtype=torch.float64)
        self.has_frozen = any(not p.requires_grad for p in ft.model.parameters())
        # (update, epoch, batches) of the last checkpoint written or resumed from: a SIGTERM right after a periodic
        # checkpoint must not write the same state again.
        self._saved: tuple[int, int, int] | None = None
        # The model's buffers (BatchNorm statistics) as they were before the update in progress, copied every update
        # into the same flat tensors: a refused update puts them back. Two snapshots, used in turn: with the deferred
        # check, the one from before the previous update is still needed.
        self._snapshots: list[BufferSnapshot] | None = None
        self._snapshot = 0  # the snapshot of the update in progress
        self._buffers_saved = False
        self._bad = torch.zeros(())
        #: Whether the finite check is read one update late instead of syncing with the device every update (see the
        #: module docstring). True on CUDA with a found_inf-capable optimizer; tests turn it on elsewhere.
        self.deferred_check = defers_check(ft)
        # The optimizer implementation the config chose (fused or not), per group: a checkpoint written with another
        # one brings its own back with its param_groups, and resume puts these back.
        self._implementation = [{k: g[k] for k in ("fused", "foreach") if k in g}
                                for g in inner_optimizer(ft.optimizer).param_groups]
        self._pending: PendingCheck | None = None
        self._inputs = hashlib.sha256() if os.environ.get("HUBFT_TRACE_INPUTS") == "1" else None

    # -- checkpoints --------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        self.resolve_pending()  # never checkpoint an update that was refused on the device
        ft, acc, s = self.ft, self.ft.accelerator, self.state
        root = Path(ft.config.train.output_dir) / "checkpoints"
        # Part of the epoch's mean train loss, so that a resumed run logs the same epoch record.
        s.epoch_loss_sum = float(self._loss_sum) if s.batches_in_epoch else 0.0

        def write(tmp: Path) -> None:
            # Accelerate writes weights, optimizer and RNG states in one call; the fault points between its files
            # exist only while a test plans faults.
            import accelerate.checkpointing

            with fault_points_after_writes(accelerate.checkpointing, "save", _accelerate_file_point):
                acc.save_state(str(tmp))
            fault_point("checkpoint_after_accelerate_state")
            if acc.is_main_process:
                torch.save(ft.scheduler.state_dict(), tmp / "scheduler.pt")
                if ft.ema is not None:
                    save_file({k: v.contiguous() for k, v in ft.ema.module.state_dict().items()},
                              str(tmp / "ema.safetensors"))
                (tmp / STATE_FILE).write_text(s.to_json())
                fault_point("checkpoint_after_train_state")

        exchange = self.failure_exchange()
        path = write_checkpoint(root, s.update, write, is_main_process=acc.is_main_process, exchange=exchange,
                                tmp_name=f".tmp-step-{s.update:08d}")

        def after_write() -> None:
            if acc.is_main_process:
                prune_checkpoints(root, ft.config.train.keep_checkpoints)
                fault_point("checkpoint_after_prune")
                if ft.checkpoint_pusher is not None:
                    ft.checkpoint_pusher.submit(path)  # uploads in the background; the loop goes on at once

        # Agreed too: the other processes would otherwise train on into a collective the main one never reaches.
        run_agreed(after_write, exchange)
        self._saved = (s.update, s.epoch, s.batches_in_epoch)
        return path

    def _restore_implementation(self) -> None:
        """Put back the configured optimizer implementation after a checkpoint's param_groups replaced it.

        ``load_state_dict`` takes every group setting from the checkpoint, ``fused`` included: without this, a
        checkpoint written without the fused kernel would resume without it (and without the sync-free check).
        A fused kernel keeps its step counts as float32 on the parameter's device.
        """
        inner = inner_optimizer(self.ft.optimizer)
        for group, implementation in zip(inner.param_groups, self._implementation):
            group.update(implementation)
            if group.get("fused"):
                for p in group["params"]:
                    step = inner.state.get(p, {}).get("step")
                    if isinstance(step, torch.Tensor):
                        inner.state[p]["step"] = step.to(dtype=torch.float32, device=p.device)
        self.deferred_check = defers_check(self.ft)

    def failure_exchange(self) -> Exchange | None:
        """A gather of every process's failure code, for :func:`~hubft.train.checkpoint.run_agreed`; None for one.

        It is a collective: every process calls it at the same point, also the one whose write failed.
        """
        acc = self.ft.accelerator
        if acc.num_processes == 1:
            return None
        return lambda code: acc.gather(torch.tensor([code], dtype=torch.int64, device=acc.device)).tolist()

    def resume(self, path: Path) -> None:
        ft, acc = self.ft, self.ft.accelerator
        state = TrainState.read(path)
        state.check_compatible(self.state.compat, path)
        try:
            acc.load_state(str(path))
            ft.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
            if ft.ema is not None and (path / "ema.safetensors").is_file():
                ft.ema.module.load_state_dict(load_file(str(path / "ema.safetensors")))
        except Exception as e:  # pickle refusals (weights_only), shape mismatches, files altered after verification
            detail = one_line(e)
            raise CheckpointError(f"checkpoint {str(path)!r} could not be loaded ({type(e).__name__}: {detail})",
                                  fix="resume from another checkpoint, or start a new run in another "
                                      "train.output_dir") from None
        self._restore_implementation()
        state.compat = self.state.compat
        self.state = state
        if state.last_metrics is not None:
            self.last_metrics = state.last_metrics
        self._saved = (state.update, state.epoch, state.batches_in_epoch)
        ft.output.truncate_log(state.update)
        acc.print(f"hubft: resumed from {path} (epoch {state.epoch}, update {state.update})")

    # -- the loop -----------------------------------------------------------------------------------------------
    def run(self) -> dict:
        ft, c, s = self.ft, self.ft.config, self.state
        last = s.history[-1] if s.history else {}
        for epoch in range(s.epoch, c.train.epochs):
            if self._done():
                break
            if self.has_frozen and c.model.unfreeze_epoch is not None and epoch >= c.model.unfreeze_epoch:
                from hubft.models import unfreeze

                unfreeze(ft.accelerator.unwrap_model(ft.model))
                self.has_frozen = False
            s.epoch = epoch
            self.train_epoch(epoch)
            if ft.preempted:
                return last
            last = self.end_epoch(epoch)
            if self._stop_early():
                ft.accelerator.print(f"hubft: early stopping after epoch {epoch} (best epoch {s.best_epoch})")
                break
        return last

    def _done(self) -> bool:
        m = self.ft.config.train.max_updates
        return m is not None and self.state.update >= m

    def train_epoch(self, epoch: int) -> None:
        ft, s, acc = self.ft, self.state, self.ft.accelerator
        dl = ft.train_dl
        if s.batches_in_epoch:
            dl = acc.skip_first_batches(ft.train_dl, s.batches_in_epoch)
        # Accelerate's loaders re-set the sampler's epoch from their own iteration counter on every __iter__:
        # set it through the loader actually iterated, or a resumed run would replay the wrong epoch's order.
        dl.set_epoch(epoch) if hasattr(dl, "set_epoch") else ft.train_sampler.set_epoch(epoch)
        ft.model.train()
        self._snapshots, self._buffers_saved = None, False
        self._params = list(ft.model.parameters())  # walking the modules every update costs 0.1-0.2 ms
        self._bad = torch.zeros((), device=acc.device)
        self._one = torch.ones((), device=acc.device)
        seen, t0 = 0, time.perf_counter()
        self._loss_sum = torch.tensor(s.epoch_loss_sum, device=acc.device, dtype=torch.float64)
        bar = _progress(ft, epoch)
        try:
            # No read-ahead under accumulation: Accelerate ends an epoch's last accumulation from its loader's state.
            ahead = ft.config.train.grad_accum_steps == 1
            for x, y in prefetch_to_device(_plain_worker_errors(dl), acc.device, ahead=ahead):
                loss = self._micro_batch(x, y, epoch)
                seen += x.shape[0]
                if acc.sync_gradients and self._after_update(epoch, loss, seen, t0, bar):
                    break
            self.resolve_pending()
        finally:
            # Closed on errors too, so that an error message starts on a line of its own.
            if bar is not None:
                bar.close()
        self._epoch_train_loss = float(acc.reduce(self._loss_sum.float(), "mean")) / max(1, s.batches_in_epoch)

    def _micro_batch(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
        """Forward and backward one batch; on an accumulation boundary, check and apply the update."""
        ft, c, s, acc = self.ft, self.ft.config, self.state, self.ft.accelerator
        # Dropout / drop-path draw from torch's global RNG: seed it from the position in the run.
        _seed_device_rng(acc.device, mix_seed(c.train.seed, 1, epoch, s.batches_in_epoch, acc.process_index))
        if x.dtype == torch.uint8:  # cached images arrive as uint8 and are normalised here, on the device
            x = ft.train_normalize(x)
        if ft.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.mixup is not None:
            # Seeded by the step alone: every process mixes its shard with the same lam and box, as one global batch
            # would be. From data.mixup_off_epoch on, images are kept but targets stay soft (and smoothed).
            x, y = self.mixup(x, y, mix_seed(c.train.seed, 2, epoch, s.batches_in_epoch), epoch=epoch)
        if self._inputs is not None:
            self._inputs.update(x.detach().cpu().contiguous().numpy().tobytes())
            self._inputs.update(y.detach().cpu().contiguous().numpy().tobytes())
        if not self._buffers_saved:
            self._save_buffers()
        with acc.accumulate(ft.model):
            out = ft.model(x)
            # The labels were checked against the head's classes when the data was loaded: on a GPU, skip the
            # loss's own check, which would cost a host sync in the middle of every step.
            with class_range_checked_upstream():
                loss = ft.loss_fn(out, y)
            if fault_point("loss"):
                loss = loss * float("nan")
            self._bad = self._bad + (~torch.isfinite(loss.detach())).float()
            acc.backward(loss)
            if fault_point("gradients"):
                next(p for p in ft.model.parameters() if p.grad is not None).grad.fill_(float("inf"))
            fault_point("after_backward")
            if acc.sync_gradients:
                self._check_finite(self._bad, epoch)
                if self.has_frozen:
                    # Under DDP a frozen parameter may come back with a zero gradient: never let the optimizer
                    # (momentum, weight decay) move it.
                    for p in self._params:
                        if not p.requires_grad:
                            p.grad = None
                if c.optim.clip_grad_norm is not None:
                    acc.clip_grad_norm_(ft.model.parameters(), c.optim.clip_grad_norm)
                ft.optimizer.step()
                inner_optimizer(ft.optimizer).found_inf = None
                ft.optimizer.zero_grad(set_to_none=True)
        s.batches_in_epoch += 1
        self._loss_sum += loss.detach()
        return loss

    def _save_buffers(self) -> None:
        if self._snapshots is None:  # made once per epoch (train_epoch clears them): walking the modules is slow
            buffers = list(self.ft.model.buffers())
            self._snapshots = [BufferSnapshot(buffers), BufferSnapshot(buffers)]
        self._snapshot = 1 - self._snapshot
        self._snapshots[self._snapshot].save()
        self._buffers_saved = True

    def _after_update(self, epoch: int, loss: torch.Tensor, seen: int, t0: float, bar) -> bool:
        """Schedule, EMA, log, checkpoint and SIGTERM handling after update ``state.update + 1``; True: stop."""
        ft, c, s, acc = self.ft, self.ft.config, self.state, self.ft.accelerator
        s.update += 1
        self._buffers_saved = False
        self._bad.zero_()
        fault_point("after_optimizer_step")
        ft.scheduler.step_update(s.update)
        if ft.ema is not None:
            ft.ema.update(acc.unwrap_model(ft.model), step=s.update)
        if s.update % c.train.log_every == 0 or s.update == 1:
            self.resolve_pending()  # the loss below syncs anyway; a refused update is never logged
            elapsed = max(time.perf_counter() - t0, 1e-9)
            rec = {"type": "step", "step": s.update, "epoch": epoch, "loss": float(loss.detach()),
                   "lr": {n: g["lr"] for n, g in zip(ft.group_names, ft.optimizer.param_groups)},
                   "images_per_s": seen * acc.num_processes / elapsed}
            if self._inputs is not None:
                rec["inputs"] = self._inputs.hexdigest()[:16]
            ft.output.log(rec)
            if bar is not None:
                bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{ft.optimizer.param_groups[0]['lr']:.2e}",
                                img_s=f"{rec['images_per_s']:.0f}")
        if self._inputs is not None:
            self._inputs = hashlib.sha256()
        if bar is not None:
            bar.update(1)
        acc.print(f"HUBFT_STEP {s.update}", flush=True) if _trace() else None
        # The epoch's last update (or the run's) is checkpointed by end_epoch, with the epoch closed: writing it
        # here too would only write the same step twice.
        closes_epoch = s.batches_in_epoch >= len(ft.train_dl) or self._done()
        every = c.train.checkpoint_every
        if every and s.update % every == 0 and not closes_epoch:
            self.save_checkpoint()
        if self._agree(ft.preempted):
            ft.preempted = True
            if self._saved != (s.update, s.epoch, s.batches_in_epoch):
                self.save_checkpoint()
            acc.print(f"hubft: stopped by SIGTERM at update {s.update}; checkpoint written, resume with "
                      "train.resume=latest", flush=True)
            return True
        return self._done()

    def _agree(self, flag: bool) -> bool:
        acc = self.ft.accelerator
        if acc.num_processes == 1:
            return flag
        t = torch.tensor(float(flag), device=acc.device)
        return bool(acc.reduce(t, "sum") > 0)

    def _check_finite(self, bad: torch.Tensor, epoch: int) -> None:
        acc, ft = self.ft.accelerator, self.ft
        if acc.mixed_precision != "fp16" and ft.config.train.check_gradients:
            # Gradients too (an inf * 0 can poison them under a finite loss); fp16's scaler handles its own infs.
            bad = bad + gradients_not_finite(self._params, self._one)
        if acc.num_processes > 1:
            bad = acc.reduce(bad.clone(), "sum")
        step = self.state.update + 1
        if self.deferred_check:
            self.resolve_pending()  # the previous update's flag, computed long ago: reading it does not wait
            found_inf = (bad > 0).float()
            # The fused step skips the update on the device when found_inf is 1 (and takes back its step count).
            inner_optimizer(ft.optimizer).found_inf = found_inf
            self._pending = PendingCheck(found_inf, epoch, step, self._snapshot, self._buffers_saved)
        else:
            self.resolve_pending()
            if float(bad) > 0:
                self._refuse(epoch, step, self._snapshot, self._buffers_saved)

    def resolve_pending(self) -> None:
        """Read the deferred finite check of the last update, if one is pending; raise if it was refused.

        Raises:
            TrainingError: That update had a non-finite loss or gradient: the device skipped it, and the BatchNorm
                statistics are put back as they were before it.
        """
        pending, self._pending = self._pending, None
        if pending is not None and pending.refused():
            self._refuse(pending.epoch, pending.step, pending.snapshot, pending.buffers_saved)

    def _refuse(self, epoch: int, step: int, snapshot: int, buffers_saved: bool) -> None:
        ft = self.ft
        ft.optimizer.zero_grad(set_to_none=True)
        if buffers_saved and self._snapshots is not None:
            # The update's forward passes (and, deferred, the next one's) moved running statistics: put them back.
            self._snapshots[snapshot].restore()
        raise TrainingError(
            f"non-finite loss or gradients at epoch {epoch}, step {step}; no update was applied "
            "and the last complete checkpoint is kept",
            fix="lower optim.lr, add optim.clip_grad_norm, check the data, or use mixed_precision 'no'",
        )

    # -- evaluation and epoch end -------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model) -> dict:
        ft, acc = self.ft, self.ft.accelerator
        was_training = model.training
        model.eval()
        logits, targets = [], []
        for x, y in _plain_worker_errors(ft.eval_dl):
            if x.dtype == torch.uint8:
                x = ft.eval_normalize(x)
            if ft.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with acc.autocast():
                out = model(x)
            out, y = acc.gather_for_metrics((out.float().contiguous(), y.contiguous()))
            logits.append(out.cpu())
            targets.append(y.cpu())
        model.train(was_training)
        logits, targets = torch.cat(logits), torch.cat(targets)
        names = list(ft.data.label_names)
        if ft.data.multi_label:
            metrics = multilabel_metrics(logits, targets, names)
        else:
            metrics = classification_metrics(logits, targets, names)
        try:
            metrics["loss"] = float(ft.loss_fn(logits, targets))
        except Exception:  # a user loss may not run on CPU tensors outside its device; the metric is optional
            metrics["loss"] = None
        return metrics

    def end_epoch(self, epoch: int) -> dict:
        ft, s, c = self.ft, self.state, self.ft.config
        metrics = self.evaluate(ft.model)
        record = {"type": "epoch", "epoch": epoch, "step": s.update, "train_loss": self._epoch_train_loss,
                  "eval": metrics}
        if ft.ema is not None:
            record["eval_ema"] = self.evaluate(ft.ema.module)
        key = "map" if ft.data.multi_label else "accuracy"
        value = metrics[key]
        ft.scheduler.step_epoch(epoch, metric=value)
        if s.best_metric is None or value > s.best_metric:
            s.best_metric, s.best_epoch, s.epochs_without_improvement = value, epoch, 0
        else:
            s.epochs_without_improvement += 1
        s.history.append({k: v for k, v in record.items() if k != "type"} | {"eval": _summary(metrics)})
        ft.output.log(record | {"eval": _summary(metrics)})
        fault_point("epoch_end")
        ft.accelerator.print(f"epoch {epoch}: train_loss {record['train_loss']:.4f}  eval "
                             + "  ".join(f"{k} {v:.4f}" for k, v in _summary(metrics).items() if v is not None))
        self.last_metrics = s.last_metrics = metrics
        s.epoch, s.batches_in_epoch, s.epoch_loss_sum = epoch + 1, 0, 0.0
        self.save_checkpoint()
        return record

    def _stop_early(self) -> bool:
        p = self.ft.config.train.early_stopping_patience
        return p is not None and self.state.epochs_without_improvement >= p

    def best_record(self) -> dict | None:
        s = self.state
        if s.best_epoch is None:
            return None
        return next((h for h in s.history if h["epoch"] == s.best_epoch), None)


def _summary(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) or v is None}


def _plain_worker_errors(loader):
    """Iterate ``loader``; a hubft error raised in a DataLoader worker comes back as its own one-line message.

    torch re-raises a worker's exception with the worker's traceback folded into the message.
    """
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except HubftError as e:
            text = str(e)
            if "\n" not in text:
                raise
            last = next((line for line in reversed(text.splitlines()) if line.startswith("hubft.errors.")), None)
            if last is None:
                raise
            message, _, fix = last.split(": ", 1)[1].partition(". Fix: ")
            raise type(e)(message, fix=fix or None) from None
        yield batch


def _seed_device_rng(device: torch.device, seed: int) -> None:
    # torch.manual_seed seeds every backend's generator and costs ~70 us on CPU (it probes each lazy backend);
    # once per micro-batch that is measurable on small models. Seed what the model draws from: the CPU generator
    # and, on CUDA, the current device's.
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)
    elif device.type != "cpu":
        torch.manual_seed(seed)


def _trace() -> bool:
    return os.environ.get("HUBFT_FAULT_TRACE") == "1"


def _accelerate_file_point(path: Path) -> str | None:
    """The fault point after Accelerate wrote ``path`` in ``save_state`` (the RNG file is written last, elsewhere)."""
    if path.name.startswith("model"):
        return "checkpoint_after_weights"
    if path.name.startswith("optimizer"):
        return "checkpoint_after_optimizer"
    return None


def _progress(ft: "Finetuner", epoch: int):
    if not ft.accelerator.is_main_process:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=ft.updates_per_epoch, initial=math.ceil(ft.loop.state.batches_in_epoch /
                                                              ft.config.train.grad_accum_steps)
                if hasattr(ft, "loop") else 0, desc=f"epoch {epoch}", unit="step", dynamic_ncols=True, leave=False)


def _create_mixup(ft: "Finetuner"):
    from hubft.train.mixing import create_mixing

    return create_mixing(ft)
