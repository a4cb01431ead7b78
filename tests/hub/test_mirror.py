"""`hubft hub mirror`: a repo's branches, tags and files (LFS included) copied between hubs, directly or through a
bundle folder, and a second run that has nothing left to copy."""

from __future__ import annotations

import pytest
from huggingface_hub import CommitOperationAdd, HfApi

from hubft.cli import main
from hubft.testing import LocalHub

WEIGHTS = bytes(range(256)) * 32


@pytest.fixture
def hubs(tmp_path):
    """Two independent hubs: a source with a repo to copy, an empty destination."""
    with LocalHub(tmp_path / "source") as source, LocalHub(tmp_path / "dest") as dest:
        yield source, dest


def _fill(hub: LocalHub, repo_id: str, repo_type: str) -> dict[str, dict[str, bytes]]:
    """Give a repo history, a branch and two tags (one on an older commit); return each ref's files."""
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo(repo_id, repo_type=repo_type, private=True)
    api.create_commit(repo_id, repo_type=repo_type, commit_message="v1", operations=[
        CommitOperationAdd("w.safetensors", WEIGHTS), CommitOperationAdd("notes/a.txt", b"old")])
    api.create_tag(repo_id, repo_type=repo_type, tag="v1")
    api.create_commit(repo_id, repo_type=repo_type, commit_message="v2", operations=[
        CommitOperationAdd("notes/a.txt", b"new"), CommitOperationAdd("empty.txt", b"")])
    api.create_tag(repo_id, repo_type=repo_type, tag="v2")
    api.create_branch(repo_id, repo_type=repo_type, branch="dev")
    api.upload_file(path_or_fileobj=b"dev only", path_in_repo="dev.txt", repo_id=repo_id, repo_type=repo_type,
                    revision="dev")
    return {ref: _files(hub, repo_id, repo_type, ref) for ref in ("main", "dev", "v1", "v2")}


def _files(hub: LocalHub, repo_id: str, repo_type: str, revision: str) -> dict[str, bytes]:
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    return {path: open(api.hf_hub_download(repo_id, path, revision=revision, repo_type=repo_type,
                                           cache_dir=hub.root.parent / f"cache-{hub.port}"), "rb").read()
            for path in api.list_repo_files(repo_id, revision=revision, repo_type=repo_type)}


def _mirror(capsys, repo_id, source, dest, repo_type, source_token=None, dest_token=None) -> str:
    argv = ["hub", "mirror", repo_id, "--from", source, "--to", dest, "--repo-type", repo_type]
    argv += ["--from-token", source_token] if source_token else []
    argv += ["--to-token", dest_token] if dest_token else []
    assert main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.mark.parametrize("repo_type", ["model", "dataset"])
def test_mirror_through_a_bundle_copies_every_ref_and_a_second_run_copies_nothing(hubs, tmp_path, capsys,
                                                                                 repo_type):
    source, dest = hubs
    repo_id = "hubft-user/mirrored"
    want = _fill(source, repo_id, repo_type)
    bundle = str(tmp_path / "bundle")

    out = _mirror(capsys, repo_id, source.endpoint, bundle, repo_type, source_token=source.token)
    assert "2 branch(es), 2 tag(s)" in out
    out = _mirror(capsys, repo_id, bundle, dest.endpoint, repo_type, dest_token=dest.token)
    api = HfApi(endpoint=dest.endpoint, token=dest.token)
    refs = api.list_repo_refs(repo_id, repo_type=repo_type)
    assert {b.name for b in refs.branches} == {"main", "dev"} and {t.name for t in refs.tags} == {"v1", "v2"}
    assert api.repo_info(repo_id, repo_type=repo_type).private
    for ref, files in want.items():
        assert _files(dest, repo_id, repo_type, ref) == files, ref

    again = _mirror(capsys, repo_id, source.endpoint, bundle, repo_type, source_token=source.token)
    assert "0 file(s) downloaded" in again
    assert "0 commit(s) made" in _mirror(capsys, repo_id, bundle, dest.endpoint, repo_type, dest_token=dest.token)


def test_mirror_between_two_endpoints_follows_a_moved_branch(hubs, capsys):
    source, dest = hubs
    repo_id = "hubft-user/direct"
    _fill(source, repo_id, "model")
    _mirror(capsys, repo_id, source.endpoint, dest.endpoint, "model", source.token, dest.token)
    HfApi(endpoint=source.endpoint, token=source.token).create_commit(
        repo_id, commit_message="later", operations=[CommitOperationAdd("later.txt", b"later")])
    out = _mirror(capsys, repo_id, source.endpoint, dest.endpoint, "model", source.token, dest.token)
    assert "1 commit(s) made" in out
    assert _files(dest, repo_id, "model", "main") == _files(source, repo_id, "model", "main")
