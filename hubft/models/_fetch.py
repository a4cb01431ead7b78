"""Finding a source's ``config.json`` and ``model.safetensors``: in a local directory or on the Hub."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from hubft.errors import ConfigError, HubError, ModelError, WeightsError
from hubft.models._source import ModelSource
from hubft.models._weights import (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, CONFIG_NAME, PICKLE_SUFFIXES,
                                   WEIGHTS_NAME)

__all__ = ["SourceFiles", "fetch_source_files", "unreachable_error"]

_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class SourceFiles:
    """The files of a local or Hub source.

    Attributes:
        config: Path of ``config.json`` (of ``adapter_config.json`` for an adapter).
        weights: Path of ``model.safetensors`` (``adapter_model.safetensors``), or None when weights were not asked
            for.
        commit_sha: For Hub sources, the commit both files were read at.
        where: The source in words, for messages (``Hub repo 'o/n' at 1a2b3c4``, ``local directory '/x'``).
        adapter: The source is a peft adapter: no ``config.json``, an ``adapter_config.json``.
    """

    config: Path
    weights: Path | None
    commit_sha: str | None
    where: str
    adapter: bool = False


def fetch_source_files(source: ModelSource, *, weights: bool, cache_dir: str | None = None) -> SourceFiles:
    """Locate (and for the Hub, download into the Hub cache) a source's config and, if asked, its weights.

    For a Hub source, ``config.json`` is downloaded at the requested revision; the commit it resolved to (read
    from the snapshot path huggingface_hub returns) pins the weights download, so both files come from one
    commit even if the branch moves meanwhile. A source without ``config.json`` but with ``adapter_config.json``
    is a peft adapter: its two files are returned instead, with ``adapter`` set.

    Args:
        source: A ``"local"`` or ``"hub"`` source.
        weights: Whether ``model.safetensors`` is needed (``pretrained=True``).
        cache_dir: Hub cache directory; None for huggingface_hub's default (``HF_HUB_CACHE``).

    Raises:
        ModelError: The directory does not exist, or the source has no ``config.json``.
        WeightsError: No ``model.safetensors``; when only pickle weights (``pytorch_model.bin``) exist, they are
            named and refused.
        HubError: The Hub cannot be reached and the files are not cached, the repo or revision does not exist
            or is not accessible, or the Hub answered with an HTTP error.
        ConfigError: The repo id or revision is malformed.
    """
    if source.kind == "local":
        return _local_files(source, weights=weights)
    if source.kind == "hub":
        return _hub_files(source, weights=weights, cache_dir=cache_dir)
    raise ValueError(f"no files to fetch for a {source.kind!r} source")


def _local_files(source: ModelSource, *, weights: bool) -> SourceFiles:
    directory = Path(source.path)
    where = f"local directory {str(directory)!r}"
    if not directory.is_dir():
        what = "is a file, not a directory" if directory.exists() else "does not exist"
        raise ModelError(f"model source {source.spec!r}: {str(directory)!r} {what}",
                         fix="point at a directory holding config.json and model.safetensors")
    config = directory / CONFIG_NAME
    adapter = not config.is_file() and (directory / ADAPTER_CONFIG_NAME).is_file()
    if adapter:
        config = directory / ADAPTER_CONFIG_NAME
    if not config.is_file():
        raise ModelError(f"{where} has no {CONFIG_NAME}",
                         fix="save the model with hubft's save_pretrained or timm's save_for_hf, which write it")
    if not weights:
        return SourceFiles(config, None, None, where, adapter)
    weights_file = directory / (ADAPTER_WEIGHTS_NAME if adapter else WEIGHTS_NAME)
    if not weights_file.is_file():
        pickles = sorted(p.name for p in directory.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
        raise _no_safetensors(where, pickles, weights_file.name)
    return SourceFiles(config, weights_file, None, where, adapter)


def _hub_files(source: ModelSource, *, weights: bool, cache_dir: str | None) -> SourceFiles:
    config = _download(source, CONFIG_NAME, source.revision, cache_dir)
    adapter = False
    if config is None:  # asked only of a repo without config.json: a timm repo costs no request more
        config = _download(source, ADAPTER_CONFIG_NAME, source.revision, cache_dir)
        adapter = config is not None
    if config is None:
        raise ModelError(f"Hub repo {source.repo_id!r} has no {CONFIG_NAME}, so it is not a timm model repo",
                         fix="use a repo pushed by timm or hubft (with config.json and model.safetensors)")
    # hf_hub_download returns <cache>/snapshots/<commit sha>/<filename>: the commit the revision resolved to.
    sha = config.parent.name if _COMMIT_SHA.fullmatch(config.parent.name) else None
    where = f"Hub repo {source.repo_id!r}" + (f" at {sha[:7]}" if sha else "")
    name = ADAPTER_WEIGHTS_NAME if adapter else WEIGHTS_NAME
    weights_file = _download(source, name, sha or source.revision, cache_dir) if weights else None
    if weights and weights_file is None:
        pickle_file = "adapter_model.bin" if adapter else "pytorch_model.bin"
        has_pickle = _hub_file_exists(source.repo_id, pickle_file, sha or source.revision)
        raise _no_safetensors(where, [pickle_file] if has_pickle else [], name)
    return SourceFiles(config, weights_file, sha, where, adapter)


def _download(source: ModelSource, filename: str, revision: str | None, cache_dir: str | None) -> Path | None:
    """hf_hub_download with each foreseeable failure turned into a one-line error; None if the file is absent."""
    repo = f"Hub repo {source.repo_id!r}" + (f" at revision {source.revision!r}" if source.revision else "")
    try:
        return Path(huggingface_hub.hf_hub_download(source.repo_id, filename, revision=revision,
                                                    cache_dir=cache_dir, library_name="hubft"))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise unreachable_error(f"{filename!r} of {repo}", weights=filename == WEIGHTS_NAME) from None
    except RevisionNotFoundError:
        raise HubError(f"{repo}: revision {source.revision!r} does not exist",
                       fix="use an existing branch, tag or commit sha, or drop the revision") from None
    except RepositoryNotFoundError:
        raise HubError(f"{repo} does not exist, or it is private or gated and this request is not authorised",
                       fix="check the repo id; for a private or gated repo, log in (hf auth login) or set "
                           "HF_TOKEN") from None
    except EntryNotFoundError:
        return None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        raise HubError(f"the Hub at {constants.ENDPOINT} answered HTTP {status} for {filename!r} of {repo}",
                       fix="retry later; for 401/403, check that HF_TOKEN may read this repo") from None
    except HFValidationError as err:
        raise ConfigError(f"{repo}: {err}", fix="write 'hf-hub:owner/name[@revision]'") from None
    except OSError:
        # Network failures that huggingface_hub does not wrap (proxy, DNS, TLS) surface as OSError subclasses.
        raise unreachable_error(f"{filename!r} of {repo}", weights=filename == WEIGHTS_NAME) from None


def _hub_file_exists(repo_id: str, filename: str, revision: str | None) -> bool:
    try:
        return huggingface_hub.file_exists(repo_id, filename, revision=revision)
    except Exception:  # only refines an error message that is raised anyway
        return False


def unreachable_error(what: str, *, weights: bool = True) -> HubError:
    """The error for a download that failed because the Hub (or network) is out of reach.

    Args:
        what: The file(s) that could not be downloaded.
        weights: Whether only weights were missing (then ``pretrained=False`` is a way out; without a config
            it is not, but a timm architecture name is).
    """
    offline = constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE
    cause = "offline mode is on (HF_HUB_OFFLINE=1)" if offline else f"the Hub at {constants.ENDPOINT} is unreachable"
    without = ("pass pretrained=False for random weights" if weights
               else "build the bare architecture with create_model('<timm name>', pretrained=False)")
    return HubError(f"cannot download {what}: {cause} and it is not in the local Hub cache",
                    fix=f"connect to the Hub (or fix HF_ENDPOINT), point at a local copy with 'local-dir:PATH', "
                        f"or {without}")


def _no_safetensors(where: str, pickles: list[str], name: str = WEIGHTS_NAME) -> WeightsError:
    if pickles:
        return WeightsError(f"{where} has no {name}, only pickle weights ({', '.join(pickles)}), which "
                            "hubft refuses to load because unpickling can run arbitrary code",
                            fix="convert them to safetensors where you trust the file (e.g. "
                                "safetensors.torch.save_file(torch.load(path, weights_only=True), "
                                "'model.safetensors')), or pass pretrained=False")
    return WeightsError(f"{where} has no {name}",
                        fix="save the weights with save_pretrained, or pass pretrained=False for random weights")
