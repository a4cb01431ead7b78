"""parse_source: a table of valid and invalid sources, each with the reason."""

from __future__ import annotations

import os

import pytest

from hubft.errors import ConfigError, ModelError
from hubft.models import create_model, parse_source

VALID = [
    # (source, revision, expected fields, reason)
    ("resnet18", None, {"kind": "timm", "name": "resnet18", "architecture": "resnet18", "tag": None},
     "a timm architecture"),
    ("resnet18.a1_in1k", None, {"kind": "timm", "architecture": "resnet18", "tag": "a1_in1k"},
     "a timm pretrained tag"),
    ("hf-hub:owner/name", None, {"kind": "hub", "repo_id": "owner/name", "revision": None}, "a Hub repo"),
    ("hf-hub:owner/name@v1.0", None, {"kind": "hub", "repo_id": "owner/name", "revision": "v1.0"},
     "a Hub repo at a revision"),
    ("hf-hub:owner/name", "dev", {"kind": "hub", "revision": "dev"}, "revision= instead of @"),
    ("hf-hub:owner/name@dev", "dev", {"kind": "hub", "revision": "dev"}, "the same revision twice is fine"),
    ("hf_hub:owner/name", None, {"kind": "hub", "repo_id": "owner/name"}, "timm's deprecated alias"),
    ("local-dir:some/dir", None, {"kind": "local", "path": "some/dir"}, "an explicit local directory, "
                                                                        "existing or not"),
]

INVALID = [
    # (source, revision, error type, text the message must contain, reason)
    ("owner/name", None, ConfigError, "'hf-hub:owner/name'", "could be a repo id or a path: names both prefixes"),
    ("owner/name", None, ConfigError, "'local-dir:owner/name'", "... both prefixes"),
    ("resnt18", None, ModelError, "resnet18", "typo in an architecture: closest names"),
    ("resnet18.a1_in1kk", None, ModelError, "resnet18.a1_in1k", "typo in a tag: valid tags"),
    ("s3:bucket/model", None, ConfigError, "unknown prefix 's3:'", "an unknown source prefix"),
    ("hf-hub:", None, ConfigError, "nothing after", "a prefix without a repo"),
    ("hf-hub:owner/name@a@b", None, ConfigError, "'@revision'", "two @"),
    ("hf-hub:owner/name@v1", "v2", ConfigError, "'v1' but revision='v2'", "two different revisions"),
    ("hf-hub:owner/na me", None, ConfigError, "invalid Hub repo id", "a malformed repo id"),
    ("resnet18", "main", ConfigError, "not a Hub repo", "a revision for a timm name"),
    ("local-dir:x", "main", ConfigError, "not a Hub repo", "a revision for a local directory"),
    ("", None, ConfigError, "empty", "nothing at all"),
]


@pytest.mark.parametrize("source, revision, expected, reason", VALID, ids=[row[-1] for row in VALID])
def test_valid_sources(source, revision, expected, reason):
    parsed = parse_source(source, revision=revision)
    assert parsed.spec == source
    for field, value in expected.items():
        assert getattr(parsed, field) == value, reason


@pytest.mark.parametrize("source, revision, error, text, reason", INVALID, ids=[row[-1] for row in INVALID])
def test_invalid_sources(source, revision, error, text, reason):
    with pytest.raises(error) as info:
        parse_source(source, revision=revision)
    assert text in str(info.value), reason
    assert "Fix:" in str(info.value) and "\n" not in str(info.value)


def test_existing_paths_are_local_but_bare_timm_names_stay_timm(tmp_path, monkeypatch):
    (tmp_path / "owner" / "name").mkdir(parents=True)
    (tmp_path / "resnet18").mkdir()
    monkeypatch.chdir(tmp_path)
    assert parse_source("owner/name").kind == "local"
    assert parse_source(str(tmp_path / "owner" / "name")).kind == "local"
    assert parse_source("resnet18").kind == "timm"
    assert parse_source("./resnet18").kind == "local"
    assert parse_source("~").path == os.path.expanduser("~")
    assert parse_source(tmp_path / "not-yet").kind == "local"  # a Path object always means a directory


def test_create_model_refuses_the_ambiguous_string_before_any_download():
    with pytest.raises(ConfigError, match="hf-hub:owner/name.*local-dir:owner/name"):
        create_model("owner/name")
