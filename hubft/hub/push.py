"""Push a finished run to a Hub in one commit, and pull one back.

Only an allowlist of files is uploaded (weights and timm config, or an adapter's files; card, training config,
metrics, plots): checkpoints, logs, a stray ``.env`` and anything else in the folder stay local. The files are
staged in a temporary directory (hard links, plus the card rendered for the real repo id and validated there, and the
configs and metrics with absolute local paths cut to their last component, as the card shows them), so the run
directory itself is never changed, whether the push succeeds or not.

Why a retried push makes exactly one commit: every attempt reads the branch head and commits with it as
``parent_commit``. huggingface_hub leaves out of a commit the files the head already holds, so an attempt that
follows a commit whose answer was lost finds its own files there and commits nothing; the parent makes that
comparison safe against someone else pushing meanwhile (the server answers 412 and the attempt is redone from the
new head). Pull requests are not compared against the branch, so before retrying with ``create_pr`` hubft looks
for a pull request an earlier attempt opened with the same files.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from hubft.errors import HubError, WeightsError, one_line
from hubft.faults import fault_point_after
from hubft.files import sha256_file
from hubft.hub.card import PLOTS, SAMPLE_PLOTS, local_name, write_model_card
from hubft.hub.repo_id import check_repo_id
from hubft.hub.retry import DEFAULT_RETRY, RetryPolicy, call_with_retry, is_transient, status_of

if TYPE_CHECKING:
    from huggingface_hub import HfApi

__all__ = ["push_to_hub", "pull_from_hub", "ADAPTER_FILES", "MODEL_FILES", "UPLOAD_ALLOWLIST", "RetryPolicy"]

logger = logging.getLogger(__name__)

MODEL_FILES = ("model.safetensors", "config.json")
"""A full model: timm's weights and config."""
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
"""A peft adapter (an adapter run's output): its weights, with the head, and its config. Never the base weights."""
UPLOAD_ALLOWLIST = (*MODEL_FILES, *ADAPTER_FILES, "README.md", "config.yaml", "metrics.json", *PLOTS,
                    *SAMPLE_PLOTS)
"""The only files :func:`push_to_hub` uploads (those present), and :func:`pull_from_hub` downloads."""

_DEFAULT_MESSAGE = "Upload fine-tuned model with hubft"


def push_to_hub(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    token: str | bool | None = None,
    retry: RetryPolicy | None = None,
) -> str:
    """Upload a run directory to ``repo_id`` as one commit and return the commit (or pull request) URL.

    The files of :data:`UPLOAD_ALLOWLIST` present in ``output_dir`` are uploaded, with the model card rendered
    again for ``repo_id`` and validated before anything is sent. The directory holds a full model
    (:data:`MODEL_FILES`) or an adapter (:data:`ADAPTER_FILES`), never both. The repo is created if missing (``private``
    applies only then), and so is the ``revision`` branch (from ``main``). Transient failures (429, 5xx, a dropped
    connection, a timeout) are retried: by huggingface_hub inside uploads and downloads, by hubft around every other
    step, both honouring ``Retry-After``. A push of files the branch already holds makes no commit and returns the
    head's URL, so pushing again after a failure is always safe.

    Args:
        output_dir: A directory written by :func:`hubft.finetune` or :func:`hubft.save_pretrained`.
        repo_id: ``owner/name``, or ``name`` in the token owner's namespace.
        private: Create the repo private.
        revision: Branch to commit to (default: ``main``); with ``create_pr``, the branch the pull request targets.
        create_pr: Open a pull request instead of committing to the branch.
        commit_message: Default: "Upload fine-tuned model with hubft".
        token: A Hub token; default: ``HF_TOKEN`` or the stored login. Never written or logged anywhere.
        retry: How failing steps are retried; default :data:`hubft.hub.retry.DEFAULT_RETRY` (5 retries,
            1-8 s apart, as huggingface_hub's ``http_backoff``).

    Returns:
        The URL of the commit, or of the pull request with ``create_pr``.

    Raises:
        ConfigError: ``repo_id`` breaks the Hub's rules (before anything else happens).
        HubError: ``output_dir`` lacks the model files, or holds a full model and an adapter; a staged file contains
            the token; the Hub stays unreachable or keeps failing after the retries, or refuses the push (401, 403,
            404, ...). The message says which, and that the run directory is intact; ``hubft push`` can be run
            again.
        WeightsError: The weights contain NaN or inf.

    Examples:
        >>> push_to_hub("runs/pets", "me/pets-resnet18", private=True)  # doctest: +SKIP
        'https://huggingface.co/me/pets-resnet18/commit/0a1b2c...'
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    check_repo_id(repo_id)
    out = Path(output_dir)
    weights = out / _model_files(out)[0]
    policy = retry or DEFAULT_RETRY
    api = HfApi(token=token)
    # The finite check reads every weight (torch and safetensors, which release the GIL) in a thread of its own
    # while this one stages the files, renders the card and scans for the token; nothing reaches the Hub, not even
    # the repo's creation, before both are done.
    with tempfile.TemporaryDirectory(prefix="hubft-push-") as tmp, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="hubft-finite-check") as pool:
        finite = pool.submit(_check_finite_weights, weights)
        staging = Path(tmp)
        _stage(out, staging, repo_id, token)
        _refuse_token_in(staging, token)
        finite.result()  # WeightsError: nothing was sent
        try:
            full_id = call_with_retry(lambda: _full_repo_id(api, repo_id), policy, what="resolving the repo owner")
            if full_id != repo_id:
                write_model_card(out, repo_id=full_id, token=token, path=staging / "README.md", durable=False)
            return _commit(api, staging, full_id, private=private, revision=revision, create_pr=create_pr,
                           message=commit_message or _DEFAULT_MESSAGE, policy=policy)
        except HfHubHTTPError as e:
            raise _push_error(e, out, repo_id, policy) from None
        except Exception as e:
            if not is_transient(e):
                raise
            raise _push_error(e, out, repo_id, policy) from None


def _model_files(out: Path) -> tuple[str, str]:
    """The model files of a run directory: :data:`MODEL_FILES` or :data:`ADAPTER_FILES`.

    Raises:
        HubError: Neither complete set is there, or both are (a full push must never carry a stale adapter, and an
            adapter push never the full weights).
    """
    adapter = any((out / name).is_file() for name in ADAPTER_FILES)
    if adapter and any((out / name).is_file() for name in MODEL_FILES):
        raise HubError(f"{str(out)!r} holds both a full model ({', '.join(MODEL_FILES)}) and an adapter "
                       f"({', '.join(ADAPTER_FILES)}); refusing to guess which to push",
                       fix="remove the files of the one that is stale (or run again into a new train.output_dir)")
    files = ADAPTER_FILES if adapter else MODEL_FILES
    for required in files:
        if not (out / required).is_file():
            raise HubError(f"{str(out / required)!r} is missing; there is no model to push",
                           fix="point `hubft push` at a finished run directory (it holds model.safetensors and "
                               "config.json, or an adapter's adapter_model.safetensors and adapter_config.json)")
    return files


def _full_repo_id(api: HfApi, repo_id: str) -> str:
    if "/" in repo_id:
        return repo_id
    return f"{api.whoami()['name']}/{repo_id}"


def _commit(api: HfApi, staging: Path, repo_id: str, *, private: bool | None, revision: str | None, create_pr: bool,
            message: str, policy: RetryPolicy) -> str:
    """Create the repo / branch and make the commit, each step retried; returns the commit or PR URL."""
    call_with_retry(lambda: api.create_repo(repo_id, private=private, exist_ok=True), policy, what="creating the repo")
    if revision and not create_pr:
        call_with_retry(lambda: api.create_branch(repo_id, branch=revision, exist_ok=True), policy,
                        what=f"creating branch {revision!r}")
    prs_before = call_with_retry(lambda: _pull_requests(api, repo_id), policy, what="listing pull requests") \
        if create_pr else set()
    attempts = 0

    def attempt() -> str:
        nonlocal attempts
        attempts += 1
        if create_pr and attempts > 1:
            landed = _landed_pull_request(api, repo_id, staging, prs_before)
            if landed is not None:
                return landed
        head = api.repo_info(repo_id, revision=revision).sha
        with fault_point_after(api, "preupload_lfs_files", "push_after_upload"):
            info = api.upload_folder(folder_path=str(staging), repo_id=repo_id, revision=revision,
                                     commit_message=message, create_pr=create_pr, parent_commit=head)
        return (info.pr_url if create_pr else None) or info.commit_url

    return call_with_retry(attempt, policy, what=f"committing to {repo_id!r}")


def _pull_requests(api: HfApi, repo_id: str) -> set[str]:
    refs = api.list_repo_refs(repo_id, include_pull_requests=True)
    return {r.ref for r in refs.pull_requests or []}


def _landed_pull_request(api: HfApi, repo_id: str, staging: Path, before: set[str]) -> str | None:
    """The URL of a pull request opened since ``before`` whose files are exactly the staged ones, if any."""
    from huggingface_hub import constants

    for ref in sorted(_pull_requests(api, repo_id) - before):
        if _remote_matches(api, repo_id, ref, staging):
            return f"{constants.ENDPOINT}/{repo_id}/discussions/{ref.rsplit('/', 1)[-1]}"
    return None


def _git_blob_sha(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _remote_matches(api: HfApi, repo_id: str, revision: str, staging: Path) -> bool:
    """Whether ``revision`` holds every staged file with the same content."""
    names = sorted(p.name for p in staging.iterdir())
    infos = {i.path: i for i in api.get_paths_info(repo_id, names, revision=revision)}
    for name in names:
        info = infos.get(name)
        if info is None:
            return False
        lfs = getattr(info, "lfs", None)
        same = lfs.sha256 == sha256_file(staging / name) if lfs else info.blob_id == _git_blob_sha(staging / name)
        if not same:
            return False
    return True


def _stage(out: Path, staging: Path, repo_id: str, token: str | bool | None) -> None:
    """Link the allowlisted files into ``staging`` and write the card for ``repo_id`` there (validated).

    ``config.yaml``, ``config.json`` and ``metrics.json`` go up with absolute local paths cut to their last
    component (:func:`_public_copy`), as the card shows them.
    """
    for name in UPLOAD_ALLOWLIST:
        src = out / name
        if name == "README.md" or not src.is_file():
            continue
        public = _public_copy(src) if name in _PUBLIC_COPIES else None
        if public is not None:
            (staging / name).write_text(public, encoding="utf-8")
            continue
        try:
            os.link(src, staging / name)
        except OSError:  # another filesystem, or links not supported
            shutil.copy2(src, staging / name)
    write_model_card(out, repo_id=repo_id, token=token, path=staging / "README.md", durable=False)


_PUBLIC_COPIES = ("config.yaml", "config.json", "adapter_config.json", "metrics.json")
"""Text files whose absolute local paths are cut to their last component on the way up."""
_ABSOLUTE_PATH = re.compile(r"(local-dir:)?(/|\\\\|~[/\\]|[A-Za-z]:[/\\])")  # POSIX, UNC, home, drive
_NOT_PATHS = frozenset({"label_names", "classes", "labels"})
"""Keys whose strings are class names, whatever they look like ("/r/aww" is a label, not a directory)."""


def _public_copy(path: Path) -> str | None:
    """The file at ``path`` with every absolute local path in it cut to its last component (a ``local-dir:``
    prefix kept), as the card shows them: the repo is public, the user's directory layout is not. The run's output,
    data and resume directories and a local backbone are recorded in ``config.yaml``, ``config.json`` (the backbone's
    provenance) and ``metrics.json``. None when nothing needs to change, or the file does not parse (it is uploaded
    as it is, byte for byte)."""
    import json

    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else \
            yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    public, changed = _cut_local_paths(data)
    if not changed:
        return None
    if path.suffix == ".json":  # indented as their writers indent them (timm's config.json: 2)
        return json.dumps(public, indent=2 if path.name.endswith("config.json") else 1)
    return yaml.dump(public, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False, allow_unicode=True)


def _cut_local_paths(value):
    """``(value with every absolute-path string cut to its last component, whether any was)``, recursively."""
    if isinstance(value, dict):
        items = [(k, *(_cut_local_paths(v) if k not in _NOT_PATHS else (v, False))) for k, v in value.items()]
        return {k: v for k, v, _ in items}, any(c for _, _, c in items)
    if isinstance(value, list):
        items = [_cut_local_paths(v) for v in value]
        return [v for v, _ in items], any(c for _, c in items)
    match = _ABSOLUTE_PATH.match(value) if isinstance(value, str) else None
    if match is None:
        return value, False
    prefix = match.group(1) or ""
    return prefix + (local_name(value[len(prefix):]) or ""), True


def _refuse_token_in(staging: Path, token: str | bool | None) -> None:
    """Refuse to upload a file that contains the token the push authenticates with.

    Every byte of every file is searched, except the tensor data of ``.safetensors`` files: their JSON header
    (tensor names and the free-form metadata, the only text such a file holds) is searched instead.
    """
    from huggingface_hub.utils import get_token_to_send

    secret = get_token_to_send(token)
    if not secret or len(secret) < 8:
        return
    needle = secret.encode()
    for path in sorted(staging.iterdir()):
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header_size = int.from_bytes(f.read(8), "little") if path.suffix == ".safetensors" else 0
            if 0 < header_size <= size - 8:
                found = needle in f.read(header_size)
            elif size == 0:
                found = False
            else:  # any other file, or a .safetensors whose header length is not plausible: every byte
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                    found = data.find(needle) != -1
        if found:
            raise HubError(f"{path.name} contains the Hub token this push uses; refusing to upload it",
                           fix=f"remove the token from {path.name} (and revoke it if it was shared)")


def _check_finite_weights(path: Path) -> None:
    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                # A NaN or an inf anywhere makes the sum non-finite: one pass, no per-element mask (15x faster
                # than isfinite().all()). Only a sum that is not finite pays for the exact check, which tells a
                # NaN/inf from finite values whose sum overflowed. Narrower floats are summed in float32 (float8
                # has no sum of its own).
                if not t.is_floating_point():
                    continue
                if t.dtype not in (torch.float32, torch.float64):
                    t = t.float()
                if not torch.isfinite(t.sum()) and not torch.isfinite(t).all():
                    raise WeightsError(f"{str(path)!r} holds non-finite values (NaN/inf) in {key!r}; refusing to "
                                       "push them", fix="resume from an earlier checkpoint with a lower LR, then push")
    except WeightsError:
        raise
    except Exception as e:  # safetensors raises its own error types for a truncated or foreign file
        raise WeightsError(f"{str(path)!r} is not a readable safetensors file ({one_line(e)})",
                           fix="save the model again with hubft.save_pretrained") from None


def _push_error(error: Exception, out: Path, repo_id: str, policy: RetryPolicy) -> HubError:
    from huggingface_hub import constants

    status = status_of(error)
    intact = f"the run directory {str(out)!r} is unchanged"
    again = f"`hubft push {out} {repo_id}` (safe to repeat: files the repo already holds are not committed again)"
    first_line = one_line(error)
    if status is None:
        return HubError(f"the Hub at {constants.ENDPOINT} is unreachable ({type(error).__name__}: {first_line}) "
                        f"after {policy.max_retries + 1} attempts; {intact}",
                        fix=f"check the network and HF_ENDPOINT, then run {again} when the Hub is back")
    if is_transient(error):
        return HubError(f"the Hub at {constants.ENDPOINT} kept failing (HTTP {status}) after "
                        f"{policy.max_retries + 1} attempts; {intact}", fix=f"run {again} later")
    if status in (401, 403):
        return HubError(f"the Hub refused to push to {repo_id!r} (HTTP {status}: not authorised); {intact}",
                        fix="log in with a token that may write there (`hf auth login` or HF_TOKEN), then run "
                            f"{again}")
    if status == 404:
        return HubError(f"the Hub found no repo or revision for {repo_id!r} (HTTP 404); {intact}",
                        fix="check the repo id, the revision, and that the token may see the repo")
    return HubError(f"the Hub refused the push to {repo_id!r} (HTTP {status}: {first_line}); {intact}",
                    fix=f"fix the cause above, then run {again}")


def pull_from_hub(repo_id: str, output_dir: str | os.PathLike | None = None, *, revision: str | None = None,
                  token: str | bool | None = None) -> Path:
    """Download a model repo's files (those of :data:`UPLOAD_ALLOWLIST`) and return the local directory.

    Works offline (``HF_HUB_OFFLINE=1``) for a repo already in the Hub cache.

    Args:
        repo_id: ``owner/name``.
        output_dir: Where to put the files; default: the huggingface_hub cache snapshot (returned).
        revision: Branch, tag or commit sha.
        token: A Hub token for private repos.

    Raises:
        ConfigError: ``repo_id`` breaks the Hub's rules.
        HubError: The repo or revision does not exist or is not visible to the token, the Hub is unreachable and
            nothing is cached, or the repo holds no ``model.safetensors``.

    Examples:
        >>> pull_from_hub("me/pets-resnet18", "models/pets")  # doctest: +SKIP
        PosixPath('models/pets')
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    check_repo_id(repo_id)
    where = repr(repo_id) + (f" at revision {revision!r}" if revision else "")
    try:
        path = Path(snapshot_download(repo_id, revision=revision, local_dir=output_dir, token=token,
                                      allow_patterns=list(UPLOAD_ALLOWLIST)))
    except RevisionNotFoundError:
        raise HubError(f"{where}: the revision does not exist", fix="use an existing branch, tag or sha") from None
    except RepositoryNotFoundError:
        raise HubError(f"{where} was not found on the Hub, or it is private and this request is not authorised",
                       fix="check the repo id; a private repo needs HF_TOKEN or `hf auth login`") from None
    except LocalEntryNotFoundError:
        raise HubError(f"{where} could not be downloaded: the Hub is unreachable (or HF_HUB_OFFLINE=1) and it is not "
                       "in the local cache", fix="connect to the Hub (check HF_ENDPOINT) and pull again") from None
    except HfHubHTTPError as e:
        raise HubError(f"downloading {where} failed (HTTP {status_of(e)})", fix="retry later") from None
    if not (path / MODEL_FILES[0]).is_file() and not (path / ADAPTER_FILES[0]).is_file():
        raise HubError(f"{where} holds no model.safetensors (nor an adapter's adapter_model.safetensors), so it is "
                       "not a model hubft or timm pushed", fix="pull a repo written by `hubft push` or timm's "
                       "push_to_hf_hub")
    return path
