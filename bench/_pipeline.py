"""Ratio 3: training from image files vs the same training on tensors already in memory.

On 2 cores the input path does not overlap with training: decoding and augmenting compete with the model for the
same cores, so every millisecond it takes shows up in the epoch. hubft decodes a small dataset once into a uint8
cache (at setup) and only augments tensors per epoch, in the training process (``num_workers=0``, its default).

Four sides per case, in one rotation:

- hubft from JPEG files vs hubft's own loop fed batches already in memory: the cost of hubft's input path (target).
- the straightforward ``datasets`` recipe (imagefolder + ``set_transform`` with timm's train transform + a
  DataLoader, decoding every epoch) vs a plain loop on tensors in memory: the reference, for scale.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch

from bench._timing import Row, interleave, speed_row
from bench._train import NUM_CLASSES, Case, HubftRun, PlainLoop, memory_batches, uses_fused

# JPEGs 1.5x the training size: the shrink-then-crop a real dataset needs, without giant files.
CASES = [Case("resnet18", 64, 32), Case("resnet18", 224, 8)]
QUICK_CASES = [Case("resnet18", 64, 16)]


def write_jpegs(root: Path, case: Case) -> Path:
    from hubft.data import write_image_folder

    size = case.size * 3 // 2
    write_image_folder(root, NUM_CLASSES, case.batch * case.updates // NUM_CLASSES, size, seed=0,
                       splits=["train"], image_format="jpg")
    write_image_folder(root, NUM_CLASSES, 1, size, seed=1, splits=["test"], image_format="jpg")
    return root


def datasets_loader(root: Path, case: Case, model: torch.nn.Module):
    """The recipe of the ``datasets`` / ``transformers`` image-classification guides, with timm's transform."""
    import datasets
    from timm.data import create_transform, resolve_data_config

    data = datasets.load_dataset("imagefolder", data_dir=str(root), split="train")
    config = resolve_data_config({"input_size": (3, case.size, case.size)}, model=model)
    transform = create_transform(**config, is_training=True)

    def to_pixels(batch: dict) -> dict:
        return {"pixel_values": [transform(image.convert("RGB")) for image in batch["image"]],
                "label": batch["label"]}

    data.set_transform(to_pixels)

    def collate(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack([r["pixel_values"] for r in rows]), torch.tensor([r["label"] for r in rows])

    return torch.utils.data.DataLoader(data, batch_size=case.batch, shuffle=True, collate_fn=collate)


def measure(case: Case, device: torch.device, reps: int) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="hubft-bench-jpeg-") as tmp:
        root = write_jpegs(Path(tmp), case)
        files = HubftRun(case, device, config={"data": {"path": str(root)}})
        batches = memory_batches(case, device)
        in_memory = HubftRun(case, device, batches=batches)
        cl, fused = files.channels_last, uses_fused(files)
        naive = PlainLoop(case, batches, device, channels_last=cl, fused=fused)
        naive.batches = datasets_loader(root, case, naive.model)
        plain = PlainLoop(case, batches, device, channels_last=cl, fused=fused)
        times = interleave({"hubft_files": files, "hubft_memory": in_memory, "datasets_files": naive,
                            "plain_memory": plain}, reps)
    label = f"{case.label}, {case.batch * case.updates} JPEGs of {case.size * 3 // 2} px"
    share = statistics.median(d / t for d, t in zip(files.data_seconds[-reps:], times["hubft_files"]))
    end_to_end = speed_row(times, "hubft_files", "plain_memory", bench="", metric="", case="")
    detail = {"hubft_data_share_median": share,
              "hubft_files_vs_plain_memory_median": end_to_end.value,
              "setup_s[hubft_files] (decodes the files once)": files.setup_seconds,
              "setup_s[hubft_memory]": in_memory.setup_seconds}
    return [
        speed_row(times, "hubft_files", "hubft_memory", bench="3 input pipeline",
                  metric="hubft from files / hubft on tensors", case=label, target=0.95, detail=detail),
        speed_row(times, "datasets_files", "plain_memory", bench="3 input pipeline",
                  metric="datasets+set_transform / tensors (reference)", case=label),
    ]


def run(reps: int, quick: bool, device: torch.device) -> list[Row]:
    rows = []
    for case in QUICK_CASES if quick else CASES:
        print(f"  pipeline: {case.label}", flush=True)
        rows += measure(case, device, reps)
    return rows
