"""The training loop: epochs of accumulated updates over a run's parts, evaluation each epoch, checkpoints.

Time is explicit: the optimizer-update count drives the schedule, logging and checkpoints; dropout is seeded from
``(seed, epoch, batch, process)`` and augmentation from ``(seed, epoch, index)``, so an interrupted run resumed from a
checkpoint replays exactly what the uninterrupted run would have done.

A non-finite loss or gradient stops the run before the optimizer moves anything (:class:`~hubft.train.finite.
FiniteGuard`): parameters, optimizer state and the buffers the update's forward passes touched (BatchNorm
statistics) are those of the previous update, and no checkpoint or output is written from them.

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

import torch

from hubft.faults import fault_point
from hubft.losses import class_range_checked_upstream
from hubft.train.evaluation import evaluate, metric_summary
from hubft.train.finite import FiniteGuard, defers_check
from hubft.train.host_memory import release_host_memory
from hubft.train.parts import RunParts
from hubft.train.prefetch import prefetch_to_device
from hubft.train.run_checkpoint import compat_fields, load_run_checkpoint, save_run_checkpoint
from hubft.train.sampler import mix_seed
from hubft.train.state import TrainState
from hubft.train.workers import plain_worker_errors

__all__ = ["StopRequest", "TrainLoop", "model_inputs", "seed_device_rng"]


class StopRequest:
    """Set (from a SIGTERM handler) to make the loop checkpoint and return at the next update boundary."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int = 0, frame: object = None) -> None:
        self.requested = True


class TrainLoop:
    """Runs epochs, evaluates, checkpoints and resumes over a set-up run's :class:`~hubft.train.parts.RunParts`.

    The loop's own state (:attr:`state`, what a checkpoint saves) is the only thing it changes besides the parts'
    contents (weights, optimizer state, the schedule's counters).

    Args:
        parts: The run's parts.
        stop: Checked after every update; when set, the loop writes a checkpoint and returns (:attr:`preempted`).
    """

    def __init__(self, parts: RunParts, stop: StopRequest | None = None) -> None:
        self.parts = parts
        self.stop = stop or StopRequest()
        self.state = TrainState(compat=compat_fields(parts))
        #: Whether the run stopped for a stop request (every process agreed) after writing a checkpoint.
        self.preempted = False
        #: The full metrics of the last evaluation.
        self.last_metrics: dict | None = None
        self.finite = FiniteGuard(parts.accelerator, parts.optimizer, parts.model, parts.config.train.check_gradients)
        self._stepper = _stepping_optimizer(parts)
        self.has_frozen = any(not p.requires_grad for p in parts.model.parameters())
        self._loss_sum = torch.zeros((), dtype=torch.float64)
        self._epoch_train_loss = 0.0
        # (update, epoch, batches) of the last checkpoint written or resumed from: a SIGTERM right after a periodic
        # checkpoint must not write the same state again.
        self._saved: tuple[int, int, int] | None = None
        self._inputs = hashlib.sha256() if os.environ.get("HUBFT_TRACE_INPUTS") == "1" else None

    # -- checkpoints --------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the run as it is now (every process calls it)."""
        self.finite.resolve()  # never checkpoint an update that was refused on the device
        s, acc = self.state, self.parts.accelerator
        # Part of the epoch's mean train loss, every process's own, so that a resumed run logs the same epoch record.
        partial = self._loss_sum if s.batches_in_epoch else torch.zeros((), dtype=torch.float64, device=acc.device)
        sums = acc.gather(partial.reshape(1)).tolist() if acc.num_processes > 1 else [float(partial)]
        s.epoch_loss_sum, s.epoch_loss_sums = sums[0], sums
        path = save_run_checkpoint(self.parts, s)
        self._saved = (s.update, s.epoch, s.batches_in_epoch)
        return path

    def resume(self, path: Path) -> None:
        """Continue from the verified checkpoint ``path`` (see :func:`~hubft.train.run_checkpoint.resolve_resume`).

        Raises:
            CheckpointError: The checkpoint belongs to a run with other settings, or cannot be loaded.
        """
        p = self.parts
        state = load_run_checkpoint(p, path, self.state.compat)
        self.finite.deferred = defers_check(p.accelerator, p.optimizer)  # the implementation may be back
        self.state = state
        if state.last_metrics is not None:
            self.last_metrics = state.last_metrics
        self._saved = (state.update, state.epoch, state.batches_in_epoch)
        p.output.truncate_log(state.update)
        p.accelerator.print(f"hubft: resumed from {path} (epoch {state.epoch}, update {state.update})")

    # -- the loop -----------------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Train the remaining epochs; returns the last epoch's record (``{}`` if none ran)."""
        c, s = self.parts.config, self.state
        last = s.history[-1] if s.history else {}
        self.release_host_memory()  # what setup freed (decoding, the data scan): the first update starts from less
        for epoch in range(s.epoch, c.train.epochs):
            if self._done():
                break
            if self.has_frozen and c.model.unfreeze_epoch is not None and epoch >= c.model.unfreeze_epoch:
                from hubft.models import unfreeze

                unfreeze(self.parts.unwrapped_model)
                self.has_frozen = False
            s.epoch = epoch
            self.train_epoch(epoch)
            if self.preempted:
                return last
            last = self.end_epoch(epoch)
            if self._stop_early():
                self.parts.accelerator.print(f"hubft: early stopping after epoch {epoch} (best epoch {s.best_epoch})")
                break
        return last

    def _done(self) -> bool:
        m = self.parts.config.train.max_updates
        return m is not None and self.state.update >= m

    def train_epoch(self, epoch: int) -> None:
        """Train the rest of epoch ``epoch`` (all of it, unless a resumed checkpoint is inside it)."""
        p, s, acc = self.parts, self.state, self.parts.accelerator
        loader = p.train_loader
        if s.batches_in_epoch and p.train_stream is None:  # a stream resumes from its recorded position instead
            loader = acc.skip_first_batches(p.train_loader, s.batches_in_epoch)
        # Accelerate's loaders re-set the sampler's epoch from their own iteration counter on every __iter__: set
        # it through the loader actually iterated. Its set_epoch does not reach the sampler through a loader that
        # skips the batches of a resumed epoch over process shards (SkipBatchSampler -> BatchSamplerShard), so set
        # the sampler's too, or a resumed 2-process run would replay epoch 0's order.
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        p.train_sampler.set_epoch(epoch)
        p.model.train()
        self.finite.begin_epoch()
        seen, t0 = 0, time.perf_counter()
        own = s.epoch_loss_sums[acc.process_index] if s.epoch_loss_sums else s.epoch_loss_sum
        self._loss_sum = torch.tensor(own, device=acc.device, dtype=torch.float64)
        bar = self._progress(epoch)
        try:
            # No read-ahead under accumulation: Accelerate ends an epoch's last accumulation from its loader's state.
            ahead = p.config.train.grad_accum_steps == 1
            for x, y in prefetch_to_device(plain_worker_errors(loader), acc.device, ahead=ahead):
                loss = self._micro_batch(x, y, epoch)
                seen += x.shape[0]
                if acc.sync_gradients and self._after_update(epoch, loss, seen, t0, bar):
                    break
            self.finite.resolve()
        finally:
            # Closed on errors too, so that an error message starts on a line of its own.
            if bar is not None:
                bar.close()
        self._epoch_train_loss = float(acc.reduce(self._loss_sum.float(), "mean")) / max(1, s.batches_in_epoch)

    def _inputs_of(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's input and targets for one loaded batch (see :func:`model_inputs`), traced when asked."""
        x, y = model_inputs(self.parts, x, y, epoch, self.state.batches_in_epoch)
        if self._inputs is not None:
            self._inputs.update(x.detach().cpu().contiguous().numpy().tobytes())
            self._inputs.update(y.detach().cpu().contiguous().numpy().tobytes())
        return x, y

    def _micro_batch(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
        """Forward and backward one batch; on an accumulation boundary, check and apply the update."""
        p, s, acc = self.parts, self.state, self.parts.accelerator
        # Dropout / drop-path draw from torch's global RNG: seed it from the position in the run.
        seed_device_rng(acc.device, mix_seed(p.config.train.seed, 1, epoch, s.batches_in_epoch, acc.process_index))
        x, y = self._inputs_of(x, y, epoch)
        self.finite.before_forward()
        with acc.accumulate(p.model):
            out = p.model(x)
            # The labels were checked against the head's classes when the data was loaded: on a GPU, skip the
            # loss's own check, which would cost a host sync in the middle of every step.
            with class_range_checked_upstream():
                loss = p.loss_fn(out, y)
            if fault_point("loss"):
                loss = loss * float("nan")
            self.finite.add_loss(loss)
            acc.backward(loss)
            if fault_point("gradients"):
                next(q for q in p.model.parameters() if q.grad is not None).grad.fill_(float("inf"))
            fault_point("after_backward")
            if acc.sync_gradients:
                self._apply_update(epoch)
        s.batches_in_epoch += 1
        self._loss_sum += loss.detach()
        return loss

    def _apply_update(self, epoch: int) -> None:
        """Check the accumulated gradients, then clip and step (inside ``accumulate``, at its boundary)."""
        p = self.parts
        self.finite.check(epoch, self.state.update + 1)
        if self.has_frozen:
            # Under DDP a frozen parameter may come back with a zero gradient: never let the optimizer (momentum,
            # weight decay) move it.
            for q in self.finite.parameters:
                if not q.requires_grad:
                    q.grad = None
        if p.config.optim.clip_grad_norm is not None:
            p.accelerator.clip_grad_norm_(p.model.parameters(), p.config.optim.clip_grad_norm)
        self._stepper.step()
        self.finite.after_step()
        self._stepper.zero_grad(set_to_none=True)

    def _after_update(self, epoch: int, loss: torch.Tensor, seen: int, t0: float, bar) -> bool:
        """Schedule, EMA, log, checkpoint and stop requests after update ``state.update + 1``; True: stop."""
        p, c, s, acc = self.parts, self.parts.config, self.state, self.parts.accelerator
        s.update += 1
        fault_point("after_optimizer_step")
        p.schedule.step_update(s.update)
        if p.ema is not None:
            p.ema.update(p.unwrapped_model, step=s.update)
        if s.update % c.train.log_every == 0 or s.update == 1:
            self._log_step(epoch, loss, seen, t0, bar)
        if self._inputs is not None:
            self._inputs = hashlib.sha256()
        if bar is not None:
            bar.update(1)
        acc.print(f"HUBFT_STEP {s.update}", flush=True) if _trace() else None
        # The epoch's last update (or the run's) is checkpointed by end_epoch, with the epoch closed: writing it
        # here too would only write the same step twice.
        closes_epoch = s.batches_in_epoch >= len(p.train_loader) or self._done()
        every = c.train.checkpoint_every
        if every and s.update % every == 0 and not closes_epoch:
            self.save_checkpoint()
        if self._agree(self.stop.requested):
            self.preempted = True
            if self._saved != (s.update, s.epoch, s.batches_in_epoch):
                self.save_checkpoint()
            acc.print(f"hubft: stopped by SIGTERM at update {s.update}; checkpoint written, resume with "
                      "train.resume=latest", flush=True)
            return True
        return self._done()

    def _log_step(self, epoch: int, loss: torch.Tensor, seen: int, t0: float, bar) -> None:
        p, s, acc = self.parts, self.state, self.parts.accelerator
        self.finite.resolve()  # the loss below syncs anyway; a refused update is never logged
        elapsed = max(time.perf_counter() - t0, 1e-9)
        rec = {"type": "step", "step": s.update, "epoch": epoch, "loss": float(loss.detach()),
               "lr": {n: g["lr"] for n, g in zip(p.group_names, p.optimizer.param_groups)},
               "images_per_s": seen * acc.num_processes / elapsed, "time": time.time()}
        if self._inputs is not None:
            rec["inputs"] = self._inputs.hexdigest()[:16]
        p.output.log(rec)
        if bar is not None:
            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{p.optimizer.param_groups[0]['lr']:.2e}",
                            img_s=f"{rec['images_per_s']:.0f}")

    def _agree(self, flag: bool) -> bool:
        acc = self.parts.accelerator
        if acc.num_processes == 1:
            return flag
        t = torch.tensor(float(flag), device=acc.device)
        return bool(acc.reduce(t, "sum") > 0)

    # -- evaluation and epoch end -------------------------------------------------------------------------------
    def evaluate(self, model: torch.nn.Module) -> dict:
        """The task's metrics of ``model`` on the eval split (see :func:`~hubft.train.evaluation.evaluate`)."""
        return evaluate(self.parts, model)

    def end_epoch(self, epoch: int) -> dict:
        """Evaluate, step epoch schedules, track the best epoch, log and checkpoint; returns the epoch's record."""
        p, s = self.parts, self.state
        self.release_host_memory()  # what the epoch's updates kept for each other: evaluation starts from less
        metrics = self.evaluate(p.model)
        summary = metric_summary(metrics)
        record = {"type": "epoch", "epoch": epoch, "step": s.update, "train_loss": self._epoch_train_loss,
                  "eval": metrics}
        if p.ema is not None:
            record["eval_ema"] = self.evaluate(p.ema.module)
        value = metrics[p.task.primary_metric]
        p.schedule.step_epoch(epoch, metric=value)
        if p.task.is_better(value, s.best_metric):
            s.best_metric, s.best_epoch, s.epochs_without_improvement = value, epoch, 0
        else:
            s.epochs_without_improvement += 1
        s.history.append({k: v for k, v in record.items() if k != "type"} | {"eval": summary})
        p.output.log(record | {"eval": summary})
        fault_point("epoch_end")
        p.accelerator.print(f"epoch {epoch}: train_loss {record['train_loss']:.4f}  eval "
                            + "  ".join(f"{k} {v:.4f}" for k, v in summary.items() if v is not None))
        self.last_metrics = s.last_metrics = metrics
        s.epoch, s.batches_in_epoch, s.epoch_loss_sum, s.epoch_loss_sums = epoch + 1, 0, 0.0, None
        self.release_host_memory()
        self.save_checkpoint()
        return record

    def release_host_memory(self) -> None:
        """At a phase boundary, hand back the host memory ``train.reuse_host_memory`` keeps between updates
        (:func:`~hubft.train.host_memory.release_host_memory`); nothing when the setting is not in force."""
        if self.parts.reuses_host_memory:
            release_host_memory()

    def _stop_early(self) -> bool:
        patience = self.parts.config.train.early_stopping_patience
        return patience is not None and self.state.epochs_without_improvement >= patience

    def best_record(self) -> dict | None:
        """The history record of the best epoch so far, or None."""
        s = self.state
        if s.best_epoch is None:
            return None
        return next((h for h in s.history if h["epoch"] == s.best_epoch), None)

    def _progress(self, epoch: int):
        p = self.parts
        if not p.accelerator.is_main_process:
            return None
        from tqdm.auto import tqdm

        done = math.ceil(self.state.batches_in_epoch / p.config.train.grad_accum_steps)
        return tqdm(total=p.updates_per_epoch, initial=done, desc=f"epoch {epoch}", unit="step", dynamic_ncols=True,
                    leave=False)


def model_inputs(parts: RunParts, x: torch.Tensor, y: torch.Tensor, epoch: int,
                 batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A loaded training batch as the model takes it: normalised on the device, channels-last, mixed.

    Mixing is seeded by ``(seed, epoch, batch)`` alone: every process mixes its shard with the same lam and box, as
    one global batch would be. From ``data.mixup_off_epoch`` on, images are kept but targets stay soft (and
    smoothed).
    """
    if x.dtype == torch.uint8:  # cached images arrive as uint8 and are normalised here, on the device
        x = parts.train_normalize(x)
    if parts.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if parts.mixing is not None:
        x, y = parts.mixing(x, y, mix_seed(parts.config.train.seed, 2, epoch, batch), epoch=epoch)
    return x, y


def seed_device_rng(device: torch.device, seed: int) -> None:
    """Seed the generators a model's dropout draws from on ``device``."""
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


def _stepping_optimizer(parts: RunParts) -> torch.optim.Optimizer:
    """What the loop calls ``step`` / ``zero_grad`` on at an update boundary: Accelerate's optimizer wrapper with a
    GradScaler (fp16) or on XLA, where it does work; otherwise the torch optimizer inside it. There the wrapper only
    forwards, yet looks for an optional package on disk (``is_lomo_available``) at every ``step`` and inspects
    ``zero_grad``'s signature at every call: about 0.5 ms an update on CPU, half a percent of a small model's."""
    from accelerate.utils import DistributedType

    from hubft.train.finite import inner_optimizer

    wrapper = parts.optimizer
    if getattr(wrapper, "scaler", None) is not None or parts.accelerator.distributed_type == DistributedType.XLA:
        return wrapper
    return inner_optimizer(wrapper)
