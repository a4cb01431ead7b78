"""``hubft eval --push``: the results join the card's model-index, keeping its other entries; a pull request
with ``--create-pr``."""

from __future__ import annotations

import pytest

from hubft.cli import main


@pytest.fixture
def pushed(hub, repo_id, trained):
    from hubft.hub.push import push_to_hub

    push_to_hub(trained, repo_id, token=hub.token)
    return repo_id


def _results(repo_id, token, revision=None):
    from huggingface_hub import ModelCard, hf_hub_download

    card = ModelCard.load(hf_hub_download(repo_id, "README.md", revision=revision, token=token))
    return [(r.dataset_type, r.dataset_split, r.metric_type, r.metric_value) for r in card.data.eval_results or []]


def test_pushed_results_join_the_model_index_and_replace_only_their_own(pushed, hub, tmp_path, monkeypatch):
    from hubft.data import write_image_folder

    monkeypatch.setenv("HF_TOKEN", hub.token)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
    before = _results(pushed, hub.token)
    assert before and {b[1] for b in before} == {"train (25% held out)"}  # the run's own results
    folder = write_image_folder(tmp_path / "images", num_classes=4, per_class=3, size=16)
    assert main(["eval", pushed, "--data.path", str(folder), "--push"]) == 0
    after = _results(pushed, hub.token)
    assert before == after[:len(before)]  # kept, in order
    added = after[len(before):]
    assert {a[2] for a in added} == {"accuracy", "f1"} and {a[1] for a in added} == {"train"}
    assert main(["eval", pushed, "--data.path", str(folder), "--push", "--tta", "hflip"]) == 0
    again = _results(pushed, hub.token)
    assert len(again) == len(after) and again[:len(before)] == before  # replaced its own entries, not added


def test_create_pr_leaves_main_alone_and_opens_a_pull_request(pushed, hub, tmp_path, monkeypatch, api):
    from hubft.data import write_image_folder

    monkeypatch.setenv("HF_TOKEN", hub.token)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
    before = _results(pushed, hub.token)
    folder = write_image_folder(tmp_path / "images", num_classes=4, per_class=2, size=16)
    assert main(["eval", pushed, "--data.path", str(folder), "--create-pr"]) == 0
    assert _results(pushed, hub.token) == before
    refs = api.list_repo_refs(pushed, include_pull_requests=True)
    (pr,) = refs.pull_requests
    assert len(_results(pushed, hub.token, revision=pr.ref)) > len(before)


def test_a_user_who_may_not_commit_opens_a_pull_request_instead(pushed, hub, tmp_path, monkeypatch, api):
    from hubft.data import write_image_folder

    stranger = hub.add_token("reviewer", role="write")  # may write to its own namespace, not to the owner's
    monkeypatch.setenv("HF_TOKEN", stranger)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
    before = _results(pushed, hub.token)
    folder = write_image_folder(tmp_path / "images", num_classes=4, per_class=2, size=16)
    assert main(["eval", pushed, "--data.path", str(folder), "--push"]) == 0
    assert _results(pushed, hub.token) == before  # main untouched: the commit was refused
    (pr,) = api.list_repo_refs(pushed, include_pull_requests=True).pull_requests
    assert len(_results(pushed, hub.token, revision=pr.ref)) > len(before)
    (discussion,) = [d for d in api.get_repo_discussions(pushed) if d.is_pull_request]
    assert discussion.author == "reviewer"
