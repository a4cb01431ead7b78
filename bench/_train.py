"""Ratios 1-2: hubft's real training loop vs a hand-written PyTorch loop and vs a plain Accelerate loop.

Every side trains the same model (made by ``hubft.create_model``), with the same AdamW parameter groups and
optimizer kernel, batch, memory format and precision, for K optimizer updates per repetition: hubft's
``Finetuner.loop.train_epoch`` (Accelerate, seeded dropout, logging, the BatchNorm snapshot, the finite checks)
against the bare step.

- Ratio 1 (target): hubft's loop on the plain loop's own batches, already in memory, as the issue defines it.
- Ratio 2 (target): hubft's loop and Accelerate's ``cv_example`` loop, both reading the same in-memory tensors
  through the same kind of Accelerate-prepared DataLoader.
- For scale, no target: hubft end to end on an in-memory ``datasets.Dataset`` (its decoded-once uint8 cache and a
  random-resized crop + flip of every image, which the plain loop does not do), and the loop with
  ``train.check_gradients: false`` (what the per-update read of every gradient costs).

The building blocks (cases, the three loops) are reused by the pipeline and hardware benchmarks.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench._timing import Row, interleave, quiet, speed_row

NUM_CLASSES = 8
LR, WEIGHT_DECAY = 1e-3, 0.05  # hubft's defaults (OptimConfig), written out for the plain loops
EPOCHS = 1000  # only sets the length of the cosine schedule: the LR stays near its peak during the benchmark


@dataclass(frozen=True)
class Case:
    model: str
    size: int
    batch: int
    # Optimizer updates per repetition: short repetitions pair better on a noisy machine (both sides of a pair see
    # the same load), long ones let a real run's per-epoch costs (progress bar, model.train(), the first update's
    # cold caches) weigh as little as they do over an epoch of hundreds of updates. 4 is the compromise.
    updates: int = 4

    @property
    def label(self) -> str:
        return f"{self.model} @ {self.size} px, batch {self.batch}"


CPU_CASES = [
    Case("resnet18", 64, 32),
    Case("resnet18", 224, 8),
    Case("vit_tiny_patch16_224", 224, 8),
    Case("mobilenetv3_large_100", 224, 16),
]
QUICK_CPU_CASES = [Case("resnet18", 64, 16, updates=2)]  # the quick set: one case per ratio
# On a GPU: bf16 + channels-last, batches large enough to keep the card busy, and epochs of 24 updates: a real
# epoch's start (the workers' first batches) is paid once per thousands of updates, not once per handful. A conv
# net (resnet50, whose images/s timm publishes) and a ViT: with the smoke run, about 5 minutes on an H100 at the
# GPU's default of 10 repetitions (a lent GPU comes with 10-15 minutes).
GPU_CASES = [
    Case("resnet50", 224, 128, updates=24),
    Case("vit_small_patch16_224", 224, 128, updates=24),
]


def label_names() -> list[str]:
    from hubft.data import synthetic_class_names

    return synthetic_class_names(NUM_CLASSES)


def memory_batches(case: Case, device: torch.device, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """K normalised NCHW batches and labels, already on ``device``: the "data in memory" of the plain loops."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(case.batch, 3, case.size, case.size, generator=g).to(device),
             torch.randint(0, NUM_CLASSES, (case.batch,), generator=g).to(device)) for _ in range(case.updates)]


@functools.lru_cache(maxsize=2)
def image_dataset(count: int, size: int, seed: int = 0):
    """A ``DatasetDict`` of ``count`` synthetic train images (PNG in Arrow, as a Hub dataset holds them) + a tiny
    eval split, which hubft needs but the benchmark never evaluates.

    Made once per shape and shared: hubft never changes a dataset it is given (it reads through ``with_format``
    copies), and encoding a GPU case's 3,072 PNGs at 224 px took ~30 s on this CPU for each of a case's four runs.
    """
    import datasets
    from hubft.data import make_synthetic_image_dataset

    train = make_synthetic_image_dataset(NUM_CLASSES, math.ceil(count / NUM_CLASSES), size, seed)
    return datasets.DatasetDict(train=train.shuffle(seed=seed).select(range(count)),
                                test=make_synthetic_image_dataset(NUM_CLASSES, 1, size, seed + 1))


def create_model(case: Case, device: torch.device, channels_last: bool) -> torch.nn.Module:
    import hubft

    model = hubft.create_model(case.model, label_names=label_names(), pretrained=False, head_init_seed=0)
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def create_optimizer(model: torch.nn.Module, fused: bool = False) -> torch.optim.Optimizer:
    from hubft.optim import param_groups

    # The same decay / no-decay split hubft uses; a hand-written loop would write the same two groups. fused=False
    # is torch's default implementation (a for-loop over the parameters on CPU, foreach on CUDA).
    return torch.optim.AdamW(param_groups(model, lr=LR, weight_decay=WEIGHT_DECAY), fused=fused or None)


def uses_fused(run: "HubftRun") -> bool:
    """Whether hubft picked torch's fused optimizer kernel for this run (``optim.fused: auto``)."""
    return bool(run.ft.parts.optimizer.param_groups[0].get("fused"))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def use_mixed_precision(mixed_precision: str) -> None:
    """Let the next ``Accelerator`` use ``mixed_precision`` in this process.

    Accelerate keeps its state in a process-wide singleton and refuses a second precision. Only the bf16 side of
    the hardware benchmark needs a different one; objects prepared earlier keep their own autocast wrapper (the
    training loop reads nothing else from that state on CPU/bf16), so resetting between constructions is safe
    here. Benchmark-only: a real run has one precision.
    """
    from accelerate.state import AcceleratorState, is_initialized

    if is_initialized() and AcceleratorState().mixed_precision != mixed_precision:
        AcceleratorState._reset_state()


class PlainLoop:
    """The hand-written reference: the loop of the PyTorch tutorials, with the same model, groups and batch."""

    def __init__(self, case: Case, batches: list, device: torch.device, *, channels_last: bool,
                 amp: torch.dtype | None = None, fused: bool = False) -> None:
        self.batches, self.device, self.channels_last, self.amp = batches, device, channels_last, amp
        self.model = create_model(case, device, channels_last)
        self.optimizer = create_optimizer(self.model, fused)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=EPOCHS * case.updates)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self) -> None:
        self.model.train()
        for x, y in self.batches:
            self.step(x, y)
        synchronize(self.device)


def tensor_loader(case: Case, batches: list) -> torch.utils.data.DataLoader:
    """A shuffling DataLoader over the batches' tensors (a TensorDataset): the "data in memory" of a loader loop."""
    data = torch.utils.data.TensorDataset(torch.cat([x.cpu() for x, _ in batches]),
                                          torch.cat([y.cpu() for _, y in batches]))
    return torch.utils.data.DataLoader(data, batch_size=case.batch, shuffle=True)


class AccelerateLoop:
    """Accelerate's ``examples/cv_example.py`` loop over the same in-memory tensors (a TensorDataset loader)."""

    def __init__(self, case: Case, batches: list, device: torch.device, *, channels_last: bool,
                 mixed_precision: str, fused: bool = False) -> None:
        from accelerate import Accelerator

        use_mixed_precision(mixed_precision)
        self.accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=mixed_precision)
        self.device, self.channels_last = device, channels_last
        model = create_model(case, device, channels_last)
        optimizer = create_optimizer(model, fused)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS * case.updates)
        self.model, self.optimizer, self.loader, self.scheduler = self.accelerator.prepare(
            model, optimizer, tensor_loader(case, batches), scheduler)

    def __call__(self) -> None:
        self.model.train()
        for x, y in self.loader:
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(self.model(x), y)
            self.accelerator.backward(loss)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
        synchronize(self.device)


class _TimedLoader:
    """Wraps hubft's prepared train loader, adding up the time the loop waits for batches (the input path)."""

    def __init__(self, loader: Any) -> None:
        self.loader, self.seconds = loader, 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        batches = iter(self.loader)
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            self.seconds += time.perf_counter() - start
            if batch is None:
                return
            yield batch


class _MemoryBatches:
    """Stands in for hubft's loader with batches already in memory: hubft's loop with no input path at all."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        return iter(self.batches)


class HubftRun:
    """A real ``hubft.Finetuner``; one call = one ``train_epoch`` of exactly ``case.updates`` updates.

    ``batches``: a list of in-memory batches the loop takes as they are, or ``"loader"`` for an Accelerate-prepared
    DataLoader over ``loader_batches`` (what :class:`AccelerateLoop` reads); by default hubft's own loader.
    """

    def __init__(self, case: Case, device: torch.device, *, dataset=None, config: dict | None = None,
                 mixed_precision: str = "no", batches: list | str | None = None,
                 loader_batches: list | None = None) -> None:
        import hubft
        from hubft.train.loop import TrainLoop

        self.tmp = tempfile.TemporaryDirectory(prefix="hubft-bench-")
        base = {
            "model": {"name": case.model, "pretrained": False},
            "data": {"image_size": case.size, "eval_split": "test"},
            "train": {"batch_size": case.batch, "epochs": EPOCHS, "output_dir": str(Path(self.tmp.name) / "run"),
                      "mixed_precision": mixed_precision, "cpu": device.type == "cpu"},
        }
        for section, values in (config or {}).items():
            base[section] = base.get(section, {}) | values
        if dataset is None and "path" not in base["data"]:
            dataset = image_dataset(case.batch * case.updates, case.size)
        use_mixed_precision(mixed_precision)
        self.ft = hubft.Finetuner(base, dataset=dataset)
        start = time.perf_counter()
        with quiet():
            self.ft.setup()
        self.setup_seconds = time.perf_counter() - start
        parts = self.ft.parts
        if len(parts.train_loader) != case.updates:
            raise RuntimeError(f"hubft's epoch has {len(parts.train_loader)} batches, expected {case.updates}")
        # Instrumentation only: a loop over the same parts but another train_loader (the loop calls set_epoch and
        # len on it).
        if batches == "loader":
            loader = self.ft.accelerator.prepare_data_loader(tensor_loader(case, loader_batches))
        elif batches is not None:
            loader = _MemoryBatches(batches)
        else:
            loader = _TimedLoader(parts.train_loader)
        self.loader = loader
        self.loop = TrainLoop(dataclasses.replace(parts, train_loader=loader), self.ft.stop)
        self.device = device
        self.epoch = 0
        self.data_seconds: list[float] = []

    @property
    def channels_last(self) -> bool:
        return self.ft.parts.channels_last

    def __call__(self) -> None:
        loop, loader = self.loop, self.loader
        # Each repetition is a fresh epoch (end_epoch would also evaluate and checkpoint, which is not training).
        loop.state.batches_in_epoch, loop.state.epoch_loss_sum, loop.state.epoch_loss_sums = 0, 0.0, None
        before = getattr(loader, "seconds", 0.0)
        with quiet():
            loop.train_epoch(self.epoch)
        synchronize(self.device)
        self.data_seconds.append(getattr(loader, "seconds", 0.0) - before)
        self.epoch += 1


def measure(case: Case, device: torch.device, reps: int, *, noise_floor: bool = False) -> list[Row]:
    """Ratios 1 and 2 for one case; the same rounds also give the share of hubft's time spent on its input path.

    ``noise_floor`` adds a second, identical plain loop and Accelerate loop to the rotation: how far from 1.0 the
    ratio of two equal sides lands in this run tells how much a line's distance from its target can be trusted.
    """
    gpu = device.type == "cuda"
    mixed_precision = "bf16" if gpu else "no"
    # On a GPU the epoch's images (~0.6 GB decoded) exceed cache: auto's limit; a user with that much memory can say
    # cache: true, and the benchmark does, so that it measures the training loop rather than PNG decoding.
    hubft_run = HubftRun(case, device, mixed_precision=mixed_precision, config={"data": {"cache": True}} if gpu else None)
    batches = memory_batches(case, device)
    # Like for like: the plain loops use the memory format and the optimizer kernel hubft chose for this model (what
    # those choices gain over a naive loop is ratio 6's question, not this one's).
    cl, fused = hubft_run.channels_last, uses_fused(hubft_run)
    amp = torch.bfloat16 if gpu else None
    plain = PlainLoop(case, batches, device, channels_last=cl, amp=amp, fused=fused)
    accelerate_loop = AccelerateLoop(case, batches, device, channels_last=cl, mixed_precision=mixed_precision,
                                     fused=fused)
    loop_only = HubftRun(case, device, mixed_precision=mixed_precision, batches=batches)
    # The same loop reading what the Accelerate loop reads: a prepared DataLoader over the same tensors.
    on_loader = HubftRun(case, device, mixed_precision=mixed_precision, batches="loader", loader_batches=batches)
    # The same loop without its one optional pass (train.check_gradients): what that safety check costs.
    unchecked = HubftRun(case, device, mixed_precision=mixed_precision, batches=batches,
                         config={"train": {"check_gradients": False}})
    sides = {"plain": plain, "accelerate": accelerate_loop, "hubft": hubft_run, "hubft_loop": loop_only,
             "hubft_on_loader": on_loader, "hubft_unchecked": unchecked}
    if noise_floor:
        sides["plain_again"] = PlainLoop(case, batches, device, channels_last=cl, amp=amp, fused=fused)
        sides["accelerate_again"] = AccelerateLoop(case, batches, device, channels_last=cl,
                                                   mixed_precision=mixed_precision, fused=fused)
    times = interleave(sides, reps)

    data = hubft_run.data_seconds[-reps:]  # warm-up calls come first
    images = case.batch * case.updates
    setting = (f"{'bf16' if gpu else 'fp32'}, {'channels-last' if cl else 'contiguous'}"
               f"{', fused AdamW' if fused else ''}")
    detail = {"channels_last": cl, "fused_optimizer": fused, "updates_per_rep": case.updates, "setting": setting,
              "hubft_data_share_median": statistics.median(d / t for d, t in zip(data, times["hubft"])),
              # What hubft adds per optimizer update, in ms: the whole run, and the loop alone.
              "extra_ms_per_update[hubft]": statistics.median(
                  (h - p) * 1e3 / case.updates for h, p in zip(times["hubft"], times["plain"])),
              "extra_ms_per_update[hubft_loop]": statistics.median(
                  (h - p) * 1e3 / case.updates for h, p in zip(times["hubft_loop"], times["plain"])),
              "images_per_s_median[hubft]": images / statistics.median(times["hubft"]),
              "images_per_s_median[hubft_loop]": images / statistics.median(times["hubft_loop"]),
              "images_per_s_median[plain]": images / statistics.median(times["plain"]),
              "hubft_setup_s": hubft_run.setup_seconds}
    where = "GPU " if gpu else ""
    rows = []
    if noise_floor:
        rows.append(speed_row(times, "plain_again", "plain", bench=f"1 {where}throughput",
                              metric="plain / identical plain (noise floor)", case=f"{case.label} ({setting})"))
        rows.append(speed_row(times, "accelerate_again", "accelerate", bench=f"2 {where}throughput",
                              metric="Accelerate loop / identical Accelerate loop (noise floor)",
                              case=f"{case.label} ({setting})"))
    label = f"{case.label} ({setting})"
    return rows + [
        speed_row(times, "hubft_loop", "plain", bench=f"1 {where}throughput",
                  metric="hubft loop / plain PyTorch, same tensors in memory", case=label, target=0.98,
                  detail=detail),
        speed_row(times, "hubft_on_loader", "accelerate", bench=f"2 {where}throughput",
                  metric="hubft loop / plain Accelerate loop, same prepared loader", case=label, target=0.99),
        speed_row(times, "hubft_unchecked", "plain", bench=f"1 {where}throughput",
                  metric="same, train.check_gradients false / plain", case=label),
        speed_row(times, "hubft", "plain", bench=f"1 {where}throughput",
                  metric="hubft on an in-memory Dataset, augmenting every image / plain, no augmentation",
                  case=label),
    ]


def run(reps: int, quick: bool, device: torch.device) -> list[Row]:
    cases = GPU_CASES if device.type == "cuda" else QUICK_CPU_CASES if quick else CPU_CASES
    rows = []
    for i, case in enumerate(cases):
        print(f"  train: {case.label}", flush=True)
        rows += measure(case, device, reps, noise_floor=i == 0)
    return rows
