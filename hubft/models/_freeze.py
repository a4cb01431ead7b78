"""Freezing the body (linear probe) or its first stages, with frozen BatchNorm statistics, and undoing it.

Frozen norm layers are held in eval mode by giving each one its own ``train`` that always sets eval. This is
chosen over timm's ``freeze`` (which swaps BatchNorm for ``FrozenBatchNorm2d``) because nothing is replaced:
parameters keep their identity (optimizers and param groups built before or after stay valid), the state dict
keeps its keys (``num_batches_tracked`` included, so a frozen model saves and loads like any other), eval-mode
outputs stay bit-identical, every norm with running statistics is covered (1d/2d/3d, SyncBatchNorm, timm's
``BatchNormAct2d``), and :func:`unfreeze` restores the exact previous state. The override survives
``model.train()`` / ``.eval()``, DDP wrapping (it wraps, it does not rebuild), ``copy.deepcopy`` (EMA) and
pickling (spawned workers). It does not survive ``nn.SyncBatchNorm.convert_sync_batchnorm``, which rebuilds
the layers: convert first, then freeze.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from itertools import chain

from timm.models import group_parameters
from timm.utils import unwrap_model
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from hubft.errors import ConfigError, ModelError
from hubft.models._head import head_module_names, is_head_key

__all__ = ["FrozenParts", "body_groups", "freeze", "frozen_parts", "unfreeze"]

# Attribute holding the FrozenParts record on a frozen model.
_STATE = "hubft_frozen"


@dataclass(frozen=True)
class FrozenParts:
    """What :func:`freeze` froze, for printing and for :func:`unfreeze`.

    Attributes:
        stages: The ``stages`` argument (None: the whole body).
        parameters: Parameters whose ``requires_grad`` was turned off (ones already off are not listed, and
            stay off after :func:`unfreeze`).
        norm_modules: Norm layers with running statistics held in eval mode.
    """

    stages: int | None
    parameters: tuple[str, ...]
    norm_modules: tuple[str, ...]


def body_groups(model: nn.Module) -> list[list[str]]:
    """The body's parameter names in timm's coarse groups, in forward order, the head left out.

    Groups come from ``model.group_matcher(coarse=True)`` through timm's ``group_parameters``: the stem first,
    then each stage (each block for ViTs), then whatever sits between the last stage and the classifier (a final
    norm, a conv head). These are the units ``freeze(model, stages=N)`` counts.

    Raises:
        ModelError: The model has no ``group_matcher`` or no identifiable head.
    """
    model = unwrap_model(model)
    heads = head_module_names(model)
    if not callable(getattr(model, "group_matcher", None)):
        raise ModelError(f"{type(model).__name__} has no group_matcher(), so it has no stages to count",
                         fix="freeze the whole body with stages=None")
    groups = group_parameters(model, model.group_matcher(coarse=True))
    body = ([name for name in groups[gid] if not is_head_key(name, heads)] for gid in sorted(groups))
    return [names for names in body if names]


def freeze(model: nn.Module, *, stages: int | None = None) -> FrozenParts:
    """Freeze the body of a timm model, or its first ``stages`` groups, in place.

    Frozen parameters get ``requires_grad=False``; norm layers with running statistics (BatchNorm and kin) in
    the frozen part are held in eval mode, so training neither uses batch statistics there nor updates the
    running ones, even after ``model.train()``. The head (``pretrained_cfg["classifier"]``) is never frozen.
    Freezing a frozen model first undoes the earlier freeze, so ``freeze(model, stages=2)`` after
    ``freeze(model, stages=3)`` unfreezes the third group (gradual unfreezing).

    Call it before wrapping the model for distributed training (``accelerator.prepare``): DDP records which
    parameters need gradients when it wraps the model.

    Args:
        model: A timm model (e.g. from :func:`create_model`), or a ``torch.compile`` wrapper of one.
        stages: None freezes everything but the head (linear probe); N freezes the first N groups of
            :func:`body_groups` (0 freezes nothing, 1 the stem, ...).

    Returns:
        What was frozen.

    Raises:
        ConfigError: ``stages`` is not an int between 0 and the number of groups (which is named).
        ModelError: The model is wrapped for DDP/FSDP, has no identifiable head, or (for ``stages``) no
            ``group_matcher``.

    Examples:
        >>> parts = freeze(model)            # linear probe  # doctest: +SKIP
        >>> parts = freeze(model, stages=2)  # stem + first stage frozen  # doctest: +SKIP
    """
    model = _unwrap_unwrapped(model, "freeze")
    if frozen_parts(model) is not None:
        unfreeze(model)
    heads = head_module_names(model)
    params = dict(model.named_parameters())
    if stages is None:
        frozen = {name for name in params if not is_head_key(name, heads)}
    else:
        groups = body_groups(model)
        if isinstance(stages, bool) or not isinstance(stages, int) or not 0 <= stages <= len(groups):
            raise ConfigError(f"stages={stages!r} but {type(model).__name__} has {len(groups)} groups "
                              "(stem, stages, final layers)",
                              fix=f"pass an int from 0 to {len(groups)}, or stages=None for the whole body")
        frozen = set(chain.from_iterable(groups[:stages]))
    flipped = tuple(name for name, param in params.items() if name in frozen and param.requires_grad)
    for name in flipped:
        params[name].requires_grad_(False)
    norms = tuple(name for name, module in model.named_modules()
                  if _has_running_stats(module) and not is_head_key(name, heads)
                  and (stages is None or _in_frozen_part(name, params, frozen)))
    modules = dict(model.named_modules())
    for name in norms:
        _hold_in_eval(modules[name])
    parts = FrozenParts(stages=stages, parameters=flipped, norm_modules=norms)
    setattr(model, _STATE, parts)
    return parts


def unfreeze(model: nn.Module) -> None:
    """Undo :func:`freeze` exactly; a model that is not frozen is left as it is.

    The parameters :func:`freeze` turned off get ``requires_grad=True`` again, and each held norm layer follows
    ``train()`` / ``eval()`` again, starting in the mode of its parent module.

    Raises:
        ModelError: The model is wrapped for DDP/FSDP (unwrap, unfreeze, then wrap again).
    """
    model = _unwrap_unwrapped(model, "unfreeze")
    parts = frozen_parts(model)
    params = dict(model.named_parameters())
    for name in parts.parameters if parts else ():
        if name in params:
            params[name].requires_grad_(True)
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if _is_held(module):
            del module.__dict__["train"]
            module.training = modules[name.rpartition(".")[0]].training
    if parts is not None:
        delattr(model, _STATE)


def frozen_parts(model: nn.Module) -> FrozenParts | None:
    """What :func:`freeze` froze in this model (wrappers allowed), or None if it is not frozen."""
    return getattr(unwrap_model(model), _STATE, None)


def _unwrap_unwrapped(model: nn.Module, action: str) -> nn.Module:
    from torch.distributed.fsdp import FSDPModule

    # FSDP2 (fully_shard) keeps per-parameter DTensors and reads requires_grad at every unshard: it may be toggled.
    if isinstance(model, FSDPModule):
        return model
    if isinstance(model, nn.parallel.DistributedDataParallel) or type(model).__name__.startswith(
            ("FullyShardedDataParallel", "FSDP")):
        raise ModelError(f"cannot {action} a model already wrapped by {type(model).__name__}: it recorded which "
                         "parameters need gradients when it wrapped the model",
                         fix=f"call {action}() before accelerator.prepare() / DDP wrapping, or unwrap, "
                             f"{action}, and prepare again")
    return getattr(model, "_orig_mod", model)  # torch.compile shares the parameters of the original


def _has_running_stats(module: nn.Module) -> bool:
    # _NormBase is the common base of BatchNorm*d, SyncBatchNorm, InstanceNorm*d and timm's BatchNormAct2d.
    return isinstance(module, _NormBase) and module.track_running_stats


def _in_frozen_part(name: str, params: dict[str, nn.Parameter], frozen: set[str]) -> bool:
    """Whether a norm layer belongs to the frozen part: judged by its own parameters or, for a norm without
    affine parameters, by those of the nearest enclosing module that has some."""
    prefix = name
    while True:
        owned = [p for p in params if p.startswith(prefix + ".")] if prefix else list(params)
        if owned:
            return all(p in frozen for p in owned)
        if not prefix:
            return False
        prefix = prefix.rpartition(".")[0]


def _train_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    # Only the norm itself is held; its children (timm's BatchNormAct2d has act and drop) follow the mode.
    for child in module.children():
        child.train(mode)
    module.training = False
    return module


def _hold_in_eval(module: nn.Module) -> None:
    # An instance attribute shadows nn.Module.train, and nn.Module.train() reaches children through
    # child.train(mode), so model.train() lands here. A partial of a module-level function pickles and deep-copies.
    module.__dict__["train"] = partial(_train_in_eval, module)
    module.training = False


def _is_held(module: nn.Module) -> bool:
    train = module.__dict__.get("train")
    return isinstance(train, partial) and train.func is _train_in_eval
