"""Drift per model with Evidently itself: the reference implementation (oracle) and the HTML report.

Uses Evidently 0.7's current API (``evidently.Report`` + ``evidently.presets.DataDriftPreset``, default
settings, per-column ``per_column_method`` / ``per_column_threshold`` from ``ColumnOverride``s, and
``drift_share``), not ``evidently.legacy``: the current API is what Evidently documents and maintains,
and its ``ValueDrift`` metric is what computes each column (it calls the legacy
``get_one_column_drift`` underneath, so the statistics are the same either way). Column types are given
explicitly with a ``DataDefinition`` (never re-inferred).

Each column's score is ``ValueDrift``'s value; its decision is the preset's own test on that value
(``TestStatus.FAIL`` = drifted), so no rule of ours sits between Evidently and the result.

Evidently's failures on dirty data, and what fleetmon makes of them (see ``fleetmon.drift.types``):

- A column with no finite value left in one window (all NaN / inf, or a window with no rows) makes
  ``get_one_column_drift`` raise ``ValueError("An empty column ... was provided ...")``, and
  ``Report.run`` refuses a frame with no rows at all. One such column makes the *whole* report fail:
  the other columns get no score either. fleetmon then runs ``ValueDrift`` column by column and reports
  the bad one as not computable (``empty_reference`` / ``empty_current``), the others with their scores.
- A numerical column holding strings raises ``should contain numerical values only`` (``not_numeric``);
  an override naming an unknown test, or a test not registered for the column's type (e.g. ``ks`` on a
  categorical column, ``chisquare`` / ``z`` on a numerical one), raises (``invalid_stattest``).
- With all warnings turned into errors (as in our tests), Evidently fails on more: its dataset
  statistics divide by zero on an all-NaN column, and ``scipy.stats.chisquare`` warns when a category of
  the current window never occurs in the reference (expected 0 -> p-value 0). Evidently is therefore run
  with warnings ignored, which is how it runs in production.
- A boolean numerical column makes the Report fail in its dataset statistics ("numpy boolean
  subtract"): ``stattest_error`` here. Evidently's own stattest function works on it, and the fleet
  engine gives that function's result (a difference with this backend, on input the model-outputs
  exporter never builds: its columns are float64).
- A test that returns NaN would count as "not drifted" in Evidently's share; fleetmon reports it as not
  computable (``score_nan``).
- Evidently's dataset share (``DriftedColumnsCount``) divides by every column; fleetmon's share leaves
  not-computable columns out (never NaN, and equal to Evidently's when all columns are computable).
- ``ValueDrift`` drops +-inf along with NaN in every column; Evidently's legacy dataset path drops inf only
  when the column also contains a NaN, so its ``DriftedColumnsCount`` can disagree with its own
  ``ValueDrift`` on data with inf and no NaN. fleetmon follows ``ValueDrift``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fleetmon.drift._common import QUIET, classify_error, summarize
from fleetmon.drift.types import (
    MISSING_COLUMN,
    NOT_NUMERIC,
    SCORE_NAN,
    STATTEST_ERROR,
    ColumnDrift,
    DriftJob,
    DriftResult,
)

# warnings.catch_warnings changes process-wide state: serialize the backend's runs (the fleet engine's
# quiet blocks hold the same lock).
_LOCK = QUIET


def _stattest_names() -> dict[str, str]:
    """Evidently reports an auto-chosen test by display name ("K-S p_value"): map it back to the name."""
    from evidently.legacy.calculations.stattests.registry import _registered_stat_tests

    names: dict[str, str] = {}
    for name, by_type in _registered_stat_tests.items():
        names[name] = name
        for st in by_type.values():
            names[st.display_name] = name
    return names


def _definition(numerical: list[str], categorical: list[str]) -> Any:
    from evidently import DataDefinition

    # Every type list given explicitly: Evidently infers nothing.
    return DataDefinition(
        numerical_columns=list(numerical),
        categorical_columns=list(categorical),
        text_columns=[],
        datetime_columns=[],
        unknown_columns=[],
        list_columns=[],
    )


def _dataset(frame: pd.DataFrame, numerical: list[str], categorical: list[str]) -> Any:
    from evidently import Dataset

    return Dataset.from_pandas(
        frame[numerical + categorical], data_definition=_definition(numerical, categorical)
    )


def _preset(job: DriftJob, columns: list[str]) -> Any:
    from evidently.presets import DataDriftPreset

    methods = {c: o.stattest for c, o in job.overrides.items() if c in columns and o.stattest is not None}
    thresholds = {
        c: o.threshold for c, o in job.overrides.items() if c in columns and o.threshold is not None
    }
    return DataDriftPreset(
        columns=columns,
        drift_share=job.drift_share,
        per_column_method=methods or None,
        per_column_threshold=thresholds or None,
    )


def _not_numeric(job: DriftJob, column: str) -> bool:
    return any(
        column in f.columns and not pd.api.types.is_numeric_dtype(f[column])
        for f in (job.reference, job.current)
    )


class EvidentlyBackend:
    """One Evidently ``Report([DataDriftPreset()])`` per model (about 0.3 s each)."""

    name = "evidently"

    def __init__(self) -> None:
        with _LOCK, warnings.catch_warnings():
            # importing evidently 0.7 touches numpy.core (a DeprecationWarning under numpy 2)
            warnings.simplefilter("ignore")
            import evidently  # noqa: F401

            self._names = _stattest_names()

    def run(self, jobs: Sequence[DriftJob]) -> list[DriftResult]:
        return [self.run_one(job) for job in jobs]

    def run_one(self, job: DriftJob) -> DriftResult:
        with _LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            columns = self._whole_report(job)
            if columns is None:
                columns = [self._one_column(job, c) for c in [*job.numerical, *job.categorical]]
        return summarize(job.key, columns, job.drift_share, job.n_reference, job.n_current)

    # -------------------------------------------------------------------------------------- internals
    def _snapshot(
        self, job: DriftJob, metrics: list[Any], numerical: list[str], categorical: list[str]
    ) -> Any:
        from evidently import Report

        report = Report(metrics, include_tests=True)
        return report.run(
            _dataset(job.current, numerical, categorical),
            _dataset(job.reference, numerical, categorical),
        )

    def _value_drifts(self, job: DriftJob, snapshot: Any) -> dict[str, ColumnDrift]:
        from evidently.legacy.tests.base_test import TestStatus

        out: dict[str, ColumnDrift] = {}
        for item in snapshot.dict()["metrics"]:
            cfg = item["config"]
            if not cfg["type"].endswith(":ValueDrift"):
                continue
            column = cfg["column"]
            score = float(item["value"])
            out[column] = ColumnDrift(
                column=column,
                stattest=self._names.get(cfg["method"], cfg["method"]),
                threshold=float(cfg["threshold"]),
                score=score,
                drifted=None,
            )
        for test in snapshot.tests_results:
            params = test.metric_config.params
            if str(params.get("type", "")).endswith(":ValueDrift") and params["column"] in out:
                out[params["column"]].drifted = test.status == TestStatus.FAIL
        for column, cd in out.items():
            if cd.score is None or math.isnan(cd.score):
                out[column] = ColumnDrift(
                    column, cd.stattest, cd.threshold, None, None, SCORE_NAN, "score is NaN"
                )
            elif cd.drifted is None:
                raise RuntimeError(f"Evidently gave no drift test result for column {column!r}")
        return out

    def _whole_report(self, job: DriftJob) -> list[ColumnDrift] | None:
        """The preset over all columns at once; None when Evidently fails (then: column by column)."""
        cols = [*job.numerical, *job.categorical]
        if any(c not in job.reference.columns or c not in job.current.columns for c in cols):
            return None
        try:
            snapshot = self._snapshot(job, [_preset(job, cols)], job.numerical, job.categorical)
        except Exception:
            return None
        by_col = self._value_drifts(job, snapshot)
        return [by_col[c] for c in cols]

    def _one_column(self, job: DriftJob, column: str) -> ColumnDrift:
        from evidently.metrics import ValueDrift

        o = job.overrides.get(column)
        if column not in job.reference.columns or column not in job.current.columns:
            return ColumnDrift(
                column,
                o.stattest if o and o.stattest else "",
                o.threshold if o and o.threshold is not None else math.nan,
                None,
                None,
                MISSING_COLUMN,
                f"column {column!r} is missing from a window",
            )
        num = [column] if column in job.numerical else []
        cat = [] if num else [column]
        metric = ValueDrift(
            column=column,
            method=o.stattest if o else None,
            threshold=o.threshold if o else None,
        )
        try:
            snapshot = self._snapshot(job, [metric], num, cat)
            return self._value_drifts(job, snapshot)[column]
        except Exception as e:
            reason = classify_error(e)
            if reason == STATTEST_ERROR and num and _not_numeric(job, column):
                # Evidently's dataset statistics fail first (np.isinf on strings): same cause
                reason = NOT_NUMERIC
            return ColumnDrift(
                column=column,
                stattest=(o.stattest if o and o.stattest else ""),
                threshold=(o.threshold if o and o.threshold is not None else math.nan),
                score=None,
                drifted=None,
                error=reason,
                detail=str(e)[:500],
            )

    # ----------------------------------------------------------------------------------------- report
    def write_html_report(self, job: DriftJob, path: str | Path) -> list[ColumnDrift]:
        """Write Evidently's full HTML drift report for one model to ``path``.

        Columns Evidently cannot compute are left out of the report (it would fail as a whole); they
        are returned, with the reason, so the caller can say so. Raises ValueError when no column is left.
        """
        result = self.run_one(job)
        bad = [c for c in result.columns if c.drifted is None]
        good = [c.column for c in result.columns if c.drifted is not None]
        if not good:
            reasons = ", ".join(f"{c.column}: {c.error}" for c in bad)
            raise ValueError(f"no drift report for {job.key.labels()}: no column is computable ({reasons})")
        num = [c for c in job.numerical if c in good]
        cat = [c for c in job.categorical if c in good]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            snapshot = self._snapshot(job, [_preset(job, good)], num, cat)
            tmp = path.with_name(path.name + ".tmp")
            snapshot.save_html(str(tmp))
            tmp.replace(path)
        return bad
