"""The fine-tuning configuration: nested dataclasses that are the single source of truth.

YAML files, ``--section.field value`` command-line overrides and Python dicts all go through
:func:`config_from_dict`, which rejects unknown keys (listing the valid ones) and type-checks every value against the
dataclass annotations. The CLI flags are generated from the same fields, so they can never drift apart.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from hubft.errors import ConfigError, one_line

__all__ = [
    "FinetuneConfig",
    "ModelConfig",
    "DataConfig",
    "LossConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "HubConfig",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "apply_overrides",
    "config_fields",
]


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with help text (mutable defaults are copied per instance)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class ModelConfig:
    name: str = _f("resnet18", "Backbone: timm architecture, timm tag, hf-hub:owner/name[@rev], or local-dir:PATH.")
    pretrained: bool = _f(True, "Load the source's weights (False: random init, e.g. a from-scratch baseline).")
    revision: Optional[str] = _f(None, "Hub revision (branch, tag or commit sha) of the backbone.")
    freeze: Union[bool, int, str] = _f(
        False, "Freeze the body: false, true/'body' (linear probe), or N (the first N stages)."
    )
    unfreeze_epoch: Optional[int] = _f(
        None, "Unfreeze the frozen part at the start of this epoch (0-based); null keeps it frozen."
    )
    head_init_seed: Optional[int] = _f(None, "Seed for the new head's initialisation (default: train.seed).")
    drop_rate: Optional[float] = _f(None, "Dropout before the classifier (timm drop_rate).")
    drop_path_rate: Optional[float] = _f(None, "Stochastic depth rate (timm drop_path_rate).")


@dataclass
class DataConfig:
    name: Optional[str] = _f(None, "Hub dataset id (owner/name); exclusive with data.path.")
    path: Optional[str] = _f(None, "Local image folder, CSV or parquet file; exclusive with data.name.")
    revision: Optional[str] = _f(None, "Hub dataset revision.")
    image_column: Optional[str] = _f(None, "Image column (auto-detected when null).")
    label_column: Optional[str] = _f(None, "Label column (auto-detected when null).")
    train_split: str = _f("train", "Split to train on.")
    eval_split: Optional[str] = _f(None, "Split to evaluate on; null carves a stratified part out of train.")
    eval_fraction: float = _f(0.2, "Fraction of train carved out for evaluation when there is no eval split.")
    classes: Optional[list] = _f(None, "Keep only these classes (names or ids), re-indexed in this order.")
    max_per_class: Optional[int] = _f(None, "Keep at most this many training examples per class (few-shot).")
    image_size: Optional[int] = _f(None, "Input size; overrides the model's own preprocessing size.")
    num_workers: Union[int, str] = _f(
        "auto", "DataLoader worker processes: auto (0 on CPU, where decoding would compete with training for the "
        "cores; on a GPU, the cores per process less one, at most 8), or a number (0 decodes in the training process).")
    cache: Union[bool, str] = _f("auto", "Decode small datasets once into memory: auto, true or false.")
    auto_augment: Optional[str] = _f(None, "timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1 (train only).")
    re_prob: float = _f(0.0, "Random erasing probability (train only).")
    re_mode: str = _f("pixel", "Random erasing mode: const, rand or pixel.")
    color_jitter: Optional[float] = _f(None, "Colour jitter strength (train only).")
    hflip: float = _f(0.5, "Horizontal flip probability (train only).")
    scale: Optional[list] = _f(None, "Random-resized-crop scale range [min, max] (train only).")
    ratio: Optional[list] = _f(None, "Random-resized-crop aspect ratio range [min, max] (train only).")
    mixup_alpha: float = _f(0.0, "Mixup alpha; > 0 turns mixup on.")
    cutmix_alpha: float = _f(0.0, "CutMix alpha; > 0 turns cutmix on.")
    mixup_prob: float = _f(1.0, "Probability of mixing a batch when mixup/cutmix is on.")
    mixup_switch_prob: float = _f(0.5, "Probability of cutmix instead of mixup when both are on.")
    mixup_off_epoch: Optional[int] = _f(None, "Stop mixing from this epoch on.")


@dataclass
class LossConfig:
    name: Union[str, dict, list] = _f(
        "cross_entropy",
        "Loss: a registered name, 'module:attr', or a weighted mix {name: weight | {weight: w, option: value}}.",
    )
    options: dict = _f({}, "Keyword arguments for the loss, e.g. {gamma: 2.0}.")


@dataclass
class OptimConfig:
    name: str = _f("adamw", "Optimizer: a torch or timm optimizer name.")
    lr: float = _f(1e-3, "Base learning rate of the body.")
    head_lr: Optional[float] = _f(None, "Learning rate of the new head (default: optim.lr).")
    layer_decay: Optional[float] = _f(None, "Layer-wise LR decay per block from the top (e.g. 0.75).")
    weight_decay: float = _f(0.05, "Weight decay (never applied to norms and biases).")
    clip_grad_norm: Optional[float] = _f(None, "Clip the gradient norm to this value.")
    fused: Union[bool, Literal["auto"]] = _f(
        "auto", "torch's fused optimizer kernel: auto (for adam and adamw, unless options choose an implementation), "
        "true (adam, adamw or sgd) or false (torch's default implementation).")
    options: dict = _f({}, "Extra optimizer keyword arguments, e.g. {betas: [0.9, 0.99]}.")


@dataclass
class ScheduleConfig:
    name: str = _f("cosine", "LR schedule: a torch scheduler class name, an alias, none, or 'module:attr'.")
    warmup_steps: int = _f(0, "Linear warmup length in optimizer updates.")
    warmup_start_factor: float = _f(0.01, "Warmup starts at this fraction of each group's LR.")
    interval: Optional[str] = _f(None, "Step the schedule per 'step' (update) or per 'epoch' (default: per schedule).")
    options: dict = _f({}, "Keyword arguments of the scheduler (torch's own names).")


@dataclass
class TrainConfig:
    epochs: int = _f(3, "Number of epochs.")
    batch_size: int = _f(32, "Batch size per process.")
    eval_batch_size: Optional[int] = _f(None, "Evaluation batch size per process (default: batch_size).")
    grad_accum_steps: int = _f(1, "Micro-batches per optimizer update.")
    mixed_precision: Literal["no", "bf16", "fp16"] = _f("no", "Mixed precision: no, bf16 or fp16.")
    channels_last: Union[bool, str] = _f("auto", "channels-last memory format: auto (conv nets), true, false.")
    cpu: bool = _f(False, "Train on CPU even when a GPU is present (gloo for several processes).")
    reuse_host_memory: Union[bool, Literal["auto"]] = _f(
        "auto", "Keep freed host memory in the process for the next update instead of returning it to the OS (glibc "
        "malloc settings, process-wide): auto (when training on CPU; about 15% faster resnet18 updates on 2 cores), "
        "true, false.")
    seed: int = _f(0, "Seed for data order, augmentation, head init and dropout.")
    check_gradients: bool = _f(
        True, "Refuse an update whose gradients hold NaN/inf, not only a non-finite loss: one read of every gradient "
        "per update (about 2 ms for resnet18 on 2 CPU cores, 1-3% of a small step; no host sync on CUDA with a fused "
        "optimizer). With false a poisoned update is applied (and may be checkpointed) and the next update's loss "
        "stops the run.")
    output_dir: str = _f("outputs/run", "Where the model, logs, metrics and checkpoints go.")
    checkpoint_every: Optional[int] = _f(None, "Write a checkpoint every N optimizer updates (and each epoch end).")
    keep_checkpoints: int = _f(2, "Keep the last K complete checkpoints (never fewer than one).")
    resume: Optional[str] = _f(
        None, "Resume from 'latest', a checkpoint directory, or 'hub:owner/name[@branch]' (pushed checkpoints)."
    )
    ema: bool = _f(False, "Keep an exponential moving average of the weights.")
    ema_decay: float = _f(0.999, "EMA decay per optimizer update.")
    save_ema: bool = _f(False, "Save the EMA weights as the final model instead of the raw ones.")
    early_stopping_patience: Optional[int] = _f(None, "Stop after N epochs without a better eval metric.")
    log_every: int = _f(10, "Write a log.jsonl record every N optimizer updates.")
    log_with: Optional[str] = _f(None, "Accelerate tracker (tensorboard, wandb, ...).")
    max_updates: Optional[int] = _f(None, "Stop after this many optimizer updates (a smoke-test cap).")


@dataclass
class HubConfig:
    push: bool = _f(False, "Push the finished model to the Hub.")
    repo_id: Optional[str] = _f(None, "Repo to push to (owner/name).")
    private: Optional[bool] = _f(None, "Create the repo private.")
    revision: Optional[str] = _f(None, "Branch to push to.")
    license: Optional[str] = _f(None, "License for the model card (default: the base model's).")
    push_checkpoints: bool = _f(False, "Push checkpoints to a branch during training, in the background.")
    checkpoint_branch: str = _f("checkpoints", "Branch that receives the checkpoints.")


@dataclass
class FinetuneConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hub: HubConfig = field(default_factory=HubConfig)


_SECTIONS: dict[str, type] = typing.get_type_hints(FinetuneConfig)


def config_fields() -> dict[str, dataclasses.Field]:
    """Every leaf field as ``"section.field" -> Field`` (what the CLI turns into ``--section.field`` flags)."""
    out = {}
    for section, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            out[f"{section}.{f.name}"] = f
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; accept the string forms the CLI produces."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed:
            return value
        raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}", fix=f"set {key} to one of them")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("null", "~"))):
            return None
        # Try the non-string alternatives first so "3" becomes an int for Union[bool, int, str], and int before
        # bool for a number written as a string: "1" is one stage for model.freeze, not true.
        numeric = isinstance(value, str) and value.strip().lstrip("-").isdigit()
        for arg in sorted(args, key=lambda a: (a is str, numeric and a is bool)):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}", fix=f"give {key} a value of that type")
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        raise ConfigError(f"{key} must be null, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp in (list, dict):
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        if isinstance(value, tp):
            return value
    raise ConfigError(
        f"{key} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})",
        fix=f"give {key} a value of type {_type_name(tp)}",
    )


def _unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return ConfigError(f"unknown config key {key!r} in {where}", fix=f"{hint}valid keys: {', '.join(valid)}")


def config_from_dict(data: dict | None) -> FinetuneConfig:
    """Build a :class:`FinetuneConfig` from nested plain data (as loaded from YAML).

    Missing sections and fields keep their defaults. Values given as strings (from the command line) are converted
    to the field's type.

    Raises:
        ConfigError: An unknown section or key (the message lists the valid ones), or a value of the wrong type.
    """
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}",
                          fix="write the config as sections (model:, data:, train:, ...) of key: value pairs")
    sections = {}
    for section, values in data.items():
        if section not in _SECTIONS:
            raise _unknown_key(section, list(_SECTIONS), "the top level")
        cls = _SECTIONS[section]
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping, got {values!r}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in hints:
                raise _unknown_key(key, list(hints), f"section {section!r}")
            kwargs[key] = _coerce(value, hints[key], f"{section}.{key}")
        sections[section] = cls(**kwargs)
    return FinetuneConfig(**sections)


def config_to_dict(config: FinetuneConfig) -> dict:
    """The config as nested plain data (what is written to the output directory as ``config.yaml``)."""
    return dataclasses.asdict(config)


def apply_overrides(config: FinetuneConfig, overrides: dict[str, Any]) -> FinetuneConfig:
    """Return a copy of ``config`` with ``{"section.field": value}`` overrides applied and type-checked.

    Raises:
        ConfigError: An unknown key (with close matches) or a badly typed value.
    """
    data = config_to_dict(config)
    valid = list(config_fields())
    for dotted, value in overrides.items():
        if dotted not in valid:
            raise _unknown_key(dotted, valid, "the overrides")
        section, key = dotted.split(".", 1)
        data[section][key] = value
    return config_from_dict(data)


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> FinetuneConfig:
    """Load a YAML config file (optional) and apply ``--section.field`` style overrides.

    Raises:
        ConfigError: The file is missing or not valid YAML, or holds unknown keys or badly typed values.
    """
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist", fix="check the path given to --config")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML ({one_line(e)})",
                              fix="check the YAML syntax near the line named") from None
    config = config_from_dict(data)
    return apply_overrides(config, overrides or {})
