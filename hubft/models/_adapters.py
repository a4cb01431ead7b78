"""Low-rank adapters (LoRA, DoRA) on timm backbones through peft: add one, save it, load it back, merge it.

hubft writes no adapter layers of its own: :func:`add_adapter` builds a ``peft.LoraConfig`` from what hubft knows
about the backbone and wraps the model with ``peft.get_peft_model``:

- ``target_modules``: the model family's defaults (:mod:`hubft.models._adapter_targets`), or the user's;
- ``modules_to_save``: the head, found from ``pretrained_cfg["classifier"]`` like everywhere else in hubft, so the
  new head is trained fully and saved with the adapter;
- the body frozen with :func:`hubft.freeze`, which also holds BatchNorm statistics: they are not in the adapter, so
  they must stay the base model's for the adapter to reproduce the trained model on top of it.

An adapter directory (:func:`save_adapter`) is what ``PeftModel.save_pretrained`` writes, ``adapter_config.json`` +
``adapter_model.safetensors``, with ``base_model_name_or_path`` set to the backbone's Hub id (else its timm name, or
a local path) and ``revision`` to the base commit. hubft's own record (labels, task, preprocessing, the base's
source, and for a :class:`~hubft.models.SegmentationModel` its ``decoder`` record) rides in ``auto_mapping["hubft"]``:
peft writes ``auto_mapping`` for models outside transformers and reads only its own two keys, whereas a new top-level
key makes every ``PeftModel.from_pretrained`` warn that peft should be upgraded. A segmentation adapter's decoder is
its head (``modules_to_save``), saved whole; :func:`load_adapter` rebuilds the segmentation model from the record.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from timm.utils import unwrap_model
from torch import nn

from hubft.config import ADAPTERS, Rule, above, between
from hubft.errors import ConfigError, HubftError, ModelError, one_line
from hubft.files import atomic_write, atomic_write_text
from hubft.models._adapter_targets import TargetFamily, default_targets, describe_candidates, target_pattern
from hubft.models._freeze import freeze, unfreeze
from hubft.models._head import head_module_names
from hubft.models._segmentation import DECODER_KEY, SegmentationModel
from hubft.models._weights import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME

if TYPE_CHECKING:
    from hubft.models._fetch import SourceFiles
    from hubft.models._source import ModelSource

__all__ = ["ADAPTER_CONFIG_NAME", "ADAPTER_WEIGHTS_NAME", "adapter_base", "adapter_option_names", "add_adapter",
           "is_adapter_model", "load_adapter", "lora_config", "merge_adapter", "save_adapter",
           "trainable_parameters"]

HUBFT_KEY = "hubft"
# Short names for the options everybody sets, as in the LoRA paper.
_ALIASES = {"alpha": "lora_alpha", "dropout": "lora_dropout"}
# What other LoRA code calls the options (the paper's "rank", peft's older "lora_r").
_SYNONYMS = {"rank": "r", "lora_r": "r", "lora_rank": "r", "targets": "target_modules", "target": "target_modules"}
# LoraConfig fields that hubft sets itself (model.adapter chooses use_dora).
_SET_BY_HUBFT = frozenset({"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path",
                           "revision", "inference_mode", "use_dora"})
# What LoraConfig takes without a word and peft fails on (or silently misuses) once the layers are built.
_RULES = {"r": Rule("an integer >= 1", lambda v: type(v) is int and v >= 1), "lora_alpha": above(0),
          "lora_dropout": between(0, 1, closed="[)")}


def adapter_option_names() -> list[str]:
    """The keys ``model.adapter_options`` takes: ``alpha`` and ``dropout``, then ``peft.LoraConfig``'s fields."""
    from peft import LoraConfig

    return [*_ALIASES, *(f.name for f in dataclasses.fields(LoraConfig) if f.name not in _SET_BY_HUBFT)]


def lora_config(adapter: str, options: Mapping[str, Any]):
    """A ``peft.LoraConfig`` for ``model.adapter`` (``lora``; ``dora`` sets ``use_dora``) and its options.

    Raises:
        ConfigError: An unknown adapter, an unknown option (the valid ones are listed) or one hubft sets, an
            option given under both its names (``alpha`` and ``lora_alpha``), an ``r`` below 1, an ``alpha`` <= 0, a
            ``dropout`` outside [0, 1), or a value ``LoraConfig`` refuses.

    Examples:
        >>> lora_config("dora", {"r": 4, "alpha": 8}).lora_alpha
        8
    """
    from peft import LoraConfig

    if adapter not in ADAPTERS:
        raise ConfigError(f"model.adapter = {adapter!r} is not an adapter hubft knows",
                          fix=f"use one of: {', '.join(ADAPTERS)}")
    valid, kwargs = adapter_option_names(), {}
    for key, value in options.items():
        if key in _SET_BY_HUBFT:
            raise ConfigError(f"model.adapter_options key {key!r} is set by hubft",
                              fix="choose DoRA with model.adapter: dora" if key == "use_dora" else f"drop {key!r}")
        if key not in valid:
            close = [_SYNONYMS[key]] if key in _SYNONYMS else difflib.get_close_matches(str(key), valid, n=3)
            raise ConfigError(f"unknown model.adapter_options key {key!r}",
                              fix=(f"did you mean {', '.join(close)}? " if close else "") + f"valid keys: "
                              f"{', '.join(valid)}")
        name = _ALIASES.get(key, key)
        if name in kwargs:
            raise ConfigError(f"model.adapter_options gives {name} twice ({key!r} is another name for it)",
                              fix=f"keep one of {key!r} and {name!r}")
        rule = _RULES.get(name)
        if rule is not None and not rule.ok(value):
            raise ConfigError(f"model.adapter_options.{key} = {value!r} is invalid: it must be {rule.text}",
                              fix=f"set model.adapter_options.{key} to {rule.text}")
        kwargs[name] = value
    try:
        return LoraConfig(**kwargs, use_dora=adapter == "dora")
    except (TypeError, ValueError) as err:
        raise ConfigError(f"peft refused model.adapter_options {dict(options)!r}: {one_line(err)}",
                          fix="see peft.LoraConfig for what each option takes") from None


def is_adapter_model(model: nn.Module) -> bool:
    """Whether ``model`` (DDP / EMA wrappers allowed) is a peft model; never imports peft itself."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(unwrap_model(model), peft.PeftModel)


def adapter_base(model: nn.Module) -> nn.Module:
    """The timm model inside a peft model (the same modules and parameters); any other model as it is."""
    model = unwrap_model(model)
    return model.get_base_model() if is_adapter_model(model) else model


def add_adapter(model: nn.Module, adapter: str = "lora", **options: Any) -> nn.Module:
    """Add low-rank adapters to a timm model and make only them and its head trainable.

    The model is changed in place (peft replaces the targeted layers and wraps the head) and returned wrapped in a
    ``peft.PeftModel``, whose attributes (``pretrained_cfg``, ``label_names``, ``num_classes``...) are the timm
    model's. Everything else is frozen with :func:`hubft.freeze`, BatchNorm statistics included. The adapters start
    as peft initialises them (``lora_B`` zero), so the wrapped model computes what the model computed.

    Args:
        model: A timm classifier, e.g. from :func:`hubft.create_model`, or a segmentation model (its decoder is the
            head) (not wrapped for DDP, not frozen).
        adapter: ``"lora"``, or ``"dora"`` (LoRA with DoRA's magnitude vectors).
        **options: ``peft.LoraConfig`` options (see :func:`lora_config`). Without ``target_modules`` the targets
            are the model family's (:func:`~hubft.models._adapter_targets.default_targets`); ``modules_to_save``
            adds modules to train fully besides the head.

    Returns:
        The ``peft.PeftModel``.

    Raises:
        ConfigError: Bad options, ``target_modules`` that match no module, or a model no family fits (the
            candidate module names are listed).
        ModelError: The model is wrapped or already has adapters, or its head cannot be found.

    Examples:
        >>> model = add_adapter(hubft.create_model("vit_small_patch16_224.augreg_in21k", label_names=["a", "b"]),
        ...                     "lora", r=16, alpha=32)  # doctest: +SKIP
    """
    import peft

    model = _bare(model)
    config = lora_config(adapter, options)
    family = _choose_targets(model, config, options)
    freeze(model)
    try:
        wrapped = peft.get_peft_model(model, config)
    except (ValueError, TypeError, RuntimeError) as err:
        unfreeze(model)
        raise ConfigError(f"peft cannot add a {adapter} adapter to {type(model).__name__} with options "
                          f"{dict(options)!r}: {one_line(err)}", fix="change model.adapter_options") from None
    _check_saved_modules(wrapped, config.modules_to_save)
    targets = config.target_modules
    model.hubft_adapter = {
        "kind": adapter, "family": family.name if family else "custom",
        "targets": family.description if family else "the modules named in target_modules",
        "target_modules": targets if isinstance(targets, str) else sorted(targets),
        "modules": sum(isinstance(m, peft.tuners.lora.LoraLayer) for m in model.modules()), "r": config.r,
        "alpha": config.lora_alpha, "dropout": config.lora_dropout, "modules_to_save": list(config.modules_to_save),
        "options": json.loads(json.dumps(dict(options), default=str)),
    }
    return wrapped


def _choose_targets(model: nn.Module, config, options: Mapping[str, Any]) -> TargetFamily | None:
    """Fill in ``config``'s targets (the family's defaults unless given) and ``modules_to_save`` (the head first);
    returns the family, or None for targets the user named.

    Raises:
        ConfigError: No family fits, or the named targets match no module outside the head.
    """
    from peft.tuners.tuners_utils import check_target_module_exists

    family = None
    if config.target_modules is None:
        family, names = default_targets(model)
        pattern = target_pattern(names, model)
        config.target_modules = pattern if isinstance(pattern, str) else set(pattern)
    heads = head_module_names(model)
    config.modules_to_save = [*heads, *(m for m in config.modules_to_save or () if m not in heads)]
    if not any(n and check_target_module_exists(config, n) for n, _ in model.named_modules()):
        wanted = options.get("target_modules", config.target_modules)  # as given: peft keeps a list as a set
        raise ConfigError(f"model.adapter_options target_modules = {wanted!r} matches no module of "
                          f"{type(model).__name__} outside its head",
                          fix=f"name modules of this model, e.g. from {describe_candidates(model)}")
    return family


def _bare(model: nn.Module) -> nn.Module:
    if isinstance(model, nn.parallel.DistributedDataParallel) or is_adapter_model(model):
        raise ModelError(f"cannot add an adapter to a model already wrapped by {type(model).__name__}",
                         fix="add the adapter to the plain timm model, before accelerator.prepare()")
    model = getattr(model, "_orig_mod", model)
    if any(not p.requires_grad for p in model.parameters()):
        raise ModelError("cannot add an adapter to a frozen model: the adapter freezes the body itself",
                         fix="call hubft.unfreeze(model) first, or do not freeze it")
    return model


def _check_saved_modules(wrapped: nn.Module, wanted: Sequence[str]) -> None:
    """peft matches ``modules_to_save`` by name suffix ("fc" would also take "se.fc"): only the head may be wrapped."""
    from peft.utils import ModulesToSaveWrapper

    base = wrapped.get_base_model()
    found = sorted(n for n, m in base.named_modules() if isinstance(m, ModulesToSaveWrapper))
    if found != sorted(wanted):
        raise ModelError(f"peft trains {found} fully where hubft asked for {sorted(wanted)} (it matches "
                         "modules_to_save by the end of a module's name)",
                         fix="give modules_to_save names that end no other module's name")


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; ``total`` is the model's without adapters (what a full fine-tune
    trains): adapter weights and peft's trained copy of the head are left out of it."""
    named = list(unwrap_model(model).named_parameters())
    trainable = sum(p.numel() for _, p in named if p.requires_grad)
    total = sum(p.numel() for n, p in named if ".lora_" not in n and ".modules_to_save." not in n)
    return trainable, total


def _original_source(base: nn.Module) -> dict | None:
    """The backbone the adapter was trained on (for a loaded adapter, the one its record names)."""
    source = getattr(base, "hubft_source", None) or {}
    return source.get("base") if source.get("adapter") else source or None


def _base_name(source: dict | None) -> str | None:
    """``base_model_name_or_path``: the Hub id of the backbone, else its timm name, else its local path."""
    source = source or {}
    if source.get("repo_id"):
        return source["repo_id"]
    return source.get("source") if source.get("kind") == "timm" else source.get("path")


def _config_record(base: nn.Module) -> dict:
    from hubft.models._save import _hubft_version

    cfg = base.pretrained_cfg
    labels = getattr(base, "label_names", None)
    return json.loads(json.dumps({
        "format": 1, "hubft_version": _hubft_version(), "architecture": cfg.get("architecture"),
        "num_classes": base.num_classes, "label_names": list(labels) if labels else None, "pretrained_cfg": cfg,
        "source": _original_source(base), "task": getattr(base, "hubft_task", None),
        "adapter": getattr(base, "hubft_adapter", None),
        **({DECODER_KEY: base.decoder_record()} if isinstance(base, SegmentationModel) else {}),
    }, default=str))


def save_adapter(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write a peft model's adapter: ``adapter_model.safetensors`` and ``adapter_config.json``, nothing else.

    The files are what ``PeftModel.save_pretrained`` writes (the adapter weights and the head, never the base
    weights), with ``base_model_name_or_path`` and ``revision`` naming the backbone and hubft's record in
    ``auto_mapping["hubft"]``. Each file is moved into place complete; other files in ``directory`` are left alone.

    Raises:
        ModelError: ``model`` is not a peft model, or ``directory`` is a file.
    """
    model = unwrap_model(model)
    if not is_adapter_model(model):
        raise ModelError(f"{type(model).__name__} has no adapter to save", fix="use hubft.save_pretrained")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ModelError(f"cannot save into {str(directory)!r}: it is a file", fix="choose a directory path")
    directory.mkdir(parents=True, exist_ok=True)
    base = model.get_base_model()
    source = _original_source(base)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".adapter-") as tmp:
        model.save_pretrained(tmp)  # also writes peft's own README.md, which stays behind in tmp
        config = json.loads((Path(tmp) / ADAPTER_CONFIG_NAME).read_text())
        config["base_model_name_or_path"] = _base_name(source)
        config["revision"] = (source or {}).get("revision") if (source or {}).get("kind") == "hub" else None
        config["auto_mapping"] = {**(config.get("auto_mapping") or {}), HUBFT_KEY: _config_record(base)}
        # Moved through atomic_write, which flushes it to disk before it takes the final name.
        atomic_write(directory / ADAPTER_WEIGHTS_NAME, lambda path: os.replace(Path(tmp) / ADAPTER_WEIGHTS_NAME, path))
    atomic_write_text(directory / ADAPTER_CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True))
    return directory


def read_adapter_record(config_file: Path, where: str) -> tuple[dict, dict]:
    """``(adapter_config.json, hubft's record in it)``.

    Raises:
        ModelError: The file is unreadable, or was not written by hubft (no record to rebuild the base from).
    """
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{ADAPTER_CONFIG_NAME} of {where} is unreadable or not valid JSON ({err})",
                         fix="save the adapter again") from None
    record = ((config.get("auto_mapping") or {}) if isinstance(config, dict) else {}).get(HUBFT_KEY)
    if not isinstance(record, dict) or not isinstance(record.get("source"), dict):
        base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
        raise ModelError(f"{where} is a peft adapter that hubft did not write, so hubft does not know its base "
                         "model and labels", fix=f"load it with peft: PeftModel.from_pretrained(timm.create_model("
                         f"{base!r}, pretrained=True, num_classes=K), ...)")
    return config, record


def _base_spec(source: dict) -> tuple[str, str | None]:
    """The :func:`create_model` source (and revision) of the backbone an adapter record names."""
    kind = source.get("kind")
    if kind == "hub":
        return f"hf-hub:{source['repo_id']}", source.get("revision")
    if kind == "local":
        return f"local-dir:{source.get('path')}", None
    return str(source.get("source")), None


def load_adapter(spec: ModelSource, files: SourceFiles, *, num_classes: int | None,
                 label_names: Sequence[str] | None, cache_dir: str | None, **timm_kwargs: Any) -> nn.Module:
    """The model an adapter directory or repo holds: its backbone built by :func:`create_model` from the record's
    source (pinned to the recorded commit for a Hub backbone), then ``PeftModel.from_pretrained`` on top, eval-ready.

    A segmentation adapter (its record has a ``decoder``) is loaded on a segmentation model instead:
    :func:`~hubft.models.create_segmentation_model` on the recorded source, with a decoder of the recorded shape,
    whose weights are then the adapter's (the decoder is saved whole in it, as peft's ``modules_to_save``).

    Raises:
        ConfigError: Other labels were asked for (an adapter keeps its head).
        ModelError: The adapter was not written by hubft, its backbone cannot be loaded here (named), or the
            segmentation model built from it has another decoder than the one the adapter was trained with.
    """
    from peft import PeftModel

    _, record = read_adapter_record(files.config, files.where)
    labels = record.get("label_names")
    if (label_names is not None and list(label_names) != labels) or num_classes not in (None, record["num_classes"]):
        raise ConfigError(f"{files.where} is an adapter whose head has {record['num_classes']} outputs "
                          f"({labels}); it cannot take other labels",
                          fix="merge it first (hubft merge), then fine-tune the merged model for the new labels")
    base = _build_base(record, files.where, cache_dir, timm_kwargs)
    model = PeftModel.from_pretrained(base, str(files.config.parent))
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in record["pretrained_cfg"].items()}
    base.pretrained_cfg = cfg
    if not isinstance(base, SegmentationModel):  # whose default_cfg is its pretrained_cfg
        base.default_cfg = cfg
    base.hubft_task, base.hubft_adapter = record.get("task"), record.get("adapter")
    base.hubft_source = {"source": spec.spec, "kind": spec.kind, "adapter": True, "repo_id": spec.repo_id,
                         "revision": files.commit_sha, "requested_revision": spec.revision,
                         "path": os.path.abspath(spec.path) if spec.path else None, "base": record["source"]}
    return model.eval()


def _build_base(record: dict, where: str, cache_dir: str | None, timm_kwargs: dict[str, Any]) -> nn.Module:
    """The model the adapter goes on: the recorded backbone with a head (or decoder) for the recorded labels.

    Raises:
        ModelError: The backbone cannot be loaded here, or a segmentation model's decoder is not the recorded one.
    """
    from hubft.models._factory import create_model
    from hubft.models._segmentation import create_segmentation_model

    base_spec, revision = _base_spec(record["source"])
    decoder = record.get(DECODER_KEY)
    labels, classes = record.get("label_names"), record["num_classes"]
    if decoder is None and record["pretrained_cfg"].get("classifier") == DECODER_KEY:
        raise ModelError(f"the segmentation adapter in {where} does not record its decoder (an older hubft saved "
                         "it), so its segmentation model cannot be rebuilt", fix="train it again with this hubft")
    try:
        if decoder is None:
            return create_model(base_spec, revision=revision, label_names=labels, num_classes=classes,
                                pretrained=True, head_init_seed=0, cache_dir=cache_dir, **timm_kwargs)
        base = create_segmentation_model(base_spec, revision=revision, label_names=labels, num_classes=classes,
                                         pretrained=True, head_init_seed=0, decoder_channels=decoder["channels"],
                                         cache_dir=cache_dir, **timm_kwargs)
    except HubftError as err:
        raise ModelError(f"the backbone of the adapter in {where}, {base_spec!r}, cannot be loaded here: "
                         f"{one_line(err)}", fix="make the backbone reachable (a Hub repo, or the same local "
                         "directory), or load the adapter with peft on a copy of it") from None
    built = json.loads(json.dumps(base.decoder_record()))
    differ = sorted(k for k in ("name", "channels", "feature_indices", "scales", "num_classes")
                    if built.get(k) != decoder.get(k))
    if differ:
        raise ModelError(f"the adapter in {where} was trained with a decoder of "
                         f"{', '.join(f'{k} {decoder.get(k)}' for k in differ)}, but {base_spec!r} now gives "
                         f"{', '.join(f'{k} {built.get(k)}' for k in differ)}",
                         fix="load it on the backbone it was trained on (the same source and revision)")
    return base


def merge_adapter(model: nn.Module) -> nn.Module:
    """Merge a peft model's adapters into its backbone and return the plain model (a timm classifier, or a
    segmentation model with its trained decoder).

    The trained head replaces the original one, the adapter layers are folded into the weights they adapt
    (``merge_and_unload``), and the model is unfrozen. It keeps its labels, task and preprocessing; its
    ``hubft_source`` is the backbone the adapter was trained on, and ``hubft_adapter`` says it was merged. The peft
    model is consumed: its layers now belong to the returned model.

    Raises:
        ModelError: ``model`` has no adapter.
    """
    if not is_adapter_model(model):
        raise ModelError(f"{type(unwrap_model(model)).__name__} has no adapter to merge",
                         fix="merge a model loaded from an adapter directory or repo, or one from add_adapter")
    peft_model = unwrap_model(model)
    base = peft_model.get_base_model()
    source, adapter = _original_source(base), getattr(base, "hubft_adapter", None)
    with torch.no_grad():
        merged = peft_model.merge_and_unload()
    unfreeze(merged)
    merged.requires_grad_(True)
    merged.hubft_source = source
    merged.hubft_adapter = {**(adapter or {}), "merged": True}
    return merged
