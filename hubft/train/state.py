"""The training state hubft keeps beside Accelerate's: where the run is, and what it must stay compatible with."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hubft.errors import CheckpointError

__all__ = ["TrainState", "STATE_FILE"]

STATE_FILE = "hubft_state.json"


@dataclass
class TrainState:
    """Counters and history of a run; everything needed to continue it besides weights and optimizer state.

    ``batches_in_epoch`` counts the per-process batches of the current epoch already consumed; checkpoints are
    written only on optimizer-update boundaries, so resuming skips exactly that many batches.
    """

    epoch: int = 0
    batches_in_epoch: int = 0
    update: int = 0
    epoch_loss_sum: float = 0.0
    # Every process's own sum of its batch losses so far in the epoch (epoch_loss_sum is the main process's): a
    # resumed process continues from its own, so the epoch's mean train loss comes out as uninterrupted.
    epoch_loss_sums: list | None = None
    best_metric: float | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    history: list = field(default_factory=list)
    compat: dict = field(default_factory=dict)
    # The full metrics of the last evaluation: a run resumed after its last epoch still reports them.
    last_metrics: dict | None = None
    # The processes and accumulation steps that wrote it: a sharded checkpoint may resume at others.
    layout: dict | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def read(cls, checkpoint: Path) -> "TrainState":
        path = Path(checkpoint) / STATE_FILE
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint file {str(path)!r} is missing", fix="resume from another checkpoint")
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint file {str(path)!r} is unreadable ({e})") from None

    def check_compatible(self, compat: dict, checkpoint: Path) -> None:
        """Refuse to resume a checkpoint written under a config that would not continue the same run.

        Raises:
            CheckpointError: Listing every differing field with its old and new value.
        """
        diffs = [
            f"{k}: checkpoint {self.compat.get(k)!r} vs now {compat.get(k)!r}"
            for k in sorted(set(self.compat) | set(compat))
            if self.compat.get(k) != compat.get(k)
        ]
        if diffs:
            raise CheckpointError(
                f"checkpoint {str(checkpoint)!r} was written by an incompatible run ({'; '.join(diffs)})",
                fix="resume with the original settings, or start a new run in another train.output_dir",
            )
