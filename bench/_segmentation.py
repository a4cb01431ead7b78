"""Ratio 10: hubft's training loop for semantic segmentation vs a plain PyTorch loop with the same model and decoder.

Both sides train the same :class:`~hubft.models.SegmentationModel` (backbone + FPN decoder, built alike), with the
same AdamW groups and kernel, memory format, batch and loss module (the task's default
``{cross_entropy: 1.0, dice: 1.0}`` with ``ignore_index: 255``: the loss is the task's, not loop overhead), on the
same normalised images and masks already in memory; hubft's side is ``Finetuner.loop.train_epoch`` over them.
"""

from __future__ import annotations

import torch

from bench._timing import Row, interleave, speed_row
from bench._train import EPOCHS, Case, HubftRun, create_optimizer, synchronize, uses_fused

CPU_CASES = [Case("resnet18", 64, 16), Case("test_vit", 160, 8)]
QUICK_CPU_CASES = [Case("resnet18", 64, 8, updates=2)]


def _labels() -> list[str]:
    from hubft.data import SHAPE_CLASSES

    return list(SHAPE_CLASSES)


def _batches(case: Case, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(case.updates):
        masks = torch.randint(0, len(_labels()), (case.batch, case.size, case.size), generator=g)
        masks[:, :2] = 255  # some ignored pixels, as real masks have
        out.append((torch.randn(case.batch, 3, case.size, case.size, generator=g).to(device), masks.to(device)))
    return out


class PlainSegmentationLoop:
    """The tutorial loop over the same segmentation model, loss and batches."""

    def __init__(self, case: Case, batches: list, device: torch.device, *, channels_last: bool,
                 fused: bool) -> None:
        from hubft.losses import create_loss, with_default_options
        from hubft.models import create_segmentation_model
        from hubft.tasks import SEMANTIC_SEGMENTATION as task

        self.batches, self.device, self.channels_last = batches, device, channels_last
        model = create_segmentation_model(case.model, label_names=_labels(), pretrained=False, head_init_seed=0).to(device)
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        spec, options = with_default_options(task.default_loss, {}, dict(task.loss_defaults))
        self.loss = create_loss(spec, **options)
        self.optimizer = create_optimizer(self.model, fused)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=EPOCHS * case.updates)

    def __call__(self) -> None:
        self.model.train()
        for x, y in self.batches:
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = self.loss(self.model(x), y)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        synchronize(self.device)


def measure(case: Case, device: torch.device, reps: int) -> list[Row]:
    import datasets

    from hubft.data import make_synthetic_segmentation_dataset

    data = datasets.DatasetDict({"train": make_synthetic_segmentation_dataset(case.batch * case.updates, case.size),
                                 "test": make_synthetic_segmentation_dataset(2, case.size, seed=1)})
    batches = _batches(case, device)
    config = {"model": {"task": "semantic-segmentation"}, "data": {"label_names": _labels()}}
    hubft_loop = HubftRun(case, device, dataset=data, config=config, batches=batches)
    plain = PlainSegmentationLoop(case, batches, device, channels_last=hubft_loop.channels_last,
                                  fused=uses_fused(hubft_loop))
    times = interleave({"plain": plain, "hubft_loop": hubft_loop}, reps)
    return [speed_row(times, "hubft_loop", "plain", bench="10 segmentation",
                      metric="hubft loop / plain PyTorch, same segmentation model, loss and tensors",
                      case=f"{case.label}, FPN decoder", target=0.98)]


def run(reps: int, quick: bool, device: torch.device) -> list[Row]:
    rows = []
    for case in QUICK_CPU_CASES if quick else CPU_CASES:
        print(f"  segmentation: {case.label}", flush=True)
        rows += measure(case, device, reps)
    return rows
