"""timm's ``config.json``: reading a source's, writing a saved model's.

The format is timm's own (``timm/models/_hub.py``): top-level ``architecture``, ``num_classes``,
``num_features``, ``global_pool``, ``label_names``, ``model_args`` and ``pretrained_cfg``. hubft's own metadata
goes in a separate top-level ``hubft`` key, which timm ignores. Parsing and writing are delegated to timm's
``load_model_config_from_path`` and ``save_config_for_hf``, so that what hubft writes is exactly what
``timm.create_model("local-dir:...")`` reads; they live in timm's private ``_hub`` module, hence the single import
point here.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
from timm.models import PretrainedCfg, is_model
from timm.models._hub import load_model_config_from_path, save_config_for_hf
from torch import nn

from hubft.errors import ModelError
from hubft.files import atomic_write
from hubft.models._fetch import SourceFiles
from hubft.models._labels import labels_from_config

__all__ = ["HUBFT_KEY", "SourceConfig", "read_config", "write_config"]

# Top-level config.json key for hubft's metadata (lineage); timm ignores unknown top-level keys.
HUBFT_KEY = "hubft"
_PRETRAINED_CFG_FIELDS = frozenset(field.name for field in dataclasses.fields(PretrainedCfg))


@dataclass(frozen=True)
class SourceConfig:
    """What a source's ``config.json`` says about the model its weights belong to.

    Attributes:
        architecture: The timm architecture.
        pretrained_cfg: timm's pretrained config (preprocessing, classifier name, class count, ...).
        model_args: Keyword arguments that rebuild the saved model (img_size, in_chans, global_pool, ...).
        num_classes: Outputs of the saved head (0: no head).
        label_names: The saved head's class names, when it has a full list of unique ones.
        hubft: hubft's metadata block when hubft wrote the file, else None.
    """

    architecture: str
    pretrained_cfg: dict[str, Any]
    model_args: dict[str, Any]
    num_classes: int
    label_names: tuple[str, ...] | None
    hubft: dict[str, Any] | None


def read_config(files: SourceFiles) -> SourceConfig:
    """Read and check a source's ``config.json`` (timm's format, including its older single-dict form).

    Raises:
        ModelError: The file is not a JSON object, has no ``architecture``, names an architecture or
            ``pretrained_cfg`` fields this timm does not have, or has a bad ``num_classes``; the file is named.
    """
    where = f"{files.config.name} of {files.where}"
    try:
        raw = json.loads(files.config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{where} is unreadable or not valid JSON ({err})",
                         fix="save the model again with save_pretrained") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("architecture"), str):
        raise ModelError(f"{where} has no 'architecture' string, so it is not a timm model config",
                         fix="use a directory or repo written by hubft's save_pretrained or timm's save_for_hf")
    architecture = raw["architecture"]
    if not is_model(architecture):
        close = difflib.get_close_matches(architecture, timm.list_models(), n=3, cutoff=0.6)
        raise ModelError(f"{where} names architecture {architecture!r}, which timm {timm.__version__} does not have"
                         + (f" (closest: {', '.join(close)})" if close else ""),
                         fix="upgrade timm (pip install -U timm), or fix the architecture name in config.json")
    try:
        pretrained_cfg, _, model_args = load_model_config_from_path(files.config.parent)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise ModelError(f"{where} is not in timm's config format ({type(err).__name__}: {err})",
                         fix="save the model again with save_pretrained") from None
    unknown = sorted(set(pretrained_cfg) - _PRETRAINED_CFG_FIELDS)
    if unknown:
        raise ModelError(f"{where} has pretrained_cfg fields timm {timm.__version__} does not know: "
                         f"{', '.join(unknown)}", fix="upgrade timm (pip install -U timm)")
    num_classes = pretrained_cfg.get("num_classes", PretrainedCfg.num_classes)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ModelError(f"{where} has num_classes={num_classes!r}, not an integer >= 0",
                         fix="fix num_classes in config.json")
    if not isinstance(model_args, Mapping):
        raise ModelError(f"{where} has model_args={model_args!r}, not an object", fix="fix model_args")
    hubft = raw.get(HUBFT_KEY)
    return SourceConfig(
        architecture=architecture,
        pretrained_cfg=dict(pretrained_cfg, architecture=architecture),
        model_args=dict(model_args),
        num_classes=num_classes,
        label_names=labels_from_config(pretrained_cfg.get("label_names"), num_classes),
        hubft=hubft if isinstance(hubft, dict) else None,
    )


def write_config(model: nn.Module, path: Path, *, label_names: Sequence[str] | None,
                 hubft: Mapping[str, Any]) -> None:
    """Write timm's ``config.json`` for ``model`` atomically, with ``label_names`` and a ``hubft`` block.

    ``label_names`` are written both at the top level (where timm's loaders read them into
    ``pretrained_cfg["label_names"]``) and in ``pretrained_cfg``, replacing whatever the model's config held.

    Raises:
        ModelError: A model argument or the hubft block cannot be written as JSON.
    """
    names = list(label_names) if label_names else None
    model_config: dict[str, Any] = {HUBFT_KEY: dict(hubft)}
    if names:
        model_config["label_names"] = names
    if names or model.pretrained_cfg.get("label_names"):
        model_config["pretrained_cfg"] = {"label_names": names}
    def write(tmp: str) -> None:
        save_config_for_hf(model, tmp, model_config=model_config)
        # timm records num_classes in model_args too; transformers' TimmWrapper passes model_args and its own
        # num_classes to timm, and fails on the duplicate. The top-level num_classes is what timm builds with.
        written = json.loads(Path(tmp).read_text())
        if isinstance(written.get("model_args"), dict):
            written["model_args"].pop("num_classes", None)
        Path(tmp).write_text(json.dumps(written, indent=2))

    try:
        json.dumps(model_config)
        atomic_write(path, write)
    except (TypeError, ValueError) as err:
        raise ModelError(f"cannot write {str(path)!r}: {err}",
                         fix="create the model with JSON-serialisable arguments (strings, numbers, lists)") from None

