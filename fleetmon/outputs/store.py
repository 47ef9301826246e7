"""The in-memory window of accepted predictions and actuals, kept for ``outputs.retention_seconds``.

Frames are never changed in place: adding rows makes new chunks, ``snapshot()`` consolidates them into
new frames, so a snapshot can be read by another thread (quality, drift) without holding the lock.
Actuals are joined to predictions at read time (same building and energy type, same target_time), so an
actual counts whether it arrives before or after its predictions.

Shadow predictions (``alias`` set and not ``champion``: a challenger version run beside the champion) are
kept apart, in ``Snapshot.shadow``: ``Snapshot.predictions`` holds what the models serve, which is all that
quality, freshness, drift and ``predictions_total`` describe; shadow rows count in ``shadow_total`` and feed
only the version benchmark. A prediction is a duplicate of another with the same model, ``model_version``
(0 when absent), made_at and target_time, so a champion's and a challenger's for the same target are not.

The *serving version* of a model is the ``model_version`` of its newest served row that carries one (largest
made_at; of equal ones, the row read last): what the model serves now. Rows without a version leave it as it
is; like ``last_made_at`` it outlives the rows' retention, and the pipeline keeps it in its state file.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fleetmon.outputs.records import FEATURE_PREFIX, Batch, FleetIndex, Rejection, Validated, rejection

# Join key of an actual: (building-energy id, target second) packed in one int64.
_KEY_SCALE = 10_000_000_000


def actual_key(be: np.ndarray, target: np.ndarray) -> np.ndarray:
    return be.astype(np.int64) * _KEY_SCALE + np.round(target).astype(np.int64)


@dataclass(frozen=True)
class Snapshot:
    # served rows: model, be, made_at, target, prediction, score, flag, version, alias, shadow, features.<f>...
    predictions: pd.DataFrame
    actuals: pd.DataFrame  # be, target, actual, observed_at, label (anomaly label; NaN: none)
    shadow: pd.DataFrame = field(default_factory=pd.DataFrame)  # shadow rows, the same columns


class OutputStore:
    def __init__(self, fleet: FleetIndex, features: list[str], retention_seconds: float) -> None:
        self.fleet = fleet
        self.features = list(features)
        self.retention = retention_seconds
        self.lock = threading.Lock()
        n_models, n_be = len(fleet.models), len(fleet.be)
        self._pred: list[pd.DataFrame] = [self._empty_predictions()]
        self._shadow: list[pd.DataFrame] = [self._empty_predictions()]
        self._act: list[pd.DataFrame] = [
            pd.DataFrame(
                {
                    "be": np.empty(0, dtype=np.int64),
                    "target": np.empty(0),
                    "actual": np.empty(0),
                    "observed_at": np.empty(0),
                    "label": np.empty(0),
                }
            )
        ]
        # Counters (never decrease; not incremented when the window is rebuilt after a restart).
        self.predictions_total = np.zeros(n_models)  # served predictions
        self.shadow_total = np.zeros(n_models)  # shadow predictions (challenger versions)
        self.actuals_total = np.zeros(n_be)
        # Survive eviction: a model that stopped predicting keeps its last timestamp.
        self.last_made_at = np.full(n_models, np.nan)
        # Version of the newest served row with a model_version (0: none seen) and that row's made_at.
        self.serving_version = np.zeros(n_models, dtype=np.int64)
        self.serving_made_at = np.full(n_models, -np.inf)
        # Feature columns missing / unexpected in each model's newest rows (schema change).
        self.schema_missing = np.zeros(n_models)
        self.schema_unexpected = np.zeros(n_models)

    def _empty_predictions(self) -> pd.DataFrame:
        cols: dict[str, np.ndarray] = {
            "model": np.empty(0, dtype=np.int64),
            "be": np.empty(0, dtype=np.int64),
        }
        for c in ("made_at", "target", "prediction", "score", "flag"):
            cols[c] = np.empty(0)
        cols["version"] = np.empty(0, dtype=np.int64)
        cols["alias"] = np.empty(0, dtype=np.int64)
        cols["shadow"] = np.empty(0, dtype=bool)
        for f in self.features:
            cols[FEATURE_PREFIX + f] = np.empty(0)
        return pd.DataFrame(cols)

    # --------------------------------------------------------------------------------------- add
    def add(self, v: Validated, batch: Batch, count: bool = True) -> list[Rejection]:
        """Add validated rows; returns the duplicates (rejected). ``count=False`` when rebuilding."""
        with self.lock:
            if v.kind == "predictions":
                for m, (n_miss, n_unexp) in v.schema.items():
                    self.schema_missing[m], self.schema_unexpected[m] = n_miss, n_unexp
                return self._add_predictions(v, batch, count)
            return self._add_actuals(v, batch, count)

    def _add_predictions(self, v: Validated, batch: Batch, count: bool) -> list[Rejection]:
        rows = v.rows
        if rows.empty:
            return []
        key = ["model", "version", "made_at", "target"]
        dup = rows.duplicated(key).to_numpy()
        lo, hi = rows["target"].min(), rows["target"].max()
        existing: set[tuple[int, int, float, float]] = set()
        for chunk in (*self._pred, *self._shadow):
            t = chunk["target"].to_numpy()
            sel = (t >= lo) & (t <= hi)
            if sel.any():
                c = chunk[sel]
                existing.update(zip(*(c[k].tolist() for k in key), strict=True))
        if existing:
            dup |= np.fromiter(
                (k in existing for k in zip(*(rows[k].tolist() for k in key), strict=True)),
                dtype=bool,
                count=len(rows),
            )
        rejected = [
            rejection(
                batch,
                int(v.loc[i]),
                "duplicate",
                "prediction already read (same model, model_version, made_at, target_time)",
                int(rows["model"].iat[i]),
                self.fleet,
            )
            for i in np.flatnonzero(dup)
        ]
        new = rows[~dup]
        if new.empty:
            return rejected
        shadow = new["shadow"].to_numpy(dtype=bool)
        if shadow.any():
            sh = new[shadow]
            self._shadow.append(sh)
            if count:
                self.shadow_total += np.bincount(sh["model"].to_numpy(), minlength=len(self.shadow_total))
            new = new[~shadow]
        if not new.empty:
            self._pred.append(new)
            model = new["model"].to_numpy()
            if count:
                self.predictions_total += np.bincount(model, minlength=len(self.predictions_total))
            made_at = new["made_at"].to_numpy()
            newest = pd.Series(made_at).groupby(model).max()
            idx = newest.index.to_numpy()
            self.last_made_at[idx] = np.fmax(self.last_made_at[idx], newest.to_numpy())
            version = new["version"].to_numpy()
            has = version > 0
            if has.any():
                self.set_serving(model[has], version[has], made_at[has])
        return rejected

    def set_serving(self, model: np.ndarray, version: np.ndarray, made_at: np.ndarray) -> None:
        """Take the newest of these (model, version, made_at) rows per model as its serving version, unless
        the model already has a newer one (equal made_at: the later row wins). Call with the lock held (or
        before the store is shared)."""
        order = np.lexsort((made_at, model))  # stable: equal made_at keep the order they were read in
        m, v, t = model[order], version[order], made_at[order]
        last = np.r_[m[1:] != m[:-1], True]  # the last row of each model
        m, v, t = m[last], v[last], t[last]
        newer = t >= self.serving_made_at[m]
        self.serving_version[m[newer]] = v[newer]
        self.serving_made_at[m[newer]] = t[newer]

    def _add_actuals(self, v: Validated, batch: Batch, count: bool) -> list[Rejection]:
        rows = v.rows
        if rows.empty:
            return []
        keys = actual_key(rows["be"].to_numpy(), rows["target"].to_numpy())
        dup = pd.Series(keys).duplicated().to_numpy()
        lo, hi = rows["target"].min(), rows["target"].max()
        for chunk in self._act:
            t = chunk["target"].to_numpy()
            sel = (t >= lo) & (t <= hi)
            if sel.any():
                dup |= np.isin(keys, actual_key(chunk["be"].to_numpy()[sel], t[sel]))
        rejected = [
            rejection(
                batch,
                int(v.loc[i]),
                "duplicate",
                "actual already read (same building, energy, target_time)",
                int(rows["be"].iat[i]),
                self.fleet,
            )
            for i in np.flatnonzero(dup)
        ]
        new = rows[~dup]
        if not new.empty:
            self._act.append(new)
            if count:
                self.actuals_total += np.bincount(new["be"].to_numpy(), minlength=len(self.actuals_total))
        return rejected

    # ---------------------------------------------------------------------------------- snapshot
    def snapshot(self, now: float) -> Snapshot:
        """Consolidate, evict rows older than the retention, and return the current frames."""
        with self.lock:
            horizon = now - self.retention
            pred, shadow = _consolidate(self._pred, horizon), _consolidate(self._shadow, horizon)
            act = self._act[0] if len(self._act) == 1 else pd.concat(self._act, ignore_index=True)
            keep = act["target"].to_numpy() >= horizon
            if not keep.all():
                act = act[keep].reset_index(drop=True)
            self._pred, self._shadow, self._act = [pred], [shadow], [act]
            return Snapshot(pred, act, shadow)

    def rows(self) -> tuple[int, int]:
        """Predictions (served and shadow) and actuals kept."""
        with self.lock:
            n_pred = sum(len(c) for c in self._pred) + sum(len(c) for c in self._shadow)
            return n_pred, sum(len(c) for c in self._act)


def _consolidate(chunks: list[pd.DataFrame], horizon: float) -> pd.DataFrame:
    """The prediction chunks as one frame, without the rows older than the retention."""
    pred = chunks[0] if len(chunks) == 1 else pd.concat(chunks, ignore_index=True)
    keep = np.fmax(pred["target"].to_numpy(), pred["made_at"].to_numpy()) >= horizon
    if not keep.all():
        pred = pred[keep].reset_index(drop=True)
    return pred
