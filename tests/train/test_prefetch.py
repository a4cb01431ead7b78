"""prefetch_to_device: every batch arrives once, in order, on the device; loader errors are not swallowed."""

import pytest
import torch

from hubft.train.prefetch import prefetch_to_device


def test_batches_arrive_in_order_on_the_device():
    batches = [[torch.full((2, 3), i), torch.tensor([i, i])] for i in range(5)]
    out = list(prefetch_to_device(iter(batches), torch.device("cpu")))
    assert len(out) == 5
    for i, (x, y) in enumerate(out):
        assert x.device.type == "cpu" and torch.equal(x, batches[i][0]) and torch.equal(y, batches[i][1])
    assert list(prefetch_to_device([], torch.device("cpu"))) == []


def test_a_loader_error_reaches_the_caller_after_the_good_batches():
    def loader():
        yield torch.zeros(1)
        raise ValueError("row 7 is broken")

    seen = []
    with pytest.raises(ValueError, match="row 7"):
        for batch in prefetch_to_device(loader(), torch.device("cpu")):
            seen.append(batch)
    assert len(seen) == 1


def test_without_read_ahead_a_batch_is_taken_only_when_the_caller_asks():
    # Under gradient accumulation Accelerate reads its loader's end-of-data flag: the loader must not be read ahead.
    taken = []

    def loader():
        for i in range(3):
            taken.append(i)
            yield torch.tensor([i])

    it = prefetch_to_device(loader(), torch.device("cpu"), ahead=False)
    assert int(next(it)) == 0 and taken == [0]
    assert int(next(it)) == 1 and taken == [0, 1]
