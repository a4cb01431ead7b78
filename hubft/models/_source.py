"""Where a backbone comes from: a timm name, a Hub repo or a local directory."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from typing import Literal

import timm
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from timm.models import get_arch_pretrained_cfgs, is_model, parse_model_name, split_model_name_tag

from hubft.errors import ConfigError, ModelError

__all__ = ["ModelSource", "SourceKind", "parse_source"]

SourceKind = Literal["timm", "hub", "local"]

# timm's own test for a source prefix (two or more characters, so that Windows drive letters are not prefixes).
_PREFIX = re.compile(r"[a-zA-Z][a-zA-Z0-9+.\-_]+")


@dataclass(frozen=True)
class ModelSource:
    """A parsed backbone source.

    Attributes:
        kind: ``"timm"`` (a timm registry name), ``"hub"`` (a Hugging Face Hub repo) or ``"local"`` (a directory).
        spec: The string the user gave.
        name: For ``"timm"``: the architecture, with its pretrained tag if one was given (``resnet18.a1_in1k``).
        repo_id: For ``"hub"``: the repo id (``owner/name``).
        revision: For ``"hub"``: the requested branch, tag or commit, or None for the default branch.
        path: For ``"local"``: the directory, user-expanded (``~``) but otherwise as given.
    """

    kind: SourceKind
    spec: str
    name: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    path: str | None = None

    @property
    def architecture(self) -> str | None:
        """The timm architecture for a ``"timm"`` source (tag removed); None for sources read from a config."""
        return split_model_name_tag(self.name)[0] if self.name else None

    @property
    def tag(self) -> str | None:
        """The pretrained tag of a ``"timm"`` source, or None when the architecture's default tag applies."""
        return (split_model_name_tag(self.name)[1] or None) if self.name else None


def parse_source(source: str | os.PathLike[str], *, revision: str | None = None) -> ModelSource:
    """Parse a backbone source string.

    Accepted forms, checked in this order:

    * ``hf-hub:owner/name`` or ``hf-hub:owner/name@revision``: a Hub repo (``revision=`` is the same as ``@``;
      giving two different revisions is an error).
    * ``local-dir:PATH``, or a ``pathlib.Path``: a directory holding ``config.json`` and ``model.safetensors``.
    * an existing path that contains a path separator or is not a timm model name: the same as ``local-dir:``.
      A bare name such as ``resnet18`` means the timm model even if a folder of that name exists here; write
      ``./resnet18`` for the folder.
    * a timm architecture (``resnet18``) or pretrained tag (``resnet18.a1_in1k``).

    Args:
        source: The source string, or a path object for a local directory.
        revision: A Hub branch, tag or commit sha; only valid for Hub sources.

    Returns:
        The parsed source. Only names are checked here; nothing is downloaded or read.

    Raises:
        ConfigError: An empty source, a string that could be a repo id or a path that does not exist (the message
            names both prefixes), a bad repo id, or a revision given for a non-Hub source or twice.
        ModelError: An unknown timm architecture (with the closest names) or pretrained tag (with the valid ones).

    Examples:
        >>> parse_source("hf-hub:timm/resnet18.a1_in1k@main").revision
        'main'
        >>> parse_source("resnet18.a1_in1k").architecture
        'resnet18'
    """
    if isinstance(source, os.PathLike):
        path = os.fspath(source)
        return _local(path, path, revision)
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"model source {source!r} is empty or not a string",
                          fix="pass a timm name (resnet18), 'hf-hub:owner/name' or 'local-dir:PATH'")
    source = source.strip()
    if revision is not None and (not isinstance(revision, str) or not revision):
        raise ConfigError(f"revision {revision!r} is not a non-empty string", fix="pass a branch, tag or commit sha")
    if _is_existing_local_path(source):
        return _local(source, source, revision)
    try:
        prefix, ident = parse_model_name(source)
    except ValueError:
        raise _unparsable(source) from None
    if prefix == "hf-hub":
        return _hub(source, ident, revision)
    if prefix == "local-dir":
        return _local(source, ident, revision)
    _reject_revision(source, revision)
    _check_timm_name(ident)
    return ModelSource(kind="timm", spec=source, name=ident)


def _unparsable(source: str) -> ConfigError:
    head, sep, rest = source.partition(":")
    if sep and _PREFIX.fullmatch(head):
        if not rest:
            return ConfigError(f"model source {source!r} has nothing after {head + ':'!r}",
                               fix=f"write '{head}:' followed by a repo id or a path")
        return ConfigError(f"model source {source!r} has an unknown prefix {head + ':'!r}",
                           fix="use 'hf-hub:owner/name' for a Hub repo or 'local-dir:PATH' for a local directory")
    return ConfigError(
        f"model source {source!r} could be a Hub repo id or a local path, and no such local path exists",
        fix=f"write 'hf-hub:{source}' for the Hub repo or 'local-dir:{source}' for a local directory",
    )


def _is_existing_local_path(source: str) -> bool:
    path = os.path.expanduser(source)
    if not os.path.exists(path):
        return False
    looks_like_path = any(sep in source for sep in ("/", os.sep)) or source.startswith(("~", "."))
    return looks_like_path or not is_model(source)


def _local(spec: str, path: str, revision: str | None) -> ModelSource:
    _reject_revision(spec, revision)
    return ModelSource(kind="local", spec=spec, path=os.path.expanduser(path))


def _hub(spec: str, ident: str, revision: str | None) -> ModelSource:
    repo_id, at, inline_revision = ident.partition("@")
    if at and (not inline_revision or "@" in inline_revision):
        raise ConfigError(f"model source {spec!r} has an empty or repeated '@revision'",
                          fix="write 'hf-hub:owner/name@revision' with one revision")
    if at and revision is not None and revision != inline_revision:
        raise ConfigError(f"model source {spec!r} names revision {inline_revision!r} but revision={revision!r}",
                          fix="give the revision once, either after '@' or as revision=")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ConfigError(f"model source {spec!r} has an invalid Hub repo id {repo_id!r}: {err}",
                          fix="write 'hf-hub:owner/name'") from None
    return ModelSource(kind="hub", spec=spec, repo_id=repo_id, revision=inline_revision or revision)


def _reject_revision(spec: str, revision: str | None) -> None:
    if revision is not None:
        raise ConfigError(f"revision={revision!r} was given but model source {spec!r} is not a Hub repo",
                          fix="drop revision=, or use 'hf-hub:owner/name' to load from the Hub")


def _check_timm_name(name: str) -> None:
    arch, tag = split_model_name_tag(name)
    if not is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f"did you mean: {', '.join(close)}?" if close else "see timm.list_models() for the available names"
        raise ModelError(f"unknown timm architecture {arch!r}",
                         fix=f"{hint} (a Hub repo needs 'hf-hub:', a local directory 'local-dir:')")
    if tag:
        tags = [key.split(".", 1)[1] for key in get_arch_pretrained_cfgs(arch) if "." in key]
        if tag not in tags:
            close = difflib.get_close_matches(tag, tags, n=5, cutoff=0.3) or tags[:8]
            raise ModelError(f"unknown pretrained tag {tag!r} for timm architecture {arch!r}",
                             fix=f"use one of: {', '.join(f'{arch}.{t}' for t in close)}" if close
                             else f"{arch} has no pretrained tags; use {arch!r} with pretrained=False")
