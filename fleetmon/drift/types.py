"""The narrow interface between the model-outputs exporter and whatever computes drift.

The exporter builds one ``DriftJob`` per model per cycle and hands the batch to a drift backend
(``fleetmon.drift``): a backend takes ``Sequence[DriftJob]`` and returns one ``DriftResult`` per job, in
order. The per-model Evidently backend and the batched fleet engine must return the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from fleetmon.config import ModelKey

# Why a column is not computable (``ColumnDrift.error``): a short, bounded code, safe as a label value.
# The order is the order in which Evidently checks them (``get_one_column_drift``).
MISSING_COLUMN = "missing_column"  # the column is absent from a frame
EMPTY_REFERENCE = "empty_reference"  # no finite / non-null value left in the reference window
EMPTY_CURRENT = "empty_current"  # no finite / non-null value left in the current window
NOT_NUMERIC = "not_numeric"  # a numerical column whose values are not numbers
INVALID_STATTEST = "invalid_stattest"  # an override names an unknown test, or one not for this column type
SCORE_NAN = "score_nan"  # the test ran but returned NaN
STATTEST_ERROR = "stattest_error"  # the test raised anything else
NOT_COMPUTABLE_REASONS = (
    MISSING_COLUMN,
    EMPTY_REFERENCE,
    EMPTY_CURRENT,
    NOT_NUMERIC,
    INVALID_STATTEST,
    SCORE_NAN,
    STATTEST_ERROR,
)


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
    error: str | None = None  # why it is not computable: one of NOT_COMPUTABLE_REASONS (a label value)
    detail: str | None = None  # the underlying message (Evidently's exception text), for logs only


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
