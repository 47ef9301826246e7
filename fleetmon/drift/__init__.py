"""Data drift for the fleet. ``types`` holds the interface; backends compute it.

- ``evidently``: ``EvidentlyBackend``, one Evidently report per model (the oracle, and the HTML report).
- ``fleet``: ``FleetDriftEngine``, Evidently's statistics for the whole fleet at once (batched, cached).
"""

from __future__ import annotations

from typing import Any

from fleetmon.drift.types import ColumnDrift, ColumnOverride, DriftJob, DriftResult

__all__ = ["BACKENDS", "ColumnDrift", "ColumnOverride", "DriftJob", "DriftResult", "get_backend"]

BACKENDS = ("evidently", "fleet")


def get_backend(name: str) -> Any:
    """A new drift backend by name: ``"evidently"`` or ``"fleet"``. Both have ``run(jobs) -> results``."""
    if name == "evidently":
        from fleetmon.drift.evidently_backend import EvidentlyBackend

        return EvidentlyBackend()
    if name == "fleet":
        from fleetmon.drift.engine import FleetDriftEngine

        return FleetDriftEngine()
    raise ValueError(f"unknown drift backend {name!r} (expected one of {', '.join(BACKENDS)})")
