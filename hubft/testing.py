"""Test helpers: a local Hub-compatible server with fault injection.

Examples:
    >>> from hubft.testing import FaultPlan, LocalHub
    >>> with LocalHub(tmp_path) as hub:  # doctest: +SKIP
    ...     hub.set_faults(FaultPlan(rate=1.0, kinds=("503",), targets=("lfs-upload",), max_per_request=1))
"""

from hubft.hub.server import FaultPlan, LocalHub, LoggedRequest, list_fault_kinds

__all__ = ["FaultPlan", "LocalHub", "LoggedRequest", "list_fault_kinds"]
