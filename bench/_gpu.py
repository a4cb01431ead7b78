"""`make bench-gpu`: ratios 1-2 on a CUDA GPU (bf16 + channels-last), and resnet50's images/s next to timm's.

One prepared pass that fits in a few minutes: the cases of ``_train.GPU_CASES`` with the same paired, interleaved
repetitions as on CPU (each side synchronises the device before its clock stops). cuDNN autotuning is on for
every side, as in timm's train.py and benchmark.py, which produced the published number quoted next to ours.
"""

from __future__ import annotations

import torch

from bench._timing import Row
from bench._train import GPU_CASES, measure

# timm's published training throughput for resnet50 @ 224 (results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv
# in huggingface/pytorch-image-models): AMP, channels-last, batch 512, PyTorch 1.12, CUDA 11.3, one RTX 3090.
TIMM_RESNET50_IMAGES_PER_S = 1218.01
TIMM_SOURCE = ("timm results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv: 1218 img/s "
               "(RTX 3090, AMP, NHWC, batch 512)")


def run(reps: int, device: torch.device) -> list[Row]:
    torch.backends.cudnn.benchmark = True
    rows: list[Row] = []
    for case in GPU_CASES:
        print(f"  gpu train: {case.label}", flush=True)
        case_rows = measure(case, device, reps)
        rows += case_rows
        if case.model == "resnet50" and case.size == 224:
            detail = next(r.detail for r in case_rows if "images_per_s_median[hubft]" in r.detail)
            for side in ("hubft", "plain"):
                # images/s, not a ratio: min-max come from the slowest and fastest repetition.
                times = detail[f"times_s[{side}]"]
                images = case.batch * case.updates
                rows.append(Row(bench="GPU images/s", metric=f"resnet50 training, {side}",
                                case=f"{case.label}, {torch.cuda.get_device_name(device)}",
                                value=detail[f"images_per_s_median[{side}]"], low=images / max(times),
                                high=images / min(times), pairs=len(times), unit="img/s", note=TIMM_SOURCE))
    return rows
