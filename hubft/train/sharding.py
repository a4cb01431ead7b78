"""Sharded training (``train.fsdp``): torch's FSDP2 ``fully_shard`` over a timm model's blocks, sharded
checkpoints through torch distributed checkpoint, and the consolidated weights of the finished model.

hubft calls torch directly for these three parts, on every device: Accelerate (1.16) applies its FSDP plugin only on
accelerator devices (on CPU its state stays ``MULTI_CPU`` and the plugin is ignored), and its ``save_state`` writes
no sharded state for a model it did not shard. One code path, tested on CPU with gloo, runs on GPUs unchanged.
Accelerate still owns the processes, devices, loaders, gathers and gradient clipping (DTensor-aware).

- Which modules become FSDP units is read from the model: the modules that timm's ``group_matcher()`` names as
  whole blocks (``blocks.3`` of a ViT, ``stages.1.blocks.0`` of a ConvNeXt, ``layer2.1`` of a ResNet), then the
  root. No class list.
- Parameter groups are built by name before sharding and re-bound to the sharded parameters by the same names
  (:func:`rebind_param_groups`): head LR, layer decay and no-decay come out exactly as unsharded.
- A checkpoint holds ``sharded/`` (model and optimizer, torch distributed checkpoint format, one file per process
  plus ``.metadata``), written and read by every process; it loads at any number of processes, one included, and
  is read without unpickling anything but plain data and DCP's metadata records (``safe_dcp.py``).
- With one process ``train.fsdp`` trains unsharded but writes the same checkpoint format, so a run can move between
  one process and several.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from hubft.errors import ConfigError

__all__ = ["SHARDED_DIR", "block_module_names", "enable_grad_checkpointing", "fsdp_from_launcher",
           "full_state_dict", "is_sharded", "load_sharded_state", "parameter_names", "rebind_param_groups",
           "save_sharded_state", "shard_model"]

SHARDED_DIR = "sharded"
"""The directory of a checkpoint that holds the model and optimizer state of a ``train.fsdp`` run."""


def fsdp_from_launcher() -> bool:
    """Whether the launcher selected FSDP (``accelerate launch --config_file recipes/fsdp.yaml``).

    Raises:
        ConfigError: The launcher selected FSDP version 1, which hubft does not drive.
    """
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return False
    version = os.environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise ConfigError(f"the launcher selected FSDP version {version}; hubft shards with FSDP2 only",
                          fix="set fsdp_config.fsdp_version: 2 in the accelerate config (see recipes/fsdp.yaml)")
    return True


def block_module_names(model: nn.Module) -> list[str]:
    """The modules that become FSDP units: each module whose whole name a block pattern of the model's
    ``group_matcher()`` matches (the outermost one where several nest), in the model's order.

    Raises:
        ConfigError: The model has no ``group_matcher`` or none of its patterns names a whole module.

    Examples:
        >>> import timm
        >>> block_module_names(timm.create_model("test_vit", pretrained=False))[:2]
        ['blocks.0', 'blocks.1']
    """
    matcher = getattr(model, "group_matcher", None)
    spec = matcher(coarse=False).get("blocks") if callable(matcher) else None
    if not spec:
        raise ConfigError(f"train.fsdp: {type(model).__name__} has no timm group_matcher() naming its blocks, so "
                          "hubft cannot tell which modules to shard", fix="use a timm backbone, or drop train.fsdp")
    # timm writes one pattern, or a list of (pattern, ordinal) pairs.
    patterns = [re.compile(s if isinstance(s, str) else s[0]) for s in ([spec] if isinstance(spec, str) else spec)]
    names: list[str] = []
    for name, _ in model.named_modules():
        whole = name and any((m := p.match(name)) and m.end() == len(name) for p in patterns)
        if whole and not any(name.startswith(n + ".") for n in names):
            names.append(name)
    if not names:
        raise ConfigError(f"train.fsdp: no module of {type(model).__name__} matches its group_matcher() blocks",
                          fix="drop train.fsdp for this backbone")
    return names


def enable_grad_checkpointing(model: nn.Module) -> None:
    """timm's gradient checkpointing of the blocks (``train.grad_checkpointing``): activations recomputed in backward.

    Raises:
        ConfigError: The model has no ``set_grad_checkpointing``.
    """
    setter = getattr(model, "set_grad_checkpointing", None)
    if not callable(setter):
        raise ConfigError(f"train.grad_checkpointing: {type(model).__name__} has no timm set_grad_checkpointing()",
                          fix="drop train.grad_checkpointing for this model")
    setter(True)


def shard_model(model: nn.Module, device: torch.device, mixed_precision: str = "no") -> nn.Module:
    """Shard ``model`` in place over every process of the default process group: ``fully_shard`` on each of
    :func:`block_module_names`, then on the root. Returns the same module (now an ``FSDPModule``).

    With ``mixed_precision`` ``bf16`` the units compute in bfloat16 and reduce gradients in float32 (FSDP2's
    ``MixedPrecisionPolicy``: Accelerate's autocast wraps only models it prepares itself).

    Raises:
        ConfigError: No blocks found (fp16 is refused by the config: FSDP2 would need a sharded gradient scaler).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if mixed_precision == "bf16" else MixedPrecisionPolicy()
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for name in block_module_names(model):
        fully_shard(model.get_submodule(name), mesh=mesh, mp_policy=policy)
    return fully_shard(model, mesh=mesh, mp_policy=policy)


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` was sharded by :func:`shard_model`."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def parameter_names(model: nn.Module) -> dict[int, str]:
    """``id(parameter) -> name`` for every parameter of ``model`` (to re-bind groups built before sharding)."""
    return {id(p): n for n, p in model.named_parameters()}


def rebind_param_groups(groups: list[dict[str, Any]], names: dict[int, str], model: nn.Module) -> list[dict]:
    """The optimizer groups built before sharding, each parameter replaced by the sharded one of the same name.

    Every group setting (name, LR, weight decay) is kept as it was built; only the tensors change.
    """
    now = dict(model.named_parameters())
    return [{**g, "params": [now[names[id(p)]] for p in g["params"]]} for g in groups]


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole state dict of a sharded model on the main process (None on the others), on the CPU.

    A collective: every process calls it at the same point.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if torch.distributed.get_rank() == 0 else None


def save_sharded_state(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write the model and optimizer state into ``directory`` (torch distributed checkpoint; every process its part).

    A collective: every process calls it with the same directory.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    with _single_process() as single, _plain_errors():
        dcp.save(state, checkpoint_id=str(directory), no_dist=single)


def load_sharded_state(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load what :func:`save_sharded_state` wrote, at this run's number of processes (any: DCP re-shards).

    Nothing in the checkpoint is unpickled beyond plain data and DCP's own metadata records (:mod:`.safe_dcp`).

    Raises:
        pickle.UnpicklingError: The checkpoint holds a pickle of anything else (it is not loaded).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    from hubft.train.safe_dcp import SafeLoadPlanner, SafeReader

    reader = SafeReader(directory)
    reader.read_metadata()  # a refusal raised here is plain; inside dcp.load it would be logged and wrapped
    # get_optimizer_state_dict first gives a fresh optimizer its state tensors (a step at LR 0), for DCP to fill.
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    with _single_process() as single, _plain_errors():
        dcp.load(state, storage_reader=reader, planner=SafeLoadPlanner(), no_dist=single)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


@contextlib.contextmanager
def _plain_errors() -> Iterator[None]:
    # DCP reports any failure as a CheckpointException, a BaseException that `except Exception` handlers miss:
    # raise what went wrong instead (on every process: DCP hands each the same failures).
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except CheckpointException as e:
        _rank, (error, _trace) = min(e.failures.items())
        raise error from None


@contextlib.contextmanager
def _single_process() -> Iterator[bool]:
    # One process (train.fsdp without a process group) reads and writes the same format, unsharded, on purpose:
    # DCP's warning that it "assumes" so is noise then.
    single = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    with warnings.catch_warnings():
        if single:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield single
