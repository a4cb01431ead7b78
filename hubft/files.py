"""File helpers at the bottom of the package: atomic writes and content hashes.

Every file hubft writes for a user (weights, configs, cards, metrics, logs rewritten on resume, checkpoint
manifests, the local Hub's storage) goes through :func:`atomic_write`: readers see the old file or the complete new
one, never a partial write, whether the writer crashes, is killed, or runs out of disk.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from hubft.errors import ConfigError

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "fsync_dir", "make_dir", "sha256_file"]

_CHUNK = 1 << 20


def atomic_write(
    path: str | os.PathLike, write: Callable[[str], object], *, staging_dir: str | os.PathLike | None = None
) -> None:
    """Call ``write(tmp_path)``, flush the temporary file to disk, then move it onto ``path`` in one step.

    The temporary file gets a fresh name beside ``path`` (or in ``staging_dir``, which must be on the same file
    system), and the writer creates it itself, so it gets the usual permissions. The parent directory of ``path``
    is created if missing.

    Args:
        path: The file to write.
        write: Writes the whole content to the path it is given.
        staging_dir: Where the temporary file is made; default: ``path``'s directory.

    Raises:
        OSError: The write, the flush or the rename failed; the temporary file is removed and ``path`` is left
            as it was. Any exception ``write`` raises passes through the same way.

    Examples:
        >>> atomic_write(tmp / "a.txt", lambda p: Path(p).write_text("hello"))  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(staging_dir) if staging_dir is not None else path.parent
    tmp = str(folder / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, staging_dir: str | os.PathLike | None = None) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), staging_dir=staging_dir)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries (a rename into it) to disk; a file system that cannot is skipped silently."""
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


def make_dir(path: str | os.PathLike, *, key: str, fix: str | None = None) -> Path:
    """Create the directory ``path`` (and its parents) for a setting named ``key``, or say in one line why not.

    Called before anything is loaded, so that a path that cannot hold outputs (under a regular file, in a read-only
    or virtual file system such as ``/proc``) fails at once with exit code 2, not after training.

    Raises:
        ConfigError: ``path`` is a file, lies under one, cannot be created, or is not writable; naming ``key``
            (and saying ``fix``, by default: set ``key`` to a directory you can create and write to).
    """
    path = Path(path)
    fix = fix or f"set {key} to a directory you can create and write to"
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key} {str(path)!r} is a file, not a directory", fix=fix)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in path.parents if p.exists()), None)
        reason = f"{str(blocker)!r} is not a directory" if blocker is not None and not blocker.is_dir() \
            else e.strerror or type(e).__name__
        raise ConfigError(f"{key} {str(path)!r} cannot be created: {reason}", fix=fix) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} {str(path)!r} is not writable", fix=fix)
    return path


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
