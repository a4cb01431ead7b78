"""hubft.train.finite: the gradient flag, the BatchNorm snapshot and the pending (deferred) check, on CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hubft.train.finite import BufferSnapshot, PendingCheck, gradients_not_finite, takes_found_inf


@pytest.mark.parametrize("poison", [None, float("nan"), float("inf"), -float("inf")])
def test_gradients_not_finite_flags_any_bad_value_and_leaves_gradients_as_they_are(poison):
    params = [nn.Parameter(torch.zeros(5)), nn.Parameter(torch.zeros(3, dtype=torch.float64)),
              nn.Parameter(torch.zeros(2))]
    params[0].grad = torch.tensor([1e-40, -2.0, 3.5, 0.0, 1e30])  # a denormal survives "unscaling" by 1
    params[1].grad = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    # params[2] has no gradient (frozen, or unused this update)
    if poison is not None:
        params[1].grad[1] = poison
    before = [p.grad.clone() for p in params[:2]]
    flag = gradients_not_finite(params, torch.ones(()))
    assert (float(flag) > 0) is (poison is not None)
    for b, p in zip(before, params[:2]):
        assert torch.equal(b.nan_to_num(), p.grad.nan_to_num()) and torch.equal(b.isnan(), p.grad.isnan())


def test_buffer_snapshot_restores_every_dtype_in_place():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4))
    buffers = list(model.buffers())
    snapshot = BufferSnapshot(buffers)
    snapshot.save()
    saved = [b.clone() for b in buffers]
    model.train()
    model(torch.randn(2, 3, 8, 8))  # moves running stats and num_batches_tracked (int64)
    assert not all(torch.equal(a, b) for a, b in zip(saved, buffers))
    snapshot.restore()
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(saved, buffers))


def test_pending_check_on_cpu_and_which_optimizers_take_found_inf():
    assert PendingCheck(torch.ones(()), 0, 3, 0, True).refused()
    assert not PendingCheck(torch.zeros(()), 0, 3, 0, True).refused()
    p = [nn.Parameter(torch.zeros(2))]
    assert takes_found_inf(torch.optim.AdamW(p, fused=True))
    assert not takes_found_inf(torch.optim.AdamW(p))
    assert not takes_found_inf(torch.optim.RMSprop(p))


@pytest.mark.parametrize("scaler, steps_wrapper", [(None, False), (object(), True)])
def test_the_loop_steps_accelerates_wrapper_only_where_it_does_work(scaler, steps_wrapper):
    """With a GradScaler (fp16) Accelerate's optimizer wrapper runs the scaled step; otherwise it only forwards
    (after a package lookup on disk at every step), and the loop calls the torch optimizer it wraps."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from hubft.train.loop import _stepping_optimizer

    inner = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    wrapper = SimpleNamespace(optimizer=inner, scaler=scaler)
    parts = SimpleNamespace(optimizer=wrapper, accelerator=SimpleNamespace(distributed_type=DistributedType.NO))
    assert _stepping_optimizer(parts) is (wrapper if steps_wrapper else inner)
