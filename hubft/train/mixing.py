"""Mixup / CutMix through timm's :class:`~timm.data.Mixup`, seeded per step so that resume stays exact.

Mixing runs on the device batch, after the batch is loaded and before the loss. timm draws its mixing parameters
(whether to mix, mixup or cutmix, ``lam``, the cutmix box) from numpy's global RNG; :class:`BatchMixing` seeds it
from the seed it is given for each call and restores it afterwards, so a mixed batch is a function of its position
in the run and nothing else. The draws come before any per-sample work, so they do not depend on the batch size:
every process given the same seed for a step mixes its shard with the same ``lam`` and box, as one global batch
would be mixed. Label smoothing moves into the mixing step, as in timm's training script, because the targets it
produces are already soft.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hubft.errors import ConfigError

if TYPE_CHECKING:
    from hubft.config import DataConfig, FinetuneConfig
    from hubft.tasks import Task

__all__ = ["BatchMixing", "check_mixing_loss", "create_mixing"]

_FEATURE = "mixup/cutmix (data.mixup_alpha / data.cutmix_alpha)"


class BatchMixing:
    """Mixes a batch of images and turns its labels into soft targets, with timm's ``Mixup`` in ``batch`` mode.

    One call draws, from numpy seeded with ``seed``: whether the batch is mixed (``prob``), mixup or cutmix
    (``switch_prob`` when both alphas are > 0) and ``lam`` ~ Beta(alpha, alpha) of the chosen method. Sample ``i``
    is mixed with sample ``n - 1 - i``; its target becomes ``lam * onehot(y_i) + (1 - lam) * onehot(y_partner)``,
    each one-hot smoothed by ``label_smoothing`` (towards 0.5 per label for multi-label targets). For cutmix ``lam``
    is corrected to the area actually kept after the box is clipped at the image border, as timm does.

    timm pairs samples and refuses an odd batch: in an odd batch the first ``n - 1`` samples are mixed and the last
    one keeps its image, with its own (smoothed) one-hot target. From ``off_epoch`` on, images are left as they are
    but the targets are still soft and smoothed, as in timm's training script, so the loss sees one kind of target
    for the whole run.

    The inputs are not modified; the global numpy RNG state is restored after each call.

    Args:
        mixup_alpha: Beta parameter of mixup; 0 turns mixup off.
        cutmix_alpha: Beta parameter of cutmix; 0 turns cutmix off.
        prob: Probability that a batch is mixed at all.
        switch_prob: Probability of cutmix rather than mixup when both are on.
        label_smoothing: Smoothing of the one-hot targets, in [0, 1).
        num_classes: Number of classes (the target width).
        multi_label: Targets are dense multi-hot rows ``(batch, num_classes)`` rather than class indices.
        off_epoch: First epoch in which images are no longer mixed; None mixes in every epoch.

    Raises:
        ConfigError: Both alphas are 0, or a value is out of range (naming it).

    Examples:
        >>> mix = BatchMixing(mixup_alpha=0.8, num_classes=3)
        >>> x, y = mix(torch.zeros(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]), seed=7)
        >>> y.shape, torch.allclose(y.sum(1), torch.ones(4))
        (torch.Size([4, 3]), True)
    """

    def __init__(
        self,
        *,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.0,
        num_classes: int,
        multi_label: bool = False,
        off_epoch: int | None = None,
    ) -> None:
        from timm.data import Mixup

        for key, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if value < 0:
                raise ConfigError(f"data.{key} = {value!r} is invalid: it must be >= 0", fix=f"set data.{key} >= 0")
        if mixup_alpha == 0 and cutmix_alpha == 0:
            raise ConfigError("batch mixing needs data.mixup_alpha > 0 or data.cutmix_alpha > 0",
                              fix="set data.mixup_alpha (e.g. 0.8) and/or data.cutmix_alpha (e.g. 1.0)")
        for key, value in (("mixup_prob", prob), ("mixup_switch_prob", switch_prob)):
            if not 0 <= value <= 1:
                raise ConfigError(f"data.{key} = {value!r} is invalid: it must be in [0, 1]",
                                  fix=f"set data.{key} in [0, 1]")
        if not 0 <= label_smoothing < 1:
            raise ConfigError(f"label_smoothing = {label_smoothing!r} is invalid: it must be in [0, 1)",
                              fix="set loss.options.label_smoothing in [0, 1), e.g. 0.1")
        if num_classes < 1:
            raise ConfigError(f"num_classes = {num_classes!r} is invalid for batch mixing: it must be >= 1",
                              fix="train on data with at least one class")
        self.off_epoch = off_epoch
        self._mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob,
                            mode="batch", correct_lam=True, label_smoothing=label_smoothing,
                            num_classes=num_classes, multi_label=multi_label)

    def __repr__(self) -> str:
        m = self._mixup
        return (f"BatchMixing(mixup_alpha={m.mixup_alpha}, cutmix_alpha={m.cutmix_alpha}, prob={m.mix_prob}, "
                f"switch_prob={m.switch_prob}, label_smoothing={m.label_smoothing}, num_classes={m.num_classes}, "
                f"multi_label={m.multi_label}, off_epoch={self.off_epoch})")

    @property
    def label_smoothing(self) -> float:
        """The smoothing applied to the targets (moved here from the loss's options)."""
        return self._mixup.label_smoothing

    def mixes_in(self, epoch: int | None) -> bool:
        """Whether images are mixed in ``epoch`` (None: any epoch before ``off_epoch``)."""
        return self.off_epoch is None or epoch is None or epoch < self.off_epoch

    def __call__(self, x: torch.Tensor, y: torch.Tensor, seed: int, *,
                 epoch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix ``x`` (``(batch, C, H, W)``) and return it with its soft targets ``(batch, num_classes)``.

        Args:
            x: The image batch, on its device.
            y: Class indices ``(batch,)``, or multi-hot rows for multi-label data.
            seed: Seed of this step's draws; the same seed gives the same draws whatever the batch.
            epoch: The current epoch, compared with ``off_epoch``; None mixes.
        """
        m = self._mixup
        if not self.mixes_in(epoch):
            return x, self._soft(y)
        state = np.random.get_state()
        # All 63 bits of hubft's seeds count: numpy takes an array of 32-bit words.
        np.random.seed([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF])
        try:
            n = x.shape[0] - x.shape[0] % 2
            if n == 0:
                return x, self._soft(y)
            mixed_x, mixed_y = m(x[:n].clone(), y[:n])
            if n == x.shape[0]:
                return mixed_x, mixed_y
            return torch.cat([mixed_x, x[n:]]), torch.cat([mixed_y, self._soft(y[n:])])
        finally:
            np.random.set_state(state)

    def _soft(self, y: torch.Tensor) -> torch.Tensor:
        from timm.data.mixup import mixup_target

        m = self._mixup
        # lam = 1: the sample's own smoothed one-hot target (its flipped partner gets weight 0).
        return mixup_target(y, m.num_classes, 1.0, m.label_smoothing, m.multi_label)


def check_mixing_loss(config: "FinetuneConfig", loss: Any = None) -> None:
    """Refuse, before any data or model is loaded, a loss that cannot take the soft targets mixing makes.

    Does nothing when mixing is off. The loss is built as the run will build it (``loss`` replacing ``loss.name``,
    with ``loss.options`` less ``label_smoothing``, which moves into the mixing step) and asked
    :func:`~hubft.losses.accepts_soft_targets`. Without either, the task's default losses are asked (for single-
    and multi-label data: which one applies is known only once the data is loaded).

    Raises:
        ConfigError: The task does not mix batches, or the loss cannot take soft targets; the message names it and
            the fix names ``soft_target_cross_entropy`` and ``bce``.
    """
    if not config.data.mixing:
        return
    from hubft.losses import create_loss, require_soft_targets
    from hubft.tasks import get_task

    task = get_task(config.model.task)
    if not task.batch_mixing:
        raise ConfigError(f"task {task.name!r} does not mix batches: {_FEATURE} mixes targets as class distributions",
                          fix="set data.mixup_alpha and data.cutmix_alpha to 0")
    options = {k: v for k, v in config.loss.options.items() if k != "label_smoothing"}
    given = loss if loss is not None else config.loss.name
    specs = [given] if given is not None else [t.default_loss for t in (task, task.multi_label) if t is not None]
    for spec in specs:
        require_soft_targets(create_loss(spec, **options), feature=_FEATURE)


def create_mixing(data_config: "DataConfig", task: "Task", loss_fn: Any, label_smoothing: float,
                  num_classes: int, multi_label: bool) -> BatchMixing | None:
    """The batch mixing of a run (``data.mixup_*`` / ``data.cutmix_*``), or None when it is off.

    Args:
        data_config: The run's data section.
        task: The run's task, which must mix batches (:attr:`~hubft.tasks.Task.batch_mixing`).
        loss_fn: The run's loss, which must take soft targets.
        label_smoothing: Taken out of ``loss.options`` by the run (see
            :func:`~hubft.train.setup.create_run_loss`).
        num_classes: The width of the targets.
        multi_label: The targets are multi-hot rows rather than class indices.

    Raises:
        ConfigError: The task does not mix batches, or the run's loss cannot take soft targets (named, with the
            losses that can).
    """
    from hubft.losses import require_soft_targets

    d = data_config
    if not d.mixing:
        return None
    if not task.batch_mixing:
        raise ConfigError(f"task {task.name!r} does not mix batches: {_FEATURE} mixes targets as class distributions",
                          fix="set data.mixup_alpha and data.cutmix_alpha to 0")
    require_soft_targets(loss_fn, feature=_FEATURE)
    return BatchMixing(
        mixup_alpha=d.mixup_alpha, cutmix_alpha=d.cutmix_alpha, prob=d.mixup_prob, switch_prob=d.mixup_switch_prob,
        label_smoothing=label_smoothing, num_classes=num_classes, multi_label=multi_label, off_epoch=d.mixup_off_epoch,
    )
