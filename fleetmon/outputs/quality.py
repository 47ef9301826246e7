"""Per-model quality over windows of matured predictions, computed for the whole fleet at once.

A prediction is *matured* when its target_time has passed (target_time <= now); a window ``w`` holds the
matured predictions with ``now - w < target_time <= now``. Every per-model figure is a ``np.bincount``
over the model id, so the cost is a few passes over the window's rows whatever the fleet size.

Forecasters (rows with an actual and a prediction): MAE, RMSE, bias (mean of prediction - actual),
MAPE as a ratio (mean |prediction - actual| / |actual| over rows whose actual is not 0; rows with a
zero actual are skipped and counted). Anomaly detectors: share of rows flagged, score quantiles (numpy's
linear interpolation). All: matured rows, rows with an actual, share of missing values per feature.
Per-model values are NaN where there is no row to compute them from (and are then not exported).
Only the served rows count (``Snapshot.predictions``): shadow predictions of challenger versions are
benchmarked apart, in ``fleetmon.outputs.versions``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fleetmon.outputs.records import FEATURE_PREFIX, FleetIndex
from fleetmon.outputs.store import Snapshot, actual_key


@dataclass
class WindowQuality:
    matured: np.ndarray  # matured predictions in the window
    with_actual: np.ndarray  # ... of which have an actual
    mae: np.ndarray
    rmse: np.ndarray
    bias: np.ndarray
    mape: np.ndarray
    mape_zero_actuals: np.ndarray  # rows skipped by MAPE because the actual is 0
    scored: np.ndarray  # anomaly detectors: rows with a score
    anomaly_ratio: np.ndarray
    score_quantiles: dict[float, np.ndarray]
    missing_ratio: dict[str, np.ndarray]  # feature -> share of rows with the value missing


@dataclass
class Quality:
    windows: dict[str, WindowQuality]
    latest_target: np.ndarray  # newest target_time per model
    latest_prediction: np.ndarray  # prediction for it (forecasters)
    latest_score: np.ndarray  # anomaly score for it (anomaly detectors)
    latest_actual_target: np.ndarray  # newest target_time with an actual, per model's building/energy
    latest_actual: np.ndarray
    latest_matched_prediction: np.ndarray  # the model's prediction for latest_actual_target


def join_actuals(snap: Snapshot) -> np.ndarray:
    """The actual of every prediction row (NaN when not known yet)."""
    pred, act = snap.predictions, snap.actuals
    if pred.empty or act.empty:
        return np.full(len(pred), np.nan)
    index = pd.Index(actual_key(act["be"].to_numpy(), act["target"].to_numpy()))
    pos = index.get_indexer(actual_key(pred["be"].to_numpy(), pred["target"].to_numpy()))
    out = act["actual"].to_numpy()[np.where(pos >= 0, pos, 0)]
    return np.where(pos >= 0, out, np.nan)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _quantiles(
    model: np.ndarray, values: np.ndarray, n_models: int, qs: list[float]
) -> dict[float, np.ndarray]:
    out = {q: np.full(n_models, np.nan) for q in qs}
    if len(values) == 0:
        return out
    order = np.lexsort((values, model))
    v = values[order]
    counts = np.bincount(model, minlength=n_models)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    has = counts > 0
    for q in qs:
        # numpy's default ("linear"): position q * (n - 1) between the sorted values
        pos = q * (counts[has] - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, counts[has] - 1)
        frac = pos - lo
        base = starts[has]
        out[q][has] = v[base + lo] + (v[base + hi] - v[base + lo]) * frac
    return out


def compute(
    snap: Snapshot,
    fleet: FleetIndex,
    windows: dict[str, float],
    features: list[str],
    quantiles: list[float],
    now: float,
    actual: np.ndarray | None = None,
) -> Quality:
    """``actual``: ``join_actuals(snap)`` if the caller has it already."""
    pred = snap.predictions
    n = len(fleet.models)
    model = pred["model"].to_numpy()
    target = pred["target"].to_numpy()
    made = pred["made_at"].to_numpy()
    prediction = pred["prediction"].to_numpy()
    score = pred["score"].to_numpy()
    flag = pred["flag"].to_numpy()
    if actual is None:
        actual = join_actuals(snap)
    is_fc = fleet.is_forecaster[model] if len(model) else np.zeros(0, dtype=bool)
    is_an = fleet.is_anomaly[model] if len(model) else np.zeros(0, dtype=bool)

    def count(mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        w = None if weights is None else weights[mask]
        return np.bincount(model[mask], weights=w, minlength=n).astype(np.float64)

    out: dict[str, WindowQuality] = {}
    matured = target <= now
    for name, seconds in windows.items():
        in_w = matured & (target > now - seconds)
        has_act = in_w & ~np.isnan(actual)
        err_rows = has_act & is_fc & ~np.isnan(prediction)
        err = prediction - actual
        n_err = count(err_rows)
        nonzero = err_rows & (actual != 0)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            ape = np.abs(err) / np.abs(actual)
        scored_rows = in_w & is_an & ~np.isnan(score)
        n_scored = count(scored_rows)
        flagged = scored_rows & (flag == 1)
        n_rows = count(in_w)
        missing = {
            f: _ratio(count(in_w & np.isnan(pred[FEATURE_PREFIX + f].to_numpy())), n_rows) for f in features
        }
        out[name] = WindowQuality(
            matured=n_rows,
            with_actual=count(has_act),
            mae=_ratio(count(err_rows, np.abs(err)), n_err),
            rmse=np.sqrt(_ratio(count(err_rows, err * err), n_err)),
            bias=_ratio(count(err_rows, err), n_err),
            mape=_ratio(count(nonzero, ape), count(nonzero)),
            mape_zero_actuals=count(err_rows & (actual == 0)),
            scored=n_scored,
            anomaly_ratio=_ratio(count(flagged), n_scored),
            score_quantiles=_quantiles(model[scored_rows], score[scored_rows], n, quantiles),
            missing_ratio=missing,
        )

    # Newest prediction per model (by target_time, then made_at).
    latest_target = np.full(n, np.nan)
    latest_prediction = np.full(n, np.nan)
    latest_score = np.full(n, np.nan)
    if len(model):
        order = np.lexsort((made, target, model))
        last = order[np.r_[model[order][1:] != model[order][:-1], True]]
        latest_target[model[last]] = target[last]
        latest_prediction[model[last]] = prediction[last]
        latest_score[model[last]] = score[last]
    # Newest actual per building/energy, and each model's prediction for that hour.
    act = snap.actuals
    n_be = len(fleet.be)
    be_target = np.full(n_be, np.nan)
    be_actual = np.full(n_be, np.nan)
    if not act.empty:
        a_be, a_t = act["be"].to_numpy(), act["target"].to_numpy()
        order = np.lexsort((a_t, a_be))
        last = order[np.r_[a_be[order][1:] != a_be[order][:-1], True]]
        be_target[a_be[last]] = a_t[last]
        be_actual[a_be[last]] = act["actual"].to_numpy()[last]
    latest_actual_target = be_target[fleet.be_of_model]
    latest_actual = be_actual[fleet.be_of_model]
    matched = np.full(n, np.nan)
    if len(model):
        hit = target == latest_actual_target[model]
        if hit.any():
            idx = np.flatnonzero(hit)
            order = idx[np.lexsort((made[idx], model[idx]))]
            last = order[np.r_[model[order][1:] != model[order][:-1], True]]
            matched[model[last]] = prediction[last]
    return Quality(
        windows=out,
        latest_target=latest_target,
        latest_prediction=latest_prediction,
        latest_score=latest_score,
        latest_actual_target=latest_actual_target,
        latest_actual=latest_actual,
        latest_matched_prediction=matched,
    )
