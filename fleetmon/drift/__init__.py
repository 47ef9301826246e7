"""Data drift for the fleet. ``types`` holds the interface; backends compute it."""

from fleetmon.drift.types import ColumnDrift, ColumnOverride, DriftJob, DriftResult

__all__ = ["ColumnDrift", "ColumnOverride", "DriftJob", "DriftResult"]
