"""The plots of a run: LR per group (before training), loss and metric curves, confusion matrix.

matplotlib is an optional extra (``hubft[plots]``); without it the plots are skipped with one message and the run
goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hubft.tasks.plots import plot_confusion_matrix, pyplot

if TYPE_CHECKING:
    from hubft.train.parts import RunParts

__all__ = ["plot_lr_of_run", "plot_run"]


def plot_lr_of_run(parts: "RunParts", out_dir: Path) -> None:
    """Write ``lr_curve.png`` / ``lr_curve.csv``: each group's LR at every update, computed without training."""
    from hubft.optim import plot_lr_curves

    if pyplot() is None:
        return
    curves = lr_curve_for(parts.optimizer, parts.config, parts.updates_per_epoch, parts.total_updates,
                          list(parts.group_names))
    plot_lr_curves(curves, out_dir / "lr_curve.png", out_dir / "lr_curve.csv")


def lr_curve_for(optimizer, config, updates_per_epoch: int, total_updates: int, names: list[str]) -> dict:
    """Every group's LR per update for the run's schedule, replayed on a throwaway copy of the groups."""
    from hubft.optim import lr_curve

    groups = [{"name": n, "params": [], "lr": g.get("initial_lr", g["lr"]), "weight_decay": g["weight_decay"]}
              for n, g in zip(names, optimizer.param_groups)]
    s = config.schedule
    return lr_curve(groups, schedule=s.name, total_updates=total_updates, updates_per_epoch=updates_per_epoch,
                    warmup_steps=s.warmup_steps, warmup_start_factor=s.warmup_start_factor, interval=s.interval,
                    **s.options)


def plot_run(out_dir: Path, log: list[dict], metrics: dict, label_names: list[str], metric_keys: list[str]) -> None:
    """Write ``loss_curve.png`` (train loss per logged update, the ``metric_keys`` per epoch) and, when the final
    metrics hold one, ``confusion_matrix.png``."""
    plt = pyplot()
    if plt is None:
        return
    steps = [r for r in log if r.get("type") == "step"]
    epochs = [r for r in log if r.get("type") == "epoch"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1)
    ax1.set_xlabel("optimizer update")
    ax1.set_ylabel("train loss")
    ax1.set_title("training loss")
    for key in metric_keys:
        pts = [(r["epoch"], r["eval"][key]) for r in epochs if r.get("eval", {}).get(key) is not None]
        if pts:
            ax2.plot(*zip(*pts), marker="o", label=key)
    ax2.set_xlabel("epoch")
    ax2.set_title("evaluation")
    ax2.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out_dir / "loss_curve.png", dpi=100)
    plt.close(fig)

    cm = (metrics.get("final") or {}).get("confusion_matrix")
    if cm:
        plot_confusion_matrix(cm, label_names, out_dir / "confusion_matrix.png")
