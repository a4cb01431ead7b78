"""`make bench-gpu`: ratios 1-2 on a CUDA GPU (bf16 + channels-last), and resnet50's images/s next to timm's.

One prepared pass that fits in a few minutes. First a correctness smoke run of the real ``hubft.finetune`` on the
GPU (bf16, workers, the side-stream prefetch): it must learn, and a run stopped mid-way and resumed is compared with
an uninterrupted one. Then the cases of ``_train.GPU_CASES`` with the same paired, interleaved repetitions as on CPU
(each side synchronises the device before its clock stops). cuDNN autotuning is on for every timed side, as in
timm's train.py and benchmark.py, which produced the published number quoted next to ours.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from bench._timing import Row
from bench._train import GPU_CASES, measure

# timm's published training throughput for resnet50 @ 224 (results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv
# in huggingface/pytorch-image-models): AMP, channels-last, batch 512, PyTorch 1.12, CUDA 11.3, one RTX 3090.
TIMM_RESNET50_IMAGES_PER_S = 1218.01
TIMM_SOURCE = ("timm results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv: 1218 img/s "
               "(RTX 3090, AMP, NHWC, batch 512)")


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model.safetensors"))


def _deferred_check_refuses(config, data, tmp: Path) -> bool:
    """An inf gradient at update 3 with the sync-free (deferred) check that CUDA uses: the run must stop naming
    step 3, with weights, BatchNorm statistics and AdamW state equal to the update-2 checkpoint."""
    import hubft
    from hubft.errors import TrainingError
    from hubft.faults import reset_fault_counts

    ft = None
    try:
        os.environ["HUBFT_FAULT"] = "gradients@3:nan"
        reset_fault_counts()
        ft = hubft.Finetuner(config("poisoned", checkpoint_every=2, log_every=100), dataset=data)
        ft.setup()
        if not ft.loop.finite.deferred:
            print("  gpu smoke: the deferred finite check is off on this GPU", flush=True)
            return False
        try:
            ft.fit()
            return False
        except TrainingError as e:
            if "step 3" not in str(e):
                return False
        step2 = tmp / "poisoned" / "checkpoints" / "step-00000002"
        saved = _weights(step2)
        now = ft.accelerator.unwrap_model(ft.parts.model).state_dict()
        same = all(torch.equal(saved[k], now[k].cpu()) for k in saved)
        opt = torch.load(step2 / "optimizer.bin", weights_only=True)["state"]
        state = ft.parts.optimizer.state_dict()["state"]
        return same and all(torch.equal(opt[k][n].cpu(), state[k][n].cpu()) for k in state
                            for n in ("exp_avg", "exp_avg_sq", "step"))
    finally:
        if ft is not None:
            ft.close()
        os.environ.pop("HUBFT_FAULT", None)
        reset_fault_counts()


def smoke(device: torch.device) -> list[Row]:
    """hubft.finetune on the GPU: accuracy on a learnable synthetic task, and resume vs uninterrupted weights."""
    import hubft
    from hubft.data import make_synthetic_image_dataset
    from hubft.faults import FaultInjected, reset_fault_counts

    tmp = Path(tempfile.mkdtemp(prefix="hubft-gpu-smoke-"))
    data = make_synthetic_image_dataset(8, 32, 64, 0)

    def config(name: str, **train) -> dict:
        return {"model": {"name": "resnet18", "pretrained": False},
                "data": {"image_size": 64, "eval_fraction": 0.25},
                "train": {"epochs": 4, "batch_size": 16, "mixed_precision": "bf16", "checkpoint_every": 4,
                          "output_dir": str(tmp / name)} | train}

    straight = hubft.finetune(config("straight"), dataset=data)
    # Stop the second run with an exception at its 10th update (after the update-8 checkpoint), then resume.
    os.environ["HUBFT_FAULT"] = "after_optimizer_step@10:raise"
    reset_fault_counts()
    try:
        hubft.finetune(config("resumed"), dataset=data)
        raise RuntimeError("the injected fault did not stop the run")
    except FaultInjected:
        pass
    finally:
        del os.environ["HUBFT_FAULT"]
        reset_fault_counts()
    hubft.finetune(config("resumed", resume="latest"), dataset=data)
    refused = _deferred_check_refuses(config, data, tmp)
    a, b = _weights(tmp / "straight"), _weights(tmp / "resumed")
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    identical = all(torch.equal(a[k], b[k]) for k in a)
    acc = straight["final"].get("accuracy", float("nan"))
    print(f"  gpu smoke: accuracy {acc:.3f} after {straight['steps']} updates; resumed run "
          f"{'bit-identical' if identical else f'max |dw| {diff:.2e}'}", flush=True)
    case = f"resnet18 @ 64 px, 8 synthetic classes, bf16, {torch.cuda.get_device_name(device)}"
    print(f"  gpu smoke: inf gradient at update 3 {'refused, state = update 2' if refused else 'NOT REFUSED'}",
          flush=True)
    return [Row(bench="GPU smoke", metric="hubft.finetune accuracy (chance 0.125)", case=case, value=acc, low=acc,
                high=acc, pairs=1, unit="", note="4 epochs, default workers and side-stream prefetch"),
            Row(bench="GPU smoke", metric="inf gradient at update 3: refused, state = update 2 (deferred check)",
                case=case, value=float(refused), low=float(refused), high=float(refused), pairs=1, unit="",
                note="1 = yes"),
            Row(bench="GPU smoke", metric="max |weight difference|, resumed vs uninterrupted", case=case,
                value=diff, low=diff, high=diff, pairs=1, unit="",
                note="bit-identical" if identical else "not bit-identical (cuDNN autotuning / atomics on GPU)")]


def run(reps: int, device: torch.device) -> list[Row]:
    rows: list[Row] = []
    try:
        rows += smoke(device)
    except Exception:  # the timing below is still worth having
        import traceback

        traceback.print_exc()
    torch.backends.cudnn.benchmark = True
    for case in GPU_CASES:
        print(f"  gpu train: {case.label}", flush=True)
        case_rows = measure(case, device, reps)
        rows += case_rows
        for r in case_rows:  # as they come: a run cut short still leaves its finished cases on screen
            print(f"    {r.metric}: {r.value:.3f} ({r.low:.2f}-{r.high:.2f})", flush=True)
        if case.model == "resnet50" and case.size == 224:
            # timm's number comes from its benchmark.py, which trains on tensors already on the device: the same
            # input as hubft's loop and the plain loop in ratio 1.
            detail = next(r.detail for r in case_rows if "images_per_s_median[hubft_loop]" in r.detail)
            for side in ("hubft_loop", "plain"):
                # images/s, not a ratio: min-max come from the slowest and fastest repetition.
                times = detail[f"times_s[{side}]"]
                images = case.batch * case.updates
                rows.append(Row(bench="GPU images/s", metric=f"resnet50 training, {side}",
                                case=f"{case.label}, {torch.cuda.get_device_name(device)}",
                                value=detail[f"images_per_s_median[{side}]"], low=images / max(times),
                                high=images / min(times), pairs=len(times), unit="img/s", note=TIMM_SOURCE))
    rows += sharding_rows(reps, device)
    return rows


def sharding_rows(reps: int, device: torch.device) -> list[Row]:
    """FSDP2 vs DDP (step time, per-process peak memory) on the GPUs, one process each (``bench._sharding``)."""
    from bench import _sharding

    try:
        return _sharding.run(reps, False, device)
    except Exception:  # the lines above are still worth having
        import traceback

        traceback.print_exc()
        return []
