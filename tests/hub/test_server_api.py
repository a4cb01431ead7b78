"""The local Hub through the real huggingface_hub client: uploads, downloads, revisions, listings, cards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    ModelCard,
    ModelCardData,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from hubft.testing import LocalHub

FILES = {
    "README.md": b"---\nlicense: mit\ntags:\n- demo\n---\n# demo\n",
    "config.json": b'{"a": 1}\n',
    "sub/deeper/note.txt": b"nested\n",
    "empty.txt": b"",
    "model.safetensors": bytes(range(256)) * 64,  # LFS by extension
    "blob.dat": b"\x00binary\x00" * 100,  # LFS because the sample holds a NUL byte
}


def _write(folder, files=FILES):
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def _commits(hub: LocalHub) -> list:
    return [r for r in hub.requests if r.method == "POST" and "/commit/" in r.path and r.status == 200]


def test_upload_folder_then_download_every_file(hub, api, repo_id, tmp_path):
    api.create_repo(repo_id)
    info = api.upload_folder(repo_id=repo_id, folder_path=_write(tmp_path / "src"), commit_message="first")

    assert len(info.oid) == 40 and int(info.oid, 16) >= 0
    assert len(_commits(hub)) == 1
    uploads = [r for r in hub.requests if r.method == "PUT"]
    assert len(uploads) == 2 and {r.status for r in uploads} == {200}  # the two LFS files, nothing else
    for name, data in FILES.items():
        with open(hf_hub_download(repo_id, name, token=hub.token), "rb") as f:
            assert f.read() == data, name
    tree = {f.path: f for f in api.list_repo_tree(repo_id, recursive=True) if hasattr(f, "size")}
    assert tree["model.safetensors"].lfs.size == tree["model.safetensors"].size == len(FILES["model.safetensors"])
    assert tree["config.json"].lfs is None
    assert set(tree) == set(FILES) | {".gitattributes"}


def test_identical_reupload_makes_no_commit(hub, api, repo_id, tmp_path):
    api.create_repo(repo_id)
    folder = _write(tmp_path / "src")
    first = api.upload_folder(repo_id=repo_id, folder_path=folder)
    again = api.upload_folder(repo_id=repo_id, folder_path=folder)
    assert again.oid == first.oid
    assert len(_commits(hub)) == 1


def test_model_info_reports_real_sizes_card_data_and_z_dates(api, repo_id, tmp_path):
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=_write(tmp_path / "src"))
    info = api.model_info(repo_id, files_metadata=True)
    sizes = {s.rfilename: s.size for s in info.siblings}
    assert sizes["model.safetensors"] == len(FILES["model.safetensors"])
    assert info.card_data["license"] == "mit" and info.tags == ["demo"]
    assert info.last_modified.tzinfo is not None and info.private is False


def test_branches_tags_and_revisions_by_sha(api, repo_id, hub):
    api.create_repo(repo_id)
    v1 = api.upload_file(path_or_fileobj=b"one\n", path_in_repo="f.txt", repo_id=repo_id).oid
    api.create_tag(repo_id, tag="v1")
    api.create_branch(repo_id, branch="feature/x")
    api.upload_file(path_or_fileobj=b"branch\n", path_in_repo="f.txt", repo_id=repo_id, revision="feature/x")
    api.upload_file(path_or_fileobj=b"two\n", path_in_repo="f.txt", repo_id=repo_id)

    def read(revision):
        with open(hf_hub_download(repo_id, "f.txt", revision=revision, token=hub.token), "rb") as f:
            return f.read()

    assert [read(r) for r in ("main", "v1", v1, "feature/x")] == [b"two\n", b"one\n", b"one\n", b"branch\n"]
    refs = api.list_repo_refs(repo_id)
    assert {b.name for b in refs.branches} == {"main", "feature/x"}
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", v1)]
    history = api.list_repo_commits(repo_id)
    assert [c.title for c in history][-1] == "initial commit" and history[1].commit_id == v1
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_branch(repo_id, branch="feature/x")
    assert conflict.value.response.status_code == 409
    api.create_branch(repo_id, branch="feature/x", exist_ok=True)
    with pytest.raises(RevisionNotFoundError):
        read("no-such-branch")


def test_missing_things_map_to_the_clients_typed_errors(api, repo_id, hub):
    api.create_repo(repo_id)
    assert api.repo_exists(repo_id) and not api.repo_exists(repo_id + "-nope")
    assert not api.file_exists(repo_id, "nope.txt")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(repo_id, "nope.txt", token=hub.token)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(repo_id + "-nope")
    with pytest.raises(EntryNotFoundError):
        api.list_repo_tree(repo_id, path_in_repo="no/such/folder").__next__()
    api.delete_repo(repo_id)
    assert not api.repo_exists(repo_id)
    api.delete_repo(repo_id, missing_ok=True)


def test_commit_operations_delete_files_and_folders_and_open_prs(api, repo_id):
    api.create_repo(repo_id)
    api.create_commit(repo_id, commit_message="add", operations=[
        CommitOperationAdd("keep.txt", b"k"), CommitOperationAdd("dir/a.txt", b"a"), CommitOperationAdd("dir/b", b"b")])
    api.create_commit(repo_id, commit_message="delete", operations=[CommitOperationDelete("dir/")])
    assert set(api.list_repo_files(repo_id)) == {".gitattributes", "keep.txt"}
    with pytest.raises(EntryNotFoundError):
        api.create_commit(repo_id, commit_message="x", operations=[CommitOperationDelete("gone.txt")])

    pr = api.create_commit(repo_id, commit_message="pr", create_pr=True,
                           operations=[CommitOperationAdd("pr.txt", b"p")])
    assert pr.pr_revision == "refs/pr/1" and pr.pr_num == 1
    assert "pr.txt" in api.list_repo_files(repo_id, revision="refs/pr/1")
    assert "pr.txt" not in api.list_repo_files(repo_id)


def test_range_requests_and_head_match_get(hub, api, repo_id):
    api.create_repo(repo_id)
    data = bytes(range(256)) * 8
    api.upload_file(path_or_fileobj=data, path_in_repo="w.safetensors", repo_id=repo_id)
    url = f"{hub.endpoint}/{repo_id}/resolve/main/w.safetensors"

    def fetch(method="GET", **headers):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method=method, headers=headers)) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    status, headers, body = fetch(Range="bytes=10-19")
    assert (status, body, headers["Content-Range"]) == (206, data[10:20], f"bytes 10-19/{len(data)}")
    assert fetch(Range="bytes=-5")[2] == data[-5:]
    assert fetch(Range=f"bytes={len(data)}-")[0] == 416
    head_status, head, _ = fetch("HEAD")
    get_status, get, body = fetch()
    assert head_status == get_status == 200 and body == data
    for key in ("ETag", "X-Repo-Commit", "X-Linked-Etag", "X-Linked-Size", "Content-Length"):
        assert head[key] == get[key], key
    assert head["X-Linked-Size"] == str(len(data))


def test_model_card_push_and_load(api, repo_id):
    api.create_repo(repo_id)
    card = ModelCard.from_template(ModelCardData(license="apache-2.0", library_name="timm", base_model="a/b"),
                                   template_str="---\n{{ card_data }}\n---\n# Card\n")
    card.push_to_hub(repo_id, token=api.token)
    loaded = ModelCard.load(repo_id, token=api.token)
    assert loaded.data.base_model == "a/b" and loaded.data.license == "apache-2.0"
    with pytest.raises(ValueError):
        api.upload_file(path_or_fileobj=b"---\n- not: [a mapping\n---\n", path_in_repo="README.md", repo_id=repo_id)


def test_paths_info_expanded_listings_repo_lists_and_small_endpoints(hub, api, repo_id, tmp_path):
    api.create_repo(repo_id)
    first = api.upload_folder(repo_id=repo_id, folder_path=_write(tmp_path / "src")).oid
    second = api.upload_file(path_or_fileobj=b"new\n", path_in_repo="sub/new.txt", repo_id=repo_id).oid

    infos = {i.path: i for i in api.get_paths_info(repo_id, ["config.json", "sub", "missing.txt"], expand=True)}
    assert set(infos) == {"config.json", "sub"}
    assert infos["config.json"].last_commit.oid == first and infos["sub"].last_commit.oid == second
    tree = {e.path: e for e in api.list_repo_tree(repo_id, expand=True)}
    assert tree["model.safetensors"].last_commit.oid == first and tree["sub"].last_commit.oid == second
    assert repo_id in {m.id for m in api.list_models(author=hub.user)}
    with urllib.request.urlopen(f"{hub.endpoint}/api/agent-harnesses") as r:
        assert json.load(r) == {"standardEnvVars": [], "harnesses": {}}


def test_tree_listing_follows_pagination(tmp_path):
    with LocalHub(tmp_path / "root", page_size=2) as own:
        api = HfApi(endpoint=own.endpoint, token=own.token)
        repo_id = f"{own.user}/paged"
        api.create_repo(repo_id)
        names = [f"d{i}/f{j}.txt" for i in range(3) for j in range(2)]
        api.create_commit(repo_id, commit_message="many", operations=[CommitOperationAdd(n, n.encode()) for n in names])
        assert sorted(api.list_repo_files(repo_id)) == sorted(names + [".gitattributes"])
        assert sum(1 for r in own.requests if "/tree/" in r.path) >= 5  # 10 entries, 2 per page
        top = [e.path for e in api.list_repo_tree(repo_id, path_in_repo="d1")]
        assert top == ["d1/f0.txt", "d1/f1.txt"]


def test_snapshot_download_then_offline_reload_in_a_subprocess(hub, api, repo_id, tmp_path):
    api.create_repo(repo_id)
    sha = api.upload_folder(repo_id=repo_id, folder_path=_write(tmp_path / "src")).oid
    folder = snapshot_download(repo_id, token=hub.token)
    assert os.path.basename(folder) == sha
    hub.requests.clear()
    code = (
        "import json, sys\n"
        "from huggingface_hub import hf_hub_download, snapshot_download\n"
        f"folder = snapshot_download({repo_id!r})\n"
        f"config = open(hf_hub_download({repo_id!r}, 'config.json'), 'rb').read().decode()\n"
        "weights = open(folder + '/model.safetensors', 'rb').read()\n"
        "print(json.dumps({'config': config, 'weights': len(weights)}))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    expected = {"config": FILES["config.json"].decode(), "weights": len(FILES["model.safetensors"])}
    assert json.loads(out.stdout.splitlines()[-1]) == expected
    assert hub.requests == []  # offline means no request reached the hub


def test_short_commit_shas_resolve_like_on_the_hub(hub, api, repo_id):
    # The Hub resolves an abbreviated sha (git rev-parse style) and stamps the full one on the answer; refs win
    # over a short sha spelt the same, and a prefix that several commits share names none of them.
    api.create_repo(repo_id)
    first = api.upload_file(path_or_fileobj=b"one\n", path_in_repo="f.txt", repo_id=repo_id).oid
    api.upload_file(path_or_fileobj=b"two\n", path_in_repo="f.txt", repo_id=repo_id)

    assert api.model_info(repo_id, revision=first[:7]).sha == first
    with open(hf_hub_download(repo_id, "f.txt", revision=first[:7], token=hub.token), "rb") as f:
        assert f.read() == b"one\n"
    assert api.list_repo_files(repo_id, revision=first[:10]) == [".gitattributes", "f.txt"]
    shas = [c.commit_id for c in api.list_repo_commits(repo_id)]
    unknown = next(p for p in ("0000000", "1111111", "2222222") if not any(s.startswith(p) for s in shas))
    for too_short_or_unknown in (first[:3], unknown):
        with pytest.raises(RevisionNotFoundError):
            api.model_info(repo_id, revision=too_short_or_unknown)

    api.create_branch(repo_id, branch=first[:7], revision="main")  # a branch named like the short sha wins
    assert api.model_info(repo_id, revision=first[:7]).sha != first


def test_a_private_or_missing_repo_is_401_to_anonymous_callers_and_404_to_others(hub, api, repo_id):
    api.create_repo(repo_id, private=True)
    stranger = hub.add_token("someone-else", role="read")
    for path in (f"/api/models/{repo_id}", f"/{repo_id}/resolve/main/.gitattributes",
                 f"/api/models/{repo_id}-missing", f"/{repo_id}-missing/resolve/main/.gitattributes"):
        request = urllib.request.Request(f"{hub.endpoint}{path}")
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            urllib.request.urlopen(request)
        assert (anonymous.value.code, anonymous.value.headers["X-Error-Code"]) == (401, "RepoNotFound"), path
        request.add_header("authorization", f"Bearer {stranger}")
        with pytest.raises(urllib.error.HTTPError) as with_token:
            urllib.request.urlopen(request)
        assert (with_token.value.code, with_token.value.headers["X-Error-Code"]) == (404, "RepoNotFound"), path
    # Both statuses map to the client's typed error, with and without a token.
    for token in (False, stranger):
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download(repo_id, ".gitattributes", token=token)
        assert not HfApi(token=token).repo_exists(repo_id)


def test_a_short_sha_that_several_commits_start_with_names_none(tmp_path):
    from hubft.hub.server._errors import ApiError
    from hubft.hub.server._root import Storage

    repo = Storage(tmp_path).create_repo("model", "u/r", private=False, author="u")
    first = repo.state().heads["main"]
    twin = first[:6] + ("0" if first[6] != "0" else "1") + "0" * 33  # shares exactly 6 characters with first
    commits = repo.base / "commits"
    (commits / f"{twin}.json").write_text((commits / f"{first}.json").read_text())
    assert repo.resolve(first[:7]).id == first
    with pytest.raises(ApiError) as ambiguous:
        repo.resolve(first[:6])
    assert (ambiguous.value.status, ambiguous.value.code) == (404, "RevisionNotFound")
