"""Checkpoints that are complete or absent, never half-written.

A checkpoint is a directory ``output_dir/checkpoints/step-<N>`` holding Accelerate's saved state (model weights as
safetensors, optimizer, RNG states), hubft's own training state and a ``manifest.json`` with the SHA-256 of every
file. It is written under a temporary name and renamed only once the manifest is written, so a crash at any moment
leaves either the previous checkpoints or a temporary directory that is ignored and cleaned up later.
safetensors has no checksum of its own, so the manifest is what detects a flipped byte or a truncated file.

Old checkpoints are pruned only *after* a new one is complete (Accelerate's own ``total_limit`` deletes first), and
the newest complete checkpoint is never deleted. Rewriting a checkpoint of the same step (a run resumed from a
checkpoint written by a SIGTERM at the last update of an epoch writes that step again with the epoch closed) moves
the old one aside before the new one takes its name, so there is no moment without a complete copy;
:func:`recover_interrupted_checkpoints` finishes such a move, or a rename, that a crash interrupted.

A failed write (disk full, permissions) removes its temporary directory and raises :class:`TrainingError` saying
which checkpoint is still the latest complete one. With several processes, each stage of a write ends with the
processes agreeing on whether it failed anywhere (:func:`run_agreed`), so a disk that fills up under one process
stops all of them at once with the same message, instead of leaving the others waiting at the next collective until
the process-group timeout.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from hubft.errors import CheckpointError, TrainingError
from hubft.faults import fault_point
from hubft.files import atomic_write_text, fsync_dir, sha256_file

__all__ = [
    "MANIFEST",
    "CheckpointInfo",
    "write_checkpoint",
    "run_agreed",
    "verify_checkpoint",
    "list_checkpoints",
    "find_latest_checkpoint",
    "recover_interrupted_checkpoints",
    "prune_checkpoints",
    "interrupted_run",
    "remove_checkpoints",
]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_NAME = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-"
# A temporary directory's step: ``.tmp-step-N`` (being written) or ``.tmp-replaced-step-N-<id>`` (moved aside).
_TMP_NAME = re.compile(r"^\.tmp-(?:replaced-)?step-(\d+)(?:-[0-9a-f]+)?$")
# The failure code of an exception other than OSError (an OSError's code is its errno).
_UNEXPECTED = -1

T = TypeVar("T")
Exchange = Callable[[int], Sequence[int]]


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int


def run_agreed(action: Callable[[], T], exchange: Exchange | None) -> T:
    """Run this process's part of a step, then agree with the other processes on whether it failed anywhere.

    Every process calls it at the same point, since ``exchange`` is a collective (and so also a barrier). A process
    whose ``action`` failed still takes part in the exchange before raising: no process is left waiting in a
    collective for one that stopped, and every process raises.

    Args:
        action: This process's part.
        exchange: Given this process's failure code (0: none, an ``OSError``'s errno, -1: any other exception),
            returns every process's, by rank. None for a single process: ``action`` simply runs.

    Returns:
        What ``action`` returned, when it failed on no process.

    Raises:
        OSError: The lowest-ranked failing process had an ``OSError``: on every process the same one, with its
            errno and a ``strerror`` that names that process (so every process prints the same message).
        TrainingError: Another process failed with an exception other than ``OSError`` (it prints its own).
        Exception: This process's own exception, when it is not an ``OSError``.

    Examples:
        >>> run_agreed(lambda: 42, lambda code: [code, 0])
        42
    """
    if exchange is None:
        return action()
    result, error = None, None
    try:
        result = action()
    except Exception as e:  # BaseException (Ctrl-C, SystemExit) ends the process group anyway
        error = e
    if isinstance(error, OSError):
        code = error.errno or errno.EIO
    else:
        code = 0 if error is None else _UNEXPECTED
    failed = [(rank, c) for rank, c in enumerate(exchange(code)) if c]
    if not failed:
        return result
    if error is not None and not isinstance(error, OSError):
        raise error
    rank, code = failed[0]
    if code == _UNEXPECTED:
        raise TrainingError(f"process {rank} stopped with an error (printed by that process); the others stopped "
                            "with it", fix="see that process's error")
    raise OSError(code, f"{os.strerror(code)} on process {rank}") from None


def write_checkpoint(
    root: str | os.PathLike,
    step: int,
    write_files: Callable[[Path], None],
    *,
    is_main_process: bool = True,
    exchange: Exchange | None = None,
    tmp_name: str | None = None,
) -> Path:
    """Write a checkpoint for optimizer update ``step`` atomically.

    The write has three stages, each ended by :func:`run_agreed` (which is also the barrier between them): the main
    process creates the temporary directory; every process writes its files; the main process writes the manifest
    and renames.

    Args:
        root: The ``checkpoints`` directory.
        step: Optimizer update count; the checkpoint is named ``step-<step>``.
        write_files: Called (on every process) with the temporary directory to fill.
        is_main_process: Only the main process writes the manifest and renames.
        exchange: The collective that gathers every process's failure code (see :func:`run_agreed`); None for a
            single process.
        tmp_name: The temporary directory name, identical on every process (the caller broadcasts it).

    Returns:
        The final checkpoint directory.

    Raises:
        TrainingError: Writing failed with an ``OSError`` (disk full, permissions) on any process, raised on every
            process with the same message; the temporary directory is removed, older checkpoints are untouched, and
            the message names the latest complete one.
    """
    root = Path(root)
    final = root / f"step-{step:08d}"
    tmp = root / (tmp_name or f"{_TMP_PREFIX}step-{step:08d}")

    def prepare() -> None:
        if is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            fault_point("checkpoint_start")

    def publish() -> None:
        if is_main_process:
            fault_point("checkpoint_before_manifest")
            files = sorted(p for p in tmp.rglob("*") if p.is_file())
            manifest = {
                "step": step,
                "files": {str(p.relative_to(tmp)): {"sha256": sha256_file(p), "size": p.stat().st_size} for p in files},
            }
            atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1))
            fsync_dir(tmp)
            fault_point("checkpoint_before_rename")
            _publish(tmp, final)
            fault_point("checkpoint_after_rename")

    try:
        for stage in (prepare, lambda: write_files(tmp), publish):
            run_agreed(stage, exchange)
    except OSError as e:
        if is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(e, root, final.name) from None
    except BaseException:
        if is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _publish(tmp: Path, final: Path) -> None:
    """Rename the complete ``tmp`` to ``final``; an existing ``final`` is moved aside first, deleted only after."""
    old = None
    if final.exists():
        old = final.with_name(f"{_TMP_PREFIX}replaced-{final.name}-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
        fault_point("checkpoint_replacing")
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_error(error: OSError, root: Path, name: str) -> TrainingError:
    full = error.errno in (errno.ENOSPC, errno.EDQUOT)
    cause = "the disk is full" if full else (error.strerror or type(error).__name__)
    complete = [c.path.name for c in list_checkpoints(root) if (c.path / MANIFEST).is_file()]
    kept = f"the latest complete checkpoint is {complete[-1]}" if complete else "there is no earlier checkpoint"
    fix = ("free disk space (or lower train.keep_checkpoints), then" if full
           else f"make {str(root)!r} writable, then")
    return TrainingError(
        f"could not write checkpoint {name} in {str(root)!r}: {cause} ({error.strerror or error}); its temporary "
        f"files were removed and {kept}",
        fix=f"{fix} resume with --train.resume latest",
    )


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
        if sha256_file(f) != meta["sha256"]:
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


def find_latest_checkpoint(root: str | os.PathLike, report: Callable[[str], None] = print) -> Path | None:
    """The newest checkpoint that verifies, or None if there is none.

    Every newer checkpoint that fails verification is skipped with a line through ``report`` naming it and the
    file at fault; so are leftover temporary directories (writes a crash interrupted).
    """
    root = Path(root)
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if p.name.startswith(_TMP_PREFIX):
                report(f"hubft: ignoring {p.name}: a checkpoint write that was interrupted before it completed")
    for info in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(info.path)
        except CheckpointError as e:
            logger.warning("skipping checkpoint %s: %s", info.path.name, e)
            report(f"hubft: skipping checkpoint {info.path.name}: {e}")
            continue
        return info.path
    return None


def recover_interrupted_checkpoints(root: str | os.PathLike, report: Callable[[str], None] = print) -> None:
    """Finish the renames a crash interrupted: a complete temporary checkpoint whose step has no directory.

    A temporary directory whose manifest verifies holds a complete checkpoint (the manifest is written last): a
    kill between the manifest and the rename, or between moving an old copy aside and renaming the new one, leaves
    one. Call it on the main process only, before :func:`find_latest_checkpoint`. Anything else is left alone
    (and pruned by the next save).
    """
    root = Path(root)
    if not root.is_dir():
        return
    for p in sorted(root.iterdir(), key=lambda q: (not q.name.startswith(f"{_TMP_PREFIX}step-"), q.name)):
        m = _TMP_NAME.match(p.name)
        if not m or not p.is_dir() or not (p / MANIFEST).is_file():
            continue
        final = root / f"step-{int(m.group(1)):08d}"
        if final.exists():
            continue
        try:
            verify_checkpoint(p)
        except CheckpointError:
            continue
        os.replace(p, final)
        fsync_dir(root)
        report(f"hubft: recovered checkpoint {final.name}: it was complete, but a crash interrupted its rename")


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


def interrupted_run(output_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint of a run in ``output_dir`` that did not finish, or None.

    A run finished when its ``metrics.json`` (written after the last checkpoint) counts at least as many updates as
    its newest checkpoint; a run that was killed, preempted or stopped by an error has checkpoints and no such file.
    """
    root = Path(output_dir) / "checkpoints"
    found = list_checkpoints(root)
    if not found:
        return None
    try:
        finished = json.loads((Path(output_dir) / "metrics.json").read_text())["run"]["updates"]
    except (OSError, ValueError, KeyError, TypeError):
        finished = -1
    return found[-1].path if finished < found[-1].step else None


def remove_checkpoints(root: str | os.PathLike) -> int:
    """Delete every checkpoint and temporary directory under ``root``; returns how many went."""
    root = Path(root)
    if not root.is_dir():
        return 0
    gone = [p for p in root.iterdir() if p.is_dir() and (_NAME.match(p.name) or p.name.startswith(_TMP_PREFIX))]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return len(gone)
