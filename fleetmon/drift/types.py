"""The narrow interface between the model-outputs exporter and whatever computes drift.

The exporter builds one ``DriftJob`` per model per cycle and hands the batch to a drift backend
(``fleetmon.drift``): a backend takes ``Sequence[DriftJob]`` and returns one ``DriftResult`` per job, in
order. The per-model Evidently backend and the batched fleet engine must return the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from fleetmon.config import ModelKey


@dataclass(frozen=True)
class ColumnOverride:
    """Per-column test and threshold, as Evidently's DataDriftPreset allows (None = Evidently's default)."""

    stattest: str | None = None
    threshold: float | None = None


@dataclass
class DriftJob:
    key: ModelKey
    reference: pd.DataFrame
    current: pd.DataFrame
    # Columns to test; each must be present in both frames. Types as given (not re-inferred).
    numerical: list[str]
    categorical: list[str] = field(default_factory=list)
    overrides: dict[str, ColumnOverride] = field(default_factory=dict)
    # Evidently's DataDriftPreset(drift_share=...): dataset drift when share of drifted columns >= this
    drift_share: float = 0.5
    # Changes whenever the reference data changes: backends may cache per-reference work under it.
    reference_version: str = ""


@dataclass
class ColumnDrift:
    column: str
    stattest: str  # Evidently's stattest name, e.g. "ks", "chisquare", "z", "wasserstein", "jensenshannon"
    threshold: float
    score: float | None  # p-value or distance, as Evidently reports it; None when not computable
    drifted: bool | None  # None when not computable
    error: str | None = None  # why it is not computable (empty column, constant categorical, ...)


@dataclass
class DriftResult:
    key: ModelKey
    columns: list[ColumnDrift]
    # Share of drifted columns among the computable ones (never NaN: 0.0 when none is computable)
    share_drifted: float
    n_drifted: int
    dataset_drift: bool
    n_reference: int
    n_current: int
