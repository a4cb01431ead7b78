"""The rest of huggingface_hub's public API against the local Hub, each call through the real client.

Repo ids without a namespace, short shas, case-insensitive ids, folder deletions, moves and their redirects,
super-squash, gated repos, card validation, pull requests, LFS file management, formatted commit logs and whoami.
"""

from __future__ import annotations

import threading
import uuid

import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard, RepoCard, hf_hub_download
from huggingface_hub.errors import (
    BadRequestError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


def _stranger(hub, role="write") -> HfApi:
    """A client for a user of its own, who belongs to no namespace of the hub's user."""
    return HfApi(token=hub.add_token(f"stranger-{uuid.uuid4().hex[:6]}", role=role))


def _read(repo_id, path, token, revision=None, repo_type=None) -> bytes:
    with open(hf_hub_download(repo_id, path, revision=revision, token=token, repo_type=repo_type), "rb") as f:
        return f.read()


@pytest.mark.parametrize("call", [
    lambda api: api.list_repo_commits("missing-repo"),
    lambda api: api.list_repo_refs("missing-repo"),
    lambda api: api.list_repo_files("missing-repo"),
    lambda api: api.model_info("missing-repo"),
    lambda api: api.list_repo_commits("missing-repo", repo_type="dataset"),
], ids=["commits", "refs", "tree", "info", "dataset-commits"])
def test_a_repo_id_without_namespace_is_repo_not_found(api, call):
    with pytest.raises(RepositoryNotFoundError):
        call(api)


def test_file_exists_is_false_for_a_repo_id_without_namespace(api):
    assert api.file_exists("repo-x", "f.txt") is False
    assert api.repo_exists("repo-x") is False


def test_short_shas_are_revisions_wherever_a_revision_is_taken(api, repo_id):
    api.create_repo(repo_id)
    first = api.upload_file(path_or_fileobj=b"1", path_in_repo="f.txt", repo_id=repo_id).oid
    second = api.upload_file(path_or_fileobj=b"2", path_in_repo="f.txt", repo_id=repo_id).oid

    api.create_tag(repo_id, tag="v1", revision=first[:7])
    api.create_branch(repo_id, branch="from-short", revision=first[:7])
    refs = api.list_repo_refs(repo_id)
    assert {t.name: t.target_commit for t in refs.tags} == {"v1": first}
    assert {b.name: b.target_commit for b in refs.branches}["from-short"] == first
    assert [c.commit_id for c in api.list_repo_commits(repo_id, revision=second[:8])][:2] == [second, first]
    third = api.create_commit(repo_id, commit_message="on a short parent", parent_commit=second[:7],
                              operations=[CommitOperationAdd("g.txt", b"g")]).oid
    with pytest.raises(HfHubHTTPError) as stale:
        api.create_commit(repo_id, commit_message="stale", parent_commit=second[:7],
                          operations=[CommitOperationAdd("h.txt", b"h")])
    assert stale.value.response.status_code == 412
    assert api.model_info(repo_id).sha == third


def test_create_tag_checks_the_revision_before_the_name_and_the_name_before_a_clash(api, repo_id):
    api.create_repo(repo_id)
    with pytest.raises(RevisionNotFoundError):
        api.create_tag(repo_id, tag="bad..name", revision="no-such-branch")
    with pytest.raises(BadRequestError):
        api.create_tag(repo_id, tag="bad..name")
    api.create_tag(repo_id, tag="v1")
    with pytest.raises(HfHubHTTPError) as clash:
        api.create_tag(repo_id, tag="v1")
    assert clash.value.response.status_code == 409


def test_repo_ids_are_case_insensitive_and_keep_their_spelling(hub, api):
    repo_id = f"{hub.user}/CaseRepo-{uuid.uuid4().hex[:6]}"
    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=b"c", path_in_repo="c.txt", repo_id=repo_id.upper())
    assert api.model_info(repo_id.lower()).id == repo_id
    assert _read(repo_id.lower(), "c.txt", hub.token) == b"c"
    assert api.create_repo(repo_id.lower(), exist_ok=True).repo_id == repo_id
    with pytest.raises(HfHubHTTPError) as clash:
        api.create_repo(repo_id.lower())
    assert clash.value.response.status_code == 409
    assert [m.id for m in api.list_models(author=hub.user.upper()) if m.id.lower() == repo_id.lower()] == [repo_id]


@pytest.mark.parametrize("delete", [
    lambda api, repo_id: api.delete_folder("dir", repo_id=repo_id),
    lambda api, repo_id: api.create_commit(repo_id, commit_message="rm", operations=[CommitOperationDelete("dir")]),
], ids=["delete_folder", "deletedFile-on-a-folder"])
def test_deleting_a_folder_by_its_name(api, repo_id, delete):
    api.create_repo(repo_id)
    api.create_commit(repo_id, commit_message="add", operations=[
        CommitOperationAdd("dir/a.txt", b"a"), CommitOperationAdd("dir/sub/b.txt", b"b"),
        CommitOperationAdd("dirt.txt", b"not in dir")])
    delete(api, repo_id)
    assert set(api.list_repo_files(repo_id)) == {".gitattributes", "dirt.txt"}


def test_move_repo_redirects_the_old_id_for_reads_and_writes(hub, api, repo_id):
    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=b"m", path_in_repo="m.txt", repo_id=repo_id)
    new_id = f"{repo_id}-moved"
    api.move_repo(repo_id, new_id)

    assert api.model_info(repo_id).id == new_id
    assert _read(repo_id, "m.txt", hub.token) == b"m"
    api.upload_file(path_or_fileobj=b"n", path_in_repo="n.txt", repo_id=repo_id)  # a POST follows the redirect
    assert set(api.list_repo_files(new_id)) == {".gitattributes", "m.txt", "n.txt"}
    api.create_repo(f"{repo_id}-other")
    with pytest.raises(HfHubHTTPError) as taken:
        api.move_repo(new_id, f"{repo_id}-other")
    assert taken.value.response.status_code == 409

    api.create_repo(repo_id)  # a new repo at the old id ends the redirect
    assert api.list_repo_files(repo_id) == [".gitattributes"]


def test_a_moved_private_repo_is_not_revealed_to_strangers(hub, api, repo_id):
    api.create_repo(repo_id, private=True)
    api.move_repo(repo_id, f"{repo_id}-secret")
    stranger = _stranger(hub)
    with pytest.raises(RepositoryNotFoundError) as hidden:
        stranger.model_info(repo_id)
    assert "secret" not in str(hidden.value)
    with pytest.raises(HfHubHTTPError) as refused:
        stranger.move_repo(f"{repo_id}-secret", f"{stranger.whoami()['name']}/stolen")
    assert refused.value.response.status_code == 404


def test_super_squash_leaves_one_commit_with_the_same_files(hub, api, repo_id):
    api.create_repo(repo_id)
    for i in range(3):
        api.upload_file(path_or_fileobj=f"{i}".encode(), path_in_repo=f"f{i}.txt", repo_id=repo_id)
    api.create_tag(repo_id, tag="before")
    files = api.list_repo_files(repo_id)
    api.super_squash_history(repo_id, commit_message="squashed")
    history = api.list_repo_commits(repo_id)
    assert [c.title for c in history] == ["squashed"]
    assert api.list_repo_files(repo_id) == files
    assert len(api.list_repo_commits(repo_id, revision="before")) == 4  # tags keep the old history


def test_a_gated_repo_needs_an_explicit_grant_for_its_files(hub, api, repo_id):
    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=b"---\nlicense: mit\n---\n", path_in_repo="README.md", repo_id=repo_id)
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=repo_id)
    api.update_repo_settings(repo_id, gated="manual")
    stranger = _stranger(hub, role="read")
    name = stranger.whoami()["name"]

    assert stranger.model_info(repo_id).gated == "manual"
    assert stranger.list_repo_files(repo_id)  # listings and the card stay visible
    assert _read(repo_id, "README.md", stranger.token).startswith(b"---")
    for token in (stranger.token, False):
        with pytest.raises(GatedRepoError):
            _read(repo_id, "config.json", token)
        with pytest.raises(GatedRepoError):
            HfApi(token=token).auth_check(repo_id)
    api.auth_check(repo_id, write=True)  # the owner always has access

    api.grant_access(repo_id, name)
    assert _read(repo_id, "config.json", stranger.token) == b"{}"
    stranger.auth_check(repo_id)
    with pytest.raises(HfHubHTTPError) as no_write:
        stranger.auth_check(repo_id, write=True)
    assert no_write.value.response.status_code == 403
    assert [r.username for r in api.list_accepted_access_requests(repo_id)] == [name]

    api.reject_access_request(repo_id, name, rejection_reason="not yet")
    with pytest.raises(GatedRepoError):
        stranger.auth_check(repo_id)
    api.update_repo_settings(repo_id, gated=False)
    stranger.auth_check(repo_id)


@pytest.mark.parametrize("metadata, problem", [
    ("license: not-a-license", "license"),
    ("license: [mit, nonsense-2.0]", "nonsense-2.0"),
    ("model-index:\n- results:\n  - task: {name: x}\n    dataset: {type: a/b}\n    metrics: [{type: acc}]",
     "model-index[0].name"),
    ("model-index:\n- name: m\n  results:\n  - task: {name: x}\n    dataset: {type: a/b, name: b}\n    metrics: []",
     "model-index[0].results[0].task.type"),
    ("model-index: {name: m}", "model-index"),
    ("tags: {a: 1}", "tags"),
], ids=["license", "license-list", "model-index-name", "model-index-task", "model-index-not-a-list", "tags"])
def test_invalid_card_metadata_is_refused_before_upload(api, repo_id, metadata, problem):
    card = f"---\n{metadata}\n---\n# card\n"
    with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        RepoCard(card).validate()  # RepoCard keeps the metadata as written (ModelCard would parse it first)
    api.create_repo(repo_id, exist_ok=True)
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=repo_id)


@pytest.mark.parametrize("card", ["# no metadata\n", "---\n---\n# empty metadata\n"], ids=["none", "empty"])
def test_empty_card_metadata_is_a_warning(api, repo_id, card):
    api.create_repo(repo_id)
    with pytest.warns(UserWarning, match="empty or missing yaml metadata"):
        api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=repo_id)
    assert "README.md" in api.list_repo_files(repo_id)
    ModelCard("---\nlicense: apache-2.0\nmodel-index:\n- name: m\n  results: []\n---\n").validate()


@pytest.mark.parametrize("repo_type", ["model", "dataset"])
def test_a_user_without_write_access_opens_a_pull_request_that_the_owner_merges(hub, api, repo_id, repo_type):
    api.create_repo(repo_id, repo_type=repo_type)
    api.upload_file(path_or_fileobj=b"base", path_in_repo="base.txt", repo_id=repo_id, repo_type=repo_type)
    stranger = _stranger(hub, role="read")
    weights = bytes(range(256)) * 8
    pr = stranger.create_commit(repo_id, repo_type=repo_type, commit_message="Add weights", create_pr=True,
                                operations=[CommitOperationAdd("w.safetensors", weights)])
    assert pr.pr_revision == f"refs/pr/{pr.pr_num}"
    with pytest.raises(HfHubHTTPError):
        stranger.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id, repo_type=repo_type)

    listed = list(api.get_repo_discussions(repo_id, repo_type=repo_type, discussion_type="pull_request"))
    assert [(d.num, d.title, d.is_pull_request, d.status) for d in listed] == [(pr.pr_num, "Add weights", True,
                                                                                "open")]
    assert list(api.get_repo_discussions(repo_id, repo_type=repo_type, discussion_type="discussion")) == []
    with pytest.raises(HfHubHTTPError):
        stranger.merge_pull_request(repo_id, pr.pr_num, repo_type=repo_type)
    api.merge_pull_request(repo_id, pr.pr_num, repo_type=repo_type, comment="thanks")

    assert _read(repo_id, "w.safetensors", hub.token, repo_type=repo_type) == weights
    details = api.get_discussion_details(repo_id, pr.pr_num, repo_type=repo_type)
    assert details.status == "merged" and details.merge_commit_oid == api.repo_info(repo_id, repo_type=repo_type).sha
    assert details.target_branch == "refs/heads/main" and details.conflicting_files == []


def test_a_pull_request_against_a_commit_id_is_revision_not_found(api, repo_id):
    api.create_repo(repo_id)
    sha = api.model_info(repo_id).sha
    with pytest.raises(RevisionNotFoundError):
        api.create_commit(repo_id, commit_message="pr", revision=sha, create_pr=True,
                          operations=[CommitOperationAdd("a.txt", b"a")])
    pr = api.create_commit(repo_id, commit_message="from parent", parent_commit=sha[:7], create_pr=True,
                           operations=[CommitOperationAdd("a.txt", b"a")])
    assert api.list_repo_commits(repo_id, revision=pr.pr_revision)[1].commit_id == sha


def test_conflicting_pull_requests_cannot_both_be_merged_and_discussions_take_comments(hub, api, repo_id):
    api.create_repo(repo_id)
    first, second = (api.create_commit(repo_id, commit_message=f"edit {i}", create_pr=True,
                                       operations=[CommitOperationAdd("same.txt", f"{i}".encode())])
                     for i in (1, 2))
    api.merge_pull_request(repo_id, first.pr_num)
    assert api.get_discussion_details(repo_id, second.pr_num).conflicting_files == ["same.txt"]
    with pytest.raises(HfHubHTTPError) as conflict:
        api.merge_pull_request(repo_id, second.pr_num)
    assert conflict.value.response.status_code == 409

    stranger = _stranger(hub, role="read")
    draft = stranger.create_pull_request(repo_id, title="An idea")
    stranger.comment_discussion(repo_id, draft.num, "details")
    api.change_discussion_status(repo_id, second.pr_num, "closed")
    events = api.get_discussion_details(repo_id, draft.num).events
    assert [e.type for e in events] == ["comment", "comment"] and events[1].content == "details"
    statuses = {d.num: d.status for d in api.get_repo_discussions(repo_id)}
    assert statuses == {first.pr_num: "merged", second.pr_num: "closed", draft.num: "draft"}
    assert [d.num for d in api.get_repo_discussions(repo_id, discussion_status="open")] == [draft.num]


def test_lfs_files_are_listed_and_permanently_deleted_with_their_history(hub, api, repo_id):
    api.create_repo(repo_id)
    keep, drop = bytes(range(256)) * 4, bytes(range(255, -1, -1)) * 4
    api.upload_file(path_or_fileobj=drop, path_in_repo="old.safetensors", repo_id=repo_id)
    api.upload_file(path_or_fileobj=keep, path_in_repo="keep.safetensors", repo_id=repo_id)
    api.create_tag(repo_id, tag="v1")
    files = {f.filename: f for f in api.list_lfs_files(repo_id)}
    assert {name: f.size for name, f in files.items()} == {"old.safetensors": len(drop),
                                                           "keep.safetensors": len(keep)}

    api.permanently_delete_lfs_files(repo_id, [files["old.safetensors"]])
    assert [f.filename for f in api.list_lfs_files(repo_id)] == ["keep.safetensors"]
    for revision in ("main", "v1", *[c.commit_id for c in api.list_repo_commits(repo_id)]):
        assert "old.safetensors" not in api.list_repo_files(repo_id, revision=revision), revision
    assert _read(repo_id, "keep.safetensors", hub.token, revision="v1") == keep


def test_formatted_commit_log_and_whoami_fullname(hub, api, repo_id):
    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id, commit_message="Fix <b> & co",
                    commit_description="line <i>")
    newest = api.list_repo_commits(repo_id, formatted=True)[0]
    assert (newest.formatted_title, newest.formatted_message) == ("Fix &lt;b&gt; &amp; co", "line &lt;i&gt;")
    assert api.list_repo_commits(repo_id)[0].formatted_title is None
    token = hub.add_token(f"ada-{uuid.uuid4().hex[:6]}", role="read", fullname="Ada Lovelace")
    assert HfApi(token=token).whoami()["fullname"] == "Ada Lovelace"


def test_clients_racing_on_one_branch_each_parent_has_one_winner_and_no_commit_is_lost(hub, repo_id):
    HfApi(token=hub.token).create_repo(repo_id)
    wins, refusals, lock = [], [], threading.Lock()

    def worker(i: int) -> None:
        client = HfApi(token=hub.token)
        for j in range(3):
            while True:  # the usual optimistic loop: read the head, commit on it, start again when beaten
                parent = client.model_info(repo_id).sha
                try:
                    oid = client.create_commit(repo_id, commit_message=f"w{i}-{j}", parent_commit=parent,
                                               operations=[CommitOperationAdd(f"w{i}/{j}.txt", b"x")]).oid
                except HfHubHTTPError as e:
                    with lock:
                        refusals.append(e.response.status_code)
                    continue
                with lock:
                    wins.append((parent, oid))
                break

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    api = HfApi(token=hub.token)
    parents = [parent for parent, _ in wins]
    assert len(wins) == 12 and len(set(parents)) == 12  # exactly one winner per parent
    assert set(refusals) <= {412}
    history = [c.commit_id for c in api.list_repo_commits(repo_id)]
    assert len(history) == 13 and set(history[:-1]) == {oid for _, oid in wins}  # nothing lost
    assert len(api.list_repo_files(repo_id)) == 1 + 12
