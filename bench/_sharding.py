"""FSDP2 (hubft's ``train.fsdp``: ``hubft.train.sharding.shard_model``) next to DDP for the same model: the step
time and the per-process peak memory, on every process of one launch.

Step time: one ``torchrun`` launch builds both the DDP model and the sharded one from the same init in the same
processes and alternates their steps (order alternating too), each step timed between two barriers: the paired,
interleaved ratios of ``_timing``, across processes. Peak memory: one launch per side (a process's peak cannot be
split between two models living in it), the training's own peak above the process's footprint before the model
was built (CPU: peak RSS with a fixed malloc mmap threshold, CUDA: ``max_memory_allocated``), the largest over the
processes. Both are ratios DDP /
FSDP2: > 1 means FSDP2 is faster / lighter. On CPU FSDP2 pays its all-gathers and reduce-scatters through gloo
every step, so its step time ratio is expected < 1; the memory ratio is what it is for (parameters, gradients and
AdamW state each split across the processes).

``python -m bench._sharding --worker ...`` is the per-process side (started by ``torchrun``, never by hand).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from bench._timing import Row, Timings, speed_row

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Case:
    model: str
    size: int
    batch: int  # per process

    @property
    def label(self) -> str:
        return f"{self.model} @ {self.size}px, batch {self.batch} per process, AdamW"


CASE = Case("vit_small_patch16_224", 64, 8)
QUICK_CASE = Case("vit_tiny_patch16_224", 32, 4)
MEMORY_STEPS = 3


def run(reps: int, quick: bool, device: torch.device) -> list[Row]:
    """The two lines for ``device`` (CPU: 2 gloo processes; CUDA: one NCCL process per GPU)."""
    case = QUICK_CASE if quick else CASE
    world = 2 if device.type == "cpu" else torch.cuda.device_count()
    where = f"{world} processes, {'gloo on CPU' if device.type == 'cpu' else 'NCCL, one GPU each'}"
    note = "" if world > 1 else "one GPU: a single shard, so FSDP2 cannot save memory here (lend >= 2 GPUs)"
    print(f"  sharding: {case.label}, {where}", flush=True)
    steps = _launch(world, device, case, "time", reps=reps)
    times = Timings(["fsdp", "ddp"])
    for side in times:
        times[side] += steps[side]
        times.cpu[side] += [0.0] * len(steps[side])  # the work runs in the launched processes, not this one
    rows = [speed_row(times, fast="fsdp", slow="ddp", bench="11 sharding", metric="DDP / FSDP2 step time",
                      case=f"{case.label}, {where}", note=note)]
    peaks = {side: _launch(world, device, case, "memory", side=side) for side in ("ddp", "fsdp")}
    ratio = peaks["ddp"]["peak_bytes"] / max(peaks["fsdp"]["peak_bytes"], 1)
    rows.append(Row(bench="11 sharding", metric="DDP / FSDP2 peak memory per process", case=f"{case.label}, {where}",
                    value=ratio, low=ratio, high=ratio, pairs=1, note=note,
                    detail={f"{k}[{side}]": v for side, p in peaks.items() for k, v in p.items()}))
    for r in rows:
        print(f"    {r.metric}: {r.value:.3f} ({r.low:.2f}-{r.high:.2f})", flush=True)
    return rows


def _launch(world: int, device: torch.device, case: Case, mode: str, *, reps: int = 0, side: str = "") -> dict:
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if device.type == "cpu":
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // world))
        if mode == "memory":
            # glibc keeps freed blocks under its (growing) mmap threshold inside the process, so peak RSS would
            # show the allocator's retention, not the tensors (FSDP2's per-block gathers then look like a leak).
            # A fixed 128 KiB threshold maps each larger tensor on its own and unmaps it on free, for both sides.
            env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    cmd = [str(torchrun), "--nproc_per_node", str(world), "--master_port", str(_free_port()), "-m",
           "bench._sharding", "--worker", mode, "--device", device.type, "--model", case.model, "--size",
           str(case.size), "--batch", str(case.batch), "--reps", str(reps), "--side", side]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"sharding bench worker ({mode} {side}) failed:\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the launched side ------------------------------------------------------------------------------------------
def _build(kind: str, case: Case, device: torch.device):
    import timm
    from torch.nn.parallel import DistributedDataParallel

    from hubft.train.sharding import shard_model

    torch.manual_seed(0)  # the same init on every process and for both sides
    model = timm.create_model(case.model, pretrained=False, num_classes=10, img_size=case.size).to(device)
    if kind == "ddp":  # what Accelerate's prepare does for a plain multi-process run
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        shard_model(model, device)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)


def _step(model, optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _timed(model, optimizer, x, y, device: torch.device) -> float:
    import time

    torch.distributed.barrier()
    start = time.perf_counter()
    _step(model, optimizer, x, y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    torch.distributed.barrier()
    return time.perf_counter() - start


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _worker(args: argparse.Namespace) -> None:
    cuda = args.device == "cuda"
    rank = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    case = Case(args.model, args.size, args.batch)
    x = torch.randn(case.batch, 3, case.size, case.size, device=device)
    y = torch.randint(0, 10, (case.batch,), device=device)
    if args.worker == "time":
        sides = {kind: _build(kind, case, device) for kind in ("ddp", "fsdp")}
        for model, optimizer in sides.values():  # warm-up: lazy allocations, optimizer state
            _step(model, optimizer, x, y)
        result = {kind: [] for kind in sides}
        for rep in range(args.reps):
            for kind in list(sides) if rep % 2 == 0 else reversed(list(sides)):
                result[kind].append(_timed(*sides[kind], x, y, device))
    else:
        import timm  # noqa: F401  (imported before the baseline: the footprint of imports is not training's)

        import hubft.train.sharding  # noqa: F401

        before = torch.cuda.memory_allocated(device) if cuda else _rss()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        model, optimizer = _build(args.side, case, device)
        for _ in range(MEMORY_STEPS):
            _step(model, optimizer, x, y)
        peak = (torch.cuda.max_memory_allocated(device) if cuda else _peak_rss()) - before
        peak_t = torch.tensor([peak], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(peak_t, op=torch.distributed.ReduceOp.MAX)
        result = {"peak_bytes": int(peak_t), "parameter_bytes_per_process": sum(
            (p.to_local() if hasattr(p, "to_local") else p).numel() * p.element_size() for p in model.parameters())}
    if torch.distributed.get_rank() == 0:
        print("RESULT " + json.dumps(result), flush=True)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for flag in ("--worker", "--device", "--model", "--side"):
        parser.add_argument(flag, default="")
    for flag in ("--size", "--batch", "--reps"):
        parser.add_argument(flag, type=int, default=0)
    _worker(parser.parse_args())
