"""A trained model ready to run: loaded from a Hub repo, a directory or a run, with its preprocessing and task."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from hubft.errors import ConfigError, ModelError
from hubft.tasks import DEFAULT_TASK, Task, get_task

__all__ = ["InferenceModel", "load_inference_model"]


@dataclass(frozen=True)
class InferenceModel:
    """A model in eval mode with what is needed to run it as it was trained.

    Attributes:
        model: The model (eval mode).
        label_names: The names of its outputs, in order.
        transform: Its own eval preprocessing (size, crop, interpolation, mean / std from its config): a PIL image
            to a normalised ``[3, H, W]`` tensor.
        task: The task it was fine-tuned for, as it applies to its labels (single- or multi-label).
        spec: How it was named (``hf-hub:owner/name``, ``local-dir:PATH``, ...).
        repo_id: Its Hub repo, when it came from one.
    """

    model: torch.nn.Module
    label_names: tuple[str, ...]
    transform: Any
    task: Task
    spec: str
    repo_id: str | None

    def check_per_image(self, command: str) -> None:
        """Refuse, in a command that gives one result per image, a model whose task predicts per pixel (its
        evaluation reduces batches to statistics: ``Task.eval_statistics``).

        Raises:
            ConfigError: Naming the model's task and the Python functions that serve it.
        """
        if self.task.eval_statistics is not None:
            raise ConfigError(f"`hubft {command}` gives one result per image, but {self.spec!r} is a "
                              f"{self.task.name} model (one class per pixel)",
                              fix="use hubft.inference.predict_masks in Python for its masks (hubft eval "
                                  "scores it)")

    @property
    def fixed_input_size(self) -> bool:
        """Whether the model takes only its configured input size (a ViT's position embeddings, say)."""
        return bool(self.model.pretrained_cfg.get("fixed_input_size"))


def load_inference_model(spec: str | os.PathLike, *, revision: str | None = None) -> InferenceModel:
    """Load a trained model by any name :func:`hubft.from_pretrained` takes, or a run directory.

    Args:
        spec: ``hf-hub:owner/name[@rev]``, ``owner/name``, ``local-dir:PATH``, or the path of a directory holding
            ``model.safetensors`` and ``config.json`` (a finished run's output directory).
        revision: A Hub branch, tag or commit.

    Raises:
        ModelError: The model cannot be found or loaded, or has no label names to report predictions by.
    """
    from hubft.data import create_transforms
    from hubft.models import from_pretrained

    text = os.fspath(spec)
    if ":" not in text and os.path.isdir(os.path.expanduser(text)):
        text = f"local-dir:{text}"
    model = from_pretrained(text, revision=revision).eval()
    names = tuple(getattr(model, "label_names", None) or ())
    if len(names) != getattr(model, "num_classes", len(names)) or not names:
        raise ModelError(f"model {text!r} has no label names for its {getattr(model, 'num_classes', '?')} outputs",
                         fix="save it with hubft (save_pretrained or a fine-tune), or name its labels in config.json")
    recorded = getattr(model, "hubft_task", None) or {}
    task = get_task(recorded.get("name") or DEFAULT_TASK).for_labels(bool(recorded.get("multi_label")))
    source = getattr(model, "hubft_source", None) or {}
    repo_id = source.get("repo_id") if source.get("kind") == "hub" else None
    return InferenceModel(model, names, create_transforms(model.pretrained_cfg, training=False), task, text, repo_id)
