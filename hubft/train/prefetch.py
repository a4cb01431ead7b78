"""Move training batches to the device one batch ahead, so that the copy overlaps the current step's compute."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from accelerate.utils import send_to_device

__all__ = ["prefetch_to_device"]


def _tensors(batch: Any) -> Iterator[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, (list, tuple)):
        for item in batch:
            yield from _tensors(item)
    elif isinstance(batch, dict):
        for item in batch.values():
            yield from _tensors(item)


def prefetch_to_device(batches: Iterable, device: torch.device, *, ahead: bool = True) -> Iterator:
    """Yield each batch of ``batches`` (tensors, or lists / tuples / dicts of them) on ``device``.

    On CUDA with ``ahead`` the next batch is copied on a side stream while the caller works on the current one (the
    loader's pinned memory makes the copy asynchronous), as timm's ``PrefetchLoader`` does: the step never waits for
    a host-to-device copy, and a host sync (a log line, a checkpoint, or the non-finite check with an optimizer that
    has no fused kernel) does not leave the GPU idle while the next batch crosses the bus. The compute stream waits
    for the copy before it uses a batch, and each batch's memory is tied to the compute stream, so the allocator
    cannot reuse it too early. Batches are then taken from ``batches`` one ahead of the caller, so an error in the
    loader surfaces one batch early.

    Otherwise (CPU, MPS, XPU, or ``ahead=False``) each batch is moved with a plain ``send_to_device`` when it is
    taken, never before. Reading ahead must be off under gradient accumulation: Accelerate decides an epoch's last
    update from its prepared loader's end-of-data flag, which reading one batch ahead would raise one batch early.
    """
    if device.type != "cuda" or not ahead:
        for batch in batches:
            yield send_to_device(batch, device)
        return
    stream = torch.cuda.Stream(device)
    compute = torch.cuda.current_stream(device)
    end = object()

    def start(batch: Any) -> Any:
        if batch is end:
            return end
        with torch.cuda.stream(stream):
            return send_to_device(batch, device, non_blocking=True)

    iterator = iter(batches)
    ahead = start(next(iterator, end))
    while ahead is not end:
        compute.wait_stream(stream)
        current = ahead
        for tensor in _tensors(current):
            tensor.record_stream(compute)
        ahead = start(next(iterator, end))
        yield current
