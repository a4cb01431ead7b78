"""Push a finished run to a Hub in one commit, and pull one back.

Only an allowlist of files is uploaded (weights, timm config, card, training config, metrics, plots); checkpoints,
logs and anything else in the folder stay local. The commit names its parent, so a retry after a dropped connection
can never create a second commit: the server refuses a stale parent, and hubft then checks whether the first attempt
landed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from hubft.errors import HubError, WeightsError
from hubft.hub.card import PLOTS, write_model_card
from hubft.hub.repo_id import check_repo_id

__all__ = ["push_to_hub", "pull_from_hub", "UPLOAD_ALLOWLIST"]

UPLOAD_ALLOWLIST = ("model.safetensors", "config.json", "README.md", "config.yaml", "metrics.json",
                    "lr_curve.csv", *PLOTS)

_RETRIES = 4


def _check_finite_weights(path: Path) -> None:
    from safetensors import safe_open

    import torch

    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            t = f.get_tensor(key)
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise WeightsError(f"{path} holds non-finite values (NaN/inf) in {key!r}; refusing to push them",
                                   fix="resume from an earlier checkpoint with a lower LR, then push")


def _git_blob_sha(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _remote_matches(api, repo_id: str, revision: str | None, staging: Path, token) -> bool:
    """Whether the remote revision already holds exactly the staged files (a commit that landed before a drop)."""
    try:
        infos = {i.path: i for i in api.get_paths_info(repo_id, [p.name for p in staging.iterdir()],
                                                       revision=revision, token=token)}
    except Exception:
        return False
    for p in staging.iterdir():
        info = infos.get(p.name)
        if info is None:
            return False
        lfs = getattr(info, "lfs", None)
        if lfs is not None:
            if lfs.sha256 != hashlib.sha256(p.read_bytes()).hexdigest():
                return False
        elif info.blob_id != _git_blob_sha(p):
            return False
    return True


def _hub_error(e: Exception, output_dir: Path, repo_id: str) -> HubError:
    from huggingface_hub import constants

    status = getattr(getattr(e, "response", None), "status_code", None)
    what = f"HTTP {status}" if status else type(e).__name__
    reason = str(e).splitlines()[0][:200] if str(e) else what
    return HubError(
        f"pushing to {repo_id!r} at {constants.ENDPOINT} failed ({what}: {reason}); the output directory "
        f"{str(output_dir)!r} is intact",
        fix=f"check the Hub and your token (HF_TOKEN or `hf auth login`), then run `hubft push {output_dir} {repo_id}`",
    )


def push_to_hub(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    token: str | bool | None = None,
) -> str:
    """Upload a run directory to ``repo_id`` as one commit and return the commit URL.

    The model card is rendered again with the real repo id. The repo (and the ``revision`` branch) is created if
    missing. Transient errors (429, 5xx, dropped connections) are retried with backoff, honouring ``Retry-After``.

    Args:
        output_dir: A directory written by :func:`hubft.finetune` or :func:`hubft.save_pretrained`.
        repo_id: ``owner/name`` (or ``name`` in the token's namespace).
        private: Create the repo private (only applies when it is created).
        revision: Branch to commit to (default: ``main``).
        create_pr: Open a pull request instead of committing to the branch.
        commit_message: Defaults to "Upload fine-tuned model with hubft".
        token: A Hub token; default: ``HF_TOKEN`` or the stored login. Never written anywhere.

    Raises:
        HubError: Bad repo id, missing files, or the Hub failing / refusing; the local directory is never changed
            except for its README.md.
        WeightsError: The weights contain NaN or inf.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    check_repo_id(repo_id)
    out = Path(output_dir)
    for required in ("model.safetensors", "config.json"):
        if not (out / required).is_file():
            raise HubError(f"{str(out / required)!r} is missing; nothing to push",
                           fix="point `hubft push` at a finished run directory (it holds model.safetensors)")
    _check_finite_weights(out / "model.safetensors")
    write_model_card(out, repo_id=repo_id)

    api = HfApi()
    with tempfile.TemporaryDirectory(prefix="hubft-push-") as tmp:
        staging = Path(tmp)
        for name in UPLOAD_ALLOWLIST:
            src = out / name
            if src.is_file():
                try:
                    os.link(src, staging / name)
                except OSError:
                    shutil.copy2(src, staging / name)
        message = commit_message or "Upload fine-tuned model with hubft"
        last: Exception | None = None
        for attempt in range(_RETRIES + 1):
            try:
                repo_url = api.create_repo(repo_id, private=private, exist_ok=True, token=token)
                full_id = repo_url.repo_id
                if revision and not create_pr:
                    api.create_branch(full_id, branch=revision, exist_ok=True, token=token)
                head = api.repo_info(full_id, revision=revision, token=token).sha
                info = api.upload_folder(folder_path=str(staging), repo_id=full_id, revision=revision,
                                         commit_message=message, create_pr=create_pr, parent_commit=head, token=token)
                return info.commit_url if hasattr(info, "commit_url") else str(info)
            except HfHubHTTPError as e:
                status = getattr(e.response, "status_code", None)
                if status == 412 and attempt and _remote_matches(api, repo_id, revision, staging, token):
                    return f"{repo_id}@{revision or 'main'}"  # the previous attempt's commit landed
                if status not in (408, 412, 429, 500, 502, 503, 504):
                    raise _hub_error(e, out, repo_id) from None
                last = e
                delay = _retry_after(e) or min(8.0, 2.0 ** attempt)
            except (OSError, ConnectionError) as e:
                last, delay = e, min(8.0, 2.0 ** attempt)
            except Exception as e:  # httpx transport errors and the like
                if "Connect" not in type(e).__name__ and "Timeout" not in type(e).__name__ \
                        and "Protocol" not in type(e).__name__:
                    raise
                last, delay = e, min(8.0, 2.0 ** attempt)
            if attempt < _RETRIES:
                time.sleep(delay)
        raise _hub_error(last, out, repo_id)


def _retry_after(e: Exception) -> float | None:
    value = getattr(getattr(e, "response", None), "headers", {}).get("Retry-After")
    try:
        return min(30.0, float(value)) if value is not None else None
    except ValueError:
        return None


def pull_from_hub(repo_id: str, output_dir: str | os.PathLike | None = None, *, revision: str | None = None,
                  token: str | bool | None = None) -> Path:
    """Download a model repo (weights, config, card, metrics, plots) and return the local directory.

    Args:
        repo_id: ``owner/name``.
        output_dir: Where to put the files; default: the huggingface_hub cache snapshot.
        revision: Branch, tag or commit sha.
        token: A Hub token for private repos.

    Raises:
        HubError: Repo or revision not found, or the Hub unreachable.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    from hubft.data import disable_datasets_extra_hosts

    check_repo_id(repo_id)
    disable_datasets_extra_hosts()
    try:
        path = snapshot_download(repo_id, revision=revision, local_dir=output_dir, token=token,
                                 allow_patterns=list(UPLOAD_ALLOWLIST))
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise HubError(f"{repo_id!r}{'@' + revision if revision else ''} was not found on the Hub ({type(e).__name__})",
                       fix="check the repo id and revision; a private repo needs HF_TOKEN") from None
    except (HfHubHTTPError, OSError) as e:
        raise HubError(f"could not download {repo_id!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                       fix="check the Hub endpoint (HF_ENDPOINT) and your connection") from None
    return Path(path)
