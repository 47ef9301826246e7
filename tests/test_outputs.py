"""The model-outputs exporter on real files (JSON lines, CSV, Parquet) and a real SQLite database.

A fixed clock (NOW) makes every window exact; expected values are computed by hand in the tests.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import math
import os
import shutil
import sqlite3
import subprocess
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from collectors.outputs import J_PER_KWH, OutputsCollector
from fleetmon.config import Config
from fleetmon.exporter import Exporter
from fleetmon.outputs.pipeline import OutputsPipeline

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
J = J_PER_KWH  # energy is exported in joules
H = 3600.0
FEATURES = ["temp", "occ"]
FLEET = {
    "customers": [
        {
            "id": "c1",
            "buildings": [
                {
                    "id": "b1",
                    "building_type": "school",
                    "volume_m3": 1200,
                    "weather_station": "fmi-100971",
                    "latitude": 60.17,
                    "longitude": 24.94,
                },
                {"id": "b2"},
            ],
        }
    ]
}


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")


def make_cfg(tmp: Path, **outputs: Any) -> Config:
    base: dict[str, Any] = {
        "predictions": [
            {"glob": str(tmp / "pred" / "*.jsonl"), "format": "jsonl", "name": "pred-jsonl"},
            {"glob": str(tmp / "pred" / "*.csv"), "format": "csv", "name": "pred-csv"},
            {"glob": str(tmp / "pred" / "*.parquet"), "format": "parquet", "name": "pred-parquet"},
        ],
        "actuals": [{"glob": str(tmp / "act" / "*.jsonl"), "name": "actuals"}],
        "features": FEATURES,
        "windows": {"24h": 24 * H, "7d": 7 * 24 * H},
        "retention_seconds": 8 * 24 * H,
        "quarantine_dir": str(tmp / "quarantine"),
        "state_dir": str(tmp / "state"),
    }
    base.update(outputs)
    (tmp / "pred").mkdir(parents=True, exist_ok=True)
    (tmp / "act").mkdir(parents=True, exist_ok=True)
    return Config.model_validate({"fleet": FLEET, "outputs": base})


def pred(
    b: str,
    e: str,
    m: str,
    target: float,
    made: float | None = None,
    prediction: Any = None,
    score: Any = None,
    flag: Any = None,
    features: dict[str, Any] | None = None,
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "customer": "c1",
        "building": b,
        "energy": e,
        "model": m,
        "made_at": iso(made if made is not None else target - H),
        "target_time": iso(target),
    }
    if prediction is not None:
        rec["prediction"] = prediction
    if score is not None:
        rec["anomaly_score"], rec["anomaly_flag"] = score, flag
    rec["features"] = features if features is not None else {"temp": 1.0, "occ": 0.5}
    return rec


def actual(b: str, e: str, target: float, value: Any) -> dict[str, Any]:
    return {"customer": "c1", "building": b, "energy": e, "target_time": iso(target), "actual": value}


_written = [0]


def stamp(path: Path) -> None:
    """Files get modification times on the test's clock, in the order they are written."""
    _written[0] += 1
    t = NOW - 600 + _written[0]
    os.utime(path, (t, t))


def write_jsonl(path: Path, records: list[Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    os.replace(tmp, path)  # written whole, as the contract says
    stamp(path)


def flat(records: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in records:
        r = dict(r)
        for k, v in r.pop("features").items():
            r[f"features.{k}"] = v
        rows.append(r)
    return pd.DataFrame(rows)


def write_csv(path: Path, records: list[dict[str, Any]]) -> None:
    flat(records).to_csv(path, index=False)
    stamp(path)


def write_parquet(path: Path, records: list[dict[str, Any]]) -> None:
    flat(records).to_parquet(path, index=False)
    stamp(path)


def parse(body: bytes) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Exposition text -> sample name -> [(labels, value)]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


class Harness:
    """A pipeline with a fixed clock, its collector, and the exporter's /metrics body to read values from."""

    def __init__(self, cfg: Config, now: float = NOW) -> None:
        self.now = now
        self.pipeline = OutputsPipeline(cfg, clock=lambda: self.now)
        self.collector = OutputsCollector(cfg, self.pipeline)
        self.exporter = Exporter("outputs", {"outputs": self.collector})
        self._parsed: dict[str, list[tuple[dict[str, str], float]]] | None = None

    def poll(self) -> None:
        assert self.exporter.poll_once("outputs"), self.exporter.poll_states["outputs"].last_error
        self._parsed = None

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        if self._parsed is None:
            self._parsed = parse(self.exporter.exposition())
        return self._parsed.get(name, [])

    def get(self, name: str, **labels: str) -> float | None:
        hits = [v for lab, v in self.samples(name) if lab == labels]
        assert len(hits) <= 1
        return hits[0] if hits else None

    def model(self, name: str, b: str, e: str, m: str, **labels: str) -> float | None:
        return self.get(name, customer="c1", building=b, energy=e, model=m, **labels)

    def close(self) -> None:
        self.exporter.stop()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(make_cfg(tmp_path))
    yield h
    h.close()


NO_KEYS = {"kind": "predictions", "customer": "", "building": "", "energy": "", "model": ""}


def quarantined(tmp: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted((tmp / "quarantine").glob("*.jsonl")):
        out += [json.loads(line) for line in p.read_text().splitlines()]
    return out


# ------------------------------------------------------------------------------- formats, join, windows
def forecaster_records(b: str, e: str) -> list[dict[str, Any]]:
    # targets -3h, -2h, -1h (24h window), -30h (7d only), +1h (not matured yet)
    return [
        pred(b, e, "forecast", NOW - 3 * H, prediction=10.0, features={"temp": 1.0, "occ": 0.5}),
        pred(b, e, "forecast", NOW - 2 * H, prediction=12.0, features={"temp": None, "occ": 0.5}),
        pred(b, e, "forecast", NOW - 1 * H, prediction=8.0, features={"temp": 3.0, "occ": 0.5}),
        pred(b, e, "forecast", NOW - 30 * H, prediction=20.0, features={"temp": 4.0, "occ": 0.5}),
        pred(
            b, e, "forecast", NOW + 1 * H, made=NOW - 60, prediction=9.0, features={"temp": 5.0, "occ": 0.5}
        ),
    ]


def test_all_formats_joined_to_late_actuals_give_hand_computed_quality(
    tmp_path: Path, harness: Harness
) -> None:
    cases = [("b1", "electricity"), ("b1", "heating"), ("b2", "electricity")]
    # One actual arrives before its predictions: the join must not depend on the order.
    write_jsonl(tmp_path / "act" / "a0.jsonl", [actual(b, e, NOW - 3 * H, 11.0) for b, e in cases])
    write_jsonl(tmp_path / "pred" / "p.jsonl", forecaster_records(*cases[0]))
    write_csv(tmp_path / "pred" / "p.csv", forecaster_records(*cases[1]))
    write_parquet(tmp_path / "pred" / "p.parquet", forecaster_records(*cases[2]))
    harness.poll()
    for b, e in cases:
        m = partial(harness.model, b=b, e=e, m="forecast")
        assert m("fleetmon_model_predictions_total") == 5
        assert m("fleetmon_model_matured_predictions", window="24h") == 3
        assert m("fleetmon_model_matured_predictions", window="7d") == 4
        assert m("fleetmon_model_matured_predictions_with_actual", window="24h") == 1
        assert m("fleetmon_model_mae_joules", window="24h") == pytest.approx(1.0 * J)
        assert m("fleetmon_model_last_prediction_timestamp_seconds") == pytest.approx(NOW - 60)
        assert m("fleetmon_model_latest_prediction_joules") == 9.0 * J
        assert m("fleetmon_model_latest_prediction_target_timestamp_seconds") == NOW + H

    # The other actuals arrive later (one of them 0: MAPE must skip it).
    write_jsonl(
        tmp_path / "act" / "a1.jsonl",
        [
            a
            for b, e in cases
            for a in (
                actual(b, e, NOW - 2 * H, 12.0),
                actual(b, e, NOW - H, 0.0),
                actual(b, e, NOW - 30 * H, 25.0),
            )
        ],
    )
    harness.poll()
    for b, e in cases:
        m = partial(harness.model, b=b, e=e, m="forecast")
        # 24h: errors (prediction - actual) = -1, 0, 8
        assert m("fleetmon_model_matured_predictions_with_actual", window="24h") == 3
        assert m("fleetmon_model_actual_coverage_ratio", window="24h") == 1.0
        assert m("fleetmon_model_mae_joules", window="24h") == pytest.approx(3.0 * J)
        assert m("fleetmon_model_rmse_joules", window="24h") == pytest.approx(math.sqrt(65 / 3) * J)
        assert m("fleetmon_model_bias_joules", window="24h") == pytest.approx(7 / 3 * J)
        assert m("fleetmon_model_mape_ratio", window="24h") == pytest.approx((1 / 11 + 0 / 12) / 2)
        assert m("fleetmon_model_mape_skipped_zero_actuals", window="24h") == 1
        # 7d adds target -30h: error -5
        assert m("fleetmon_model_mae_joules", window="7d") == pytest.approx(14 / 4 * J)
        assert m("fleetmon_model_bias_joules", window="7d") == pytest.approx(2 / 4 * J)
        assert m("fleetmon_model_mape_ratio", window="7d") == pytest.approx((1 / 11 + 0 + 5 / 25) / 3)
        # one of the three 24h rows has temp missing; occ never
        assert m("fleetmon_model_feature_missing_ratio", window="24h", feature="temp") == pytest.approx(1 / 3)
        assert m("fleetmon_model_feature_missing_ratio", window="7d", feature="temp") == pytest.approx(1 / 4)
        assert m("fleetmon_model_feature_missing_ratio", window="24h", feature="occ") is None  # none missing
        # newest actual is for -1h (value 0), and the prediction for that hour was 8
        assert m("fleetmon_model_latest_actual_joules") == 0.0
        assert m("fleetmon_model_latest_actual_target_timestamp_seconds") == NOW - H
        assert m("fleetmon_model_latest_matched_prediction_joules") == 8.0 * J
    # b2 heating has no data: no quality series, but a volume counter at 0
    assert harness.model("fleetmon_model_mae_joules", "b2", "heating", "forecast", window="24h") is None
    assert harness.model("fleetmon_model_predictions_total", "b2", "heating", "forecast") == 0
    assert harness.get("fleetmon_building_actuals_total", customer="c1", building="b1", energy="heating") == 4
    assert harness.get("fleetmon_outputs_files_read_total", source="pred-csv") == 1
    assert harness.get("fleetmon_outputs_files_read_total", source="actuals") == 2
    assert harness.get("fleetmon_outputs_source_up", source="pred-parquet") == 1
    # each file is read once
    harness.poll()
    assert harness.model("fleetmon_model_predictions_total", "b1", "heating", "forecast") == 5
    assert quarantined(tmp_path) == []


def test_windows_move_with_time_and_rows_expire_after_retention(tmp_path: Path) -> None:
    h = Harness(make_cfg(tmp_path, retention_seconds=48 * H, windows={"24h": 24 * H, "2d": 48 * H}))
    try:
        write_jsonl(tmp_path / "pred" / "p.jsonl", forecaster_records("b1", "heating"))
        h.poll()
        assert h.model("fleetmon_model_matured_predictions", "b1", "heating", "forecast", window="24h") == 3
        # 2 hours later the +1h target has matured; the -30h one is still within 2d
        h.now = NOW + 2 * H
        h.poll()
        assert h.model("fleetmon_model_matured_predictions", "b1", "heating", "forecast", window="24h") == 4
        assert h.model("fleetmon_model_matured_predictions", "b1", "heating", "forecast", window="2d") == 5
        # a day later only the rows of the last 48 h remain in memory
        h.now = NOW + 24 * H
        h.poll()
        assert h.get("fleetmon_outputs_rows_retained", kind="predictions") == 4
        assert h.model("fleetmon_model_matured_predictions", "b1", "heating", "forecast", window="24h") == 1
        assert h.model("fleetmon_model_matured_predictions", "b1", "heating", "forecast", window="2d") == 4
        # the freshness timestamp survives eviction
        assert (
            h.model("fleetmon_model_last_prediction_timestamp_seconds", "b1", "heating", "forecast")
            == NOW - 60
        )
    finally:
        h.close()


def test_anomaly_rate_and_score_quantiles(tmp_path: Path) -> None:
    h = Harness(make_cfg(tmp_path, score_quantiles=[0.5, 0.9]))
    try:
        scores = [0.1, 0.2, 0.35, 0.9, 0.95]
        flags = [0, 0, 0, 1, 1]
        recs = [
            pred("b1", "electricity", "anomaly", NOW - (i + 1) * H, made=NOW - i * H, score=s, flag=f)
            for i, (s, f) in enumerate(zip(scores, flags, strict=True))
        ]
        recs.append(
            pred("b1", "electricity", "anomaly", NOW - 40 * H, made=NOW - 39 * H, score=1.0, flag=True)
        )
        write_jsonl(tmp_path / "pred" / "a.jsonl", recs)
        h.poll()
        m = lambda name, **kw: h.model(name, "b1", "electricity", "anomaly", **kw)  # noqa: E731
        assert m("fleetmon_model_scored_predictions", window="24h") == 5
        assert m("fleetmon_model_anomaly_ratio", window="24h") == pytest.approx(2 / 5)
        assert m("fleetmon_model_anomaly_ratio", window="7d") == pytest.approx(3 / 6)
        assert m("fleetmon_model_anomaly_score_quantile", window="24h", q="0.5") == pytest.approx(0.35)
        assert m("fleetmon_model_anomaly_score_quantile", window="24h", q="0.9") == pytest.approx(
            float(np.quantile(scores, 0.9))
        )
        assert m("fleetmon_model_anomaly_score_quantile", window="7d", q="0.9") == pytest.approx(
            float(np.quantile([*scores, 1.0], 0.9))
        )
        assert m("fleetmon_model_latest_anomaly_score") == 0.1
        # forecaster-only series are not exported for an anomaly detector
        assert m("fleetmon_model_mae_joules", window="24h") is None
    finally:
        h.close()


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),  # model of b1: electricity/heating x forecast/anomaly
            st.integers(-60, 5),  # target hour relative to NOW
            st.floats(0, 100, allow_nan=False),  # prediction
            st.one_of(st.none(), st.floats(0, 100, allow_nan=False)),  # actual (None = not known)
            st.floats(0, 1),  # anomaly score
        ),
        max_size=40,
        unique_by=lambda r: (r[0] // 2, r[1]),  # one actual per building/energy and hour
    )
)
def test_quality_equals_a_pandas_computation(rows: list[tuple[int, int, float, float | None, float]]) -> None:
    """The vectorised computation against a plain pandas one, on random data (no files needed)."""
    from fleetmon.outputs.quality import compute
    from fleetmon.outputs.records import FleetIndex
    from fleetmon.outputs.store import Snapshot

    cfg = Config.model_validate({"fleet": FLEET})
    fleet = FleetIndex(cfg.fleet)
    models = [
        ("electricity", "forecast"),
        ("electricity", "anomaly"),
        ("heating", "forecast"),
        ("heating", "anomaly"),
    ]
    ids = [fleet.model_ids[("c1", "b1", e, m)] for e, m in models]
    df = pd.DataFrame(
        {
            "model": [ids[r[0]] for r in rows],
            "target": [NOW + r[1] * H for r in rows],
            "prediction": [r[2] if models[r[0]][1] == "forecast" else np.nan for r in rows],
            "score": [r[4] if models[r[0]][1] == "anomaly" else np.nan for r in rows],
            "flag": [float(r[4] > 0.5) if models[r[0]][1] == "anomaly" else np.nan for r in rows],
            "actual": [np.nan if r[3] is None else r[3] for r in rows],
        },
        dtype=float,
    )
    df["model"] = df["model"].astype(np.int64)
    df["be"] = fleet.be_of_model[df["model"].to_numpy()]
    df["made_at"] = df["target"] - H
    df["features.temp"] = 1.0
    acts = df.dropna(subset=["actual"]).drop_duplicates(["be", "target"])
    snap = Snapshot(df.drop(columns="actual"), acts[["be", "target", "actual"]].assign(observed_at=np.nan))
    q = compute(snap, fleet, {"24h": 24 * H}, ["temp"], [0.5], NOW)
    w = q.windows["24h"]
    act_map = {(b, t): a for b, t, a in zip(acts["be"], acts["target"], acts["actual"], strict=True)}
    df["actual"] = [act_map.get((b, t), np.nan) for b, t in zip(df["be"], df["target"], strict=True)]
    win = df[(df.target <= NOW) & (df.target > NOW - 24 * H)]
    for i in ids:
        rows_i = win[win.model == i]
        assert w.matured[i] == len(rows_i)
        assert w.with_actual[i] == rows_i.actual.notna().sum()
        err = (rows_i.prediction - rows_i.actual).dropna()
        if len(err) and fleet.is_forecaster[i]:
            assert w.mae[i] == pytest.approx(err.abs().mean())
            assert w.rmse[i] == pytest.approx(math.sqrt((err**2).mean()))
            assert w.bias[i] == pytest.approx(err.mean())
            nz = rows_i[(rows_i.actual != 0) & rows_i.actual.notna()]
            if len(nz):
                assert w.mape[i] == pytest.approx(
                    ((nz.prediction - nz.actual).abs() / nz.actual.abs()).mean()
                )
            else:
                assert math.isnan(w.mape[i])
        else:
            assert math.isnan(w.mae[i])
        if fleet.is_anomaly[i] and len(rows_i):
            assert w.anomaly_ratio[i] == pytest.approx(rows_i.flag.mean())
            assert w.score_quantiles[0.5][i] == pytest.approx(rows_i.score.median())


# ------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_counted_per_reason_and_quarantined(tmp_path: Path, harness: Harness) -> None:
    good = pred("b1", "heating", "forecast", NOW - H, prediction=5.0)
    bad_rows = [
        ("malformed", "{not json"),
        ("malformed", "[1, 2]"),
        ("missing_field", {k: v for k, v in good.items() if k != "target_time"}),
        ("unknown_fleet_key", {**good, "building": "b99"}),
        ("unknown_fleet_key", {**good, "model": "baseline"}),
        ("wrong_type", {**good, "prediction": "lots"}),
        ("wrong_type", {**good, "made_at": "yesterday"}),
        ("wrong_type", {**good, "features": {"temp": "warm", "occ": 0.5}}),
        ("wrong_type", {**good, "features": "temp=1"}),
        ("missing_value", {**good, "prediction": None}),
        ("missing_value", {**good, "target_time": iso(NOW - 5 * H), "prediction": float("nan")}),
        ("out_of_range", pred("b1", "heating", "anomaly", NOW - H, score=1.5, flag=1)),
        ("out_of_range", pred("b1", "heating", "anomaly", NOW - 2 * H, score=0.5, flag=2)),
        ("missing_value", pred("b1", "heating", "anomaly", NOW - 3 * H, prediction=3.0)),
        ("future_timestamp", pred("b1", "heating", "forecast", NOW + 3 * H, made=NOW + H, prediction=1.0)),
        (
            "schema_missing_feature",
            pred("b1", "electricity", "forecast", NOW - H, prediction=1.0, features={"temp": 1.0}),
        ),
        (
            "schema_unexpected_feature",
            pred(
                "b1",
                "electricity",
                "forecast",
                NOW - 2 * H,
                made=NOW - 30,
                prediction=1.0,
                features={"temp": 1, "occ": 1, "wind": 3},
            ),
        ),
    ]
    write_jsonl(tmp_path / "pred" / "bad.jsonl", [good] + [r for _, r in bad_rows])
    # the same good row again in a second file, and twice within one file: duplicates
    write_jsonl(
        tmp_path / "pred" / "dup.jsonl", [good, pred("b2", "heating", "forecast", NOW, prediction=1.0)] * 2
    )
    write_jsonl(
        tmp_path / "act" / "bad-actuals.jsonl",
        [
            actual("b1", "heating", NOW - H, 4.0),
            actual("b1", "heating", NOW - H, 4.5),  # duplicate
            actual("b1", "heating", NOW - 2 * H, "n/a"),  # wrong type
            actual("b1", "heating", NOW + 2 * H, 1.0),  # measured in the future
            actual("b1", "solar", NOW - H, 1.0),  # unknown energy type
        ],
    )
    # a CSV whose schema lost a feature column: every row rejected, and the model's schema gauge set
    write_csv(
        tmp_path / "pred" / "schema.csv",
        [
            pred("b2", "electricity", "forecast", NOW - k * H, prediction=2.0, features={"temp": 1.0})
            for k in (1, 2)
        ],
    )
    harness.poll()

    expected: dict[str, int] = {}
    for reason, _ in bad_rows:
        expected[reason] = expected.get(reason, 0) + 1
    expected["duplicate"] = 3  # dup.jsonl: the good row of bad.jsonl again, then both its rows twice
    expected["schema_missing_feature"] += 2
    for reason, n in expected.items():
        got = sum(
            v
            for lab, v in harness.samples("fleetmon_outputs_rows_rejected_total")
            if lab["reason"] == reason and lab["kind"] == "predictions"
        )
        assert got == n, reason
    act_rejected = {
        lab["reason"]: v
        for lab, v in harness.samples("fleetmon_outputs_rows_rejected_total")
        if lab["kind"] == "actuals"
    }
    assert act_rejected == {"duplicate": 1, "wrong_type": 1, "future_timestamp": 1, "unknown_fleet_key": 1}
    # fleet labels only when the keys are valid fleet keys
    lab = {"kind": "predictions", "customer": "c1", "building": "b1", "energy": "heating"}
    assert (
        harness.get("fleetmon_outputs_rows_rejected_total", reason="wrong_type", model="forecast", **lab) == 4
    )
    unknown = dict(lab, customer="", building="", energy="", model="")
    assert harness.get("fleetmon_outputs_rows_rejected_total", reason="unknown_fleet_key", **unknown) == 2
    # accepted: the good row (once), b2 heating; the anomaly detector got nothing valid
    assert harness.model("fleetmon_model_predictions_total", "b1", "heating", "forecast") == 1
    assert harness.model("fleetmon_model_predictions_total", "b2", "heating", "forecast") == 1
    assert harness.model("fleetmon_model_predictions_total", "b1", "heating", "anomaly") == 0
    # schema change per model: b2 electricity misses "occ"; b1 electricity's newest row had an extra column
    assert (
        harness.model("fleetmon_outputs_schema_mismatch", "b2", "electricity", "forecast", kind="missing")
        == 1
    )
    assert (
        harness.model("fleetmon_outputs_schema_mismatch", "b1", "electricity", "forecast", kind="missing")
        == 0
    )
    assert (
        harness.model("fleetmon_outputs_schema_mismatch", "b1", "electricity", "forecast", kind="unexpected")
        == 1
    )
    assert harness.model("fleetmon_outputs_schema_mismatch", "b1", "heating", "forecast", kind="missing") == 0

    # every rejected row is in the quarantine, with its reason, file, line and the record itself
    q = quarantined(tmp_path)
    assert len(q) == sum(expected.values()) + 4
    by_line = {(Path(r["file"]).name, r["line"]): r for r in q}
    first = by_line[("bad.jsonl", 2)]
    assert (
        first["reason"] == "malformed" and first["record"] == "{not json" and first["source"] == "pred-jsonl"
    )
    wrong = by_line[("bad.jsonl", 7)]
    assert wrong["reason"] == "wrong_type" and wrong["record"]["prediction"] == "lots"
    assert wrong["building"] == "b1" and wrong["model"] == "forecast" and "prediction" in wrong["detail"]
    assert (
        by_line[("bad.jsonl", 5)]["reason"] == "unknown_fleet_key"
        and "building" not in by_line[("bad.jsonl", 5)]
    )
    assert by_line[("bad.jsonl", 12)]["record"]["prediction"] == "nan"  # NaN kept, as JSON can hold it
    schema_rows = [r for r in q if r["file"].endswith("schema.csv")]
    assert [r["line"] for r in schema_rows] == [0, 1]
    assert schema_rows[0]["detail"] == "missing: occ" and schema_rows[0]["record"]["features.temp"] == "1.0"
    dup = [r for r in q if r["reason"] == "duplicate" and r["kind"] == "predictions"]
    assert {(Path(r["file"]).name, r["line"]) for r in dup} == {
        ("dup.jsonl", 1),
        ("dup.jsonl", 3),
        ("dup.jsonl", 4),
    }
    assert harness.get("fleetmon_outputs_source_up", source="pred-jsonl") == 1


# ------------------------------------------------------------------------------------ restart, errors
def test_restart_rebuilds_the_window_without_recounting(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    write_jsonl(tmp_path / "pred" / "p1.jsonl", [*forecaster_records("b1", "heating"), "garbage"])
    write_jsonl(tmp_path / "act" / "a1.jsonl", [actual("b1", "heating", NOW - 2 * H, 10.0)])
    h = Harness(cfg)
    h.poll()
    mae = h.model("fleetmon_model_mae_joules", "b1", "heating", "forecast", window="24h")
    assert mae == 2.0 * J
    assert h.model("fleetmon_model_predictions_total", "b1", "heating", "forecast") == 5
    assert h.get("fleetmon_outputs_rows_rejected_total", reason="malformed", **NO_KEYS) == 1
    h.close()
    n_quarantined = len(quarantined(tmp_path))

    h2 = Harness(cfg)  # a restarted exporter: same state and quarantine directories
    try:
        h2.poll()
        # the window is back ...
        assert h2.model("fleetmon_model_mae_joules", "b1", "heating", "forecast", window="24h") == mae
        assert h2.model("fleetmon_model_matured_predictions", "b1", "heating", "forecast", window="7d") == 4
        assert (
            h2.model("fleetmon_model_last_prediction_timestamp_seconds", "b1", "heating", "forecast")
            == NOW - 60
        )
        # ... nothing is counted or quarantined again, and the counters go on where they were
        assert h2.model("fleetmon_model_predictions_total", "b1", "heating", "forecast") == 5
        assert h2.get("fleetmon_outputs_rows_rejected_total", reason="malformed", **NO_KEYS) == 1
        assert h2.get("fleetmon_outputs_files_read_total", source="pred-jsonl") == 1
        assert h2.get("fleetmon_building_actuals_total", customer="c1", building="b1", energy="heating") == 1
        assert len(quarantined(tmp_path)) == n_quarantined
        # a file that appears now is new
        write_jsonl(
            tmp_path / "pred" / "p2.jsonl",
            [pred("b1", "heating", "forecast", NOW + 2 * H, made=NOW, prediction=1.0)],
        )
        h2.poll()
        assert h2.model("fleetmon_model_predictions_total", "b1", "heating", "forecast") == 6
    finally:
        h2.close()


def test_a_killed_exporter_counts_each_file_once(tmp_path: Path) -> None:
    """kill -9 after a poll: the counters come back from the state file saved by that poll."""
    cfg = make_cfg(tmp_path)
    write_jsonl(tmp_path / "pred" / "p1.jsonl", forecaster_records("b1", "heating"))
    h = Harness(cfg)
    h.poll()
    # no close(): a killed process saves nothing more
    h2 = Harness(cfg)
    try:
        # before its first poll the restarted exporter shows no counters (they may be a generation behind)
        assert h2.model("fleetmon_model_predictions_total", "b1", "heating", "forecast") is None
        assert h2.get("fleetmon_outputs_state_errors_total", reason="corrupt") == 0
        write_jsonl(tmp_path / "pred" / "p2.jsonl", forecaster_records("b2", "heating"))
        h2.poll()
        assert h2.model("fleetmon_model_predictions_total", "b1", "heating", "forecast") == 5
        assert h2.model("fleetmon_model_predictions_total", "b2", "heating", "forecast") == 5
        assert h2.get("fleetmon_outputs_files_read_total", source="pred-jsonl") == 2
    finally:
        h2.close()
        h.close()


@pytest.mark.parametrize(
    "damage", [b'\x00\xff{"files": {"half a state file', b"[]", b'{"files": {"x": 5}}', b""]
)
def test_a_corrupt_state_file_is_set_aside_counted_and_nothing_counted_twice(
    tmp_path: Path, damage: bytes
) -> None:
    """The previous generation takes over: what was read after it is read again, and the counters end
    exactly where they were (ground truth: the rows written)."""
    cfg = make_cfg(tmp_path)
    h = Harness(cfg)
    series = [("b1", "heating"), ("b2", "heating"), ("b1", "electricity")]
    for i, (b, e) in enumerate(series):  # three polls, one new file each: three generations of the state file
        write_jsonl(tmp_path / "pred" / f"p{i}.jsonl", forecaster_records(b, e))
        h.poll()
    before = {s: h.model("fleetmon_model_predictions_total", *s, "forecast") for s in series}
    assert list(before.values()) == [5, 5, 5]
    h.close()
    state = tmp_path / "state" / "state.json"
    state.write_bytes(damage)

    h2 = Harness(cfg)
    try:
        assert h2.get("fleetmon_outputs_state_errors_total", reason="corrupt") == 1
        aside = list(state.parent.glob("state.json.corrupt-*"))
        assert [p.read_bytes() for p in aside] == [damage]  # kept for inspection, as it was
        h2.poll()
        after = {s: h2.model("fleetmon_model_predictions_total", *s, "forecast") for s in series}
        assert after == before
        assert h2.get("fleetmon_outputs_files_read_total", source="pred-jsonl") == 3
        assert json.loads(state.read_text())["files"]  # a good state file in place of the damaged one
    finally:
        h2.close()


def test_with_both_generations_damaged_the_exporter_starts_afresh(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    write_jsonl(tmp_path / "pred" / "p1.jsonl", forecaster_records("b1", "heating"))
    h = Harness(cfg)
    h.poll()
    write_jsonl(tmp_path / "pred" / "p2.jsonl", forecaster_records("b2", "heating"))
    h.poll()
    h.close()
    (tmp_path / "state" / "state.json").write_bytes(b"garbage")
    (tmp_path / "state" / "state.prev.json").write_bytes(b"garbage too")
    h2 = Harness(cfg)
    try:
        h2.poll()
        # every file read and counted again, from 0: the counter reset that rate() handles
        assert h2.get("fleetmon_outputs_state_errors_total", reason="corrupt") == 1
        assert h2.model("fleetmon_model_predictions_total", "b1", "heating", "forecast") == 5
        assert h2.get("fleetmon_outputs_files_read_total", source="pred-jsonl") == 2
    finally:
        h2.close()


def test_a_state_file_that_cannot_be_saved_is_counted(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    h = Harness(cfg)
    try:
        write_jsonl(tmp_path / "pred" / "p1.jsonl", forecaster_records("b1", "heating"))
        (tmp_path / "state").mkdir(exist_ok=True)
        (tmp_path / "state" / "state.json.tmp").mkdir()  # the temporary file cannot be created
        h.poll()
        assert h.get("fleetmon_outputs_state_errors_total", reason="save") == 1
        assert h.model("fleetmon_model_predictions_total", "b1", "heating", "forecast") == 5
    finally:
        h.close()


def test_unreadable_file_marks_the_source_down_and_the_rest_keeps_flowing(
    tmp_path: Path, harness: Harness
) -> None:
    (tmp_path / "pred" / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    write_parquet(tmp_path / "pred" / "ok.parquet", forecaster_records("b2", "heating"))
    write_jsonl(tmp_path / "pred" / "p.jsonl", forecaster_records("b1", "heating"))
    harness.poll()
    assert harness.get("fleetmon_outputs_source_up", source="pred-parquet") == 0
    assert harness.get("fleetmon_outputs_source_errors_total", source="pred-parquet") == 1
    assert harness.get("fleetmon_outputs_source_up", source="pred-jsonl") == 1
    assert harness.model("fleetmon_model_predictions_total", "b2", "heating", "forecast") == 5
    assert harness.model("fleetmon_model_predictions_total", "b1", "heating", "forecast") == 5
    # the broken file is remembered with its error, not retried on every poll
    harness.poll()
    assert harness.get("fleetmon_outputs_source_errors_total", source="pred-parquet") == 1
    assert harness.get("fleetmon_outputs_source_up", source="pred-parquet") == 1
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert "broken.parquet" in next(k for k, v in state["files"].items() if v["error"])


# ------------------------------------------------------------------------------------------------- SQL
def create_predictions_table(conn: sqlite3.Connection) -> None:
    """The table ``sql_rows`` fills: the prediction record's fields, features as JSON text."""
    conn.execute(
        "CREATE TABLE predictions (customer TEXT, building TEXT, energy TEXT, model TEXT, made_at TEXT,"
        " target_time TEXT, prediction REAL, anomaly_score REAL, anomaly_flag INTEGER, features TEXT)"
    )


def sql_rows(conn: sqlite3.Connection, recs: list[dict[str, Any]]) -> None:
    conn.executemany(
        "INSERT INTO predictions VALUES (?,?,?,?,?,?,?,?,?,?)",
        [
            (
                r["customer"],
                r["building"],
                r["energy"],
                r["model"],
                r["made_at"],
                r["target_time"],
                r.get("prediction"),
                r.get("anomaly_score"),
                r.get("anomaly_flag"),
                json.dumps(r["features"]),
            )
            for r in recs
        ],
    )
    conn.commit()


def test_sqlite_source_is_read_incrementally_and_survives_restart(tmp_path: Path) -> None:
    db = tmp_path / "outputs.db"
    conn = sqlite3.connect(db)
    try:
        create_predictions_table(conn)
        conn.execute(
            "CREATE TABLE actuals (customer TEXT, building TEXT, energy TEXT, target_time TEXT, actual REAL)"
        )
        recs = forecaster_records("b1", "electricity")
        # rows are inserted in made_at order (the incremental read relies on it)
        recs = sorted(recs, key=lambda r: r["made_at"])
        sql_rows(conn, recs[:3])
        conn.executemany(
            "INSERT INTO actuals VALUES ('c1','b1','electricity',?,?)",
            [(iso(NOW - 3 * H), 11.0), (iso(NOW - 2 * H), 12.0)],
        )
        conn.commit()
        url = f"sqlite:///{db}"
        cfg = make_cfg(
            tmp_path,
            predictions=[],
            actuals=[],
            sql=[
                {
                    "name": "db-pred",
                    "url": url,
                    "query": "SELECT * FROM predictions",
                    "time_column": "made_at",
                },
                {
                    "name": "db-act",
                    "url": url,
                    "query": "SELECT * FROM actuals",
                    "kind": "actuals",
                    "time_column": "target_time",
                },
                {"name": "db-broken", "url": url, "query": "SELECT * FROM no_such_table"},
            ],
        )
        h = Harness(cfg)
        h.poll()
        m = lambda name, **kw: h.model(name, "b1", "electricity", "forecast", **kw)  # noqa: E731
        assert m("fleetmon_model_predictions_total") == 3
        assert m("fleetmon_model_mae_joules", window="24h") == pytest.approx(0.5 * J)  # errors -1, 0
        assert h.get("fleetmon_outputs_source_up", source="db-broken") == 0
        assert h.get("fleetmon_outputs_source_errors_total", source="db-broken") == 1
        assert h.get("fleetmon_outputs_source_up", source="db-pred") == 1
        # new rows only: nothing re-read (no duplicates), two more counted
        sql_rows(conn, recs[3:])
        h.poll()
        assert m("fleetmon_model_predictions_total") == 5
        assert (
            h.get(
                "fleetmon_outputs_rows_rejected_total",
                reason="duplicate",
                kind="predictions",
                customer="c1",
                building="b1",
                energy="electricity",
                model="forecast",
            )
            is None
        )
        h.close()

        h = Harness(cfg)  # restart: window rebuilt from the query, nothing counted again
        h.poll()
        assert m("fleetmon_model_predictions_total") == 5  # where it was before the restart
        assert m("fleetmon_model_matured_predictions", window="7d") == 4
        assert m("fleetmon_model_mae_joules", window="24h") == pytest.approx(0.5 * J)
        sql_rows(conn, [pred("b1", "electricity", "forecast", NOW + 5 * H, made=NOW, prediction=1.0)])
        h.poll()
        assert m("fleetmon_model_predictions_total") == 6
        assert (
            h.get(
                "fleetmon_outputs_source_info",
                source="db-pred",
                kind="predictions",
                format="sql",
                location=url,
            )
            == 1
        )
        h.close()
    finally:
        conn.close()


# --------------------------------------------------------------------------------------- exposition
def test_exposition_passes_promtool_and_building_metadata(tmp_path: Path, harness: Harness) -> None:
    anomaly = [
        pred("b1", "heating", "anomaly", NOW - k * H, made=NOW - k * H + 60, score=0.1 * k, flag=0)
        for k in (1, 2)
    ]
    write_jsonl(tmp_path / "pred" / "p.jsonl", [*forecaster_records("b1", "heating"), *anomaly, "junk"])
    write_jsonl(tmp_path / "act" / "a.jsonl", [actual("b1", "heating", NOW - H, 3.0)])
    harness.poll()
    assert harness.model(
        "fleetmon_model_anomaly_score_quantile", "b1", "heating", "anomaly", window="24h", q="0.5"
    )
    assert (
        harness.get(
            "fleetmon_building_info",
            customer="c1",
            building="b1",
            building_type="school",
            weather_station="fmi-100971",
            latitude="60.17",
            longitude="24.94",
        )
        == 1
    )
    assert harness.get("fleetmon_building_volume_cubic_meters", customer="c1", building="b1") == 1200
    # served over HTTP as Prometheus asks for it: gzip (the live part and the pre-rendered part are
    # two gzip members) and plain
    httpd, _ = harness.exporter.serve("127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{httpd.server_port}/metrics"
        req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.headers["Content-Encoding"] == "gzip"
            text = gzip.decompress(r.read())
        with urllib.request.urlopen(url, timeout=10) as r:
            plain = r.read()
        body = harness.collector.prerendered().body
        assert text.endswith(body) and plain.endswith(body)  # encoded once per poll, served as is
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert b"fleetmon_scrape_collector_success" in text and b"fleetmon_model_mae_joules" in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (scripts/install-system-deps.sh)"
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()


def test_a_poll_with_nothing_new_recomputes_nothing_until_refresh_seconds(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, refresh_seconds=60)
    clock = [NOW]
    coll = OutputsCollector(cfg)
    coll.pipeline.clock = lambda: clock[0]
    computed = []
    refresh = coll.pipeline.refresh_quality
    coll.pipeline.refresh_quality = lambda: computed.append(clock[0]) or refresh()  # type: ignore[method-assign]
    write_jsonl(tmp_path / "pred" / "a.jsonl", [pred("b1", "heating", "forecast", NOW - H, prediction=5.0)])
    coll.poll()
    first = coll.prerendered()
    clock[0] += 30
    coll.poll()  # nothing new, 30 s later: the same bytes, nothing computed
    assert computed == [NOW] and coll.prerendered() is first
    write_jsonl(tmp_path / "pred" / "b.jsonl", [pred("b2", "heating", "forecast", NOW - H, prediction=6.0)])
    coll.poll()  # a new file: computed and rendered at once
    assert computed == [NOW, NOW + 30] and coll.prerendered() is not first
    clock[0] += 61
    coll.poll()  # nothing new, but the windows have slid for longer than refresh_seconds
    assert computed == [NOW, NOW + 30, NOW + 91]
    (tmp_path / "pred" / "c.jsonl").write_text("{not json\n")
    clock[0] += 1
    coll.poll()  # a rejected row is news too
    assert len(computed) == 4


def test_a_far_future_sql_row_does_not_hide_the_rows_after_it(tmp_path: Path) -> None:
    """A row whose time column lies beyond now + max_future_skew_seconds is rejected; it must not become the
    watermark, or every row written after it would be below it and never read."""
    db = tmp_path / "outputs.db"
    conn = sqlite3.connect(db)
    try:
        create_predictions_table(conn)
        recs = sorted(forecaster_records("b1", "electricity"), key=lambda r: r["made_at"])
        future = {**recs[0], "made_at": "2099-01-01T00:00:00Z", "target_time": "2099-01-01T01:00:00Z"}
        sql_rows(conn, [recs[0], future])
        cfg = make_cfg(
            tmp_path,
            predictions=[],
            actuals=[],
            sql=[{"name": "db", "url": f"sqlite:///{db}", "query": "SELECT * FROM predictions"}],
        )
        h = Harness(cfg)
        h.poll()
        m = lambda name, **kw: h.model(name, "b1", "electricity", "forecast", **kw)  # noqa: E731
        assert m("fleetmon_model_predictions_total") == 1
        rejected = dict(reason="future_timestamp", kind="predictions", customer="c1", building="b1")
        rejected |= dict(energy="electricity", model="forecast")
        assert h.get("fleetmon_outputs_rows_rejected_total", **rejected) == 1
        sql_rows(conn, recs[1:])
        h.poll()
        h.poll()
        assert m("fleetmon_model_predictions_total") == len(recs)  # every later row read
        assert h.get("fleetmon_outputs_rows_rejected_total", **rejected) == 1  # the bad row once
        h.close()
    finally:
        conn.close()
