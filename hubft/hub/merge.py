"""``hubft merge``: an adapter folded into its backbone, written as a plain timm model directory.

The result is what a full fine-tune writes (``model.safetensors`` + timm's ``config.json``, and the card), so timm,
transformers and every hubft command load it without peft (a segmentation adapter gives a segmentation model, which
``hubft.from_pretrained`` loads). The adapter's run files (its config, metrics and plots)
come along when the adapter has them, so the merged model's card shows the same results.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from hubft.errors import ModelError
from hubft.files import make_dir
from hubft.hub.card import PLOTS, SAMPLE_PLOTS, write_model_card

__all__ = ["MERGE_TOLERANCE", "MergeReport", "merge_adapter_dir"]

MERGE_TOLERANCE = 1e-4
"""The largest logit difference (relative to the largest logit, when that is above 1) between the adapter model and
the merged one that :func:`merge_adapter_dir` accepts; fp32 merges of small models differ by about 1e-7."""

RUN_FILES = ("config.yaml", "metrics.json", *PLOTS, *SAMPLE_PLOTS)
"""The files of an adapter run that the merged directory gets too (when present)."""


@dataclass(frozen=True)
class MergeReport:
    """A merge and its check: the directory written and the largest logit difference from the adapter model."""

    path: Path
    max_abs_diff: float


def merge_adapter_dir(source: str | os.PathLike, output_dir: str | os.PathLike, *, repo_id: str | None = None,
                      revision: str | None = None) -> MergeReport:
    """Merge the adapter at ``source`` into its backbone and write ``output_dir`` as a plain timm model.

    ``source`` is an adapter directory (an adapter run's output) or Hub repo (``owner/name``, ``hf-hub:owner/name``).
    Its backbone is loaded from the source the adapter records, the adapter merged into it
    (:func:`hubft.models.merge_adapter`), and both models are run on the same random batch at the model's input size:
    the directory is written only when their logits agree within :data:`MERGE_TOLERANCE`. ``output_dir`` then holds
    ``model.safetensors``, ``config.json``, the adapter run's ``config.yaml``, ``metrics.json`` and plots when it has
    them, and a model card for ``repo_id``.

    Raises:
        ModelError: ``source`` is not an adapter, its backbone cannot be loaded, or the merged model's logits differ
            (nothing is written then).
        HubError: The adapter repo cannot be downloaded.
        ConfigError: ``output_dir`` cannot be created.
    """
    from hubft.models import from_pretrained, is_adapter_model, merge_adapter, save_pretrained

    local = _adapter_directory(source, revision)
    model = from_pretrained(f"local-dir:{local}")
    if not is_adapter_model(model):
        raise ModelError(f"{os.fspath(source)!r} holds a full model (config.json + model.safetensors), not an adapter",
                         fix="merge a directory or repo that holds adapter_config.json and adapter_model.safetensors")
    batch = torch.randn(2, *model.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model.eval()(batch)
        merged = merge_adapter(model).eval()
        diff = float((merged(batch) - before).abs().max())
    if not diff <= MERGE_TOLERANCE * max(1.0, float(before.abs().max())):
        raise ModelError(f"the merged model's logits differ from the adapter model's by {diff:.3g}",
                         fix="report this as a hubft bug, with the adapter; nothing was written")
    merged.hubft_adapter = {**merged.hubft_adapter, "merged_from": os.fspath(source)}
    make_dir(output_dir, key="the output directory")
    out = save_pretrained(merged, output_dir)
    for name in RUN_FILES:
        if (local / name).is_file() and (local / name).resolve() != (out / name).resolve():
            shutil.copyfile(local / name, out / name)
    write_model_card(out, repo_id=repo_id)
    return MergeReport(out, diff)


def _adapter_directory(source: str | os.PathLike, revision: str | None) -> Path:
    """A local directory holding the adapter: ``source`` itself, or the Hub repo's files downloaded."""
    from hubft.hub.push import pull_from_hub

    text = os.fspath(source)
    path = os.path.expanduser(text.removeprefix("local-dir:"))
    if os.path.isdir(path):
        return Path(path)
    if text.startswith("local-dir:") or os.path.isabs(path) or text.startswith((".", "~")) or os.path.exists(path):
        raise ModelError(f"adapter {text!r} is not a directory", fix="give an adapter run's output directory, or "
                         "a Hub repo as owner/name")
    repo, _, inline = text.removeprefix("hf-hub:").partition("@")
    return pull_from_hub(repo, revision=inline or revision)
