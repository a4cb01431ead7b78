"""Checkpoints on a branch of the Hub repo: pushed in the background during training, pulled back to resume.

:class:`CheckpointPusher` takes a finished checkpoint directory, hard-links it into a staging directory beside it at
once (so the trainer may prune its own copy immediately) and uploads it from a single background thread, one commit
per checkpoint; a staging directory (``checkpoints/.hub-push-*``) is removed once uploaded. The branch tip holds only the newest checkpoint, under ``checkpoints/step-<N>/``, with the manifest
that :func:`~hubft.train.checkpoint.verify_checkpoint` checks; the branch history holds the older ones. When
checkpoints arrive faster than they upload, the ones still waiting are skipped for the newest: a resume wants the
newest, and the upload never falls behind the training.

:func:`download_checkpoint` turns ``hub:owner/name@branch`` (the value of ``train.resume``) into a local, verified
checkpoint directory in the Hub cache.

Resuming runs Accelerate's loader on the downloaded files, which include pickled optimizer and RNG state: resume
only from repos you trust, as you would with a local checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from hubft.errors import CheckpointError, ConfigError, HubError
from hubft.hub import DEFAULT_RETRY, RetryPolicy, call_with_retry, check_repo_id, status_of
from hubft.train.checkpoint import MANIFEST, find_latest_checkpoint, verify_checkpoint

__all__ = ["CheckpointPusher", "CheckpointSpec", "parse_checkpoint_spec", "download_checkpoint", "HUB_PREFIX"]

logger = logging.getLogger(__name__)

HUB_PREFIX = "hub:"
DEFAULT_BRANCH = "checkpoints"
_FOLDER = "checkpoints"
# Not ".tmp-": the trainer deletes those leftovers after every checkpoint, and these may still be uploading.
_STAGING_PREFIX = ".hub-push-"


@dataclass(frozen=True)
class CheckpointSpec:
    """A parsed ``hub:owner/name[@branch]``."""

    repo_id: str
    branch: str = DEFAULT_BRANCH


def parse_checkpoint_spec(spec: str) -> CheckpointSpec:
    """Parse ``hub:owner/name`` or ``hub:owner/name@branch`` (default branch: ``checkpoints``).

    Raises:
        ConfigError: The prefix is missing, the branch is empty, or the repo id breaks the Hub's rules.

    Examples:
        >>> parse_checkpoint_spec("hub:alice/pets@ckpt")
        CheckpointSpec(repo_id='alice/pets', branch='ckpt')
    """
    if not isinstance(spec, str) or not spec.startswith(HUB_PREFIX):
        raise ConfigError(f"checkpoint source {spec!r} does not start with {HUB_PREFIX!r}",
                          fix="write 'hub:owner/name@branch'")
    repo_id, at, branch = spec[len(HUB_PREFIX):].partition("@")
    if at and not branch:
        raise ConfigError(f"checkpoint source {spec!r} has an empty branch after '@'",
                          fix=f"write 'hub:{repo_id}@{DEFAULT_BRANCH}' or drop the '@'")
    check_repo_id(repo_id, key="train.resume")
    return CheckpointSpec(repo_id, branch or DEFAULT_BRANCH)


class CheckpointPusher:
    """Uploads checkpoints to ``branch`` of ``repo_id`` in a background thread, without blocking training.

    The repo (and the branch, from ``main``) is created at the first upload. Failures are retried like
    :func:`~hubft.hub.push.push_to_hub`'s; one that persists is logged and kept in :attr:`errors`, and training goes
    on (the next checkpoint tries again). Call :meth:`close` at the end of training to wait for the last upload.

    Args:
        repo_id: ``owner/name``.
        branch: The branch that receives the checkpoints.
        private: Create the repo private (only when it is created).
        token: A Hub token; default ``HF_TOKEN`` or the stored login. Never written.
        retry: How failing steps are retried.

    Raises:
        ConfigError: An invalid repo id or branch.

    Examples:
        ``submit`` returns at once; ``close`` waits for the uploads.

        >>> pusher = CheckpointPusher("alice/pets", "checkpoints")  # doctest: +SKIP
        >>> pusher.submit("runs/pets/checkpoints/step-00000100")  # doctest: +SKIP
        >>> pusher.close()  # doctest: +SKIP
    """

    def __init__(self, repo_id: str, branch: str = DEFAULT_BRANCH, *, private: bool | None = None,
                 token: str | bool | None = None, retry: RetryPolicy | None = None) -> None:
        from huggingface_hub import HfApi

        self.repo_id = check_repo_id(repo_id, key="hub.repo_id")
        if not isinstance(branch, str) or not branch or branch.startswith("refs/"):
            raise ConfigError(f"hub.checkpoint_branch {branch!r} is not a branch name",
                              fix=f"use a plain name such as {DEFAULT_BRANCH!r}")
        self.branch = branch
        self.private = private
        self.retry = retry or DEFAULT_RETRY
        self.errors: list[str] = []
        self.uploaded: list[str] = []
        self._api = HfApi(token=token)
        self._staging: list[Path] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hubft-checkpoint-push")
        self._lock = threading.Lock()
        self._newest: Path | None = None
        self._repo_ready = False
        self._closed = False

    def submit(self, checkpoint_dir: str | os.PathLike) -> Future:
        """Queue a finished checkpoint for upload and return at once (after hard-linking its files).

        Returns:
            A future that resolves to the commit URL, or to None when a newer checkpoint superseded this one
            before its upload started, or when the upload failed (see :attr:`errors`).

        Raises:
            CheckpointError: The directory is not a complete checkpoint (no manifest).
            HubError: The pusher is closed.
        """
        if self._closed:
            raise HubError("the checkpoint pusher is closed", fix="create a new CheckpointPusher")
        source = Path(checkpoint_dir)
        if not (source / MANIFEST).is_file():
            raise CheckpointError(f"{str(source)!r} is not a complete checkpoint (no {MANIFEST})",
                                  fix="submit checkpoints only after write_checkpoint returned them")
        # Staged beside the checkpoint, so that hard links always work and submit never copies gigabytes while the
        # training loop waits; one folder per submit, since a resumed run writes a step again. The branch tip
        # mirrors checkpoints/<name>/ of the run directory.
        folder = Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{source.name}-", dir=source.parent))
        self._staging.append(folder)
        shutil.copytree(source, folder / _FOLDER / source.name, copy_function=_link_or_copy)
        with self._lock:
            self._newest = folder
        return self._executor.submit(self._upload, folder, source.name)

    def close(self, wait: bool = True) -> None:
        """Stop accepting checkpoints; with ``wait``, block until the queued uploads are done (then clean up)."""
        self._closed = True
        self._executor.shutdown(wait=wait)
        if wait:
            for folder in self._staging:
                shutil.rmtree(folder, ignore_errors=True)

    def _upload(self, folder: Path, name: str) -> str | None:
        with self._lock:
            if folder != self._newest:
                shutil.rmtree(folder, ignore_errors=True)
                return None  # a newer checkpoint is queued behind this one
        try:
            url = self._commit(folder, name)
        except Exception as e:  # never let a failed upload stop training; the next checkpoint tries again
            status = status_of(e)
            message = f"pushing checkpoint {name} to {self.repo_id}@{self.branch} failed " \
                      f"({f'HTTP {status}' if status else type(e).__name__})"
            logger.warning("hubft: %s; training goes on and the next checkpoint will be pushed", message)
            self.errors.append(message)
            return None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.uploaded.append(name)
        return url

    def _commit(self, folder: Path, name: str) -> str:
        api, policy = self._api, self.retry
        if not self._repo_ready:
            call_with_retry(lambda: api.create_repo(self.repo_id, private=self.private, exist_ok=True), policy,
                            what="creating the repo")
            call_with_retry(lambda: api.create_branch(self.repo_id, branch=self.branch, exist_ok=True), policy,
                            what=f"creating branch {self.branch!r}")
            self._repo_ready = True

        def attempt() -> str:
            # As in push_to_hub: the parent makes a retry after a lost answer commit nothing twice.
            head = api.repo_info(self.repo_id, revision=self.branch).sha
            info = api.upload_folder(folder_path=str(folder), repo_id=self.repo_id, revision=self.branch,
                                     commit_message=f"Checkpoint {name}", parent_commit=head,
                                     delete_patterns=f"{_FOLDER}/**")
            return info.commit_url

        return call_with_retry(attempt, policy, what=f"pushing checkpoint {name}")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def download_checkpoint(spec: str, *, token: str | bool | None = None) -> Path:
    """Download the checkpoint at the tip of a Hub branch and return its verified local directory.

    Args:
        spec: ``hub:owner/name`` or ``hub:owner/name@branch`` (default branch ``checkpoints``); a commit sha of the
            branch in place of its name picks an older checkpoint from the branch history.
        token: A Hub token for private repos.

    Returns:
        The checkpoint directory (in the huggingface_hub cache), ready for ``train.resume``.

    Raises:
        ConfigError: A malformed ``spec``.
        HubError: The repo or branch does not exist or is not visible, the Hub is unreachable (and nothing is
            cached), or the branch holds no checkpoint.
        CheckpointError: The downloaded checkpoint does not match its manifest.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    parsed = parse_checkpoint_spec(spec)
    where = f"{parsed.repo_id}@{parsed.branch}"
    try:
        root = Path(snapshot_download(parsed.repo_id, revision=parsed.branch, token=token,
                                      allow_patterns=f"{_FOLDER}/**"))
    except RevisionNotFoundError:
        raise HubError(f"{where}: the repo has no branch {parsed.branch!r}",
                       fix="check hub.checkpoint_branch of the run that pushed the checkpoints") from None
    except RepositoryNotFoundError:
        raise HubError(f"{where}: the repo was not found, or it is private and this request is not authorised",
                       fix="check the repo id, and HF_TOKEN for a private repo") from None
    except LocalEntryNotFoundError:
        raise HubError(f"{where}: the Hub is unreachable and the checkpoint is not in the local cache",
                       fix="connect to the Hub (check HF_ENDPOINT), or resume from a local checkpoint") from None
    except HfHubHTTPError as e:
        raise HubError(f"{where}: downloading the checkpoint failed (HTTP {status_of(e)})", fix="retry later") from None
    found = find_latest_checkpoint(root / _FOLDER)
    if found is None:
        raise HubError(f"{where} holds no complete checkpoint under {_FOLDER}/",
                       fix="push checkpoints with hub.push_checkpoints: true, or resume from a local checkpoint")
    verify_checkpoint(found)
    return found
