"""Streamed Hub datasets (``data.streaming``): labels from the features, one split across processes by hubft alone,
equal epochs on uneven shards, a stream that continues where a checkpoint left it (exactly with ``shuffle_buffer: 1``),
and two processes on the local Hub killed with SIGKILL and resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml

from hubft.data import load_stream, make_synthetic_image_dataset
from hubft.errors import DataError
from hubft.train.stream import StreamingTrainData

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).parent / "torchrun"
# Uneven shards: 4 of them split by shard over 2 processes (one process may hold 5 examples, the other 23); the
# 3-shard copy is split by example.
SHARDS = {"shards": [16, 2, 7, 3], "examples": [14, 4, 10]}


@pytest.fixture(autouse=True)
def _no_pass_end_pause(monkeypatch):
    """datasets pauses 5 s whenever a shuffled stream's reader closes (the end of each pass) to let Arrow's threads
    stop (apache/arrow#45214); these tiny streams end a pass every few batches."""
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


def _publish_shards(api, repo_id: str, sizes: list[int], folder: Path) -> datasets.Dataset:
    """Parquet shards of the given sizes (train) and a validation file, uploaded as plain files: no dataset card,
    so the Hub records no split sizes."""
    data = make_synthetic_image_dataset(num_classes=3, per_class=(sum(sizes) + 6) // 3 + 1, size=8, seed=1)
    data = data.shuffle(seed=0).select(range(sum(sizes) + 6))
    folder.mkdir(parents=True)
    start = 0
    for i, size in enumerate(sizes):
        data.select(range(start, start + size)).to_parquet(str(folder / f"train-{i:05d}-of-{len(sizes):05d}.parquet"))
        start += size
    data.select(range(start, start + 6)).to_parquet(str(folder / "validation-00000-of-00001.parquet"))
    api.create_repo(repo_id, repo_type="dataset")
    api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(folder), path_in_repo="data")
    return data.select(range(sum(sizes)))


@pytest.fixture(scope="module")
def streamed(local_hub, tmp_path_factory) -> dict:
    """``{"shards": repo_id, "examples": repo_id, "carded": repo_id}`` on the local Hub, and the train rows."""
    from huggingface_hub import HfApi

    api, root = HfApi(token=local_hub.token), tmp_path_factory.mktemp("shards")
    repos, rows = {}, {}
    for kind, sizes in SHARDS.items():
        repos[kind] = f"{local_hub.user}/stream-{kind}-{os.getpid()}"
        rows[kind] = _publish_shards(api, repos[kind], sizes, root / kind)
    carded = datasets.DatasetDict({"train": make_synthetic_image_dataset(num_classes=3, per_class=10, size=8),
                                   "validation": make_synthetic_image_dataset(num_classes=3, per_class=2, size=8)})
    repos["carded"] = f"{local_hub.user}/stream-carded-{os.getpid()}"
    carded.push_to_hub(repos["carded"], token=local_hub.token, num_shards={"train": 2, "validation": 1})
    return {"repos": repos, "rows": rows}


def _key(image: torch.Tensor) -> str:
    return hashlib.sha256(image.numpy().tobytes()).hexdigest()[:16]


def _pixels(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy())


def _stream(bundle, rank: int = 0, world_size: int = 1, batches: int = 4, buffer: int = 1) -> StreamingTrainData:
    return StreamingTrainData(bundle.train, _pixels, image_column=bundle.image_column,
                              label_column=bundle.label_column, multi_label=False, num_classes=3, batch_size=2,
                              batches_per_epoch=batches, seed=0, shuffle_buffer=buffer, rank=rank,
                              world_size=world_size)


def _first_pass(stream: StreamingTrainData) -> list[str]:
    """The examples of the stream's first pass over its part (it runs on into the next pass by itself)."""
    seen = []
    while stream.passes == 0:
        for image, _ in stream:
            if stream.passes > 0:
                break
            seen.append(_key(image))
    return seen


def test_a_stream_takes_its_labels_from_the_features_and_records_its_size_when_the_hub_does(streamed, hub):
    plain = load_stream(name=streamed["repos"]["examples"])
    assert isinstance(plain.train, datasets.IterableDataset) and plain.train.num_shards == 3
    assert plain.label_names == ["class_0", "class_1", "class_2"] and not plain.multi_label
    assert plain.source.streaming and plain.source.num_train is None and plain.source.revision_sha
    assert len(plain.eval) == plain.source.num_eval == 6  # the validation split, read into memory once
    carded = load_stream(name=streamed["repos"]["carded"], max_eval_examples=4)
    assert carded.source.num_train == 30 and len(carded.eval) == 4
    # Nothing was downloaded into datasets' cache: the train split is read as it is iterated.
    cache = Path(os.environ["HF_DATASETS_CACHE"])
    assert not [p for p in cache.rglob("*") if p.suffix in (".arrow", ".parquet")]


@pytest.mark.parametrize("kind", list(SHARDS))
def test_two_processes_split_a_pass_between_them_and_read_equal_epochs(streamed, hub, kind):
    bundle = load_stream(name=streamed["repos"][kind])
    parts = [_stream(bundle, rank, 2, batches=20) for rank in (0, 1)]
    assert {p.split_by for p in parts} == {kind}
    first = [_first_pass(p) for p in parts]
    everything = sorted(_key(_pixels(row["image"])) for row in streamed["rows"][kind])
    # hubft's split alone: every example once per pass, in one process's part.
    assert sorted(first[0] + first[1]) == everything
    if kind == "shards":
        assert len(first[0]) != len(first[1])  # uneven parts
    # Yet every epoch is the same length everywhere: the smaller part begins its next pass sooner.
    fresh = [_stream(bundle, rank, 2, batches=20) for rank in (0, 1)]
    assert [len(list(p)) for p in fresh] == [40, 40]
    assert fresh[0].passes != fresh[1].passes or kind == "examples"


@pytest.mark.parametrize("buffer", [1, 8])
def test_a_resumed_stream_continues_where_it_stopped(streamed, hub, buffer):
    bundle = load_stream(name=streamed["repos"]["examples"])
    whole = _stream(bundle, buffer=buffer, batches=14)  # one pass of 28 examples, as one process
    order = [_key(image) for image, _ in whole]
    stopped = _stream(bundle, buffer=buffer, batches=14)
    before = []
    for image, _ in stopped:
        before.append(_key(image))
        if len(before) == 10:
            break
    mark = json.loads(json.dumps(stopped.state_at(10)))  # what a checkpoint writes, read back by a new process
    resumed = _stream(bundle, buffer=buffer, batches=9)
    resumed.load_state_dict(mark)
    after = [_key(image) for image, _ in resumed][:28 - 10]
    assert before == order[:10] and resumed.position == 28
    if buffer == 1:
        assert after == order[10:]  # exact: the same examples in the same order
    else:
        # Statistically equivalent: never from the beginning, nothing of the pass repeated, at most the buffer lost.
        rest = [key for key in after if resumed.passes == 0 or key not in before]
        assert not set(before) & set(after[:len(order) - 10 - buffer])
        assert len(set(order[10:]) - set(rest)) <= buffer and after != order[10:]


def test_a_stream_without_a_recorded_size_needs_updates_per_epoch(streamed, hub):
    from hubft.config import config_from_dict
    from hubft.train.stream import stream_updates_per_epoch

    config = config_from_dict({"data": {"name": "x/y", "streaming": True}, "train": {"batch_size": 2}})
    with pytest.raises(DataError, match="set train.updates_per_epoch"):
        stream_updates_per_epoch(config, None, 2)
    assert stream_updates_per_epoch(config, 30, 2) == 7  # 30 // (2 processes x 2)
    sized = config_from_dict({"data": {"name": "x/y", "streaming": True}, "train": {"updates_per_epoch": 3}})
    assert stream_updates_per_epoch(sized, None, 2) == 3
