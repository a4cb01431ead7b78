"""Ratio 4: ``hubft.push_to_hub`` / ``pull_from_hub`` vs raw ``huggingface_hub`` on the same files, on the local Hub.

``hubft push`` does more than an upload: it checks that the weights are finite, stages an allowlist of files,
renders and validates the model card for the target repo, and commits with the branch head as parent so a retry
can never commit twice. The raw side is what the huggingface_hub guide writes: ``create_repo(exist_ok=True)`` then
``upload_folder`` of the same files. Pull: ``pull_from_hub`` vs ``snapshot_download`` into a fresh folder.

Every push goes to a new repo with a weights file no one uploaded before (one value changed, untimed), so neither
side can skip an LFS upload the other one already made. The local Hub runs in a thread of this process: its CPU
time is charged to both sides alike.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench._timing import Row, interleave, quiet, speed_row
from bench._train import image_dataset


def finished_run(folder: Path, model: str) -> Path:
    """A real hubft run directory (weights, config.json, card, config.yaml, metrics, plots) from one update."""
    import hubft

    config = {"model": {"name": model, "pretrained": False}, "data": {"image_size": 32, "eval_split": "test"},
              "train": {"epochs": 1, "batch_size": 8, "max_updates": 1, "output_dir": str(folder)}}
    with quiet():
        hubft.finetune(config, dataset=image_dataset(16, 32))
    return folder


class Weights:
    """Rewrites ``model.safetensors`` with one value changed, so that every upload carries new LFS content."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        self.tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            self.metadata = f.metadata()
        self.key = next(k for k, t in self.tensors.items() if t.is_floating_point())
        self.salt = 0

    def write(self, folder: Path) -> None:
        from safetensors.torch import save_file

        self.salt += 1
        self.tensors[self.key].view(-1)[0] = float(self.salt)
        save_file(self.tensors, str(folder / "model.safetensors"), metadata=self.metadata)


def run(reps: int, quick: bool, device=None, *, port: int, scratch: Path) -> list[Row]:
    from huggingface_hub import HfApi, snapshot_download

    from hubft.hub.push import UPLOAD_ALLOWLIST, pull_from_hub, push_to_hub
    from hubft.testing import LocalHub

    model = "resnet18"  # the quick set too: hubft's fixed costs are measured against a real model's upload
    print(f"  hub: a finished {model} run pushed and pulled", flush=True)
    root = scratch / "hub-bench"
    run_dir = finished_run(root / "run", model)
    # The raw side uploads exactly the files hubft would (hubft renders its card again for the target repo).
    raw_dir = root / "raw"
    raw_dir.mkdir()
    for name in UPLOAD_ALLOWLIST:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, raw_dir / name)
    weights = Weights(run_dir / "model.safetensors")
    size_mb = sum(p.stat().st_size for p in raw_dir.iterdir()) / 2**20

    with LocalHub(root / "hub", port=port, user="hubft-bench", record_requests=False) as hub:
        os.environ["HF_TOKEN"] = hub.token  # the local hub's own token, for this process only
        api = HfApi()
        current: dict[str, object] = {}
        pulled = root / "pulled"
        source = "hubft-bench/pull-source"  # what both pull sides download
        weights.write(run_dir)
        push_to_hub(run_dir, source)

        def before(side: str, rep: int) -> None:
            name = f"{side}-{rep}" if rep >= 0 else f"{side}-warmup{-rep}"
            if side.startswith("push"):
                weights.write(run_dir if side == "push_hubft" else raw_dir)
                current[side] = f"hubft-bench/{name}"
            else:
                shutil.rmtree(pulled, ignore_errors=True)  # a fresh folder: no file is already there
                current[side] = pulled / name

        def push_raw(side: str = "push_raw") -> None:
            repo_id = current[side]
            api.create_repo(repo_id, exist_ok=True)
            api.upload_folder(folder_path=str(raw_dir), repo_id=repo_id, commit_message="Upload model")

        def pull_raw(side: str = "pull_raw") -> None:
            snapshot_download(source, local_dir=current[side])

        # Pushes and pulls in rounds of their own: a pull timed right after a push shared the disk with the Hub's
        # syncs of the 45 MB the push had just written, which put 0.48-1.10 on one full run's pull line.
        # Each call is ~0.1-0.2 s and single calls vary 2x: twice the pairs, and a noise floor for both.
        push = interleave({"push_raw": push_raw, "push_hubft": lambda: push_to_hub(run_dir, current["push_hubft"]),
                           "push_raw_again": lambda: push_raw("push_raw_again")}, 2 * reps, before=before)
        pull = interleave({"pull_raw": pull_raw, "pull_hubft": lambda: pull_from_hub(source, current["pull_hubft"]),
                           "pull_raw_again": lambda: pull_raw("pull_raw_again")}, 2 * reps, before=before)
        os.environ.pop("HF_TOKEN", None)

    case = f"{model} run folder, {size_mb:.0f} MB, {len(list(raw_dir.iterdir()))} files"
    return [
        speed_row(push, "push_raw_again", "push_raw", bench="4 hub transfer",
                  metric="upload_folder / identical upload_folder (noise floor)", case=case),
        speed_row(push, "push_hubft", "push_raw", bench="4 hub transfer", metric="hubft push / upload_folder",
                  case=case, target=0.95),
        speed_row(pull, "pull_raw_again", "pull_raw", bench="4 hub transfer",
                  metric="snapshot_download / identical snapshot_download (noise floor)", case=case),
        speed_row(pull, "pull_hubft", "pull_raw", bench="4 hub transfer", metric="hubft pull / snapshot_download",
                  case=case, target=0.95),
    ]
