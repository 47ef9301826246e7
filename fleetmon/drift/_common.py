"""What both drift backends share: reason classification and the dataset summary."""

from __future__ import annotations

import math
import threading

from fleetmon.config import ModelKey
from fleetmon.drift.types import (
    EMPTY_CURRENT,
    EMPTY_REFERENCE,
    INVALID_STATTEST,
    MISSING_COLUMN,
    NOT_NUMERIC,
    STATTEST_ERROR,
    ColumnDrift,
    DriftResult,
)

# ``warnings.catch_warnings`` saves and restores process-wide state: two threads inside it at once can
# leave warnings turned off for the process, or raise one (an error under pytest) inside a block that
# meant to ignore it. Every quiet block of the drift backends holds this lock.
QUIET = threading.RLock()


def classify_error(exc: BaseException) -> str:
    """Map an exception raised by Evidently while testing one column to a bounded reason code."""
    msg = str(exc)
    if "empty column" in msg and "reference dataset" in msg:
        return EMPTY_REFERENCE
    if "empty column" in msg and "current dataset" in msg:
        return EMPTY_CURRENT
    # Report.run refuses a frame with no rows ("... must contain at least one column")
    if msg.startswith("current_data must contain"):
        return EMPTY_CURRENT
    if msg.startswith("reference_data must contain"):
        return EMPTY_REFERENCE
    if "should contain numerical values only" in msg:
        return NOT_NUMERIC
    if "Cannot find column" in msg:
        return MISSING_COLUMN
    if msg.startswith("No stattest found") or "isn't applicable to feature" in msg:
        return INVALID_STATTEST
    return STATTEST_ERROR


def summarize(
    key: ModelKey,
    columns: list[ColumnDrift],
    drift_share: float,
    n_reference: int,
    n_current: int,
) -> DriftResult:
    """Evidently's dataset rule (``get_dataset_drift``: share >= drift_share) over the computable columns.

    Evidently divides by every tested column and fails the whole report when one column cannot be
    computed; here a not-computable column is left out of both counts, so the share is never NaN and
    equals Evidently's whenever every column is computable.
    """
    computable = [c for c in columns if c.drifted is not None]
    n_drifted = sum(1 for c in computable if c.drifted)
    share = n_drifted / len(computable) if computable else 0.0
    assert not math.isnan(share)
    return DriftResult(
        key=key,
        columns=columns,
        share_drifted=share,
        n_drifted=n_drifted,
        dataset_drift=bool(computable) and share >= drift_share,
        n_reference=n_reference,
        n_current=n_current,
    )
