"""load_data: every source, column detection, label vocabularies, class subsets, caps and the eval carve-out."""

from __future__ import annotations

import hashlib
import os
import re
import sys
import uuid
import warnings
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import datasets
import huggingface_hub
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from PIL import Image

from hubft.data import DataBundle, load_data, make_synthetic_image_dataset
from hubft.errors import DataError, HubError


def _image_hashes(split: datasets.Dataset, column: str = "image") -> list[str]:
    raw = split.cast_column(column, datasets.Image(decode=False))
    return [hashlib.sha1(item["bytes"] or Path(item["path"]).read_bytes()).hexdigest() for item in raw[column]]


def _label_counts(bundle: DataBundle, split: str) -> Counter:
    return Counter(bundle.label_names[i] for i in getattr(bundle, split)[bundle.label_column])


def test_python_dataset_is_detected_and_carved(synthetic):
    ds = synthetic.add_column("note", ["x"] * len(synthetic))
    bundle = load_data(dataset=ds)
    assert (bundle.image_column, bundle.label_column, bundle.multi_label) == ("image", "label", False)
    assert bundle.label_names == ["class_0", "class_1", "class_2"]
    assert bundle.num_classes == 3 and bundle.id2label[2] == "class_2"
    assert set(bundle.train.column_names) == set(bundle.eval.column_names) == {"image", "label"}
    assert (len(bundle.train), len(bundle.eval)) == (24, 6)
    assert bundle.source.to_dict() == {
        "kind": "python", "dataset": None, "revision": None, "revision_sha": None, "train_split": "train",
        "eval_split": None, "eval_fraction": 0.2, "num_train": 24, "num_eval": 6, "streaming": False,
    }
    assert isinstance(bundle.train[0]["image"], Image.Image)


def test_carve_out_is_stratified_and_seeded(synthetic):
    first, again, other = (load_data(dataset=synthetic, seed=s) for s in (0, 0, 1))
    for bundle in (first, other):
        assert _label_counts(bundle, "eval") == {"class_0": 2, "class_1": 2, "class_2": 2}
        assert _label_counts(bundle, "train") == {"class_0": 8, "class_1": 8, "class_2": 8}
        assert not set(_image_hashes(bundle.train)) & set(_image_hashes(bundle.eval))
    assert _image_hashes(first.eval) == _image_hashes(again.eval)
    assert _image_hashes(first.eval) != _image_hashes(other.eval)


def test_carve_out_falls_back_to_random_when_a_class_has_one_row(synthetic):
    lonely = synthetic.select([*range(20), 20])  # class_2 keeps a single row
    with pytest.warns(UserWarning, match="not stratified"):
        bundle = load_data(dataset=lonely)
    assert len(bundle.train) + len(bundle.eval) == 21


def test_overrides_beat_detection():
    ds = datasets.Dataset.from_dict(
        {"img": [Image.new("RGB", (4, 4))] * 6, "kind": [0, 1] * 3, "y": ["b", "a"] * 3},
        features=datasets.Features(
            {"img": datasets.Image(), "kind": datasets.ClassLabel(names=["p", "q"]), "y": datasets.Value("string")}
        ),
    )
    assert load_data(dataset=ds).label_column == "kind"
    bundle = load_data(dataset=ds, image_column="img", label_column="y")
    assert (bundle.image_column, bundle.label_column, bundle.label_names) == ("img", "y", ["a", "b"])


@pytest.mark.parametrize(
    ("column", "values", "names", "encoded"),
    [
        ("label", ["dog", "cat", "bird", "cat"], ["bird", "cat", "dog"], [2, 1, 0, 1]),
        ("target", [3, 0, 1, 0], ["0", "1", "2", "3"], [3, 0, 1, 0]),
        ("Class", ["b", "a", "b", "a"], ["a", "b"], [1, 0, 1, 0]),
    ],
    ids=["string-labels", "int-labels-without-classlabel", "column-named-class"],
)
def test_label_names_from_plain_columns(column, values, names, encoded):
    ds = datasets.Dataset.from_dict(
        {"image": [Image.new("RGB", (4, 4))] * 4, column: values},
        features=datasets.Features({"image": datasets.Image(), column: datasets.Value(
            "string" if isinstance(values[0], str) else "int64")}),
    )
    bundle = load_data(dataset=datasets.DatasetDict({"train": ds, "validation": ds}))
    assert bundle.label_column == column and bundle.label_names == names
    assert list(bundle.eval[column]) == encoded and bundle.source.eval_split == "validation"
    assert bundle.train.features[column] == datasets.ClassLabel(names=names)


def test_image_folder_with_mixed_modes(image_folder):
    bundle = load_data(path=image_folder)
    assert bundle.source.kind == "imagefolder" and bundle.source.dataset == str(image_folder)
    assert bundle.label_names == ["class_0", "class_1", "class_2"]
    assert len(bundle.train) + len(bundle.eval) == 12
    modes = {image.mode for split in (bundle.train, bundle.eval) for image in split["image"]}
    assert {"L", "RGBA", "P"} <= modes


def test_image_folder_split_folders(tmp_path):
    from hubft.data import write_image_folder

    root = write_image_folder(tmp_path, num_classes=2, per_class=3, splits=["train", "validation"])
    bundle = load_data(path=root)
    assert (bundle.source.eval_split, bundle.source.eval_fraction) == ("validation", None)
    assert (len(bundle.train), len(bundle.eval)) == (6, 6)


@pytest.mark.parametrize("fixture", ["csv_file", "parquet_file"])
def test_table_of_relative_paths(fixture, request, image_folder):
    table = request.getfixturevalue(fixture)
    bundle = load_data(path=table, eval_fraction=0.25)
    assert bundle.source.kind == fixture.split("_")[0]
    assert (bundle.image_column, bundle.label_names) == ("file_name", ["class_0", "class_1", "class_2"])
    assert _label_counts(bundle, "eval") == {"class_0": 1, "class_1": 1, "class_2": 1}
    item = bundle.train.cast_column("file_name", datasets.Image(decode=False))[0]["file_name"]
    assert Path(item["path"]).is_absolute() and Path(item["path"]).is_relative_to(image_folder)
    assert isinstance(bundle.train[0]["file_name"], Image.Image)


def test_string_paths_in_a_python_dataset_resolve_against_the_working_directory(image_folder, monkeypatch):
    monkeypatch.chdir(image_folder)
    ds = datasets.Dataset.from_dict({"path": ["class_0/0.png", "class_1/0.png"] * 2, "label": ["a", "b"] * 2})
    bundle = load_data(dataset=ds, eval_fraction=0.5)
    assert bundle.image_column == "path" and bundle.train[0]["path"].size == (16, 16)


@pytest.mark.parametrize("classes", [["class_2", "class_0"], [2, 0]], ids=["names", "indices"])
def test_classes_subset_is_reindexed_in_given_order(synthetic, classes):
    bundle = load_data(dataset=synthetic, classes=classes)
    assert bundle.label_names == ["class_2", "class_0"]
    assert _label_counts(bundle, "train") + _label_counts(bundle, "eval") == {"class_2": 10, "class_0": 10}
    assert set(bundle.train["label"]) == {0, 1}
    class_2_images = set(_image_hashes(synthetic.select(range(20, 30))))
    relabelled = {h for h, y in zip(_image_hashes(bundle.train), bundle.train["label"]) if y == 0}
    assert relabelled <= class_2_images


def test_max_per_class_caps_train_only_and_is_seeded(synthetic):
    first, again, other = (load_data(dataset=synthetic, max_per_class=3, seed=s) for s in (0, 0, 5))
    assert _label_counts(first, "train") == {"class_0": 3, "class_1": 3, "class_2": 3}
    assert len(first.eval) == 6 and first.source.num_train == 9
    assert _image_hashes(first.train) == _image_hashes(again.train)
    assert _image_hashes(first.train) != _image_hashes(other.train)


def test_multi_label_classlabel_lists():
    ds = make_synthetic_image_dataset(num_classes=4, per_class=6, multi_label=True)
    bundle = load_data(dataset=ds)
    assert bundle.multi_label and bundle.label_names == ["class_0", "class_1", "class_2", "class_3"]
    assert bundle.train.features["label"] == datasets.List(datasets.ClassLabel(names=bundle.label_names))
    assert any(len(labels) == 2 for labels in [*bundle.train["label"], *bundle.eval["label"]])


def test_multi_label_string_lists_and_subset():
    tags = [["sky", "sea"], ["sea"], ["tree"], ["sky"], ["tree", "sky"], ["sea", "tree"]]
    ds = datasets.Dataset.from_dict({"image": [Image.new("RGB", (4, 4))] * 6, "labels": tags},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "labels": datasets.List(datasets.Value("string"))}))
    full = load_data(dataset=datasets.DatasetDict({"train": ds, "val": ds}))
    assert full.multi_label and full.label_names == ["sea", "sky", "tree"]
    assert list(full.eval["labels"])[0] == [1, 0]  # order within a row is kept
    subset = load_data(dataset=datasets.DatasetDict({"train": ds, "val": ds}), classes=["tree"])
    assert subset.label_names == ["tree"] and list(subset.eval["labels"]) == [[0], [0], [0]]


def test_eval_split_by_name_and_train_split_override(synthetic):
    dd = datasets.DatasetDict({"fit": synthetic, "test": synthetic.select(range(3))})
    bundle = load_data(dataset=dd, train_split="fit", eval_split="test")
    assert (len(bundle.train), len(bundle.eval), bundle.source.eval_split) == (30, 3, "test")
    carved = load_data(dataset=dd, train_split="fit")  # "test" is never picked on its own
    assert carved.source.eval_split is None and len(carved.eval) == 6


# Hub datasets: the real datasets client against the session's local Hub (tests/conftest.py). Each test reads its
# own repo, so nothing in the datasets or Hub caches was put there by another test unless the test says so.

_connections: list | None = None  # while a list, every host this process resolves or connects to is appended


def _record_connections(event: str, args: tuple) -> None:
    if _connections is not None:
        if event == "socket.getaddrinfo":
            _connections.append(args[0])
        elif event == "socket.connect" and isinstance(args[1], tuple):
            _connections.append(args[1][0])


sys.addaudithook(_record_connections)  # audit hooks cannot be removed: it records only while a test arms it


@pytest.fixture
def hosts_contacted():
    """The hosts this process resolves or connects to during the test (the local Hub is 127.0.0.1).

    huggingface_hub's pooled connections are closed first, so that even the Hub's host shows up.
    """
    global _connections
    huggingface_hub.close_session()
    _connections = []
    yield _connections
    _connections = None


@pytest.fixture
def hub_flags(monkeypatch):
    # datasets' own defaults, which load_data must turn off; monkeypatch restores the process-wide flags it flips
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", True)
    monkeypatch.setattr(datasets.config, "USE_PARQUET_EXPORT", True)
    monkeypatch.setenv("HF_UPDATE_DOWNLOAD_COUNTS", "1")


def _digits(synthetic: datasets.Dataset) -> datasets.DatasetDict:
    return datasets.DatasetDict({"train": synthetic, "validation": synthetic.select(range(0, 30, 5))})


def _push(dataset: datasets.DatasetDict, repo_id: str, token: str, **kwargs) -> str:
    """Push with datasets' own push_to_hub and return the commit it made."""
    return dataset.push_to_hub(repo_id, token=token, **kwargs).oid


@pytest.fixture(scope="module")
def digits(local_hub, synthetic_module) -> tuple[str, str]:
    """A public dataset repo with a train and a validation split, tagged v1: (repo id, v1 commit)."""
    repo_id = f"{local_hub.user}/digits-{uuid.uuid4().hex[:6]}"
    sha = _push(_digits(synthetic_module), repo_id, local_hub.token)
    HfApi(token=local_hub.token).create_tag(repo_id, tag="v1", repo_type="dataset")
    return repo_id, sha


@pytest.fixture(scope="module")
def synthetic_module() -> datasets.Dataset:
    return make_synthetic_image_dataset(num_classes=3, per_class=10, size=16, seed=0)


def _readme_revisions(hub) -> list[str]:
    """The revisions datasets asked for the dataset card at (its first request of a load resolves the revision)."""
    return [unquote(r.path.split("/resolve/", 1)[1].split("/", 1)[0])
            for r in hub.requests if r.path.endswith("/README.md") and "/resolve/" in r.path]


def test_hub_load_switches_hosts_off_and_records_commit(hub, digits, hub_flags, hosts_contacted):
    repo_id, sha = digits
    bundle = load_data(name=repo_id, revision="v1")
    assert set(hosts_contacted) == {"127.0.0.1"}  # no download-count ping, no dataset-viewer lookup
    assert datasets.config.HF_UPDATE_DOWNLOAD_COUNTS is False and datasets.config.USE_PARQUET_EXPORT is False
    assert os.environ["HF_UPDATE_DOWNLOAD_COUNTS"] == "0"
    assert _readme_revisions(hub)[0] == "v1"  # the tag was what datasets resolved
    assert (bundle.source.kind, bundle.source.dataset, bundle.source.revision) == ("hub", repo_id, "v1")
    assert bundle.source.revision_sha == sha and bundle.source.eval_split == "validation"
    assert (len(bundle.train), len(bundle.eval)) == (30, 6) and bundle.label_names == ["class_0", "class_1", "class_2"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_data(name=repo_id, revision=sha).source.revision_sha == sha


def test_hub_load_warns_when_the_cache_answers_instead(hub, api, repo_id, synthetic, hub_flags, monkeypatch,
                                                      no_backoff):
    first = _push(_digits(synthetic), repo_id, hub.token)
    assert load_data(name=repo_id).source.revision_sha == first
    second = api.upload_file(path_or_fileobj=b"notes\n", path_in_repo="notes.txt", repo_id=repo_id,
                             repo_type="dataset").oid

    # The Hub is down: datasets falls back to the copy it loaded before, which is not the commit asked for.
    hub.down()
    with pytest.warns(UserWarning, match=re.escape(f"asked for {repo_id}@{second} but datasets returned its cached "
                                                   f"copy of commit {first}")):
        bundle = load_data(name=repo_id, revision=second)
    assert bundle.source.revision_sha == first  # what was read, not what was asked
    assert no_backoff.pauses  # the client did try the Hub before the cache answered

    # Offline, datasets reads its newest cached copy whatever the revision, without asking the Hub at all.
    hub.up()
    hub.requests.clear()
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.warns(UserWarning, match="offline, datasets ignores revision='v2'"):
        assert load_data(name=repo_id, revision="v2").source.revision_sha == first
    assert hub.requests == []


@pytest.mark.parametrize(
    ("case", "answered", "expected", "words", "cause"),
    [
        ("missing dataset", 401, DataError, "not found", datasets.exceptions.DatasetNotFoundError),
        ("missing revision", 404, DataError, "not found", datasets.exceptions.DatasetNotFoundError),
        ("private dataset, no token", 401, DataError, "not found", datasets.exceptions.DatasetNotFoundError),
        ("hub down", None, HubError, "could not reach", ConnectionError),
        ("invalid token", 401, HubError, "refused", HfHubHTTPError),
        ("repo deleted, still in the hub cache", 401, DataError, "not found", RepositoryNotFoundError),
    ],
)
def test_hub_errors_are_hubft_errors(hub, api, repo_id, synthetic, hub_flags, monkeypatch, tmp_path, no_backoff,
                                     send_hf_token, case, answered, expected, words, cause):
    revision = "nope" if case == "missing revision" else None
    if case in ("missing revision", "private dataset, no token", "repo deleted, still in the hub cache"):
        _push(_digits(synthetic), repo_id, hub.token, private=case == "private dataset, no token")
    if case == "repo deleted, still in the hub cache":
        load_data(name=repo_id)
        api.delete_repo(repo_id, repo_type="dataset")
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "fresh-datasets-cache"))
    if case == "invalid token":
        send_hf_token("hf_not_a_token_of_this_hub")
    if case == "hub down":
        hub.down()
    hub.requests.clear()

    with pytest.raises(expected, match=words) as info:
        load_data(name=repo_id, revision=revision)
    assert repo_id in str(info.value) and "Fix:" in str(info.value)
    assert isinstance(info.value.__cause__, cause)  # the client's own error for this case, mapped
    # What the Hub answered: the status that took this path (anonymous callers get 401 for what they cannot see)
    if answered is None:
        assert hub.requests == []
    else:
        assert answered in {r.status for r in hub.requests}
