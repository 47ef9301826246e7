"""The narrow interface between the model-outputs exporter and whatever computes drift.

The exporter builds one ``DriftJob`` per model per cycle and hands the batch to a drift backend
(``fleetmon.drift``): a backend takes ``Sequence[DriftJob]`` and returns one ``DriftResult`` per job, in
order. The per-model Evidently backend and the batched fleet engine must return the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
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


# A window in array form: a 2-D array (one row per column) or one 1-D array per column.
Values = np.ndarray | Sequence[np.ndarray]


class DriftJob:
    """One model's drift work: a reference and a current window, the columns to test, the settings.

    Two forms, one interface:

    - frames: ``DriftJob(key, reference_frame, current_frame, numerical, categorical, ...)``;
    - arrays: ``DriftJob(key, numerical=[...], reference_values=..., current_values=...)``, each window a
      2-D array with one row per column of ``[*numerical, *categorical]`` or a sequence of 1-D arrays in
      that order. This is what the model-outputs exporter builds (views into its window matrix, no
      pandas per model), and what the fleet engine reads fastest. ``reference`` / ``current`` still
      give DataFrames (built on first access, e.g. for Evidently), so every backend takes both forms.

    Columns to test must be present in both windows (a missing one is reported as not computable);
    types are as given, never re-inferred.
    """

    __slots__ = (
        "_current",
        "_current_values",
        "_reference",
        "_reference_values",
        "categorical",
        "drift_share",
        "key",
        "numerical",
        "overrides",
        "reference_version",
    )

    def __init__(
        self,
        key: ModelKey,
        reference: pd.DataFrame | None = None,
        current: pd.DataFrame | None = None,
        numerical: Sequence[str] = (),
        categorical: Sequence[str] = (),
        overrides: dict[str, ColumnOverride] | None = None,
        # Evidently's DataDriftPreset(drift_share=...): dataset drift when share of drifted columns >= this
        drift_share: float = 0.5,
        # Changes whenever the reference data changes: backends may cache per-reference work under it.
        reference_version: str = "",
        *,
        reference_values: Values | None = None,
        current_values: Values | None = None,
    ) -> None:
        self.key = key
        self.numerical = list(numerical)
        self.categorical = list(categorical)
        self.overrides = dict(overrides or {})
        self.drift_share = drift_share
        self.reference_version = reference_version
        n_cols = len(self.numerical) + len(self.categorical)
        if (reference is None) == (reference_values is None) or (current is None) == (current_values is None):
            raise ValueError("a DriftJob takes each window either as a frame or as values (one of the two)")
        self._reference = reference
        self._current = current
        self._reference_values = _check_values(reference_values, n_cols, "reference")
        self._current_values = _check_values(current_values, n_cols, "current")

    # -------------------------------------------------------------------------------------- windows
    @property
    def columns(self) -> list[str]:
        return [*self.numerical, *self.categorical]

    @property
    def reference(self) -> pd.DataFrame:
        if self._reference is None:
            self._reference = _frame(self.columns, self._reference_values)
        return self._reference

    @reference.setter
    def reference(self, frame: pd.DataFrame) -> None:
        self._reference, self._reference_values = frame, None

    @property
    def current(self) -> pd.DataFrame:
        if self._current is None:
            self._current = _frame(self.columns, self._current_values)
        return self._current

    @current.setter
    def current(self, frame: pd.DataFrame) -> None:
        self._current, self._current_values = frame, None

    @property
    def reference_values(self) -> Values | None:
        """The reference as values (array form), or None for a job built from frames."""
        return self._reference_values

    @property
    def current_values(self) -> Values | None:
        return self._current_values

    @property
    def n_reference(self) -> int:
        return _rows(self._reference, self._reference_values)

    @property
    def n_current(self) -> int:
        return _rows(self._current, self._current_values)

    def __repr__(self) -> str:
        form = "frames" if self._reference_values is None else "arrays"
        return (
            f"DriftJob({self.key!r}, {form}, {self.n_reference} reference / {self.n_current} current rows, "
            f"numerical={self.numerical!r}, categorical={self.categorical!r}, overrides={self.overrides!r}, "
            f"drift_share={self.drift_share!r}, reference_version={self.reference_version!r})"
        )


def _check_values(values: Values | None, n_cols: int, which: str) -> Values | None:
    if values is None:
        return None
    if isinstance(values, np.ndarray):
        if values.ndim != 2 or values.shape[0] != n_cols:
            raise ValueError(
                f"{which}_values: expected a 2-D array with {n_cols} rows, got shape {values.shape}"
            )
        return values
    values = [np.asarray(v) for v in values]
    if len(values) != n_cols or any(v.ndim != 1 for v in values) or len({len(v) for v in values}) > 1:
        raise ValueError(f"{which}_values: expected {n_cols} 1-D arrays of one length")
    return values


def _rows(frame: pd.DataFrame | None, values: Values | None) -> int:
    if frame is not None:
        return len(frame)
    if isinstance(values, np.ndarray):
        return int(values.shape[1])
    return len(values[0]) if values else 0


def _frame(columns: list[str], values: Values | None) -> pd.DataFrame:
    return pd.DataFrame({c: v for c, v in zip(columns, values if values is not None else [], strict=True)})


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
