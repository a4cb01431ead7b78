"""Reading a torch distributed checkpoint without running code from it.

torch's own reader unpickles a checkpoint's ``.metadata`` with plain ``pickle.load``, and its default load planner
reads every non-tensor entry (an optimizer's LR, betas, group names) with ``torch.load`` and ``weights_only`` off:
a checkpoint written by someone else could run code on resume. hubft reads both strictly instead:

- ``.metadata`` goes through an unpickler that builds only the classes DCP's metadata is made of (listed below);
- every non-tensor entry is first read with ``torch.load(weights_only=True)``, which admits plain data only, and
  handed to torch's planner only when that succeeds. Tensors were always read with ``weights_only=True``.

Anything else raises :class:`pickle.UnpicklingError` naming what was refused, before any of it is built.
"""

from __future__ import annotations

import io
import pickle
import re
from typing import Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

__all__ = ["SafeLoadPlanner", "SafeReader"]

# module -> the names in it that DCP's metadata pickle may build (torch 2.4 and later write these).
_METADATA_GLOBALS: dict[str, frozenset[str]] = {
    "torch.distributed.checkpoint.metadata": frozenset({
        "Metadata", "StorageMeta", "MetadataIndex", "TensorStorageMetadata", "BytesStorageMetadata",
        "ChunkStorageMetadata", "TensorProperties", "_MEM_FORMAT_ENCODING"}),
    "torch.distributed.checkpoint.filesystem": frozenset({"_StorageInfo"}),
    "torch.serialization": frozenset({"_get_layout"}),
    "torch": frozenset({"Size"}),
    # StorageMeta.checkpoint_id is the directory it was saved to; the module moved in Python 3.13.
    "pathlib": frozenset({"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"}),
    "pathlib._local": frozenset({"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"}),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in _METADATA_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a distributed checkpoint's metadata; "
                                     "refusing to build it")


class SafeReader(FileSystemReader):
    """torch's ``FileSystemReader`` whose ``.metadata`` is unpickled with an allow-list (see the module docstring).

    Raises:
        pickle.UnpicklingError: ``.metadata`` names a class or function outside the allow-list, or is not a
            ``Metadata`` record.
    """

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as stream:
            metadata = _MetadataUnpickler(stream).load()
        if not isinstance(metadata, Metadata):
            raise pickle.UnpicklingError(f".metadata holds a {type(metadata).__name__}, not DCP Metadata")
        # What torch's reader does after unpickling: tag the metadata with this load.
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """torch's ``DefaultLoadPlanner``, which loads a non-tensor entry only after ``weights_only=True`` accepts it.

    Raises:
        pickle.UnpicklingError: A non-tensor entry is a pickle of anything but plain data.
    """

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        try:
            torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:  # torch's message is a page of advice on loading it unsafely
            why = re.search(r"WeightsUnpickler error: ([^\n]*?)(?: was not an allowed global|\.?\n|$)", str(e))
            raise pickle.UnpicklingError(f"entry {read_item.dest_index.fqn!r} is a pickle of more than plain data"
                                         f"{f' ({why.group(1)})' if why else ''}; refusing to load it") from None
        value.seek(0)
        super().load_bytes(read_item, value)
