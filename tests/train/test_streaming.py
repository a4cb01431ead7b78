"""Streamed Hub datasets (``data.streaming``): labels from the features, one split across processes by hubft alone,
equal epochs on uneven shards, a stream that continues where a checkpoint left it (exactly with ``shuffle_buffer: 1``),
and two processes on the local Hub killed with SIGKILL and resumed (exactly with a buffer of 1, statistically
equivalently with a larger one).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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
    # Labels as strings: a stream cannot be scanned for its label values.
    repos["strings"] = f"{local_hub.user}/stream-strings-{os.getpid()}"
    names = carded["train"].features["label"].names
    strings = carded.map(lambda row: {"name": names[row["label"]]}).remove_columns("label")
    strings.push_to_hub(repos["strings"], token=local_hub.token)
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
    # Nothing of these datasets was downloaded into the caches: the train split is read as it is iterated.
    names = [repo.split("/")[1] for repo in streamed["repos"].values()]
    cached = [p for p in Path(os.environ["HF_HOME"]).rglob("*") if any(n in str(p) for n in names)]
    assert cached and not [p for p in cached if p.is_file() and p.suffix in (".parquet", ".arrow")]


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
    order = [_key(image) for image, _ in _stream(bundle, buffer=buffer, batches=14)]  # one epoch = one pass of 28
    stopped = _stream(bundle, buffer=buffer, batches=14)
    before = []
    for image, _ in stopped:
        before.append(_key(image))
        if len(before) == 10:
            break
    mark = json.loads(json.dumps(stopped.state_at(10)))  # what a checkpoint writes, read back by a new process
    resumed = _stream(bundle, buffer=buffer, batches=14)
    resumed.load_state_dict(mark)
    after = [_key(image) for image, _ in resumed]  # the rest of the epoch: 18 examples
    assert before == order[:10] and len(after) == 18 and resumed.position == 28
    if buffer == 1:
        assert after == order[10:] and resumed.passes == 0  # exact: the same examples in the same order
    else:
        # Statistically equivalent: the reader goes on where it stopped, so nothing trained on before is repeated
        # in the pass (it did not start again from the beginning); what sat in the buffer, or was read ahead
        # into it, at the checkpoint is skipped for the rest of the pass, and the next pass fills the epoch.
        assert after != order[10:] and resumed.passes == 1
        in_pass = after[:len(after) - resumed._read_in_pass]
        assert in_pass and not set(before) & set(in_pass)
        assert len(set(order) - set(before) - set(in_pass)) > 0


def test_a_stream_needs_its_class_names_in_the_features(streamed, hub):
    with pytest.raises(DataError, match="not a ClassLabel: a stream cannot be scanned"):
        load_stream(name=streamed["repos"]["strings"], label_column="name")


@pytest.mark.parametrize(("data", "refused"), [
    ({"path": "images/"}, "data.path = 'images/' cannot be combined with data.streaming"),
    ({"classes": ["cat", "dog"]}, "data.classes = ['cat', 'dog'] cannot be combined"),
    ({"max_per_class": 4}, "data.max_per_class = 4 cannot be combined"),
    ({"num_workers": 2}, "data.num_workers = 2 cannot be combined"),
])
def test_streaming_refuses_what_needs_the_whole_split_or_worker_processes(data, refused):
    from hubft.config import config_from_dict
    from hubft.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(refused)):
        config_from_dict({"data": {"streaming": True, **data}})
    config_from_dict({"data": {"streaming": True, "num_workers": 0, "shuffle_buffer": 1, "max_eval_examples": 5},
                      "train": {"updates_per_epoch": 2}})  # what it takes is accepted


def test_a_dataset_passed_in_python_is_not_streamed():
    from hubft.config import config_from_dict
    from hubft.errors import ConfigError
    from hubft.train.validation import check_data_source

    with pytest.raises(ConfigError, match="a dataset was passed in Python"):
        check_data_source(config_from_dict({"data": {"streaming": True}}), has_dataset=True)


def test_a_stream_without_a_recorded_size_needs_updates_per_epoch(streamed, hub):
    from hubft.config import config_from_dict
    from hubft.train.stream import stream_updates_per_epoch

    config = config_from_dict({"data": {"name": "x/y", "streaming": True}, "train": {"batch_size": 2}})
    with pytest.raises(DataError, match="set train.updates_per_epoch"):
        stream_updates_per_epoch(config, None, 2)
    assert stream_updates_per_epoch(config, 30, 2) == 7  # 30 // (2 processes x 2)
    sized = config_from_dict({"data": {"name": "x/y", "streaming": True}, "train": {"updates_per_epoch": 3}})
    assert stream_updates_per_epoch(sized, None, 2) == 3


def _config(out: Path, repo_id: str, **train) -> dict:
    return {
        "model": {"name": "test_resnet", "pretrained": False},
        "data": {"name": repo_id, "streaming": True, "shuffle_buffer": 1, "image_size": 16},
        "optim": {"lr": 0.01},
        "schedule": {"name": "cosine", "warmup_steps": 1},
        "train": {"epochs": 2, "batch_size": 4, "updates_per_epoch": 3, "checkpoint_every": 2, "log_every": 1,
                  "cpu": True, "output_dir": str(out), **train},
    }


def _torchrun(config: dict, directory: Path, port: int, *extra: str, env: dict | None = None):
    """Two processes on the CPU; ``timeout`` ends a run whose processes wait for each other (the hang of a process
    that ran out of stream while the other waits in a collective)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    # datasets' 5 s pause when a shuffled stream's reader closes, gone in the runs too (see _no_pass_end_pause).
    (directory / "sitecustomize.py").write_text("import datasets.config\n"
                                                "datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0\n")
    path = os.pathsep.join([str(directory), str(REPO), os.environ.get("PYTHONPATH", "")])
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HUBFT_TRACE_INPUTS": "1",
               "PYTHONPATH": path, **(env or {})}
    return subprocess.run([str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(port), "recipes/finetune.py",
                           "--config", str(directory / "config.yaml"), *extra],
                          cwd=REPO, env=environ, capture_output=True, text=True, timeout=240)


def _log(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("images_per_s", None)  # wall-clock fields differ between any two runs
        record.pop("time", None)
    return records


@pytest.mark.slow
def test_two_processes_on_uneven_shards_killed_and_resumed_train_what_an_uninterrupted_run_trains(
        streamed, hub, tmp_path, free_port):
    repo_id = streamed["repos"]["shards"]
    reference = tmp_path / "reference" / "run"
    done = _torchrun(_config(reference, repo_id), reference.parent, free_port())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "split by shards over 2 process(es)): 3 updates per epoch" in done.stdout + done.stderr
    facts = json.loads((reference / "metrics.json").read_text())["run"]
    assert facts["processes"] == 2 and facts["updates"] == 6
    assert "Traceback" not in done.stderr
    # Each process read exactly its own 6 batches of 4 from its own part: nothing split or dispatched again (with
    # Accelerate's IterableDatasetShard each would read 8 per batch and keep 4). The parts are uneven, so the
    # passes differ.
    final = [json.loads((reference / "checkpoints" / "step-00000006" / f"stream_{rank}.json").read_text())
             for rank in (0, 1)]
    assert [m["position"] for m in final] == [24, 24] and final[0]["passes"] != final[1]["passes"]

    # SIGKILL of both processes right after update 5 (mid-epoch 1): the resume starts from the step-4 checkpoint,
    # whose stream positions are 16 examples into each process's part (a later pass, on the smaller part).
    out = tmp_path / "killed" / "run"
    killed = _torchrun(_config(out, repo_id), out.parent, free_port(),
                       env={"HUBFT_FAULT": "after_optimizer_step@5:kill"})
    assert killed.returncode != 0 and not (out / "model.safetensors").exists()
    resumed = _torchrun(_config(out, repo_id), out.parent, free_port(), "--train.resume", "latest")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "step-00000004" in resumed.stdout
    # Exact with shuffle_buffer 1: every batch (its digest), loss and LR, and the final weights.
    assert _log(out) == _log(reference)
    assert (out / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()


def _read(stream: StreamingTrainData, examples: int) -> list[tuple[str, int]]:
    """The next ``examples`` items as (example, pass it was read in), across epochs."""
    seen = []
    while len(seen) < examples:
        for image, _ in stream:
            seen.append((_key(image), stream.passes))
            if len(seen) == examples:
                break
    return seen


@pytest.mark.slow
def test_two_processes_with_a_shuffle_buffer_killed_and_resumed_continue_each_stream_where_it_stopped(
        streamed, hub, tmp_path, free_port):
    """The documented statistical equivalence with ``shuffle_buffer > 1``, after a SIGKILL of both processes: each
    process's stream continues from its checkpointed state (never from the beginning), nothing read before the
    checkpoint is read again in that pass, and the order differs from an uninterrupted run's."""
    repo_id = streamed["repos"]["shards"]
    out = tmp_path / "run"
    config = _config(out, repo_id)
    config["data"]["shuffle_buffer"] = 4
    killed = _torchrun(config, tmp_path, free_port(), env={"HUBFT_FAULT": "after_optimizer_step@5:kill"})
    assert killed.returncode != 0 and not (out / "model.safetensors").exists()
    marks = [json.loads((out / "checkpoints" / "step-00000004" / f"stream_{rank}.json").read_text())
             for rank in (0, 1)]
    resumed = _torchrun(config, tmp_path, free_port(), "--train.resume", "latest")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "step-00000004" in resumed.stdout
    final = [json.loads((out / "checkpoints" / "step-00000006" / f"stream_{rank}.json").read_text())
             for rank in (0, 1)]

    # Each process's stream, replayed here with the run's seed and layout (2 processes, 12 examples per epoch).
    bundle = load_stream(name=repo_id)
    orders_differ = []
    for rank in (0, 1):
        straight = _stream(bundle, rank, 2, batches=6, buffer=4)
        before = _read(straight, 16)
        assert json.loads(json.dumps(straight.state_at(16))) == marks[rank]  # what the killed run recorded
        uninterrupted = _read(straight, 8)
        again = _stream(bundle, rank, 2, batches=6, buffer=4)
        again.load_state_dict(marks[rank])
        after = _read(again, 8)
        # The resumed run went on from the mark: its stream ended where this continuation ends.
        assert json.loads(json.dumps(again.state_at(24))) == final[rank]
        in_pass = marks[rank]["passes"]
        assert not {k for k, p in before if p == in_pass} & {k for k, p in after if p == in_pass}
        orders_differ.append(after != uninterrupted)
    assert any(orders_differ)  # statistically equivalent, not exact
