"""A run's checkpoint: what goes into one, how a run continues from one, and which one ``train.resume`` means.

A checkpoint holds Accelerate's saved state (weights, optimizer, RNG states), the schedule, the EMA weights,
hubft's :class:`~hubft.train.state.TrainState` and, for a streamed train split, each process's stream position, written through :func:`~hubft.train.checkpoint.write_checkpoint`
(complete or absent, never half-written). A run continues from one only when it would continue the same run: the
settings in :func:`compat_fields` must match.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hubft.errors import CheckpointError, ConfigError, one_line
from hubft.faults import fault_point, fault_points_after_writes
from hubft.train.checkpoint import (Exchange, find_latest_checkpoint, prune_checkpoints, recover_interrupted_checkpoints,
                                    run_agreed, verify_checkpoint, write_checkpoint)
from hubft.train.finite import inner_optimizer
from hubft.train.parts import RunParts
from hubft.train.sharding import SHARDED_DIR, load_sharded_state, save_sharded_state
from hubft.train.state import STATE_FILE, TrainState

__all__ = ["compat_fields", "failure_exchange", "load_run_checkpoint", "optimizer_implementation",
           "resolve_resume", "save_run_checkpoint", "STREAM_FILE"]

# Per process: where its part of a streamed train split stood (hubft.train.stream.StreamingTrainData.state_at).
STREAM_FILE = "stream_{rank}.json"


def compat_fields(parts: RunParts) -> dict:
    """Settings a checkpoint must share with the run that resumes it."""
    c = parts.config
    adapter = {"model.adapter": c.model.adapter, "model.adapter_options": c.model.adapter_options} \
        if c.model.adapter is not None else {}
    n = parts.accelerator.num_processes
    # A sharded checkpoint re-shards to any number of processes: the run stays the same while the images of an
    # update do (train.batch_size x grad_accum_steps x processes). Accelerate's state of a DDP run is per process.
    layout = {"train.fsdp": True, "global_batch": c.train.batch_size * c.train.grad_accum_steps * n} \
        if c.train.fsdp else {"train.batch_size": c.train.batch_size,
                              "train.grad_accum_steps": c.train.grad_accum_steps, "num_processes": n}
    source = parts.data.source
    # A stream's recorded position means something only in the same data, split and shuffled the same way.
    stream = {"data.streaming": True, "data.revision_sha": source.revision_sha,
              "data.shuffle_buffer": c.data.shuffle_buffer} if source.streaming else {}
    return {
        **adapter,
        **stream,
        **layout,
        "model.name": c.model.name,
        "label_names": list(parts.data.label_names),
        "train.seed": c.train.seed,
        "train_examples": source.num_train,
        "optim.name": c.optim.name,
        "schedule.name": c.schedule.name if isinstance(c.schedule.name, str) else repr(c.schedule.name),
        "param_groups": list(parts.group_names),
    }


def failure_exchange(parts: RunParts) -> Exchange | None:
    """A gather of every process's failure code, for :func:`~hubft.train.checkpoint.run_agreed`; None for one.

    It is a collective: every process calls it at the same point, also the one whose write failed.
    """
    acc = parts.accelerator
    if acc.num_processes == 1:
        return None
    return lambda code: acc.gather(torch.tensor([code], dtype=torch.int64, device=acc.device)).tolist()


def save_run_checkpoint(parts: RunParts, state: TrainState) -> Path:
    """Write the checkpoint of update ``state.update``, prune old ones and hand it to the checkpoint pusher.

    Every process calls it at the same point; a write that fails on any of them stops all of them with the same
    error (see :func:`~hubft.train.checkpoint.run_agreed`).

    Raises:
        TrainingError: The write failed (disk full, permissions); older checkpoints are untouched.
    """
    acc = parts.accelerator
    root = Path(parts.config.train.output_dir) / "checkpoints"

    def write(tmp: Path) -> None:
        # Accelerate writes weights, optimizer and RNG states in one call; the fault points between its files
        # exist only while a test plans faults.
        import accelerate.checkpointing

        if parts.config.train.fsdp:  # every process writes its shards; no RNG files: hubft seeds by position
            save_sharded_state(tmp / SHARDED_DIR, parts.model, inner_optimizer(parts.optimizer))
        else:
            with fault_points_after_writes(accelerate.checkpointing, "save", _accelerate_file_point):
                acc.save_state(str(tmp))
        if parts.train_stream is not None:  # every process its own part's position, as Accelerate its RNG states
            mark = parts.train_stream.state_at(_stream_position(parts, state))
            (tmp / STREAM_FILE.format(rank=acc.process_index)).write_text(json.dumps(mark))
        fault_point("checkpoint_after_accelerate_state")
        if acc.is_main_process:
            torch.save(parts.schedule.state_dict(), tmp / "scheduler.pt")
            if parts.ema is not None:
                save_file({k: v.contiguous() for k, v in parts.ema.module.state_dict().items()},
                          str(tmp / "ema.safetensors"))
            (tmp / STATE_FILE).write_text(state.to_json())
            fault_point("checkpoint_after_train_state")

    state.layout = _layout(parts)
    exchange = failure_exchange(parts)
    path = write_checkpoint(root, state.update, write, is_main_process=acc.is_main_process, exchange=exchange,
                            tmp_name=f".tmp-step-{state.update:08d}")

    def after_write() -> None:
        if acc.is_main_process:
            prune_checkpoints(root, parts.config.train.keep_checkpoints)
            fault_point("checkpoint_after_prune")
            if parts.checkpoint_pusher is not None:
                parts.checkpoint_pusher.submit(path)  # uploads in the background; the loop goes on at once

    # Agreed too: the other processes would otherwise train on into a collective the main one never reaches.
    run_agreed(after_write, exchange)
    return path


def optimizer_implementation(parts: RunParts) -> list[dict]:
    """The optimizer implementation the config chose (fused or not), per group: what resume puts back."""
    return [{k: g[k] for k in ("fused", "foreach") if k in g} for g in inner_optimizer(parts.optimizer).param_groups]


def load_run_checkpoint(parts: RunParts, path: Path, compat: dict) -> TrainState:
    """Load a verified checkpoint into the run's parts and return its training state.

    Raises:
        CheckpointError: The checkpoint was written by a run with other settings (every difference named), or
            cannot be loaded (a pickle ``weights_only`` refuses, shapes that differ, files altered since).
    """
    acc = parts.accelerator
    state = TrainState.read(path)
    state.check_compatible(compat, path)
    implementation = optimizer_implementation(parts)
    try:
        if parts.config.train.fsdp:
            load_sharded_state(path / SHARDED_DIR, parts.model, inner_optimizer(parts.optimizer))
            _continue_at_this_layout(state, _layout(parts))
        else:
            acc.load_state(str(path))
        parts.schedule.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        if parts.ema is not None and (path / "ema.safetensors").is_file():
            parts.ema.module.load_state_dict(load_file(str(path / "ema.safetensors")))
    except Exception as e:  # pickle refusals (weights_only), shape mismatches, files altered after verification
        raise CheckpointError(f"checkpoint {str(path)!r} could not be loaded ({type(e).__name__}: {one_line(e)})",
                              fix="resume from another checkpoint, or start a new run in another "
                                  "train.output_dir") from None
    _restore_implementation(parts, implementation)
    if parts.train_stream is not None:
        _load_stream_state(parts, path, state)
    state.compat = compat
    return state


def _stream_position(parts: RunParts, state: TrainState) -> int:
    """Examples each process consumed by update ``state.update`` (checkpoints sit on update boundaries and every
    streamed batch is full)."""
    t = parts.config.train
    return state.update * t.grad_accum_steps * t.batch_size


def _load_stream_state(parts: RunParts, path: Path, state: TrainState) -> None:
    """Put this process's part of the stream back where the checkpoint's update left it."""
    file = path / STREAM_FILE.format(rank=parts.accelerator.process_index)
    try:
        mark = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} has no readable stream position ({file.name}: "
                              f"{one_line(e)})", fix="resume from another checkpoint") from None
    if mark.get("position") != _stream_position(parts, state):
        raise CheckpointError(f"checkpoint {str(path)!r} records stream position {mark.get('position')} at update "
                              f"{state.update}, not {_stream_position(parts, state)}",
                              fix="resume from another checkpoint")
    parts.train_stream.load_state_dict(mark)


def _layout(parts: RunParts) -> dict:
    return {"processes": parts.accelerator.num_processes, "grad_accum_steps": parts.config.train.grad_accum_steps}


def _continue_at_this_layout(state: TrainState, layout: dict) -> None:
    """Translate the position in the epoch of a (sharded) checkpoint written at another number of processes or
    accumulation steps: the same updates done, and the epoch's mean train loss so far carried over."""
    old = state.layout or layout
    if old == layout:
        return
    done = state.batches_in_epoch // old["grad_accum_steps"]  # checkpoints fall on update boundaries
    batches = done * layout["grad_accum_steps"]
    if state.epoch_loss_sums and state.batches_in_epoch:
        mean = sum(state.epoch_loss_sums) / len(state.epoch_loss_sums) / state.batches_in_epoch
        state.epoch_loss_sums = [mean * batches] * layout["processes"]
        state.epoch_loss_sum = state.epoch_loss_sums[0]
    state.batches_in_epoch, state.layout = batches, layout


def _restore_implementation(parts: RunParts, implementation: list[dict]) -> None:
    """Put back the configured optimizer implementation after a checkpoint's param_groups replaced it.

    ``load_state_dict`` takes every group setting from the checkpoint, ``fused`` included: without this, a
    checkpoint written without the fused kernel would resume without it (and without the sync-free check).
    A fused kernel keeps its step counts as float32 on the parameter's device.
    """
    inner = inner_optimizer(parts.optimizer)
    for group, chosen in zip(inner.param_groups, implementation):
        group.update(chosen)
        if group.get("fused"):
            for p in group["params"]:
                step = inner.state.get(p, {}).get("step")
                if isinstance(step, torch.Tensor):
                    inner.state[p]["step"] = step.to(dtype=torch.float32, device=p.device)


def resolve_resume(parts: RunParts, resume: str) -> Path:
    """Turn ``train.resume`` (``latest``, a path or ``hub:owner/name[@branch]``) into a verified checkpoint.

    Raises:
        CheckpointError: The named checkpoint is incomplete or corrupt.
        ConfigError: ``latest`` was asked for but there is no complete checkpoint.
    """
    root, acc = Path(parts.config.train.output_dir) / "checkpoints", parts.accelerator
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


def _accelerate_file_point(path: Path) -> str | None:
    """The fault point after Accelerate wrote ``path`` in ``save_state`` (the RNG file is written last, elsewhere)."""
    if path.name.startswith("model"):
        return "checkpoint_after_weights"
    if path.name.startswith("optimizer"):
        return "checkpoint_after_optimizer"
    return None
