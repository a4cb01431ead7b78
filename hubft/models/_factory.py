"""create_model / from_pretrained: a timm backbone from timm, the Hub or disk, with a head for your labels."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import timm
import torch
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
from timm.models import adapt_input_conv
from torch import nn

from hubft.errors import ConfigError, HubError, HubftError, ModelError, WeightsError, one_line
from hubft.models._config import SourceConfig, read_config
from hubft.models._fetch import SourceFiles, unreachable_error, fetch_source_files
from hubft.models._head import head_module_names, is_head_key, reset_head
from hubft.models._labels import labels_from_config, resolve_labels
from hubft.models._segmentation import is_segmentation_config, load_segmentation_model
from hubft.models._source import ModelSource, parse_source
from hubft.models._weights import load_strict, read_safetensors

__all__ = ["create_model", "from_pretrained"]

# timm.create_model arguments that would bypass what create_model guarantees, with the reason.
_REFUSED_KWARGS = {
    "checkpoint_path": "it loads pickle checkpoints; save them as safetensors and use 'local-dir:PATH'",
    "pretrained_cfg": "it is read from the source",
    "pretrained_cfg_overlay": "it is read from the source (it could also point timm at other weight files)",
    "features_only": "a feature extractor has no classifier; use num_classes=0 for pooled features",
    "pretrained_strict": "weights are always loaded strictly (only a replaced head is left out)",
}


def create_model(
    source: str | os.PathLike[str],
    *,
    num_classes: int | None = None,
    label_names: Sequence[str] | None = None,
    pretrained: bool = True,
    head_init_seed: int | None = None,
    revision: str | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """Create a timm backbone with a classifier for your labels.

    ``source`` is a timm architecture (``resnet18``) or pretrained tag (``resnet18.a1_in1k``), a Hub repo
    (``hf-hub:owner/name``, ``hf-hub:owner/name@revision``) or a local directory (``local-dir:PATH``, or a path
    that exists) holding ``config.json`` and ``model.safetensors`` as written by :func:`save_pretrained` or by
    timm (``save_for_hf`` / ``push_to_hf_hub``). See :func:`parse_source` for the exact rules.

    The source model is built with its own architecture, arguments and class count, and its weights are loaded
    strictly: any missing, unexpected or mis-shaped key outside the head is an error. Hub and local weights are
    read by hubft (safetensors only; pickle files are refused); weights of timm pretrained tags are loaded by
    timm, which has per-model converters for them. A source holding a peft adapter (``adapter_config.json``, as
    an adapter run writes) is loaded on top of its backbone, which is built from the source the adapter records
    (see :func:`~hubft.models._adapters.load_adapter`; a segmentation adapter on its backbone and decoder); it keeps
    its head. A saved segmentation model (a ``hubft.decoder`` block in ``config.json``) is rebuilt whole, backbone
    and decoder (see :func:`~hubft.models._segmentation.load_segmentation_model`). Otherwise, the head:

    * kept, when the source already has these labels: ``label_names`` equal to the source's, or only
      ``num_classes`` given and equal to the source's, or neither given (continued fine-tuning);
    * otherwise replaced through timm's ``reset_classifier`` for ``num_classes`` (or ``len(label_names)``)
      outputs and initialised with ``trunc_normal_(std=0.02)`` weights and zero biases (timm's "timm" init for
      new heads); ``head_init_seed`` makes it identical across runs and devices without touching the global RNG.

    The model carries ``label_names`` (list or None), ``pretrained_cfg`` (timm's dict: the source's
    preprocessing, ``num_classes``, ``label_names``, and ``classifier`` naming the head modules) and
    ``hubft_source`` (``source``, ``kind``, ``architecture``, ``pretrained``, ``tag``, ``repo_id``, ``revision``:
    the resolved commit sha, ``requested_revision``, ``path``, ``source_num_classes``, ``head_reset``,
    ``head_init_seed``, and ``base``: the ``hubft_source`` a hubft-saved source was created from).

    Args:
        source: Where the backbone comes from.
        num_classes: Outputs of the head (0: none, pooled features out); default: ``len(label_names)``, else the
            source's.
        label_names: Class names, in output order; unique non-empty strings.
        pretrained: Load the source's weights; False builds its architecture with random weights.
        head_init_seed: Seed for a new head's initialisation.
        revision: Hub branch, tag or commit (same as ``@revision``).
        **timm_kwargs: Passed to ``timm.create_model`` over the arguments saved with the source, e.g.
            ``drop_rate``, ``drop_path_rate``, ``img_size``, ``in_chans`` (the first conv is adapted as timm
            does), ``cache_dir``. Arguments that change weight shapes (``img_size`` of a ViT) fail the strict load.

    Returns:
        The model, in train mode, on the CPU unless ``timm_kwargs`` say otherwise.

    Raises:
        ConfigError: A malformed source, disagreeing ``num_classes`` / ``label_names``, duplicate labels, or an
            argument timm refuses.
        ModelError: An unknown architecture or tag, a source without a usable ``config.json``.
        WeightsError: Missing, truncated, corrupt or pickle-only weights, or weights that do not fit.
        HubError: The Hub is unreachable and nothing is cached, or the repo or revision is not accessible.

    Examples:
        >>> model = create_model("resnet18.a1_in1k", label_names=["cat", "dog"])  # doctest: +SKIP
        >>> model = create_model("hf-hub:me/pets@v1", pretrained=True)             # doctest: +SKIP
    """
    spec = parse_source(source, revision=revision)
    target_classes, names = resolve_labels(num_classes, label_names)
    _check_arguments(head_init_seed, pretrained, timm_kwargs)
    cache_dir = timm_kwargs.pop("cache_dir", None)

    config: SourceConfig | None = None
    files: SourceFiles | None = None
    if spec.kind == "timm":
        model = _build(spec.name, pretrained=pretrained, cache_dir=cache_dir, kwargs=timm_kwargs, spec=spec)
        source_classes = model.num_classes
        source_names = labels_from_config(model.pretrained_cfg.get("label_names"), source_classes)
        keep = pretrained and _same_labels(source_classes, source_names, target_classes, names)
    else:
        files = fetch_source_files(spec, weights=pretrained, cache_dir=cache_dir)
        if files.adapter:
            return _load_adapter(spec, files, num_classes, label_names, pretrained, cache_dir, timm_kwargs)
        config = read_config(files)
        if is_segmentation_config(config):
            return load_segmentation_model(spec, config, files, label_names=label_names, cache_dir=cache_dir,
                                           head_init_seed=head_init_seed, kwargs=timm_kwargs)
        source_classes, source_names = config.num_classes, config.label_names
        keep = pretrained and _same_labels(source_classes, source_names, target_classes, names)
        model = _build_from_config(spec, config, files, keep_head=keep, cache_dir=cache_dir, kwargs=timm_kwargs)

    if keep:
        labels = names or source_names
    else:
        reset_head(model, source_classes if target_classes is None else target_classes, seed=head_init_seed)
        labels = names
    _attach_metadata(model, labels=labels, head_reset=not keep)
    model.hubft_source = {
        "source": spec.spec,
        "kind": spec.kind,
        "architecture": model.pretrained_cfg.get("architecture"),
        "pretrained": pretrained,
        "tag": model.pretrained_cfg.get("tag"),
        "repo_id": spec.repo_id or (model.pretrained_cfg.get("hf_hub_id") if pretrained else None),
        "revision": files.commit_sha if files else None,
        "requested_revision": spec.revision,
        "path": os.path.abspath(spec.path) if spec.path else None,
        "source_num_classes": source_classes,
        "head_reset": not keep,
        "head_init_seed": None if keep else head_init_seed,
        "base": (config.hubft or {}).get("source") if config else None,
    }
    task = (config.hubft or {}).get("task") if config else None
    if keep and isinstance(task, dict):  # the saved head still does what it was fine-tuned for
        model.hubft_task = task
    return model


def _check_arguments(head_init_seed: Any, pretrained: Any, timm_kwargs: dict[str, Any]) -> None:
    if head_init_seed is not None and (isinstance(head_init_seed, bool) or not isinstance(head_init_seed, int)):
        raise ConfigError(f"head_init_seed={head_init_seed!r} is not an integer", fix="pass an int or None")
    if not isinstance(pretrained, bool):
        raise ConfigError(f"pretrained={pretrained!r} is not True or False", fix="pass pretrained=True or False")
    for key, why in _REFUSED_KWARGS.items():
        if key in timm_kwargs:
            raise ConfigError(f"create_model does not take {key}=: {why}", fix=f"remove {key}=")


def from_pretrained(source: str | os.PathLike[str], *, revision: str | None = None, **kwargs: Any) -> nn.Module:
    """Load a saved model as it was: :func:`create_model` with ``pretrained=True``, keeping the saved head.

    The head and label names are kept unless ``kwargs`` ask for other labels (``num_classes`` /
    ``label_names``), exactly as in :func:`create_model`. Besides every source :func:`create_model` takes, a bare
    ``"owner/name"`` that is not an existing local path means that Hub repo.

    Raises:
        ConfigError: ``pretrained`` was given (it is always True here); otherwise as :func:`create_model`.

    Examples:
        >>> model = from_pretrained("local-dir:runs/pets/best")  # doctest: +SKIP
    """
    if "pretrained" in kwargs:
        raise ConfigError("from_pretrained always loads the weights and takes no pretrained=",
                          fix="drop pretrained=, or use create_model(..., pretrained=False)")
    if isinstance(source, str) and _is_bare_hub_id(source):
        # Loading a shared model by its repo id is what from_pretrained is for (as in huggingface_hub's mixins);
        # create_model keeps refusing the ambiguous form because there a typo in a path would hit the network.
        source = f"hf-hub:{source}"
    return create_model(source, revision=revision, pretrained=True, **kwargs)


def _load_adapter(spec: ModelSource, files: SourceFiles, num_classes: int | None, label_names: Sequence[str] | None,
                  pretrained: bool, cache_dir: str | None, timm_kwargs: dict[str, Any]) -> nn.Module:
    from hubft.models._adapters import load_adapter

    if not pretrained:
        raise ConfigError(f"{files.where} is an adapter, which only exists on top of its backbone's weights",
                          fix="load it with pretrained=True (hubft.from_pretrained)")
    return load_adapter(spec, files, num_classes=num_classes, label_names=label_names, cache_dir=cache_dir,
                        **timm_kwargs)


def _is_bare_hub_id(source: str) -> bool:
    """``owner/name`` without a prefix that names no existing local path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if ":" in source or source.count("/") != 1 or os.path.exists(os.path.expanduser(source)):
        return False
    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def _same_labels(source_classes: int, source_names: tuple[str, ...] | None,
                 target_classes: int | None, names: tuple[str, ...] | None) -> bool:
    if names is not None:
        return names == source_names
    return target_classes is None or target_classes == source_classes


def _build_from_config(spec: ModelSource, config: SourceConfig, files: SourceFiles, *, keep_head: bool,
                       cache_dir: str | None, kwargs: dict[str, Any]) -> nn.Module:
    pretrained_cfg = dict(config.pretrained_cfg)
    if spec.kind == "hub":
        pretrained_cfg.pop("file", None)
        pretrained_cfg.update(source="hf-hub", hf_hub_id=spec.repo_id)
    # Saved arguments rebuild the source; the caller's override them, the class count is always the source's.
    build_kwargs = {**config.model_args, **kwargs, "num_classes": config.num_classes}
    model = _build(config.architecture, pretrained=False, cache_dir=cache_dir, kwargs=build_kwargs, spec=spec,
                   pretrained_cfg=pretrained_cfg)
    if files.weights is not None:
        state_dict = read_safetensors(files.weights)
        _adapt_input_convs(state_dict, pretrained_cfg, build_kwargs.get("in_chans"))
        heads = head_module_names(model)
        skip = () if keep_head else {k for k in (*state_dict, *model.state_dict()) if is_head_key(k, heads)}
        load_strict(model, state_dict, source=f"{files.weights.name} of {files.where}", skip=skip)
    return model


def _adapt_input_convs(state_dict: dict[str, torch.Tensor], pretrained_cfg: dict, in_chans: int | None) -> None:
    """Adapt the first conv to a requested in_chans, as timm's own loader does; other shapes stay strict."""
    source_chans = (pretrained_cfg.get("input_size") or (3,))[0]
    first_convs = pretrained_cfg.get("first_conv")
    if in_chans is None or in_chans == source_chans or not first_convs:
        return
    for name in (first_convs,) if isinstance(first_convs, str) else first_convs:
        key = f"{name}.weight"
        if key in state_dict and state_dict[key].ndim == 4:
            state_dict[key] = adapt_input_conv(in_chans, state_dict[key], base_chans=source_chans)


def _build(name: str, *, pretrained: bool, cache_dir: str | None, kwargs: dict[str, Any], spec: ModelSource,
           pretrained_cfg: dict | None = None) -> nn.Module:
    """timm.create_model with foreseeable failures turned into hubft errors."""
    extra = {"pretrained_cfg": pretrained_cfg} if pretrained_cfg is not None else {}
    try:
        return timm.create_model(name, pretrained=pretrained, cache_dir=cache_dir, **extra, **kwargs)
    except HubftError:
        raise
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError) as err:
        raise unreachable_error(f"the pretrained weights of {spec.spec!r}") from err
    except HfHubHTTPError as err:
        raise HubError(f"downloading the pretrained weights of {spec.spec!r} failed: {one_line(err)}",
                       fix="retry later, or pass pretrained=False for random weights") from err
    except OSError as err:
        raise HubError(f"cannot download the pretrained weights of {spec.spec!r}: {one_line(err)}",
                       fix="check the network, point at weights on disk with 'local-dir:PATH', or pass "
                           "pretrained=False") from err
    except TypeError as err:
        raise ConfigError(f"timm cannot build {name!r} with arguments {sorted(kwargs)}: {one_line(err)}",
                          fix="remove or rename the model argument timm does not accept") from err
    except RuntimeError as err:
        if pretrained and ("state_dict" in str(err) or "size mismatch" in str(err)):
            raise WeightsError(f"the pretrained weights of {spec.spec!r} do not fit: {one_line(err)}",
                               fix="drop model arguments that change weight shapes, or pass pretrained=False"
                               ) from err
        raise ModelError(f"timm cannot build {spec.spec!r}: {one_line(err)}",
                         fix="pass pretrained=False if it has no pretrained weights, or check the model "
                             "arguments") from err
    except (ValueError, AssertionError) as err:
        raise ConfigError(f"timm cannot build {name!r} with arguments {sorted(kwargs)}: {one_line(err)}",
                          fix="check the model arguments (e.g. img_size, in_chans)") from err


def _attach_metadata(model: nn.Module, *, labels: tuple[str, ...] | None, head_reset: bool) -> None:
    """Keep ``pretrained_cfg`` describing the model as it now is: its head, class count and labels."""
    cfg = dict(model.pretrained_cfg)
    heads = head_module_names(model)
    cfg["classifier"] = heads[0] if len(heads) == 1 else heads
    cfg["num_classes"] = model.num_classes
    if head_reset:
        for key in ("label_names", "label_descriptions", "label_offset"):
            cfg.pop(key, None)
    if labels:
        cfg["label_names"] = tuple(labels)
    model.pretrained_cfg = model.default_cfg = cfg
    model.label_names = list(labels) if labels else None

