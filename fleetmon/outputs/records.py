"""Prediction and actual records: reading them into raw batches and validating them against the fleet.

Reading never interprets values: a batch holds the raw values (strings from CSV, JSON values, Parquet and
SQL values), with features flattened to ``features.<name>`` columns and, per row, which configured features
are missing and which unexpected ones are present (a schema change). Validation turns a batch into typed
rows and rejections, each with one reason (the first that applies, in this order):

  malformed                  a JSON line that is not a JSON object
  missing_field              a fleet key or timestamp is absent or empty
  unknown_fleet_key          customer/building/energy(/model) not in the configured fleet
  wrong_type                 a timestamp that is not RFC 3339, a number or feature that is not numeric,
                             ``features`` that is not an object, a ``model_version`` that is not a positive
                             integer (1, "1", 1.0), an ``alias`` that is not text, an actual's
                             ``anomaly_label`` that is not a number
  missing_value              a number the record needs (prediction, anomaly score/flag, actual) is
                             absent, null or NaN
  out_of_range               an infinite number, an anomaly score outside 0..1, a flag or an actual's
                             anomaly_label other than 0/1
  future_timestamp           made_at (predictions) or target_time/observed_at (actuals) later than
                             now + max_future_skew_seconds
  schema_missing_feature     a configured feature column is absent (null values are allowed: they are
                             counted as missing values)
  schema_unexpected_feature  a feature column that is not configured
  duplicate                  (decided by the store) a prediction with the same model, model_version,
                             made_at and target_time, or an actual with the same building, energy and
                             target_time

Times become float Unix seconds; features become float columns (NaN = missing value).

Predictions may name the MLflow registry version that made them (``model_version``, 0 in the rows when
absent: version "none") and its registry ``alias``. A row whose alias is set and is not ``champion`` is a
*shadow* prediction (a challenger run beside the champion): kept for the version benchmark
(``fleetmon.outputs.versions``) and nothing else. The alias is kept as a code: 0 = no alias or one that is
not in ``outputs.versions.aliases`` (label value ""), ``i + 1`` = ``aliases[i]``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from fleetmon.config import FleetConfig
from fleetmon.sharding import Shard

Kind = Literal["predictions", "actuals"]
FEATURE_PREFIX = "features."
PRED_KEYS = ("customer", "building", "energy", "model")
ACTUAL_KEYS = ("customer", "building", "energy")

REASONS = (
    "malformed",
    "missing_field",
    "unknown_fleet_key",
    "wrong_type",
    "missing_value",
    "out_of_range",
    "future_timestamp",
    "schema_missing_feature",
    "schema_unexpected_feature",
    "duplicate",
)


@dataclass
class Rejection:
    reason: str
    detail: str
    source: str
    origin: str  # file path or "sql:<name>"
    loc: int | None  # line (JSON lines, 1-based), row (CSV/Parquet/SQL, 0-based data row)
    record: Any
    kind: Kind
    # Fleet labels, only when the keys are valid fleet keys (else empty): bounded label values.
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Batch:
    """Raw rows of one file or one SQL read."""

    kind: Kind
    source: str
    origin: str
    frame: pd.DataFrame  # raw values; index 0..n-1
    loc: np.ndarray  # per row: line number or row number
    original: Callable[[int], Any]  # the original record of row i, for the quarantine
    rejected: list[Rejection] = field(default_factory=list)  # rows refused while reading (malformed)


# ------------------------------------------------------------------------------------------ reading
class _Schema:
    """Missing/unexpected feature names for a set of present feature keys (cached: most rows share one)."""

    def __init__(self, expected: Sequence[str]) -> None:
        self.expected = list(expected)
        self._exp = frozenset(expected)
        self._cache: dict[frozenset[str], tuple[str, str]] = {}

    def of(self, present: Iterable[str]) -> tuple[str, str]:
        key = frozenset(present)
        hit = self._cache.get(key)
        if hit is None:
            if not self._exp:  # no configured features: nothing is checked
                hit = ("", "")
            else:
                hit = (",".join(sorted(self._exp - key)), ",".join(sorted(key - self._exp)))
            self._cache[key] = hit
        return hit


def _flatten(rec: dict[str, Any], schema: _Schema) -> dict[str, Any]:
    out = {k: v for k, v in rec.items() if k != "features"}
    feats = rec.get("features")
    if isinstance(feats, str):  # SQL / CSV may carry the features as JSON text
        try:
            feats = json.loads(feats)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's limit
            out["_bad_features"] = True
            feats = None
    if isinstance(feats, dict):
        for k, v in feats.items():
            out[FEATURE_PREFIX + str(k)] = v
        out["_missing"], out["_unexpected"] = schema.of(str(k) for k in feats)
    elif feats is None and "features" not in rec:
        out["_missing"], out["_unexpected"] = schema.of(())
    else:
        if feats is not None:
            out["_bad_features"] = True
        out["_missing"], out["_unexpected"] = schema.of(())
    return out


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
    return df.astype(object) if len(df.columns) else df


def read_jsonl(path: Path, kind: Kind, source: str, features: Sequence[str]) -> Batch:
    schema = _Schema(features)
    originals: list[Any] = []
    rows: list[dict[str, Any]] = []
    locs: list[int] = []
    rejected: list[Rejection] = []
    # newline="\n": lines end at LF only (a stray CR is no line break: line numbers stay the file's)
    with open(path, encoding="utf-8", errors="replace", newline="\n") as f:
        for n, line in enumerate(f, start=1):
            text = line.strip()
            if not text:
                continue
            try:
                rec = json.loads(text)
            except (ValueError, RecursionError) as e:  # RecursionError: nested deeper than Python's limit
                rejected.append(Rejection("malformed", f"not JSON: {e}", source, str(path), n, text, kind))
                continue
            if not isinstance(rec, dict):
                rejected.append(Rejection("malformed", "not a JSON object", source, str(path), n, text, kind))
                continue
            originals.append(rec)
            rows.append(_flatten(rec, schema) if kind == "predictions" else rec)
            locs.append(n)
    return Batch(kind, source, str(path), _frame(rows), np.asarray(locs), originals.__getitem__, rejected)


def table_batch(df: pd.DataFrame, kind: Kind, source: str, origin: str, features: Sequence[str]) -> Batch:
    """A batch from tabular data (CSV, Parquet, SQL): flattened ``features.<name>`` columns, or a
    ``features`` column holding objects / JSON text."""
    df = df.reset_index(drop=True)
    raw = df

    def original(i: int) -> Any:
        return {k: _jsonable(v) for k, v in raw.iloc[i].items()}

    loc = np.arange(len(df))
    if kind == "actuals":
        return Batch(kind, source, origin, df.astype(object), loc, original)
    schema = _Schema(features)
    if "features" in df.columns:
        recs = df.to_dict("records")
        return Batch(kind, source, origin, _frame([_flatten(r, schema) for r in recs]), loc, original)
    present = [c[len(FEATURE_PREFIX) :] for c in df.columns if str(c).startswith(FEATURE_PREFIX)]
    missing, unexpected = schema.of(present)
    out = df.astype(object)
    out["_missing"], out["_unexpected"] = missing, unexpected
    return Batch(kind, source, origin, out, loc, original)


def read_csv(path: Path, kind: Kind, source: str, features: Sequence[str]) -> Batch:
    # All as strings: validation decides what is a number, so "abc" is a wrong type, not a parse error.
    # Only an empty cell is null (it stays "", which validation takes for null): pandas' NA words ("NA",
    # "null", "None", "nan", ...) are text like any other, so a building "NA" is that building, as in JSON.
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    return table_batch(df, kind, source, str(path), features)


def read_parquet(path: Path, kind: Kind, source: str, features: Sequence[str]) -> Batch:
    df = pd.read_parquet(path)
    return table_batch(df, kind, source, str(path), features)


READERS: dict[str, Callable[[Path, Kind, str, Sequence[str]], Batch]] = {
    "jsonl": read_jsonl,
    "csv": read_csv,
    "parquet": read_parquet,
}


def _jsonable(v: Any) -> Any:
    """A value as JSON can hold it (for quarantine files)."""
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    if isinstance(v, dt.datetime | dt.date | pd.Timestamp):
        return v.isoformat()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple | np.ndarray):
        return [_jsonable(x) for x in v]
    return str(v)


# --------------------------------------------------------------------------------------- the fleet
class FleetIndex:
    """Integer ids for the fleet's models and (building, energy) pairs, for vectorised work."""

    def __init__(self, fleet: FleetConfig, shard: Shard | None = None) -> None:
        self.models = fleet.models(shard)
        self.model_ids: dict[tuple[str, str, str, str], int] = {}
        self.be: list[tuple[str, str, str]] = []
        self.be_ids: dict[tuple[str, str, str], int] = {}
        be_of_model = []
        for i, m in enumerate(self.models):
            self.model_ids[(m.customer, m.building, m.energy, m.model)] = i
            be = (m.customer, m.building, m.energy)
            if be not in self.be_ids:
                self.be_ids[be] = len(self.be)
                self.be.append(be)
            be_of_model.append(self.be_ids[be])
        self.be_of_model = np.asarray(be_of_model, dtype=np.int64)
        self.is_forecaster = np.asarray([fleet.is_forecaster(m.model) for m in self.models], dtype=bool)
        self.is_anomaly = np.asarray([fleet.is_anomaly_detector(m.model) for m in self.models], dtype=bool)
        self.model_labels = [[m.customer, m.building, m.energy, m.model] for m in self.models]
        # String keys for vectorised lookups ("\x1f" cannot occur in a valid id).
        self._model_str = {"\x1f".join(k): i for k, i in self.model_ids.items()}
        self._be_str = {"\x1f".join(k): i for k, i in self.be_ids.items()}

    def lookup(self, frame: pd.DataFrame, keys: Sequence[str]) -> np.ndarray:
        """Model ids (4 keys) or building-energy ids (3 keys) of the rows; -1 where unknown."""
        joined = frame[keys[0]].astype(str)
        for k in keys[1:]:
            joined = joined + "\x1f" + frame[k].astype(str)
        table = self._model_str if len(keys) == 4 else self._be_str
        return joined.map(table).fillna(-1).to_numpy(dtype=np.int64)


# ---------------------------------------------------------------------------------------- sharding
class RowOwner:
    """Which rows of a batch are this shard's (fleetmon/sharding.py): those whose customer and building it
    owns; rows that name no building (and rows refused while reading) are shard 0's. Other shards' rows are
    dropped before validation, the costly part, and only counted: they are neither accepted nor rejected
    here, and go to no quarantine."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self._owned: dict[str, bool] = {}  # "customer\x1fbuilding" -> owned (a few per building)

    def own_rows(self, batch: Batch) -> tuple[Batch, int]:
        """The batch with only this shard's rows, and how many rows (of either kind) were left out."""
        if self.shard.count == 1:
            return batch, 0
        df = batch.frame
        first = self.shard.index == 0
        owned = np.full(len(df), first)
        if len(df):
            customer, building = _col(df, "customer"), _col(df, "building")
            placed = ~(_isnull(customer) | _isnull(building))
            joined = customer[placed].astype(str) + "\x1f" + building[placed].astype(str)
            if len(self._owned) > 100_000:  # bounded whatever the input names: a few entries per building
                self._owned.clear()
            for key in joined.unique():
                if key not in self._owned:
                    self._owned[key] = self.shard.owns(*key.split("\x1f", 1))
            owned[placed] = joined.map(self._owned).to_numpy(dtype=bool)
        rejected = batch.rejected if first else []  # refused while reading: they name no building
        skipped = int((~owned).sum()) + len(batch.rejected) - len(rejected)
        keep = np.flatnonzero(owned)
        frame = df if len(keep) == len(df) else df.iloc[keep].reset_index(drop=True)
        original = batch.original
        own = Batch(
            batch.kind,
            batch.source,
            batch.origin,
            frame,
            batch.loc[keep],
            lambda i: original(int(keep[i])),
            rejected,
        )
        return own, skipped


# -------------------------------------------------------------------------------------- validation
_TS_CACHE: dict[str, float] = {}


def parse_time(v: Any) -> float:
    """RFC 3339 / ISO 8601 time -> Unix seconds (naive = UTC); NaN if not a time."""
    if v is pd.NaT:  # a null of a time column; NaT is a datetime (and no Timestamp) without a timestamp()
        return math.nan
    if isinstance(v, str):
        hit = _TS_CACHE.get(v)
        if hit is not None:
            return hit
        try:
            t = dt.datetime.fromisoformat(v)
        except ValueError:
            return math.nan
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.UTC)
        out = t.timestamp()
        if len(_TS_CACHE) > 200_000:  # timestamps repeat within and across files; keep the cache bounded
            _TS_CACHE.clear()
        _TS_CACHE[v] = out
        return out
    if isinstance(v, pd.Timestamp):
        return (v.tz_localize("UTC") if v.tz is None else v).timestamp()
    if isinstance(v, dt.datetime):
        return (v.replace(tzinfo=dt.UTC) if v.tzinfo is None else v).timestamp()
    if isinstance(v, np.datetime64):
        return float(v.astype("datetime64[ns]").astype(np.int64)) / 1e9
    return math.nan


def _col(frame: pd.DataFrame, name: str) -> pd.Series:
    if name in frame.columns:
        return frame[name]
    return pd.Series([None] * len(frame), index=frame.index, dtype=object)


def _isnull(s: pd.Series) -> np.ndarray:
    null = s.isna().to_numpy()
    if s.dtype == object:  # empty strings (CSV) are null too
        null |= s.isin([""]).to_numpy()  # not `s == ""`: a cell may hold an array (a Parquet list column)
    return null


def _times(s: pd.Series) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(s):
        ts = pd.to_datetime(s, utc=True)
        out = ts.astype("int64").to_numpy(dtype=np.float64) / 1e9
        out[ts.isna().to_numpy()] = np.nan
        return out
    return np.fromiter((parse_time(v) for v in s), dtype=np.float64, count=len(s))


_BOOL = {"true": 1.0, "false": 0.0, "True": 1.0, "False": 0.0}


def _numbers(s: pd.Series) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        return s.to_numpy(dtype=np.float64, na_value=np.nan)
    if pd.api.types.is_bool_dtype(s):
        return s.to_numpy(dtype=np.float64)
    s = s.map(lambda v: _BOOL.get(v, v) if isinstance(v, str) else v)
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


class _Reasons:
    """The first failing reason per row, with a detail for the quarantine file."""

    def __init__(self, n: int) -> None:
        self.reason = np.full(n, "", dtype=object)
        self.detail = np.full(n, "", dtype=object)

    def set(self, mask: np.ndarray, reason: str, detail: str | np.ndarray) -> None:
        m = mask & (self.reason == "")
        if m.any():
            self.reason[m] = reason
            self.detail[m] = detail if isinstance(detail, str) else detail[m]

    @property
    def ok(self) -> np.ndarray:
        return self.reason == ""


# The largest model_version accepted: MLflow keeps versions as integers; 2**53 is where floats stop being exact.
_MAX_VERSION = 2**53
_VERSION_TEXT = re.compile(r"\+?\d+(\.0*)?")


def _version(v: Any) -> int:
    """A model_version as a positive integer, 0 when absent (null, NaN, ""), -1 when it is not one."""
    if v is None or v is pd.NA or v is pd.NaT:
        return 0
    if isinstance(v, bool | np.bool_):
        return -1
    if isinstance(v, int | np.integer):
        return int(v) if 1 <= v <= _MAX_VERSION else -1
    if isinstance(v, float | np.floating):
        if math.isnan(v):
            return 0
        return int(v) if math.isfinite(v) and v.is_integer() and 1 <= v <= _MAX_VERSION else -1
    if isinstance(v, str):
        t = v.strip()
        if not t:
            return 0
        if _VERSION_TEXT.fullmatch(t):
            n = int(t.split(".")[0])
            return n if 1 <= n <= _MAX_VERSION else -1
        return -1
    return -1


def model_versions(s: pd.Series) -> np.ndarray:
    """Per row: the model_version (0 = absent, -1 = not a positive integer)."""
    if s.dtype.kind in "iu":  # a numpy integer column (Parquet, SQL): no nulls in it
        x = s.to_numpy(dtype=np.int64)
        return np.where((x >= 1) & (x <= _MAX_VERSION), x, -1)
    cache: dict[tuple[type, Any], int] = {}
    out = np.empty(len(s), dtype=np.int64)
    for i, v in enumerate(s.tolist()):
        try:
            key = (type(v), v)
            hit = cache.get(key)
        except TypeError:  # unhashable (a list from Parquet or JSON): not a version
            out[i] = -1
            continue
        if hit is None:
            hit = cache[key] = _version(v)
        out[i] = hit
    return out


def aliases_of(s: pd.Series, aliases: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the alias code (0 = none or not configured, i + 1 = aliases[i]), whether the row is a
    shadow prediction (alias set and not "champion") and whether the value is not text."""
    codes = {a: i + 1 for i, a in enumerate(aliases)}
    n = len(s)
    code = np.zeros(n, dtype=np.int64)
    shadow = np.zeros(n, dtype=bool)
    bad = np.zeros(n, dtype=bool)
    for i, v in enumerate(s.tolist()):
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            continue
        if not isinstance(v, str):
            bad[i] = True
            continue
        t = v.strip()
        if t:
            code[i] = codes.get(t, 0)
            shadow[i] = t != "champion"
    return code, shadow, bad


@dataclass
class Validated:
    kind: Kind
    # predictions: model, be, made_at, target, prediction, score, flag, version, alias, shadow,
    #   features.<f>...
    # actuals: be, target, actual, observed_at, label (anomaly label: 1, 0, NaN = none)
    rows: pd.DataFrame
    loc: np.ndarray  # batch row index of each accepted row (for duplicates found later)
    rejected: list[Rejection]
    # predictions: model id -> (number of missing, number of unexpected feature columns) in its newest row
    schema: dict[int, tuple[int, int]] = field(default_factory=dict)


def validate(
    batch: Batch,
    fleet: FleetIndex,
    features: Sequence[str],
    now: float,
    max_future_skew: float,
    aliases: Sequence[str] = ("champion", "challenger"),
) -> Validated:
    df = batch.frame
    n = len(df)
    r = _Reasons(n)
    keys = PRED_KEYS if batch.kind == "predictions" else ACTUAL_KEYS
    for k in keys:
        r.set(_isnull(_col(df, k)), "missing_field", f"{k} is absent or empty")
    times = ("target_time",) if batch.kind == "actuals" else ("made_at", "target_time")
    for k in times:
        r.set(_isnull(_col(df, k)), "missing_field", f"{k} is absent or empty")
    ids = fleet.lookup(df, keys) if n and all(k in df.columns for k in keys) else np.full(n, -1)
    r.set(ids < 0, "unknown_fleet_key", "fleet keys not in the configured fleet")

    def time_col(name: str) -> np.ndarray:
        raw = _col(df, name)
        null = _isnull(raw)
        t = _times(raw) if n else np.empty(0)
        r.set(~null & np.isnan(t), "wrong_type", f"{name} is not an RFC 3339 time")
        return t

    def num_col(name: str) -> tuple[np.ndarray, np.ndarray]:
        """Values as floats (NaN = absent/null/NaN) and where a present value is not a number."""
        raw = _col(df, name)
        null = _isnull(raw) if n else np.empty(0, dtype=bool)
        x = _numbers(raw) if n else np.empty(0)
        bad = ~null & np.isnan(x)
        if raw.dtype == object:  # the string "NaN" is a missing value, not a wrong type
            bad &= ~raw.map(lambda v: isinstance(v, str) and v.strip().lower() == "nan").to_numpy(dtype=bool)
        return x, bad

    horizon = now + max_future_skew
    if batch.kind == "actuals":
        target = time_col("target_time")
        observed = time_col("observed_at")
        actual, a_bad = num_col("actual")
        r.set(a_bad, "wrong_type", "actual is not a number")
        r.set(np.isnan(actual), "missing_value", "actual is absent, null or NaN")
        r.set(np.isinf(actual), "out_of_range", "actual is infinite")
        # Optional: the hour was a confirmed anomaly (1) or confirmed normal (0); absent = not labelled.
        label, l_bad = num_col("anomaly_label")
        r.set(l_bad, "wrong_type", "anomaly_label is not 0/1")
        r.set(~np.isnan(label) & (label != 0) & (label != 1), "out_of_range", "anomaly_label not 0 or 1")
        r.set(target > horizon, "future_timestamp", "target_time is in the future")
        r.set(observed > horizon, "future_timestamp", "observed_at is in the future")
        ok = r.ok
        rows = pd.DataFrame(
            {
                "be": ids[ok],
                "target": target[ok],
                "actual": actual[ok],
                "observed_at": observed[ok],
                "label": label[ok],
            }
        )
        return Validated("actuals", rows, np.flatnonzero(ok), _rejections(batch, r, ids, fleet))

    made = time_col("made_at")
    target = time_col("target_time")
    valid_model = ids >= 0
    safe = np.where(valid_model, ids, 0)
    is_fc = fleet.is_forecaster[safe] & valid_model
    is_an = fleet.is_anomaly[safe] & valid_model
    pred, p_bad = num_col("prediction")
    score, s_bad = num_col("anomaly_score")
    flag, f_bad = num_col("anomaly_flag")
    # A number of the wrong type is wrong wherever it appears; absence matters only for the model's kind.
    r.set(p_bad, "wrong_type", "prediction is not a number")
    r.set(s_bad, "wrong_type", "anomaly_score is not a number")
    r.set(f_bad, "wrong_type", "anomaly_flag is not 0/1")
    r.set(_col(df, "_bad_features").notna().to_numpy(dtype=bool), "wrong_type", "features is not an object")
    if "model_version" in df.columns and n:
        version = model_versions(df["model_version"])
    else:
        version = np.zeros(n, dtype=np.int64)
    r.set(
        version < 0,
        "wrong_type",
        "model_version is not a positive integer (the MLflow registry version: 1, 2, ...)",
    )
    if "alias" in df.columns and n:
        alias, shadow, alias_bad = aliases_of(df["alias"], aliases)
    else:
        alias, shadow, alias_bad = (
            np.zeros(n, dtype=np.int64),
            np.zeros(n, dtype=bool),
            np.zeros(n, dtype=bool),
        )
    r.set(alias_bad, "wrong_type", "alias is not text")
    feats: dict[str, np.ndarray] = {}
    for name in features:
        x, bad = num_col(FEATURE_PREFIX + name)
        r.set(bad, "wrong_type", f"feature {name} is not a number")
        feats[name] = x
    r.set(is_fc & np.isnan(pred), "missing_value", "prediction is absent, null or NaN")
    r.set(is_an & np.isnan(score), "missing_value", "anomaly_score is absent, null or NaN")
    r.set(is_an & np.isnan(flag), "missing_value", "anomaly_flag is absent, null or NaN")
    r.set(np.isinf(pred), "out_of_range", "prediction is infinite")
    r.set(~np.isnan(score) & ((score < 0) | (score > 1)), "out_of_range", "anomaly_score outside 0..1")
    r.set(~np.isnan(flag) & (flag != 0) & (flag != 1), "out_of_range", "anomaly_flag not 0 or 1")
    for name, x in feats.items():
        r.set(np.isinf(x), "out_of_range", f"feature {name} is infinite")
    r.set(made > horizon, "future_timestamp", "made_at is in the future")
    missing = _col(df, "_missing").fillna("").to_numpy(dtype=object)
    unexpected = _col(df, "_unexpected").fillna("").to_numpy(dtype=object)
    has_missing = missing != ""
    has_unexpected = unexpected != ""
    r.set(
        has_missing,
        "schema_missing_feature",
        np.asarray(["missing: " + str(m) for m in missing], dtype=object),
    )
    r.set(
        has_unexpected,
        "schema_unexpected_feature",
        np.asarray(["unexpected: " + str(u) for u in unexpected], dtype=object),
    )
    # Schema per model: the newest row of each valid model in this batch decides (shadow rows describe a
    # challenger, not what the model serves).
    schema: dict[int, tuple[int, int]] = {}
    n_missing = np.fromiter((m.count(",") + 1 if m else 0 for m in missing), dtype=np.int64, count=n)
    n_unexp = np.fromiter((u.count(",") + 1 if u else 0 for u in unexpected), dtype=np.int64, count=n)
    order = np.flatnonzero(valid_model & ~shadow)
    if len(order):
        mk = np.where(np.isnan(made), -np.inf, made)
        order = order[np.lexsort((mk[order], ids[order]))]
        last = np.r_[ids[order][1:] != ids[order][:-1], True]
        for i in order[last]:
            schema[int(ids[i])] = (int(n_missing[i]), int(n_unexp[i]))
    ok = r.ok
    data: dict[str, Any] = {
        "model": ids[ok],
        "be": fleet.be_of_model[safe[ok]],
        "made_at": made[ok],
        "target": target[ok],
        "prediction": pred[ok],
        "score": score[ok],
        "flag": flag[ok],
        "version": version[ok],
        "alias": alias[ok],
        "shadow": shadow[ok],
    }
    for name, x in feats.items():
        data[FEATURE_PREFIX + name] = x[ok]
    rows = pd.DataFrame(data)
    return Validated("predictions", rows, np.flatnonzero(ok), _rejections(batch, r, ids, fleet), schema)


def _rejections(batch: Batch, r: _Reasons, ids: np.ndarray, fleet: FleetIndex) -> list[Rejection]:
    out = list(batch.rejected)
    for i in np.flatnonzero(~r.ok):
        out.append(rejection(batch, int(i), str(r.reason[i]), str(r.detail[i]), int(ids[i]), fleet))
    return out


def rejection(batch: Batch, i: int, reason: str, detail: str, key_id: int, fleet: FleetIndex) -> Rejection:
    labels: dict[str, str] = {}
    if key_id >= 0:
        if batch.kind == "predictions":
            labels = dict(zip(PRED_KEYS, fleet.model_labels[key_id], strict=True))
        else:
            labels = dict(zip(ACTUAL_KEYS, fleet.be[key_id], strict=True))
    return Rejection(
        reason,
        detail,
        batch.source,
        batch.origin,
        int(batch.loc[i]),
        _jsonable(batch.original(i)),
        batch.kind,
        labels,
    )
