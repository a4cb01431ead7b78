"""Test helpers: a local Hub-compatible server with fault injection, and a reset between in-process runs.

Examples:
    >>> from hubft.testing import FaultPlan, LocalHub
    >>> with LocalHub(tmp_path) as hub:  # doctest: +SKIP
    ...     hub.set_faults(FaultPlan(rate=1.0, kinds=("503",), targets=("lfs-upload",), max_per_request=1))
"""

from hubft.hub.server import FaultPlan, LocalHub, LoggedRequest, list_fault_kinds

__all__ = ["FaultPlan", "LocalHub", "LoggedRequest", "list_fault_kinds", "reset_process_state"]


def reset_process_state() -> None:
    """Make the next in-process run start clean: Accelerate's process-wide singletons and hubft's fault counters.

    Accelerate keeps its state (device, mixed precision, gradient accumulation) in singletons that a second
    ``Accelerator`` in the same process would otherwise inherit; tests and notebooks that run several fine-tunes
    in one process call this between them.
    """
    from accelerate.state import AcceleratorState, GradientState, PartialState

    from hubft.faults import reset_fault_counts

    reset_fault_counts()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
