"""The output directory of a run: what is written, when, and how it survives a crash.

``log.jsonl`` is appended as training goes (one JSON record per line, ``step`` = optimizer updates); everything
else is written once at the end, each file atomically (temporary name + rename), so an interrupted run never leaves
a half-written model behind and a failed push leaves the directory intact to push again.

Layout::

    model.safetensors, config.json   the model (timm-loadable; hubft.save_pretrained)
    adapter_model.safetensors,       instead, with model.adapter: the adapter and the head (peft-loadable on the
      adapter_config.json              backbone; hubft.save_adapter)
    merged/                          with hub.merge_adapter: the adapter merged into the backbone (a full model
                                       directory: weights, config.json, card, config.yaml, metrics, plots)
    config.yaml                      the resolved training config
    metrics.json                     final and best metrics, per-epoch history and the facts of the run
    README.md                        the model card
    lr_curve.png, lr_curve.csv       every parameter group's LR per update (written before training)
    loss_curve.png, confusion_matrix.png
    log.jsonl                        per-step (with the unix time) and per-epoch records
    checkpoints/step-N/              resumable checkpoints
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from hubft.config import config_to_dict
from hubft.files import atomic_write_text
from hubft.train.checkpoint import Exchange, run_agreed

if TYPE_CHECKING:
    from hubft.train.loop import TrainLoop
    from hubft.train.parts import RunParts

__all__ = ["OutputWriter", "flat_dict", "framework_versions"]


def framework_versions() -> dict:
    """Versions of the libraries that shaped a run (recorded in metrics.json and the model card)."""
    import accelerate
    import datasets
    import huggingface_hub
    import safetensors
    import timm
    import torch

    from hubft._version import __version__

    versions = {"hubft": __version__, "torch": torch.__version__, "timm": timm.__version__,
                "accelerate": accelerate.__version__, "datasets": datasets.__version__,
                "huggingface_hub": huggingface_hub.__version__, "safetensors": safetensors.__version__,
                "python": platform.python_version()}
    peft = sys.modules.get("peft")  # imported when the run used an adapter
    return versions | ({"peft": peft.__version__} if peft is not None else {})


class OutputWriter:
    """Writes a run's files; only the main process writes, the others call the same methods as no-ops."""

    def __init__(self, root: Path, *, is_main: bool) -> None:
        self.root = root
        self.is_main = is_main
        self.tracker = None  # Accelerator.log when train.log_with is set

    @property
    def log_path(self) -> Path:
        return self.root / "log.jsonl"

    def log(self, record: dict) -> None:
        if not self.is_main:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tracker is not None:
            kind = record.get("type", "step")
            values = {k: v for k, v in flat_dict(record, f"{kind}/").items() if isinstance(v, (int, float))
                      and not isinstance(v, bool) and not k.endswith(("/step", "/epoch", "/time"))}
            self.tracker(values, step=record.get("step"))

    def read_log(self) -> list[dict]:
        if not self.log_path.is_file():
            return []
        records = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:  # a line cut short by a kill
                continue
        return records

    def truncate_log(self, step: int) -> None:
        """Drop records written after update ``step`` (by a run that died after its last checkpoint)."""
        if not self.is_main or not self.log_path.is_file():
            return
        kept = [r for r in self.read_log() if r.get("step", 0) <= step]
        atomic_write_text(self.log_path, "".join(json.dumps(r) + "\n" for r in kept))

    def start(self, parts: "RunParts") -> None:
        """Before training: the resolved config and the LR curves of every parameter group."""
        if not self.is_main:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.root / "config.yaml", yaml.safe_dump(config_to_dict(parts.config), sort_keys=False))
        from hubft.train.plots import plot_lr_of_run

        plot_lr_of_run(parts, self.root)

    def finish(self, parts: "RunParts", loop: "TrainLoop", exchange: Exchange | None = None) -> Path:
        """After training: model, metrics, plots and model card, written by the main process.

        ``exchange`` (see :func:`~hubft.train.checkpoint.run_agreed`) ends the writes instead of a plain barrier:
        when they fail on the main process (disk full), every process raises the same error instead of waiting.
        """
        parts.accelerator.wait_for_everyone()
        from hubft.train.sharding import full_state_dict, is_sharded

        # One consolidated model.safetensors, gathered from the shards (a collective: every process takes part).
        weights = full_state_dict(parts.model) if is_sharded(parts.model) else None

        def write() -> None:
            if not self.is_main:
                return
            from hubft.hub.card import write_model_card
            from hubft.models import save_pretrained
            from hubft.train.plots import plot_run

            c = parts.config
            save_pretrained(parts.ema.module if (parts.ema is not None and c.train.save_ema)
                            else parts.unwrapped_model, self.root, state_dict=weights)
            _remove_stale_model_files(self.root, adapter=c.model.adapter is not None)
            metrics = {
                "final": loop.last_metrics,
                "best": loop.best_record(),
                "best_epoch": loop.state.best_epoch,
                "history": loop.state.history,
                "run": run_facts(parts, loop.state.update),
            }
            atomic_write_text(self.root / "metrics.json", json.dumps(metrics, indent=1))
            plot_run(self.root, self.read_log(), metrics, list(parts.data.label_names),
                     [m.key for m in parts.task.card_metrics])
            if parts.task.sample_plot is not None:
                parts.task.sample_plot(parts.unwrapped_model, parts.eval_loader.dataset, parts.eval_normalize,
                                       list(parts.data.label_names), self.root)
            write_model_card(self.root, repo_id=c.hub.repo_id)
            if c.hub.merge_adapter:
                from hubft.hub.merge import merge_adapter_dir

                report = merge_adapter_dir(self.root, self.root / MERGED_DIR, repo_id=c.hub.repo_id)
                parts.accelerator.print(f"hubft: wrote the adapter merged into its backbone to {report.path} (logits "
                                        f"within {report.max_abs_diff:.2g} of the adapter model's)")

        run_agreed(write, exchange)
        return self.root


MERGED_DIR = "merged"
"""Where ``hub.merge_adapter`` writes the merged model, inside the run directory."""


def _remove_stale_model_files(root: Path, *, adapter: bool) -> None:
    """Remove the other kind of model an earlier run left in ``root``: a push must carry one model, this run's."""
    import shutil

    from hubft.hub.push import ADAPTER_FILES, MODEL_FILES

    for name in MODEL_FILES if adapter else ADAPTER_FILES:
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / MERGED_DIR, ignore_errors=True)


def run_facts(parts: "RunParts", updates: int) -> dict:
    """What ``metrics.json`` records about how the run was made (the model card is written from it)."""
    from hubft.models import trainable_parameters

    c, acc = parts.config, parts.accelerator
    trainable, total = trainable_parameters(parts.unwrapped_model)
    return {
        "task": parts.task.name,
        "base_model": getattr(parts.unwrapped_model, "hubft_source", {}) or {},
        "dataset": parts.data.source.to_dict(),
        "label_names": list(parts.data.label_names),
        "multi_label": parts.data.multi_label,
        "train_examples": parts.data.source.num_train,
        "eval_examples": len(parts.data.eval),
        "loss": parts.loss_label,
        "loss_options": c.loss.options,
        "optimizer": c.optim.name,
        "param_groups": [{"name": n, "lr": g.get("initial_lr", g["lr"]), "weight_decay": g["weight_decay"]}
                         for n, g in zip(parts.group_names, parts.optimizer.param_groups)],
        "schedule": c.schedule.name,
        "warmup_steps": c.schedule.warmup_steps,
        "epochs": c.train.epochs,
        "updates": updates,
        "batch_size_per_process": c.train.batch_size,
        "grad_accum_steps": c.train.grad_accum_steps,
        "processes": acc.num_processes,
        "effective_batch_size": c.train.batch_size * c.train.grad_accum_steps * acc.num_processes,
        "mixed_precision": c.train.mixed_precision,
        "channels_last": parts.channels_last,
        "device": acc.device.type,
        "seed": c.train.seed,
        "augmentation": {k: getattr(c.data, k) for k in (
            "auto_augment", "re_prob", "re_mode", "color_jitter", "hflip", "scale", "ratio", "mixup_alpha",
            "cutmix_alpha", "mixup_prob", "mixup_switch_prob", "mixup_off_epoch")},
        "regularisation": {"drop_rate": c.model.drop_rate, "drop_path_rate": c.model.drop_path_rate,
                           "weight_decay": c.optim.weight_decay, "ema": c.train.ema},
        "trainable_parameters": trainable,
        "parameters": total,
        "adapter": getattr(parts.unwrapped_model, "hubft_adapter", None),
        "frameworks": framework_versions(),
    }


def flat_dict(data: dict, prefix: str = "", *, scalars_only: bool = False) -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``; with ``scalars_only`` lists and None become strings (tracker hparams)."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_dict(value, f"{name}/", scalars_only=scalars_only))
        elif not scalars_only or isinstance(value, (int, float, str, bool)):
            out[name] = value
        else:
            out[name] = str(value)
    return out
