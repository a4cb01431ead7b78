"""A streamed train split on N processes: split once, by hubft, into equal epochs, resumable where it stopped.

:class:`StreamingTrainData` is what the training loader reads when ``data.streaming`` is on. hubft is the only
authority that splits the stream across processes (``datasets.distributed.split_dataset_by_node``: by shard when the
shard count is a multiple of the number of processes, else every N-th example); the loader is never passed through
Accelerate's ``prepare_data_loader``, which would split it again (``IterableDatasetShard`` or
``IterableDataset.shard``) and silently skip examples.

An epoch is a fixed number of batches, the same on every process (:func:`stream_updates_per_epoch`), so no process
waits in a collective for one whose part of the stream ran out: each process reads its part in passes, endlessly;
when a pass ends the next begins, its shard order and shuffle buffer reseeded (``IterableDataset.set_epoch(pass)``).
With uneven shards split by shard, a process with less data starts its next pass sooner (its examples are seen more
often); split by example, the parts differ by at most one example per pass.

Resume: a checkpoint records, per process, the examples it consumed and datasets' ``state_dict`` of its part at that
point; a resumed run continues the stream from there, never from the beginning. With ``data.shuffle_buffer: 1``
(shard order shuffled, no example buffer) that is exact: the same examples in the same order with the same
augmentation. With a larger buffer the examples that sat in the buffer at the checkpoint are skipped for the rest of
that pass (datasets does not save a buffer's contents) and the order afterwards differs: statistically equivalent.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, Callable, Iterator

import datasets
import torch
from datasets.distributed import split_dataset_by_node

from hubft.config import FinetuneConfig
from hubft.errors import CheckpointError, DataError
from hubft.train.sampler import mix_seed, seed_sample_rngs

if TYPE_CHECKING:
    from hubft.data import DataBundle

__all__ = ["StreamingTrainData", "create_train_stream", "stream_updates_per_epoch"]

# Batch boundaries whose stream state is kept: the loop reads at most one batch ahead of what it has trained on.
_MARKS = 8


def stream_updates_per_epoch(config: FinetuneConfig, num_train: int | None, num_processes: int) -> int:
    """``train.updates_per_epoch``, else the recorded train size / (processes x batch size x accumulation), >= 1.

    Raises:
        DataError: Neither is known.
    """
    t = config.train
    if t.updates_per_epoch is not None:
        return t.updates_per_epoch
    if num_train is None:
        raise DataError(f"the size of the streamed train split of {config.data.name!r} is not recorded on the Hub, "
                        "and an epoch of a stream needs a length",
                        fix="set train.updates_per_epoch (optimizer updates per epoch)")
    return max(1, num_train // (num_processes * t.batch_size * t.grad_accum_steps))


class StreamingTrainData(torch.utils.data.IterableDataset):
    """This process's part of a streamed train split, as ``(image_tensor, target)`` items, ``batches_per_epoch`` x
    ``batch_size`` of them per epoch.

    Args:
        stream: The whole train split (:func:`~hubft.data.load_stream`): image column not decoded.
        transform: The train transform (a PIL image in, a tensor out).
        image_column, label_column, multi_label, num_classes: As the bundle says.
        batch_size, batches_per_epoch: Per process.
        seed: Run seed: the shuffle, and each item's augmentation (seeded from ``(seed, process, position)``).
        shuffle_buffer: Examples in datasets' shuffle buffer (1: the shard order is shuffled, the examples are not).
        rank, world_size: This process and the number of processes.

    Raises:
        DataError: (while iterating) an image that does not decode, a label out of range, or a part of the stream
            that holds no example.
    """

    def __init__(self, stream: datasets.IterableDataset, transform: Callable, *, image_column: str, label_column: str,
                 multi_label: bool, num_classes: int, batch_size: int, batches_per_epoch: int, seed: int,
                 shuffle_buffer: int, rank: int = 0, world_size: int = 1) -> None:
        self.split_by = "shards" if stream.num_shards % world_size == 0 else "examples"
        self.num_shards = stream.num_shards
        shuffled = stream.shuffle(seed=seed, buffer_size=shuffle_buffer)  # the same seed everywhere: same shard list
        self._part = split_dataset_by_node(shuffled, rank=rank, world_size=world_size)
        self.transform, self.image_column, self.label_column = transform, image_column, label_column
        self.multi_label, self.num_classes = multi_label, num_classes
        self.batch_size, self.batches_per_epoch = batch_size, batches_per_epoch
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._decoder = datasets.Image()
        #: Examples this process has read since the run began, and the pass over its part it is in.
        self.position, self.passes = 0, 0
        self._iterator: Iterator[dict] | None = None
        self._read_in_pass = 0
        self._marks: collections.deque = collections.deque(maxlen=_MARKS)
        self._marks.append(self._mark(None))

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: an epoch continues the stream where the last one stopped (passes reseed themselves)."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        from hubft.data import preserve_global_rngs

        # The rest of the current epoch: all of it, unless a resumed checkpoint sits inside it.
        for _ in range(len(self) - self.position % len(self)):
            row = self._next_row()
            with preserve_global_rngs():
                seed_sample_rngs(mix_seed(self.seed, 3, self.rank, self.position))
                image = self.transform(self._decode(row[self.image_column]))
            target = self._target(row[self.label_column])
            self.position += 1
            if self.position % self.batch_size == 0:
                self._marks.append(self._mark(self._part.state_dict()))
            yield image, target

    def _next_row(self) -> dict:
        while True:
            if self._iterator is None:
                self._part.set_epoch(self.passes)
                self._iterator = iter(self._part)
            row = next(self._iterator, None)
            if row is not None:
                self._read_in_pass += 1
                return row
            if self._read_in_pass == 0:
                raise DataError(f"process {self.rank} of {self.world_size} got no example from its part of the stream "
                                f"({self.num_shards} shards, split by {self.split_by})",
                                fix="publish the dataset in more, non-empty shards (a multiple of the number of "
                                    "processes), or train on fewer processes")
            self.passes, self._iterator, self._read_in_pass = self.passes + 1, None, 0

    def _decode(self, value: dict):
        try:
            return self._decoder.decode_example(value)
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... depending on the damage
            where = (value or {}).get("path") or "embedded image bytes"
            raise DataError(f"cannot decode the image of example {self.position} of process {self.rank}'s part of "
                            f"the stream ({where}): {error}", fix="fix or remove that image in the dataset") from None

    def _target(self, label: Any) -> Any:
        labels = label if self.multi_label else [label]
        if labels is None or any(v is None or not 0 <= v < self.num_classes for v in labels):
            raise DataError(f"label {label} of example {self.position} of process {self.rank}'s part of the stream is "
                            f"out of range for {self.num_classes} classes",
                            fix="fix or drop rows with labels outside the ClassLabel (-1 marks an unlabelled row)")
        if not self.multi_label:
            return label
        target = torch.zeros(self.num_classes, dtype=torch.float32)
        target[labels] = 1.0
        return target

    # -- resume -------------------------------------------------------------------------------------------------
    def _mark(self, state: dict | None) -> dict:
        return {"position": self.position, "passes": self.passes, "read_in_pass": self._read_in_pass,
                "state": state, "split_by": self.split_by}

    def state_at(self, position: int) -> dict:
        """The stream's state once ``position`` examples were consumed (a batch boundary the loop just reached).

        Raises:
            CheckpointError: That position is not one of the last batch boundaries read.
        """
        for mark in self._marks:
            if mark["position"] == position:
                return mark
        raise CheckpointError(f"the stream's state at example {position} is not known (kept: "
                              f"{[m['position'] for m in self._marks]})", fix="report this as a bug")

    def load_state_dict(self, mark: dict) -> None:
        """Continue from a :meth:`state_at` record: the next item is the one after it."""
        self.position, self.passes, self._read_in_pass = mark["position"], mark["passes"], mark["read_in_pass"]
        if mark["state"] is not None:
            self._part.load_state_dict(mark["state"])
        self._iterator = None
        self._marks.clear()
        self._marks.append(dict(mark))

    def close(self) -> None:
        """Let go of the open reader now, while the interpreter is whole (at exit its clean-up prints errors)."""
        self._iterator = None


def create_train_stream(config: FinetuneConfig, data: DataBundle, transform: Any,
                        num_processes: int = 1) -> StreamingTrainData:
    """This process's part of the streamed train split, ``updates_per_epoch x grad_accum_steps`` batches an epoch.

    Raises:
        DataError: The epoch length is unknown (no ``train.updates_per_epoch``, no recorded size).
    """
    from accelerate import PartialState

    t = config.train
    updates = stream_updates_per_epoch(config, data.source.num_train, num_processes)
    stream = StreamingTrainData(
        data.train, transform, image_column=data.image_column, label_column=data.label_column,
        multi_label=data.multi_label, num_classes=len(data.label_names), batch_size=t.batch_size,
        batches_per_epoch=updates * t.grad_accum_steps, seed=t.seed, shuffle_buffer=config.data.shuffle_buffer,
        rank=PartialState().process_index if num_processes > 1 else 0, world_size=num_processes)
    PartialState().print(f"hubft: streaming {config.data.name} ({stream.num_shards} shards, split by "
                         f"{stream.split_by} over {num_processes} process(es)): {updates} updates per epoch")
    return stream
