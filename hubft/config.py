"""The fine-tuning configuration: nested dataclasses that are the single source of truth.

YAML files, ``--section.field value`` command-line overrides and Python dicts all go through
:func:`config_from_dict`, which rejects unknown keys (listing the valid ones), type-checks every value against the
dataclass annotations and checks it against the rule written beside its field (:class:`Rule`: ``>= 1``,
``in (0, 1)``, ...). A rule's text is both the field's help suffix and its error message, so they cannot disagree.
Rules between the fields of one section sit on that section (its ``check`` method). The CLI flags are generated
from the same fields, so they can never drift apart either.
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
from typing import Any, Callable, Literal, Optional, Union

import yaml

from hubft.errors import ConfigError, one_line

__all__ = [
    "ADAPTERS",
    "Freeze",
    "Rule",
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
    "check_config",
    "copy_config",
]


@dataclass(frozen=True)
class Rule:
    """A constraint on one config value: ``ok(value)`` says whether it holds; ``text`` completes "it must be ...".

    Examples:
        >>> at_least(1).text, at_least(1).ok(0)
        ('>= 1', False)
    """

    text: str
    ok: Callable[[Any], bool]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def at_least(low: float) -> Rule:
    return Rule(f">= {low}", lambda v: _number(v) and v >= low)


def above(low: float) -> Rule:
    return Rule(f"> {low}", lambda v: _number(v) and v > low)


def between(low: float, high: float, *, closed: str = "[]") -> Rule:
    """``closed`` says which ends belong to the range: ``"[]"``, ``"()"``, ``"(]"`` or ``"[)"``."""
    left, right = closed

    def ok(v: Any) -> bool:
        return _number(v) and (v >= low if left == "[" else v > low) and (v <= high if right == "]" else v < high)

    return Rule(f"in {left}{low}, {high}{right}", ok)


def optional(rule: Rule) -> Rule:
    return Rule(f"null or {rule.text}", lambda v: v is None or rule.ok(v))


def one_of(*values: Any) -> Rule:
    shown = [("true" if v is True else "false" if v is False else str(v)) for v in values]
    return Rule(", ".join(shown[:-1]) + f" or {shown[-1]}", lambda v: any(v is x or (v == x and type(v) is type(x))
                                                                        for x in values))


def _f(default: Any, help: str, *, rule: Rule | None = None, **kw: Any) -> Any:
    """A dataclass field with help text and an optional :class:`Rule` (mutable defaults are copied per instance)."""
    metadata = {"help": help + (f" Must be {rule.text}." if rule else ""), "rule": rule}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


@dataclass(frozen=True)
class Freeze:
    """``model.freeze`` parsed: what part of the body is frozen.

    Attributes:
        frozen: Whether anything is frozen.
        stages: The number of leading stages frozen; None with ``frozen`` means the whole body.

    Examples:
        >>> Freeze.parse("body"), Freeze.parse(2).stages, Freeze.parse(False).frozen
        (Freeze(frozen=True, stages=None), 2, False)
    """

    frozen: bool
    stages: int | None = None

    @classmethod
    def parse(cls, value: Any) -> Freeze:
        """Read a ``model.freeze`` value: ``false`` / ``"none"`` (nothing), ``true`` / ``"body"`` (the whole body),
        or ``N >= 0`` (the first N stages).

        Raises:
            ConfigError: Any other value.
        """
        if value is False or value == "none":
            return cls(False)
        if value is True or value == "body":
            return cls(True)
        if type(value) is int and value >= 0:
            return cls(True, value)
        raise ConfigError(f"model.freeze = {value!r} is invalid: it must be {_FREEZE_TEXT}",
                          fix=f"set model.freeze to {_FREEZE_TEXT}")


_FREEZE_TEXT = "false, true, 'body' or a number of stages >= 0"
ADAPTERS = ("lora", "dora")
"""The values of ``model.adapter`` besides null: peft's LoRA, and LoRA with DoRA's weight decomposition."""


def _freeze_ok(value: Any) -> bool:
    try:
        Freeze.parse(value)
    except ConfigError:
        return False
    return True


@dataclass
class ModelConfig:
    name: str = _f("resnet18", "Backbone: timm architecture, timm tag, hf-hub:owner/name[@rev], or local-dir:PATH.")
    task: str = _f("image-classification", "What to fine-tune the backbone for (`hubft.list_tasks()`): "
                   "image-classification (single- and multi-label data).")
    pretrained: bool = _f(True, "Load the source's weights (False: random init, e.g. a from-scratch baseline).")
    revision: Optional[str] = _f(None, "Hub revision (branch, tag or commit sha) of the backbone.")
    freeze: Union[bool, int, str] = _f(
        False, "Freeze the body: false, true/'body' (linear probe), or N (the first N stages).",
        rule=Rule(_FREEZE_TEXT, _freeze_ok),
    )
    unfreeze_epoch: Optional[int] = _f(
        None, "Unfreeze the frozen part at the start of this epoch (0-based, with model.freeze); null keeps it "
        "frozen.", rule=optional(at_least(0)),
    )
    head_init_seed: Optional[int] = _f(None, "Seed for the new head's initialisation (default: train.seed).")
    drop_rate: Optional[float] = _f(None, "Dropout before the classifier (timm drop_rate).",
                                    rule=optional(between(0, 1, closed="[)")))
    drop_path_rate: Optional[float] = _f(None, "Stochastic depth rate (timm drop_path_rate).",
                                         rule=optional(between(0, 1, closed="[)")))
    adapter: Optional[str] = _f(
        None, "Train low-rank adapters (peft) instead of the backbone: lora, dora, or null (train the backbone). "
        "The new head is trained fully; the rest is frozen, BatchNorm statistics included. The run writes an adapter "
        "(adapter_model.safetensors + adapter_config.json) that loads on its base model with peft alone (a "
        "segmentation adapter, whose base has hubft's decoder, with hubft.from_pretrained). Needs "
        "model.pretrained; refuses model.freeze (the adapter already freezes the body).",
        rule=Rule("null, lora or dora", lambda v: v is None or v in ADAPTERS))
    adapter_options: dict = _f(
        {}, "peft.LoraConfig options of model.adapter, e.g. {r: 16, alpha: 32, dropout: 0.1}: r, alpha "
        "(lora_alpha), dropout (lora_dropout), target_modules (default: chosen per model family: attention and MLP "
        "linears of ViTs, MLP linears of ConvNeXts, block convolutions of ResNets), or any other LoraConfig field; "
        "peft's defaults otherwise.")

    @property
    def frozen(self) -> Freeze:
        """:attr:`freeze` as a typed value (the one place it is decoded)."""
        return Freeze.parse(self.freeze)

    @property
    def unfreezes(self) -> bool:
        """Whether a frozen part is unfrozen during the run (``freeze`` and ``unfreeze_epoch`` both set)."""
        return self.unfreeze_epoch is not None and self.frozen.frozen

    def check(self) -> None:
        """Rules between this section's fields.

        Raises:
            ConfigError: ``unfreeze_epoch`` without ``freeze``; ``adapter`` with ``freeze`` or without
                ``pretrained``; ``adapter_options`` without ``adapter``.
        """
        if self.unfreeze_epoch is not None and not self.frozen.frozen:
            raise ConfigError(f"model.unfreeze_epoch = {self.unfreeze_epoch!r} is invalid: it must be null, or an "
                              "epoch >= 0 together with model.freeze",
                              fix="set model.freeze (e.g. true), or drop model.unfreeze_epoch")
        if self.adapter is None:
            if self.adapter_options:
                raise ConfigError(f"model.adapter_options = {self.adapter_options!r} would be ignored: "
                                  "model.adapter is null", fix="set model.adapter (lora or dora), or drop the options")
            return
        if self.frozen.frozen:
            raise ConfigError(f"model.freeze = {self.freeze!r} cannot be combined with model.adapter = "
                              f"{self.adapter!r}: the adapter run already freezes everything but the adapters and "
                              "the head", fix="drop model.freeze (and model.unfreeze_epoch)")
        if not self.pretrained:
            # The adapter is saved without the base weights: it only means something on top of weights that can be
            # downloaded again.
            raise ConfigError(f"model.adapter = {self.adapter!r} needs the backbone's pretrained weights, but "
                              "model.pretrained is false", fix="set model.pretrained: true, or drop model.adapter")


@dataclass
class DataConfig:
    name: Optional[str] = _f(None, "Hub dataset id (owner/name); exclusive with data.path.")
    path: Optional[str] = _f(None, "Local image folder, CSV or parquet file; exclusive with data.name.")
    revision: Optional[str] = _f(None, "Hub dataset revision.")
    image_column: Optional[str] = _f(None, "Image column (auto-detected when null).")
    label_column: Optional[str] = _f(None, "Label column (auto-detected when null).")
    mask_column: Optional[str] = _f(None, "Segmentation: the mask image column (auto-detected when null).")
    label_names: Optional[list] = _f(None, "Segmentation: class names by id (else the data's id2label.json).")
    train_split: str = _f("train", "Split to train on.")
    eval_split: Optional[str] = _f(None, "Split to evaluate on; null carves a stratified part out of train.")
    eval_fraction: float = _f(0.2, "Fraction of train carved out for evaluation when there is no eval split.",
                              rule=between(0, 1, closed="()"))
    classes: Optional[list] = _f(None, "Keep only these classes (names or ids), re-indexed in this order.")
    max_per_class: Optional[int] = _f(None, "Keep at most this many training examples per class (few-shot).",
                                      rule=optional(at_least(1)))
    image_size: Optional[int] = _f(None, "Input size; overrides the model's own preprocessing size.",
                                   rule=optional(at_least(8)))
    num_workers: Union[int, str] = _f(
        "auto", "DataLoader worker processes: auto (0 on CPU, where decoding would compete with training for the "
        "cores; on a GPU, the cores per process less one, at most 8), or a number (0 decodes in the training process).",
        rule=Rule("auto or a number >= 0", lambda v: v == "auto" or (type(v) is int and v >= 0)))
    cache: Union[bool, str] = _f(
        "auto", "Decode the images once into one uint8 tensor in memory instead of every epoch: auto (when it takes "
        "at most 512 MiB: images x 3 x side^2 bytes at the eval resize side, e.g. 1,400 images at 146 px hold 90 MB, "
        "and save ~0.55 ms of decoding per 224 px PNG per epoch), true or false.", rule=one_of("auto", True, False))
    auto_augment: Optional[str] = _f(None, "timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1 (train only).")
    re_prob: float = _f(0.0, "Random erasing probability (train only).", rule=between(0, 1))
    re_mode: str = _f("pixel", "Random erasing mode: const, rand or pixel.")
    color_jitter: Optional[float] = _f(None, "Colour jitter strength (train only).")
    hflip: float = _f(0.5, "Horizontal flip probability (train only).", rule=between(0, 1))
    scale: Optional[list] = _f(None, "Random-resized-crop scale range [min, max] (train only).")
    ratio: Optional[list] = _f(None, "Random-resized-crop aspect ratio range [min, max] (train only).")
    mixup_alpha: float = _f(0.0, "Mixup alpha; > 0 turns mixup on.", rule=at_least(0))
    cutmix_alpha: float = _f(0.0, "CutMix alpha; > 0 turns cutmix on.", rule=at_least(0))
    mixup_prob: float = _f(1.0, "Probability of mixing a batch when mixup/cutmix is on.", rule=between(0, 1))
    mixup_switch_prob: float = _f(0.5, "Probability of cutmix instead of mixup when both are on.",
                                  rule=between(0, 1))
    mixup_off_epoch: Optional[int] = _f(None, "Stop mixing from this epoch on.", rule=optional(at_least(0)))
    streaming: bool = _f(False, "Stream data.name from the Hub (datasets' IterableDataset, parquet shards read as "
                         "training goes, never downloaded whole); see docs/streaming.md.")
    shuffle_buffer: int = _f(1000, "Streaming: examples each process shuffles in its buffer, reshuffled every pass "
                             "over the data; 1 shuffles only the shard order and makes resume exact.",
                             rule=at_least(1))
    max_eval_examples: Optional[int] = _f(None, "Streaming: read at most this many examples of the eval split (its "
                                          "first ones) into memory once; null: the whole split.",
                                          rule=optional(at_least(1)))

    @property
    def mixing(self) -> bool:
        """Whether mixup or cutmix is on (``mixup_alpha`` or ``cutmix_alpha`` > 0)."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def check(self) -> None:
        """Rules between this section's fields.

        Raises:
            ConfigError: ``color_jitter`` set under an ``auto_augment`` policy that turns it off; a streaming option
                without ``streaming``; ``streaming`` with ``path``, ``classes``, ``max_per_class`` or data-loader
                workers.
        """
        if not self.streaming:
            for key in ("shuffle_buffer", "max_eval_examples"):
                value = getattr(self, key)
                if value != self.__dataclass_fields__[key].default:
                    raise ConfigError(f"data.{key} = {value!r} would be ignored: it applies to streamed data only",
                                      fix=f"set data.streaming: true, or drop data.{key}")
        else:
            self._check_streaming()
        if self.auto_augment and self.color_jitter and "3a" not in self.auto_augment:
            # timm turns colour jitter off under a policy; the card would record jitter that was never applied.
            raise ConfigError(f"data.color_jitter = {self.color_jitter!r} would be ignored: timm turns colour "
                              f"jitter off when data.auto_augment ({self.auto_augment!r}) is set",
                              fix="remove data.color_jitter, or data.auto_augment (a '3a' policy keeps jitter)")

    def _check_streaming(self) -> None:
        # A stream has no length and is read once per pass: whatever needs the whole split up front cannot apply.
        refused = [("path", self.path is not None, "a local data.path is on disk already: drop data.streaming"),
                   ("classes", self.classes is not None, "keeping some classes needs the whole split: drop "
                    "data.classes, or publish a dataset of those classes"),
                   ("max_per_class", self.max_per_class is not None, "per-class caps need the whole split: drop "
                    "data.max_per_class"),
                   ("num_workers", type(self.num_workers) is int and self.num_workers > 0,
                    "the stream's position is checkpointed from the training process: set data.num_workers: 0 "
                    "(or auto)")]
        for key, bad, fix in refused:
            if bad:
                raise ConfigError(f"data.{key} = {getattr(self, key)!r} cannot be combined with data.streaming",
                                  fix=fix)


@dataclass
class LossConfig:
    name: Optional[Union[str, dict, list]] = _f(
        None,
        "Loss: a registered name, 'module:attr', or a weighted mix {name: weight | {weight: w, option: value}}; "
        "null: the task's default (cross_entropy; bce for multi-label data).",
    )
    options: dict = _f({}, "Keyword arguments for the loss, e.g. {gamma: 2.0}.")


@dataclass
class OptimConfig:
    name: str = _f("adamw", "Optimizer: a torch or timm optimizer name.")
    lr: float = _f(1e-3, "Base learning rate of the body.", rule=above(0))
    head_lr: Optional[float] = _f(None, "Learning rate of the new head (default: optim.lr).", rule=optional(above(0)))
    layer_decay: Optional[float] = _f(None, "Layer-wise LR decay per block from the top (e.g. 0.75).",
                                      rule=optional(between(0, 1, closed="(]")))
    weight_decay: float = _f(0.05, "Weight decay (never applied to norms and biases).", rule=at_least(0))
    # A negative clip norm would not fail: torch would flip every gradient.
    clip_grad_norm: Optional[float] = _f(None, "Clip the gradient norm to this value.", rule=optional(above(0)))
    fused: Union[bool, Literal["auto"]] = _f(
        "auto", "torch's fused optimizer kernel: auto (for adam and adamw, unless options choose an implementation), "
        "true (adam, adamw or sgd) or false (torch's default implementation).")
    options: dict = _f({}, "Extra optimizer keyword arguments, e.g. {betas: [0.9, 0.99]}.")


@dataclass
class ScheduleConfig:
    name: str = _f("cosine", "LR schedule: a torch scheduler class name, an alias, none, or 'module:attr'.")
    warmup_steps: int = _f(0, "Linear warmup length in optimizer updates.", rule=at_least(0))
    warmup_start_factor: float = _f(0.01, "Warmup starts at this fraction of each group's LR.", rule=between(0, 1))
    interval: Optional[str] = _f(None, "Step the schedule per 'step' (update) or per 'epoch' (default: per schedule).")
    options: dict = _f({}, "Keyword arguments of the scheduler (torch's own names).")


@dataclass
class TrainConfig:
    epochs: int = _f(3, "Number of epochs.", rule=at_least(1))
    batch_size: int = _f(32, "Batch size per process.", rule=at_least(1))
    eval_batch_size: Optional[int] = _f(None, "Evaluation batch size per process (default: batch_size).",
                                        rule=optional(at_least(1)))
    grad_accum_steps: int = _f(1, "Micro-batches per optimizer update.", rule=at_least(1))
    mixed_precision: Literal["no", "bf16", "fp16"] = _f("no", "Mixed precision: no, bf16 or fp16.")
    channels_last: Union[bool, str] = _f(
        "auto", "channels-last memory format: auto (conv nets; a whole resnet18 run at 128 px is 1.07x faster on "
        "2 CPU cores, for about 25 MB more activation memory), true, false.", rule=one_of("auto", True, False))
    cpu: bool = _f(False, "Train on CPU even when a GPU is present (gloo for several processes).")
    reuse_host_memory: Union[bool, Literal["auto"]] = _f(
        "auto", "Keep freed host memory in the process for the next update instead of returning it to the OS (glibc "
        "malloc settings, process-wide): auto (when training on CPU; about 15% faster resnet18 updates on 2 cores, "
        "for about 10 MB more peak memory: what one update frees is kept for the next, and handed back before each "
        "evaluation, checkpoint and the final save), true, false.", rule=one_of("auto", True, False))
    fsdp: bool = _f(
        False, "Shard parameters, gradients and optimizer state across the processes with torch's FSDP2 (each timm "
        "block a unit; checkpoints sharded, resumable at another number of processes; the finished model one "
        "consolidated model.safetensors). Also on under `accelerate launch --config_file recipes/fsdp.yaml`.")
    grad_checkpointing: bool = _f(False, "Recompute the blocks' activations in backward instead of keeping them "
                                  "(timm's set_grad_checkpointing): less memory, about a third more compute.")
    seed: int = _f(0, "Seed for data order, augmentation, head init and dropout.")
    check_gradients: bool = _f(
        True, "Refuse an update whose gradients hold NaN/inf, not only a non-finite loss: one read of every gradient "
        "per update (about 2 ms for resnet18 on 2 CPU cores, 1-3% of a small step; no host sync on CUDA with a fused "
        "optimizer). With false a poisoned update is applied (and may be checkpointed) and the next update's loss "
        "stops the run.")
    output_dir: str = _f("outputs/run", "Where the model, logs, metrics and checkpoints go.")
    checkpoint_every: Optional[int] = _f(None, "Write a checkpoint every N optimizer updates (and each epoch end).",
                                         rule=optional(at_least(1)))
    keep_checkpoints: int = _f(2, "Keep the last K complete checkpoints (never fewer than one).", rule=at_least(1))
    resume: Optional[str] = _f(
        None, "Resume from 'latest', a checkpoint directory, or 'hub:owner/name[@branch]' (pushed checkpoints)."
    )
    ema: bool = _f(False, "Keep an exponential moving average of the weights (timm's ModelEmaV3): the weights after "
                   "the first update, then ema = d * ema + (1 - d) * weights after every later one.")
    ema_decay: float = _f(0.999, "EMA decay d per optimizer update.", rule=between(0, 1, closed="()"))
    save_ema: bool = _f(False, "Save the EMA weights as the final model instead of the raw ones.")
    early_stopping_patience: Optional[int] = _f(None, "Stop after N epochs without a better eval metric.",
                                                rule=optional(at_least(1)))
    log_every: int = _f(10, "Write a log.jsonl record every N optimizer updates.", rule=at_least(1))
    log_with: Optional[str] = _f(None, "Accelerate tracker (tensorboard, wandb, ...).")
    max_updates: Optional[int] = _f(None, "Stop after this many optimizer updates (a smoke-test cap).",
                                    rule=optional(at_least(1)))
    updates_per_epoch: Optional[int] = _f(
        None, "Streaming: optimizer updates per epoch, the same on every process (a stream has no length); null: "
        "the train split's size recorded on the Hub / (processes x batch_size x grad_accum_steps).",
        rule=optional(at_least(1)))


@dataclass
class HubConfig:
    push: bool = _f(False, "Push the finished model to the Hub.")
    repo_id: Optional[str] = _f(None, "Repo to push to (owner/name).")
    private: Optional[bool] = _f(None, "Create the repo private.")
    revision: Optional[str] = _f(None, "Branch to push to.")
    license: Optional[str] = _f(None, "License for the model card (default: the base model's).")
    push_checkpoints: bool = _f(False, "Push checkpoints to a branch during training, in the background (not with "
                                "model.adapter: its checkpoints hold the backbone's weights too).")
    checkpoint_branch: str = _f("checkpoints", "Branch that receives the checkpoints.")
    merge_adapter: bool = _f(
        False, "With model.adapter: also merge the adapter into the backbone after the run and write the result as a "
        "plain timm model (model.safetensors + config.json, card, metrics) in <train.output_dir>/merged; hub.push "
        "then pushes that instead of the adapter (push the adapter itself with `hubft push <train.output_dir> "
        "OWNER/NAME`).")


@dataclass
class FinetuneConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hub: HubConfig = field(default_factory=HubConfig)

    def check(self) -> None:
        """Rules between sections (each section checks its own fields first).

        Raises:
            ConfigError: ``hub.merge_adapter`` without ``model.adapter``; ``hub.push_checkpoints`` with it;
                ``train.updates_per_epoch`` without ``data.streaming``; ``train.fsdp`` with ``model.adapter``,
                ``train.ema`` or fp16.
        """
        if self.train.fsdp:
            self._check_fsdp()
        if self.train.updates_per_epoch is not None and not self.data.streaming:
            raise ConfigError(f"train.updates_per_epoch = {self.train.updates_per_epoch} would be ignored: an epoch of "
                              "data that is not streamed is one pass over it",
                              fix="set data.streaming: true, or drop train.updates_per_epoch")
        if self.hub.merge_adapter and self.model.adapter is None:
            raise ConfigError("hub.merge_adapter = True is invalid: there is no adapter to merge (model.adapter is "
                              "null)", fix="set model.adapter (lora or dora), or drop hub.merge_adapter")
        if self.hub.push_checkpoints and self.model.adapter is not None:
            # A checkpoint holds the whole model, so that a resume never depends on the source staying the same.
            raise ConfigError("hub.push_checkpoints cannot be combined with model.adapter: an adapter run's "
                              "checkpoints hold the frozen backbone too, which an adapter repo must never carry",
                              fix="drop hub.push_checkpoints (resume from the local checkpoints)")

    def _check_fsdp(self) -> None:
        clashes = [
            ("train.ema", self.train.ema, "the average is a whole-model copy beside the shards",
             "drop train.ema"),
            ("model.adapter", self.model.adapter is not None, "hubft does not shard a peft-wrapped model",
             "drop model.adapter (an adapter's optimizer state is small already)"),
            ("train.mixed_precision 'fp16'", self.train.mixed_precision == "fp16",
             "FSDP2 would need a sharded gradient scaler", "use train.mixed_precision 'bf16' (or 'no')"),
        ]
        for name, present, why, fix in clashes:
            if present:
                raise ConfigError(f"train.fsdp cannot be combined with {name}: {why}",
                                  fix=f"{fix}, or drop train.fsdp")


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
        return _coerce_union(value, tp, key)
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        raise ConfigError(f"{key} must be null, got {value!r}")
    converted = _SCALARS[tp](value) if tp in _SCALARS else _NOT_CONVERTED
    if converted is not _NOT_CONVERTED:
        return converted
    raise ConfigError(
        f"{key} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})",
        fix=f"give {key} a value of type {_type_name(tp)}",
    )


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
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


_NOT_CONVERTED = object()


def _to_bool(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    return _NOT_CONVERTED


def _to_number(kind: type) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or type(value) is int):
            return kind(value)
        if isinstance(value, str):
            try:
                return kind(value)
            except ValueError:
                pass
        return _NOT_CONVERTED

    return convert


def _to_container(kind: type) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        return value if isinstance(value, kind) else _NOT_CONVERTED

    return convert


# How a value given in YAML or on the command line becomes each plain type (_NOT_CONVERTED: it cannot).
_SCALARS: dict[type, Callable[[Any], Any]] = {
    bool: _to_bool,
    int: _to_number(int),
    float: _to_number(float),
    str: lambda v: v if isinstance(v, str) else _NOT_CONVERTED,
    list: _to_container(list),
    dict: _to_container(dict),
}


def _unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return ConfigError(f"unknown config key {key!r} in {where}", fix=f"{hint}valid keys: {', '.join(valid)}")


def config_from_dict(data: dict | None) -> FinetuneConfig:
    """Build a :class:`FinetuneConfig` from nested plain data (as loaded from YAML), and check it.

    Missing sections and fields keep their defaults. Values given as strings (from the command line) are converted
    to the field's type. The result passes :func:`check_config`.

    Raises:
        ConfigError: An unknown section or key (the message lists the valid ones), a value of the wrong type, or a
            value its field's rule (or its section's) refuses.
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
    config = FinetuneConfig(**sections)
    check_config(config)
    return config


def check_config(config: FinetuneConfig) -> None:
    """Check every value against its field's :class:`Rule`, then each section's rules between fields.

    A config built from YAML, flags or dicts is checked already; one built or changed in Python is checked here
    (the trainer does, before anything is loaded).

    Raises:
        ConfigError: Naming the field, the value and what it must be.
    """
    for section in _SECTIONS:
        values = getattr(config, section)
        for f in dataclasses.fields(values):
            rule: Rule | None = f.metadata.get("rule")
            value = getattr(values, f.name)
            if rule is not None and not rule.ok(value):
                key = f"{section}.{f.name}"
                raise ConfigError(f"{key} = {value!r} is invalid: it must be {rule.text}",
                                  fix=f"set {key} to {rule.text}")
    for section in _SECTIONS:
        check = getattr(getattr(config, section), "check", None)
        if check is not None:
            check()
    config.check()


def config_to_dict(config: FinetuneConfig) -> dict:
    """The config as nested plain data (what is written to the output directory as ``config.yaml``)."""
    return dataclasses.asdict(config)


def copy_config(config: FinetuneConfig) -> FinetuneConfig:
    """A checked deep copy of ``config``: what the trainer works on, so the caller's object is never changed.

    Raises:
        ConfigError: ``config`` holds a value of the wrong type, or one a rule refuses (it may have been built or
            changed in Python, past :func:`config_from_dict`'s checks).
    """
    return config_from_dict(config_to_dict(config))


def apply_overrides(config: FinetuneConfig, overrides: dict[str, Any]) -> FinetuneConfig:
    """Return a copy of ``config`` with ``{"section.field": value}`` overrides applied, type-checked and checked.

    Raises:
        ConfigError: An unknown key (with close matches), a badly typed value, or a value a rule refuses.
    """
    return config_from_dict(_merge(config_to_dict(config), overrides))


def _merge(data: dict, overrides: dict[str, Any]) -> dict:
    valid = list(config_fields())
    for dotted, value in overrides.items():
        if dotted not in valid:
            raise _unknown_key(dotted, valid, "the overrides")
        section, key = dotted.split(".", 1)
        values = data.setdefault(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping, got {values!r}")
        values[key] = value
    return data


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> FinetuneConfig:
    """Load a YAML config file (optional) and apply ``--section.field`` style overrides, then check the result.

    The overrides are merged into the file's values before anything is checked, so a flag can correct a value the
    file gets wrong.

    Raises:
        ConfigError: The file is missing or not valid YAML, or the result holds unknown keys, badly typed values or
            values a rule refuses.
    """
    data: dict = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"config file {str(p)!r} is a directory", fix="give --config the path of a YAML file")
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist", fix="check the path given to --config")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML ({one_line(e)})",
                              fix="check the YAML syntax near the line named") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(p)!r} must be a mapping of sections, got {type(data).__name__}",
                              fix="write the config as sections (model:, data:, train:, ...) of key: value pairs")
    return config_from_dict(_merge(data, overrides or {}))
