"""LR curves of a config before any data is loaded or any step is trained."""

from __future__ import annotations

import math
from pathlib import Path

from hubft.config import FinetuneConfig

__all__ = ["lr_curve_for_config", "plot_config_lr"]


def lr_curve_for_config(config: FinetuneConfig, *, updates_per_epoch: int = 100,
                        num_classes: int | None = None) -> dict[str, list[float]]:
    """Every parameter group's LR at every optimizer update that ``config`` would train for.

    The backbone is built without its pretrained weights (only its structure matters) and the data is not
    loaded, so ``updates_per_epoch`` is given (default 100). ``num_classes`` defaults to ``len(data.classes)``
    or 10.

    Raises:
        HubftError: An invalid config, model name or schedule.
    """
    from hubft.models import add_adapter, freeze
    from hubft.optim import lr_curve, param_groups
    from hubft.tasks import get_task

    c = config
    n = num_classes or (len(c.data.classes) if c.data.classes else 10)
    model = get_task(c.model.task).create_model(c.model.name, num_classes=n, pretrained=False,
                                                revision=c.model.revision)
    if c.model.frozen.frozen:
        freeze(model, stages=c.model.frozen.stages)
    if c.model.adapter is not None:  # the adapter's groups, not the backbone's
        model = add_adapter(model, c.model.adapter, **c.model.adapter_options)
    groups = param_groups(model, lr=c.optim.lr, weight_decay=c.optim.weight_decay, head_lr=c.optim.head_lr,
                          layer_decay=c.optim.layer_decay, include_frozen=c.model.unfreezes)
    total = updates_per_epoch * c.train.epochs
    if c.train.max_updates is not None:
        total = min(total, c.train.max_updates)
    s = c.schedule
    return lr_curve(groups, schedule=s.name, total_updates=total, updates_per_epoch=updates_per_epoch,
                    warmup_steps=s.warmup_steps, warmup_start_factor=s.warmup_start_factor, interval=s.interval,
                    **s.options)


def plot_config_lr(config: FinetuneConfig, png_path: str | Path, *, updates_per_epoch: int = 100
                   ) -> tuple[Path, Path]:
    """Draw :func:`lr_curve_for_config` to ``png_path`` and write the numbers to a CSV beside it."""
    from hubft.optim import plot_lr_curves

    png = Path(png_path)
    csv = png.with_suffix(".csv")
    plot_lr_curves(lr_curve_for_config(config, updates_per_epoch=updates_per_epoch), png, csv)
    return png, csv
