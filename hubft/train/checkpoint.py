"""Checkpoints that are complete or absent, never half-written.

A checkpoint is a directory ``output_dir/checkpoints/step-<N>`` holding Accelerate's saved state (model weights as
safetensors, optimizer, RNG states), hubft's own training state and a ``manifest.json`` with the SHA-256 of every
file. It is written under a temporary name and renamed only once the manifest is written, so a crash at any moment
leaves either the previous checkpoints or a temporary directory that is ignored and cleaned up later.
safetensors has no checksum of its own, so the manifest is what detects a flipped byte or a truncated file.

Old checkpoints are pruned only *after* a new one is complete (Accelerate's own ``total_limit`` deletes first), and
the newest complete checkpoint is never deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hubft.errors import CheckpointError
from hubft.faults import fault_point

__all__ = [
    "MANIFEST",
    "CheckpointInfo",
    "write_checkpoint",
    "verify_checkpoint",
    "list_checkpoints",
    "find_latest_checkpoint",
    "prune_checkpoints",
    "atomic_write_text",
]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_NAME = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checkpoint(
    root: str | os.PathLike,
    step: int,
    write_files: Callable[[Path], None],
    *,
    is_main_process: bool = True,
    wait: Callable[[], None] = lambda: None,
    tmp_name: str | None = None,
) -> Path:
    """Write a checkpoint for optimizer update ``step`` atomically.

    Args:
        root: The ``checkpoints`` directory.
        step: Optimizer update count; the checkpoint is named ``step-<step>``.
        write_files: Called (on every process) with the temporary directory to fill.
        is_main_process: Only the main process writes the manifest and renames.
        wait: A barrier between processes (``accelerator.wait_for_everyone``).
        tmp_name: The temporary directory name, identical on every process (the caller broadcasts it).

    Returns:
        The final checkpoint directory.

    Raises:
        OSError: Writing failed (e.g. disk full); the temporary directory is removed and older checkpoints are
            untouched.
    """
    root = Path(root)
    final = root / f"step-{step:08d}"
    tmp = root / (tmp_name or f"{_TMP_PREFIX}step-{step:08d}")
    try:
        if is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        wait()
        write_files(tmp)
        wait()
        if is_main_process:
            fault_point("checkpoint_before_manifest")
            files = sorted(p for p in tmp.rglob("*") if p.is_file())
            manifest = {
                "step": step,
                "files": {str(p.relative_to(tmp)): {"sha256": _sha256(p), "size": p.stat().st_size} for p in files},
            }
            atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1))
            _fsync_dir(tmp)
            fault_point("checkpoint_before_rename")
            if final.exists():
                # A checkpoint of the same step exists (a resumed run writing it again): replace it only now that
                # the new one is complete.
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(root)
            fault_point("checkpoint_after_rename")
        wait()
    except BaseException:
        if is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Check that a checkpoint directory is complete and every file matches its manifest.

    Raises:
        CheckpointError: Naming the missing, truncated or corrupt file.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(
            f"checkpoint {str(path)!r} is incomplete (no {MANIFEST})",
            fix="resume from another checkpoint or 'latest', which skips incomplete ones",
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint manifest {str(manifest_path)!r} is unreadable ({e})") from None
    for rel, meta in files.items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"checkpoint file {str(f)!r} is missing", fix="resume from another checkpoint")
        size = f.stat().st_size
        if size != meta["size"]:
            raise CheckpointError(
                f"checkpoint file {str(f)!r} is truncated or altered ({size} bytes, expected {meta['size']})",
                fix="resume from another checkpoint",
            )
        if _sha256(f) != meta["sha256"]:
            raise CheckpointError(
                f"checkpoint file {str(f)!r} is corrupt (SHA-256 does not match the manifest)",
                fix="resume from another checkpoint",
            )


def list_checkpoints(root: str | os.PathLike) -> list[CheckpointInfo]:
    """Checkpoint directories under ``root`` (complete or not), oldest first; temporary ones excluded."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir():
            found.append(CheckpointInfo(p, int(m.group(1))))
    return sorted(found, key=lambda c: c.step)


def find_latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest checkpoint that verifies; logs why each newer one was skipped. None if there is none."""
    for info in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(info.path)
        except CheckpointError as e:
            logger.warning("skipping checkpoint %s: %s", info.path.name, e)
            print(f"hubft: skipping checkpoint {info.path.name}: {e}", flush=True)
            continue
        return info.path
    return None


def prune_checkpoints(root: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints, incomplete ones and leftover temporary directories.

    The newest complete checkpoint always survives, whatever ``keep`` is.
    """
    root = Path(root)
    if not root.is_dir():
        return
    keep = max(1, keep)
    complete, broken = [], []
    for info in list_checkpoints(root):
        (complete if (info.path / MANIFEST).is_file() else broken).append(info)
    newest_complete = complete[-1].step if complete else None
    for info in complete[:-keep] + [b for b in broken if newest_complete is not None and b.step < newest_complete]:
        shutil.rmtree(info.path, ignore_errors=True)
    for p in root.iterdir():
        if p.name.startswith(_TMP_PREFIX):
            shutil.rmtree(p, ignore_errors=True)
