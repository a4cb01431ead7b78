"""Ratio 5: time to accuracy on the digits transfer task of `make demo`, fine-tuned vs from scratch.

The task is the demo's: a resnet10t "pretrained" on handwritten digits 0-4 learns digits 5-9 from 4 labelled
images per class (recipes/configs/digits.yaml: frozen body first, then everything). The baseline trains the same
architecture from random weights with the same config (no freeze), as the demo's baseline does.

The two runs alternate epoch by epoch in this process, so both see the same machine load. Only training counts
towards the seconds (evaluation and checkpoints after each epoch are the same work for both and are excluded).
The time to a target is the training time up to the first epoch whose held-out accuracy reaches it; two targets
are reported, since few-shot curves are bumpy. A run that never gets there within the config's epochs counts with
its full training time, so the ratio is then a lower bound. Repeated over seeds (quick: one).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from bench._timing import Row, quiet

TARGETS = (0.7, 0.8)  # held-out accuracy on digits 5-9 (chance: 0.2)
CONFIG = Path(__file__).resolve().parent.parent / "recipes" / "configs" / "digits.yaml"


def pretrain_backbone(data, folder: Path, epochs: int) -> Path:
    """The demo's stand-in for an ImageNet backbone: resnet10t trained on digits 0-4 only."""
    import hubft

    config = {
        "model": {"name": "resnet10t", "pretrained": False},
        "data": {"eval_split": "test", "classes": ["0", "1", "2", "3", "4"], "image_size": 32, "hflip": 0.0,
                 "scale": [0.7, 1.0]},
        "optim": {"lr": 0.003},
        "schedule": {"name": "cosine", "warmup_steps": 10},
        "train": {"epochs": epochs, "batch_size": 32, "output_dir": str(folder)},
    }
    with quiet():
        hubft.finetune(config, dataset=data)
    return folder


def transfer_run(data, folder: Path, seed: int, backbone: Path | None):
    import hubft

    overrides = {"data.name": "null", "hub.push": "false", "train.checkpoint_every": "null",
                 "train.output_dir": str(folder), "train.seed": str(seed)}
    if backbone is not None:
        overrides["model.name"] = f"local-dir:{backbone}"
    else:  # the demo's baseline: same everything, random weights, nothing frozen
        overrides |= {"model.name": "resnet10t", "model.pretrained": "false", "model.freeze": "false",
                      "model.unfreeze_epoch": "null"}
    ft = hubft.Finetuner(hubft.load_config(CONFIG, overrides), dataset=data)
    with quiet():
        ft.setup()
    return ft


def train_epoch(ft, epoch: int) -> float:
    """One epoch as ``TrainLoop.run`` does it (unfreezing on schedule); returns its training seconds."""
    loop, c = ft.loop, ft.config
    if loop.has_frozen and c.model.unfreeze_epoch is not None and epoch >= c.model.unfreeze_epoch:
        from hubft.models import unfreeze

        unfreeze(ft.accelerator.unwrap_model(ft.parts.model))
        loop.has_frozen = False
    loop.state.epoch = epoch
    start = time.perf_counter()
    with quiet():
        loop.train_epoch(epoch)
    return time.perf_counter() - start


def race(runs: dict, epochs: int) -> dict[str, dict]:
    """Alternate the runs epoch by epoch until each reaches every target or runs out of epochs."""
    out = {name: {"seconds": [], "accuracy": []} for name in runs}
    for epoch in range(epochs):
        names = list(runs) if epoch % 2 == 0 else list(reversed(runs))
        for name in names:
            r = out[name]
            if r["accuracy"] and r["accuracy"][-1] >= max(TARGETS):
                continue
            seconds = train_epoch(runs[name], epoch)
            with quiet():
                record = runs[name].loop.end_epoch(epoch)  # evaluation + checkpoint: not timed
            r["seconds"].append(round((r["seconds"][-1] if r["seconds"] else 0.0) + seconds, 3))
            r["accuracy"].append(round(record["eval"]["accuracy"], 4))
        if all(r["accuracy"][-1] >= max(TARGETS) for r in out.values()):
            break
    return out


def time_to(curve: dict, target: float) -> tuple[float, int | None]:
    """Training seconds until the first epoch at ``target`` (or all of them), and that epoch (None: never)."""
    for epoch, (seconds, accuracy) in enumerate(zip(curve["seconds"], curve["accuracy"])):
        if accuracy >= target:
            return seconds, epoch + 1
    return curve["seconds"][-1], None


def run(reps: int, quick: bool, device: torch.device) -> list[Row]:
    import tempfile

    from hubft.data import load_digits_dataset

    seeds = [0] if quick else [0, 1, 2]
    print(f"  tta: pretraining the digits 0-4 backbone, then {len(seeds)} fine-tune/scratch race(s)", flush=True)
    data = load_digits_dataset()
    curves = []
    with tempfile.TemporaryDirectory(prefix="hubft-bench-tta-") as tmp:
        backbone = pretrain_backbone(data, Path(tmp) / "backbone", epochs=2 if quick else 4)
        for seed in seeds:
            runs = {"fine-tuned": transfer_run(data, Path(tmp) / f"ft-{seed}", seed, backbone),
                    "scratch": transfer_run(data, Path(tmp) / f"scratch-{seed}", seed, None)}
            curves.append(race(runs, runs["fine-tuned"].config.train.epochs))
    rows = []
    for target in TARGETS:
        ratios, epochs = [], {"fine-tuned": [], "scratch": []}
        for curve in curves:
            (ft_s, ft_epoch), (sc_s, sc_epoch) = time_to(curve["fine-tuned"], target), time_to(curve["scratch"], target)
            epochs["fine-tuned"].append(ft_epoch)
            epochs["scratch"].append(sc_epoch)
            if ft_epoch is not None:
                ratios.append(sc_s / ft_s)
        never = [None in e for e in epochs.values()]
        note = (f"epochs to {target}: fine-tuned {epochs['fine-tuned']}, scratch {epochs['scratch']} (None: never "
                "within the config's epochs" + ("; its whole training time counts, so the ratio is a lower bound)"
                                                 if never[1] else ")"))
        values = ratios or [float("nan")]
        rows.append(Row(bench="5 time to accuracy", metric=f"scratch / fine-tuned, s to {target} acc",
                        case=f"digits 5-9, 4 images/class, resnet10t, {len(seeds)} seed(s)",
                        value=statistics.median(values), low=min(values), high=max(values), pairs=len(ratios),
                        note=note, detail={"curves": curves} if target == TARGETS[0] else {}))
    return rows
