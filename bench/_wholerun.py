"""Ratio 9: a whole ``hubft finetune`` process vs a plain script doing the same job, timed from outside.

Ratios 1-3 and 6 time the update loop; a user waits for the whole process: imports, the data scan, decoding,
every epoch's evaluation, the model and its card, plots, and holds the memory all of it takes. Here both sides run
as processes of their own on the same PNG folder (train and test splits), interleaved:

- hubft: ``hubft finetune --config run.yaml`` (a timm model from scratch, hubft's defaults: the decoded-once cache,
  channels-last, fused AdamW, host memory kept for reuse, evaluation every epoch, model + card + plots + metrics).
- plain: ``bench/_plain_run.py``, the obvious script (timm model, torchvision ``ImageFolder`` + ``DataLoader``
  decoding every epoch, AdamW with the same LR, weight decay and per-update cosine schedule, accuracy on the test
  split every epoch, ``torch.save`` of the weights).

Lines: end-to-end wall time (target >= 1.3x), peak resident memory of each process (``os.wait4`` gives every child's
own ``ru_maxrss``, through a small launcher process; target: hubft <= plain, as plain / hubft >= 1), the same peak above what each side's imports alone
hold (processes that only import, measured twice before the rounds: the libraries' share, which no setting of
hubft's changes), and the time from launch to the first optimizer update on each side (hubft's from the ``time`` of
the first ``log.jsonl`` record; the plain script prints it).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench._timing import Row, interleave, speed_row

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class RunCase:
    model: str
    classes: int
    per_class: int  # training images per class (plus a fifth as many test images)
    file_size: int  # PNG side; the model trains on image_size crops
    image_size: int
    batch: int
    epochs: int

    @property
    def images(self) -> int:
        return self.classes * (self.per_class + max(1, self.per_class // 5))

    @property
    def label(self) -> str:
        return (f"{self.model} @ {self.image_size} px, {self.images} PNGs of {self.file_size} px, batch {self.batch}, "
                f"{self.epochs} epochs")


# The run: resnet18 on a 1,400-image PNG folder. Quick: the same job, smaller and shorter.
CASE = RunCase("resnet18", 10, 120, 160, 128, 32, 3)
QUICK_CASE = RunCase("resnet18", 10, 60, 96, 64, 32, 3)


def write_data(root: Path, case: RunCase) -> Path:
    from hubft.data import write_image_folder

    write_image_folder(root / "train", case.classes, case.per_class, case.file_size, seed=0)
    write_image_folder(root / "test", case.classes, max(1, case.per_class // 5), case.file_size, seed=1)
    return root


def hubft_config(data: Path, out: Path, case: RunCase) -> dict:
    return {"model": {"name": case.model, "pretrained": False},
            "data": {"path": str(data), "eval_split": "test", "image_size": case.image_size},
            "train": {"epochs": case.epochs, "batch_size": case.batch, "output_dir": str(out)}}


# A child's ru_maxrss starts from the high-water mark of the process it was exec'ed from (Linux keeps the old
# memory's peak across exec, and subprocess spawns through vfork): children of this process, which has imported
# torch and run other benches, would all report this process's peak. A small launcher process in between reports
# its own child's peak, which then starts from the launcher's ~10 MB.
_LAUNCHER = """import os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def launch(command: list[str], stdout=None) -> float:
    """Run ``command`` through the launcher; returns its peak RSS in bytes.

    Raises:
        RuntimeError: the command failed.
    """
    import tempfile

    env = os.environ | {"PYTHONPATH": str(ROOT)}
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as report:
        subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, report.name, *command], stdout=stdout,
                       stderr=subprocess.STDOUT if stdout is not None else None, cwd=ROOT, env=env, check=True)
        peak_kb, code = map(int, report.read().split())
    if code != 0:
        raise RuntimeError(f"{' '.join(command[:4])}... exited {code}")
    return peak_kb * 1024.0  # kilobytes on Linux


class Process:
    """One side: launches its command as a fresh process per call; keeps each call's wall time, peak RSS and
    launch-to-first-update seconds."""

    def __init__(self, command: list[str], out: Path, first_update) -> None:
        self.command, self.out, self.first_update = command, out, first_update
        self.peak_rss: list[float] = []  # bytes
        self.to_first_update: list[float] = []

    def fresh(self) -> None:
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir(parents=True)

    def __call__(self) -> None:
        launched = time.time()
        with open(self.out / "stdout.txt", "w") as stdout:
            try:
                self.peak_rss.append(launch(self.command, stdout))
            except (RuntimeError, subprocess.CalledProcessError) as e:
                tail = (self.out / "stdout.txt").read_text()[-2000:]
                raise RuntimeError(f"{e}:\n{tail}") from None
        self.to_first_update.append(self.first_update(self.out) - launched)


def hubft_first_update(out: Path) -> float:
    with open(out / "run" / "log.jsonl", encoding="utf-8") as f:
        return json.loads(f.readline())["time"]


def plain_first_update(out: Path) -> float:
    for line in (out / "stdout.txt").read_text().splitlines():
        if line.startswith("first_update "):
            return float(line.split()[1])
    raise RuntimeError("the plain script never reported its first update")


# What each side imports, and nothing else: the part of the peak that is the libraries' own (torch alone holds
# ~650 MB resident here; hubft adds datasets + pyarrow, Accelerate and matplotlib to timm and torchvision).
HUBFT_IMPORTS = ("import hubft.cli, hubft.train.finetune, hubft.train.setup, hubft.data, hubft.hub.card, datasets, "
                 "accelerate, matplotlib.figure, matplotlib.backends.backend_agg, timm, torchvision")
PLAIN_IMPORTS = "import timm, timm.data, torch.utils.data, torchvision.datasets"


def imports_rss(statement: str, reps: int = 2) -> float:
    """The least peak RSS (bytes) of ``reps`` processes that only run ``statement``."""
    peaks = [launch([sys.executable, "-c", statement]) for _ in range(reps)]
    return min(peaks)


def ratio_row(numerator: list[float], denominator: list[float], **row) -> Row:
    ratios = [n / d for n, d in zip(numerator, denominator, strict=True)]
    return Row(value=statistics.median(ratios), low=min(ratios), high=max(ratios), pairs=len(ratios), **row)


def measure(case: RunCase, reps: int, scratch: Path) -> list[Row]:
    import yaml

    data = write_data(scratch / "data", case)
    config = scratch / "run.yaml"
    config.write_text(yaml.safe_dump(hubft_config(data, scratch / "hubft" / "run", case)))
    hubft_cmd = [sys.executable, "-c", "import sys; from hubft.cli import main; sys.exit(main())", "finetune",
                 "--config", str(config)]
    plain_cmd = [sys.executable, str(ROOT / "bench" / "_plain_run.py"), str(data), str(scratch / "plain"),
                 case.model, str(case.image_size), str(case.batch), str(case.epochs)]
    sides = {"hubft": Process(hubft_cmd, scratch / "hubft", hubft_first_update),
             "plain": Process(plain_cmd, scratch / "plain", plain_first_update)}
    times = interleave(sides, reps, warmup=0, before=lambda name, rep: sides[name].fresh())
    hubft, plain = sides["hubft"], sides["plain"]
    base = {"hubft": imports_rss(HUBFT_IMPORTS), "plain": imports_rss(PLAIN_IMPORTS)}
    mib = 2.0**20
    rss = {"peak_rss_mib[hubft]": [round(b / mib) for b in hubft.peak_rss],
           "peak_rss_mib[plain]": [round(b / mib) for b in plain.peak_rss]}
    first = {"first_update_s[hubft]": [round(s, 2) for s in hubft.to_first_update],
             "first_update_s[plain]": [round(s, 2) for s in plain.to_first_update]}
    return [
        speed_row(times, "hubft", "plain", bench="9 whole run", case=case.label, target=1.3,
                  metric="hubft finetune / plain script, end to end (processes of their own)"),
        ratio_row(plain.peak_rss, hubft.peak_rss, bench="9 whole run", case=case.label, target=1.0,
                  metric="peak RSS, plain / hubft (>= 1: hubft holds no more)",
                  note=f"peak RSS median hubft {statistics.median(hubft.peak_rss) / mib:.0f} MiB, plain "
                       f"{statistics.median(plain.peak_rss) / mib:.0f} MiB", detail=rss),
        ratio_row([b - base["plain"] for b in plain.peak_rss], [b - base["hubft"] for b in hubft.peak_rss],
                  bench="9 whole run", case=case.label, metric="peak RSS above each side's imports, plain / hubft",
                  note=f"imports alone: hubft {base['hubft'] / mib:.0f} MiB, plain {base['plain'] / mib:.0f} MiB",
                  detail={f"imports_rss_mib[{k}]": round(v / mib) for k, v in base.items()}),
        ratio_row(plain.to_first_update, hubft.to_first_update, bench="9 whole run", case=case.label,
                  metric="launch to first update, plain / hubft",
                  note=f"launch to first update median hubft {statistics.median(hubft.to_first_update):.1f} s, "
                       f"plain {statistics.median(plain.to_first_update):.1f} s", detail=first),
    ]


def run(reps: int, quick: bool, device: torch.device) -> list[Row]:
    import tempfile

    case = QUICK_CASE if quick else CASE
    reps = max(2, reps // 5)  # whole processes, seconds (quick) to a minute (full) per side: 2 quick, 3 full
    print(f"  whole run: {case.label}, {reps} repetitions", flush=True)
    with tempfile.TemporaryDirectory(prefix="hubft-wholerun-") as tmp:
        return measure(case, reps, Path(tmp))
