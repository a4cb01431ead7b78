"""Ratio 6: do hubft's defaults use the hardware? Defaults vs a naive loop, bf16, and FLOP/s vs a GEMM.

- hubft with every default (channels-last chosen automatically for conv nets, torch's fused AdamW kernel, fp32,
  host memory kept for reuse on CPU) vs the naive plain loop that most scripts start as (contiguous NCHW, torch's
  default AdamW, fp32, glibc's malloc as it comes). ``train.reuse_host_memory`` is process-wide, so the naive loop
  runs in a process of its own for that line, and a second one with the setting shows what it alone is worth.
  Plain loops with channels-last alone and with the fused optimizer alone (in this process) are in the same
  rotation, to show where the rest of the gap comes from.
- ``train.mixed_precision: bf16`` vs hubft's default fp32 (CPU autocast; worth it only where the CPU has bf16
  instructions, e.g. AVX512-BF16 / AMX).
- Achieved training FLOP/s (forward + backward FLOPs counted by torch's FlopCounterMode, over hubft's measured
  step time) as a fraction of an fp32 GEMM measured in the same rotation: how close the step gets to what the
  cores can do at all. The GEMM runs through oneDNN (as a 1x1 convolution), the library that runs the model's
  convolutions: on this AMD CPU torch.mm (MKL) reaches only about half of oneDNN's rate, and would flatter us.
"""

from __future__ import annotations

import contextlib
import platform
import statistics

import torch
import torch.nn.functional as F

from bench._timing import Row, interleave, speed_row
from bench._train import Case, HubftRun, PlainLoop, create_model, memory_batches, uses_fused

# Conv nets, where hubft picks channels-last (mobilenet's depthwise convolutions gain the most from it).
CASES = [Case("resnet18", 224, 8), Case("mobilenetv3_large_100", 224, 16)]
QUICK_CASES = [Case("resnet18", 64, 16)]
GEMM_SIZE, GEMM_COUNT = 1024, 40  # 1024^3 multiply-adds, 40 times: about as long as a repetition of the model


class Gemm:
    """The reference of what the cores can do: fp32 GEMMs of 1024 x 1024 x 1024 through oneDNN, all threads."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        # A 1x1 convolution over a 32x32 channels-last map is exactly a (1024 x 1024) @ (1024 x 1024) GEMM.
        self.x = torch.randn(1, GEMM_SIZE, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
        self.w = torch.randn(GEMM_SIZE, GEMM_SIZE, 1, 1, generator=g).contiguous(memory_format=torch.channels_last)
        self.flops = 2 * GEMM_SIZE**3 * GEMM_COUNT

    @torch.no_grad()
    def __call__(self) -> None:
        for _ in range(GEMM_COUNT):
            F.conv2d(self.x, self.w)


def training_flops(case: Case, device: torch.device) -> float:
    """FLOPs of one update: 3x the forward's (the usual convention: the backward costs about two forwards).

    Only the forward is counted, by torch's FlopCounterMode: its ``convolution_backward`` formula over-counts
    grouped convolutions about ``groups``-fold (mobilenet's depthwise layers came out 27x too high here; see
    pytorch/pytorch#183405). The optimizer's elementwise work is not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model(case, device, channels_last=False)
    x, _ = memory_batches(case, device)[0]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return 3.0 * counter.get_total_flops()


def autocast_dtype(run: HubftRun) -> torch.dtype:
    """The dtype the first convolution actually computes in: proof that the bf16 setting took effect."""
    conv = next(m for m in run.ft.parts.model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    seen = []
    handle = conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    run.ft.parts.model.eval()
    with torch.no_grad():
        run.ft.parts.model(torch.zeros(2, 3, 64, 64))
    run.ft.parts.model.train()
    handle.remove()
    return seen[0]


_CHILD = """
import sys, torch
from bench._train import Case, PlainLoop, memory_batches
from hubft.train.host_memory import reuse_host_memory
case = Case(sys.argv[1], *map(int, sys.argv[2:4]), updates=int(sys.argv[4]))
reuse = sys.argv[5] == "1"
if reuse and not reuse_host_memory(True, torch.device("cpu")):
    sys.exit("train.reuse_host_memory could not be applied here")
device = torch.device("cpu")
loop = PlainLoop(case, memory_batches(case, device), device, channels_last=False)
print("ready", flush=True)
for _ in sys.stdin:
    loop()
    print("done", flush=True)
"""


class FreshProcess:
    """A naive plain loop in a Python process of its own, one repetition per call.

    ``train.reuse_host_memory`` is process-wide: once hubft has set up a run in this process, every plain loop here
    gets it too. These sides show what it is worth, and keep the "naive" side of the defaults line naive.
    """

    def __init__(self, case: Case, reuse_host_memory: bool) -> None:
        import subprocess
        import sys
        from pathlib import Path

        args = [sys.executable, "-c", _CHILD, case.model, str(case.size), str(case.batch), str(case.updates),
                str(int(reuse_host_memory))]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=Path(__file__).resolve().parents[1])
        try:
            self._expect("ready")
        except Exception:
            self.close()
            raise

    def _expect(self, word: str) -> None:
        line = self.proc.stdout.readline().strip()
        if line != word:
            raise RuntimeError(f"the plain loop's process answered {line!r} (exit code {self.proc.poll()})")

    def __call__(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self._expect("done")

    def close(self) -> None:
        import subprocess

        try:
            self.proc.stdin.close()  # the child's loop ends with its input
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):  # a child that died (broken pipe) or hangs
            self.proc.kill()
            self.proc.wait()


def measure(case: Case, device: torch.device, reps: int) -> list[Row]:
    batches = memory_batches(case, device)
    hubft_fp32 = HubftRun(case, device)
    hubft_bf16 = HubftRun(case, device, mixed_precision="bf16")
    if autocast_dtype(hubft_bf16) != torch.bfloat16 or autocast_dtype(hubft_fp32) != torch.float32:
        raise RuntimeError("the bf16 / fp32 hubft runs do not compute in the precision they were set up with")
    naive = PlainLoop(case, batches, device, channels_last=False)
    plain_cl = PlainLoop(case, batches, device, channels_last=True)
    plain_fused = PlainLoop(case, batches, device, channels_last=False, fused=True)
    if not uses_fused(hubft_fp32):
        raise RuntimeError("hubft's defaults did not pick the fused AdamW kernel")
    gemm = Gemm()
    sides = {"naive": naive, "plain_channels_last": plain_cl, "plain_fused": plain_fused, "hubft": hubft_fp32,
             "hubft_bf16": hubft_bf16, "gemm": gemm}
    reusing = platform.libc_ver()[0] == "glibc"  # train.reuse_host_memory tunes glibc's malloc; elsewhere a no-op
    with contextlib.ExitStack() as stack:
        for name, reuse in (("naive_fresh", False), ("naive_fresh_reusing", True))[:2 if reusing else 1]:
            sides[name] = FreshProcess(case, reuse)
            stack.callback(sides[name].close)
        times = interleave(sides, reps)

    flops = training_flops(case, device) * case.updates
    # Per pair: (training FLOP/s) / (GEMM FLOP/s) = (flops / t_hubft) / (gemm.flops / t_gemm).
    fraction = [flops * tg / (gemm.flops * th) for th, tg in zip(times["hubft"], times["gemm"])]
    achieved = statistics.median(flops / t for t in times["hubft"]) / 1e9
    reference = statistics.median(gemm.flops / t for t in times["gemm"]) / 1e9
    cl = hubft_fp32.channels_last
    label = case.label
    return [
        speed_row(times, "hubft", "naive_fresh", bench="6 hardware",
                  metric="hubft defaults / naive fp32 NCHW loop in a process of its own",
                  case=f"{label} (hubft chose {'channels-last' if cl else 'contiguous'}, fused AdamW"
                       f"{', reused host memory' if reusing else ''})", target=1.15),
        speed_row(times, "hubft", "naive", bench="6 hardware", case=label,
                  metric=f"hubft defaults / naive loop in hubft's process{' (reusing host memory too)' * reusing}"),
        *([speed_row(times, "naive_fresh_reusing", "naive_fresh", bench="6 hardware",
                     metric="train.reuse_host_memory alone (naive loops, processes of their own)", case=label)]
          if reusing else []),
        speed_row(times, "plain_channels_last", "naive", bench="6 hardware",
                  metric="channels-last alone (plain loops)", case=label),
        speed_row(times, "plain_fused", "naive", bench="6 hardware",
                  metric="fused AdamW kernel alone (plain loops)", case=label),
        speed_row(times, "hubft_bf16", "hubft", bench="6 hardware", metric="hubft bf16 / hubft fp32", case=label),
        Row(bench="6 hardware", metric="training FLOP/s / fp32 GEMM FLOP/s", case=f"{label} (hubft defaults)",
            value=statistics.median(fraction), low=min(fraction), high=max(fraction), pairs=len(fraction),
            unit="of GEMM", detail={"gflop_per_update": flops / case.updates / 1e9,
                                    "achieved_gflops_median": achieved, "gemm_gflops_median": reference}),
    ]


def run(reps: int, quick: bool, device: torch.device) -> list[Row]:
    rows = []
    for case in QUICK_CASES if quick else CASES:
        print(f"  hardware: {case.label}", flush=True)
        rows += measure(case, device, reps)
    return rows
