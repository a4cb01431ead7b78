"""Mixup / CutMix through timm's :class:`~timm.data.Mixup`, seeded per step so that resume stays exact.

Mixing runs on the device batch, after the batch is loaded and before the loss. timm draws its mixing parameters
from numpy's global RNG; hubft seeds it from ``(seed, epoch, batch, process)`` for each call and restores it after,
so the mixed batches are a function of the position in the run. Label smoothing moves into the mixing step, as in
timm's training script, because the targets it produces are already soft.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

if TYPE_CHECKING:
    from hubft.train.finetune import Finetuner

__all__ = ["create_mixing", "mixing_enabled"]


def mixing_enabled(data_config) -> bool:
    """True when the data config turns mixup or cutmix on."""
    return data_config.mixup_alpha > 0 or data_config.cutmix_alpha > 0


def create_mixing(ft: "Finetuner") -> Callable | None:
    """Build the batch-mixing function for a run, or None when mixing is off.

    Raises:
        ConfigError: The loss cannot take soft targets (named, with the losses that can).
    """
    from timm.data import Mixup
    from timm.data.mixup import mixup_target

    from hubft.losses import require_soft_targets

    d = ft.config.data
    if not mixing_enabled(d):
        return None
    require_soft_targets(ft.loss_fn, feature="mixup/cutmix (data.mixup_alpha / data.cutmix_alpha)")
    mixup = Mixup(
        mixup_alpha=d.mixup_alpha, cutmix_alpha=d.cutmix_alpha, prob=d.mixup_prob, switch_prob=d.mixup_switch_prob,
        mode="batch", label_smoothing=ft.mixing_label_smoothing, num_classes=len(ft.data.label_names),
        multi_label=ft.data.multi_label,
    )

    def apply(x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        state = np.random.get_state()
        np.random.seed(seed & 0xFFFFFFFF)
        try:
            n = x.shape[0] - x.shape[0] % 2
            if n == x.shape[0]:
                return mixup(x, y)
            # timm mixes pairs of samples and wants an even batch: mix all but the last one, which stays itself.
            mixed_x, mixed_y = mixup(x[:n].clone(), y[:n])
            last_y = mixup_target(y[n:], mixup.num_classes, 1.0, mixup.label_smoothing, mixup.multi_label)
            return torch.cat([mixed_x, x[n:]]), torch.cat([mixed_y, last_y])
        finally:
            np.random.set_state(state)

    return apply
