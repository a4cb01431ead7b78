"""Ratio 8: a LoRA adapter run against a full fine-tune of the same backbone, same batches, same loop.

Both sides are real ``hubft.Finetuner`` runs (``bench._train.HubftRun``) over the same in-memory batches, from the
same local "pretrained" source (random weights saved with ``save_pretrained``: only the shapes matter here); the
adapter side sets ``model.adapter: lora`` with hubft's defaults for the family (r=8 on a ViT's attention and MLP
linears) and trains the new head fully. Every line reads "> 1: the adapter needs less / runs faster":

- trainable parameters, full / adapter (exact counts);
- optimizer-state bytes, full / adapter (AdamW's two moments and step of every trainable tensor, after the
  warm-up updates): target >= 20, i.e. the adapter's state below 5% of the full run's;
- peak memory, full / adapter: of the tensors during a repetition (torch's profiler: weights, buffers and optimizer
  state, plus the peak of what the updates allocate), and resident, each side in a Python process of its own
  (``resource.getrusage``), whole process and above what the imports (peft included, on both sides) took. RSS also
  counts what glibc keeps after a tensor is freed; peft's LoRA forward makes two more full-size temporaries per
  adapted layer (``lora_B``'s output and its scaling), which the allocator keeps around;
- update speed, adapter / full, paired and interleaved like every other line. The backward pass still runs through
  the whole frozen body (the adapters of the first block need the gradient that flows through every block above
  it); what the adapter skips is the weight gradients of the frozen layers and the optimizer's work on them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench._timing import Row, interleave, speed_row
from bench._train import Case, HubftRun, label_names, memory_batches

CASES = [Case("vit_small_patch16_224", 224, 8)]
QUICK_CASES = [Case("vit_tiny_patch16_224", 224, 4, updates=2)]
ADAPTER = {"adapter": "lora"}


def save_source(case: Case, root: Path) -> Path:
    """The backbone as a local "pretrained" source: an adapter needs weights that can be loaded again."""
    import hubft

    model = hubft.create_model(case.model, label_names=label_names(), pretrained=False, head_init_seed=0)
    return hubft.save_pretrained(model, root / "source")


def create_run(case: Case, device: torch.device, source: Path, adapter: bool) -> HubftRun:
    model = {"name": f"local-dir:{source}", "pretrained": True, **(ADAPTER if adapter else {})}
    return HubftRun(case, device, batches=memory_batches(case, device), config={"model": model})


def optimizer_state_bytes(run: HubftRun) -> int:
    from hubft.train.finite import inner_optimizer

    state = inner_optimizer(run.ft.parts.optimizer).state
    return sum(t.numel() * t.element_size() for s in state.values() for t in s.values() if torch.is_tensor(t))


def trainable(run: HubftRun) -> int:
    return sum(p.numel() for p in run.ft.parts.model.parameters() if p.requires_grad)


def tensor_peak(run: HubftRun) -> int:
    """Peak bytes of tensors during one repetition: what lives across updates (weights, buffers, optimizer state)
    plus the peak of what the updates allocate and free (activations, gradients, temporaries), from torch's
    profiler. Unlike RSS, this does not see what the allocator keeps after a tensor is freed."""
    from torch.profiler import ProfilerActivity, profile

    model = run.ft.parts.model
    persistent = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    live = peak = 0
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return persistent + optimizer_state_bytes(run) + peak


# peft (and the transformers it imports) is loaded before the baseline on both sides: the lines compare training,
# not imports (the full run alone would never import peft).
_CHILD = """
import json, resource, sys
import torch, peft
from bench._train import Case
from bench._adapters import create_run
case = Case(sys.argv[1], *map(int, sys.argv[2:5]))
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run = create_run(case, torch.device("cpu"), sys.argv[5], sys.argv[6] == "1")
for _ in range(2):
    run()
print(json.dumps({"baseline_kib": baseline, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def peak_memory(case: Case, source: Path, adapter: bool) -> dict:
    """Peak RSS (KiB) of a process that sets up one side and trains 2 repetitions, and its RSS after the imports."""
    args = [sys.executable, "-c", _CHILD, case.model, str(case.size), str(case.batch), str(case.updates), str(source),
            str(int(adapter))]
    done = subprocess.run(args, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"the memory probe failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _count_row(metric: str, case: str, full: float, adapter: float, **row) -> Row:
    value = full / adapter
    return Row(bench="8 adapters", metric=metric, case=case, value=value, low=value, high=value, pairs=1,
               detail={"full": full, "adapter": adapter}, **row)


def measure(case: Case, device: torch.device, reps: int) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="hubft-bench-adapters-") as tmp:
        source = save_source(case, Path(tmp))
        memory = {side: peak_memory(case, source, side == "adapter") for side in ("full", "adapter")}
        full, adapter = create_run(case, device, source, False), create_run(case, device, source, True)
        times = interleave({"adapter": adapter, "full": full}, reps)
        tensors = {"full": tensor_peak(full), "adapter": tensor_peak(adapter)}
    record = adapter.ft.parts.unwrapped_model.hubft_adapter
    label = f"{case.label}, LoRA r={record['r']} on {record['modules']} modules"
    above = {side: m["peak_kib"] - m["baseline_kib"] for side, m in memory.items()}
    return [
        _count_row("trainable parameters, full / adapter", label, trainable(full), trainable(adapter)),
        _count_row("optimizer-state bytes, full / adapter (>= 20: adapter below 5%)", label,
                   optimizer_state_bytes(full), optimizer_state_bytes(adapter), target=20),
        _count_row("peak tensor memory of an update (weights, optimizer state, activations, gradients), full / "
                   "adapter", label, tensors["full"], tensors["adapter"]),
        _count_row("peak RSS of a process of its own, full / adapter", label, memory["full"]["peak_kib"],
                   memory["adapter"]["peak_kib"]),
        _count_row("peak RSS above the imports, full / adapter", label, above["full"], above["adapter"]),
        speed_row(times, "adapter", "full", bench="8 adapters", case=label,
                  metric="update speed, adapter / full fine-tune (same batches in memory)"),
    ]


def run(reps: int, quick: bool, device: torch.device) -> list[Row]:
    rows = []
    for case in QUICK_CASES if quick else CASES:
        print(f"  adapters: {case.label}", flush=True)
        rows += measure(case, device, reps)
    return rows
