"""The simulator's outputs follow docs/formats.md and honour its own ground truth.

One simulation of the default demo fleet (20 buildings, time scale 120, a week of backfill) is
fast-forwarded through ~40 wall minutes with ``Simulator.step`` (no sleeping) and shared by the tests.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from fleetmon.config import Config, DemoConfig, FleetConfig, ModelKey, OutputsConfig
from simulator.core import Simulator
from simulator.fleet import generate_fleet
from simulator.incidents import KINDS, LATENCY_APPS, REPLICA_APPS, Incident, Schedule, fault_station
from simulator.logs import LogFile, Platform
from simulator.world import FEATURES

START = datetime(2026, 1, 15, 9, 0, 0, 250000, tzinfo=UTC).timestamp()
HOURS = 80  # simulated hours after start-up: 40 wall minutes at time scale 120
REASONS = {
    "ReplicaCount",
    "MemoryUsage",
    "ReplicaUnhealthy",
    "BackoffLimitExceeded",
    "Error",
    "AssigningReplicaFailed",
    "ScaledObjectCheckFailed",
    "FailedMount",
    "Completed",
    "KEDAScalerFailed",
}
# nginx: log_format combined, then $request_time (seconds, millisecond resolution) as the last field
ACCESS = re.compile(
    r'^(\S+) \S+ \S+ \[(\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} \+0000)\] "(\w+) (\S+) HTTP/1\.1" (\d{3}) (\d+) "[^"]*" "[^"]*" '
    r"(\d+\.\d{3})$"
)
# model-serving's JSON request log (inside the Docker json-file record)
SERVING_KEYS = ["time", "level", "logger", "method", "path", "status", "duration_ms"]
SERVING_PATH = re.compile(
    r"^/health$|^/v1/models/c\d\d-b\d{3}/(electricity|heating)/(forecast|anomaly)(:predict)?$"
)
NANO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z$")
CRI = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z) (stdout|stderr) ([FP]) (.*)$")


def make_cfg(out: Path, seed: int = 42, buildings: int = 20, customers: int = 4, **demo: Any) -> Config:
    return Config(
        fleet=FleetConfig(customers=generate_fleet(seed, customers, buildings)),
        outputs=OutputsConfig(features=list(FEATURES)),
        demo=DemoConfig(
            seed=seed,
            customers=customers,
            buildings=buildings,
            output_dir=out,
            **{"time_scale": 120, "backfill_hours": 192, **demo},
        ),
    )


def ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def read_jsonl(p: Path) -> list[dict[str, Any]]:
    with p.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


class Run:
    def __init__(self, out: Path, sim: Simulator) -> None:
        self.out = out
        self.sim = sim
        self.truth = read_jsonl(out / "ground_truth.jsonl")
        self.incidents = [r for r in self.truth if r["kind"] in KINDS]
        # what the models serve; a challenger's shadow rows (tests/test_simulator_versions.py) apart
        self.preds: dict[ModelKey, list[dict[str, Any]]] = defaultdict(list)
        self.shadow: dict[ModelKey, list[dict[str, Any]]] = defaultdict(list)
        for p in sorted((out / "outputs" / "predictions").glob("*.jsonl")):
            for r in read_jsonl(p):
                rows = self.preds if r.get("alias", "champion") == "champion" else self.shadow
                rows[ModelKey(**{k: r[k] for k in ("customer", "building", "energy", "model")})].append(r)
        self.actuals: dict[tuple[str, str, str, str], float] = {}
        for p in sorted((out / "outputs" / "actuals").glob("*.jsonl")):
            for r in read_jsonl(p):
                self.actuals[(r["customer"], r["building"], r["energy"], r["target_time"])] = r["actual"]

    def first(self, kind: str) -> dict[str, Any]:
        return next(r for r in self.incidents if r["kind"] == kind)

    @staticmethod
    def key(r: dict[str, Any]) -> ModelKey:
        return ModelKey(customer=r["customer"], building=r["building"], energy=r["energy"], model=r["model"])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    out = tmp_path_factory.mktemp("demo")
    sim = Simulator(make_cfg(out), start=START, mlflow=False)
    sim.fast_forward(HOURS)
    yield Run(out, sim)
    sim.close()


# ------------------------------------------------------------------------------------- contracts
def test_prediction_and_actual_files_follow_the_contract(run: Run) -> None:
    models = set(run.sim.world.models)
    pred_files = sorted((run.out / "outputs" / "predictions").iterdir())
    assert len(pred_files) == 192 + HOURS
    assert all(re.fullmatch(r"predictions-\d{8}T\d{6}(\.\d{3})?Z\.jsonl", p.name) for p in pred_files)
    assert not list(run.out.rglob("*.tmp"))
    end = START + HOURS * run.sim.interval
    for p in pred_files[:5] + pred_files[-5:]:
        for r in read_jsonl(p):
            key = run.key(r)
            assert key in models
            assert set(r["features"]) == set(FEATURES)
            assert all(isinstance(v, int | float) for v in r["features"].values())
            assert ts(r["made_at"]) <= ts(r["target_time"]) <= end
            # the registry's champion (as seeding registers it), or the challenger it runs beside it
            if r["alias"] == "champion":
                assert r["model_version"] == run.sim.world.serving[key]
            else:
                assert r["alias"] == "challenger"
                assert r["model_version"] == run.sim.world.challengers[key].challenger_version
            common = {*key.labels(), "made_at", "target_time", "model_version", "alias", "features"}
            if key.model == "forecast":
                assert set(r) == {*common, "prediction"}
                assert isinstance(r["prediction"], float) and r["prediction"] >= 0
            else:
                assert set(r) == {*common, "anomaly_score", "anomaly_flag"}
                assert 0.0 <= r["anomaly_score"] <= 1.0 and r["anomaly_flag"] in (0, 1)
    act_files = sorted((run.out / "outputs" / "actuals").iterdir())
    for p in act_files[:3] + act_files[-3:]:
        for r in read_jsonl(p):
            assert set(r) == {
                "customer",
                "building",
                "energy",
                "target_time",
                "actual",
                "anomaly_label",
                "observed_at",
            }
            assert r["anomaly_label"] in (0, 1)
            # actuals arrive 2-4 simulated hours after the hour they measure
            lag = (ts(r["observed_at"]) - ts(r["target_time"])) / run.sim.interval
            assert 2 <= round(lag) <= 4 and r["actual"] > 0


def test_nothing_is_ever_written_with_a_future_timestamp(tmp_path: Path) -> None:
    sim = Simulator(make_cfg(tmp_path, buildings=3, customers=1, backfill_hours=5), start=START, mlflow=False)
    seen: set[Path] = set()
    now = START
    for _ in range(40):
        now += 7.3
        sim.step(now)
        for p in (tmp_path / "outputs").rglob("*.jsonl"):
            if p in seen:
                continue
            seen.add(p)
            for r in read_jsonl(p):
                for f in ("made_at", "target_time", "observed_at"):
                    if f in r:
                        assert ts(r[f]) <= now
        for line in (tmp_path / "logs" / "gateway" / "gateway.log").read_text().splitlines():
            assert ts(json.loads(line)["time"]) <= now
    assert len(seen) > 10


def test_same_seed_same_data_other_seed_other_data(tmp_path: Path) -> None:
    def simulate(out: Path, seed: int) -> dict[str, str]:
        sim = Simulator(
            make_cfg(out, seed=seed, buildings=4, customers=2, backfill_hours=24), START, mlflow=False
        )
        sim.fast_forward(30)
        return {
            str(p.relative_to(out)): p.read_text()
            for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "simulator.json"
        }

    a, b, c = simulate(tmp_path / "a", 5), simulate(tmp_path / "b", 5), simulate(tmp_path / "c", 6)
    assert a == b
    assert "ground_truth.jsonl" in a and "logs/gateway/gateway.log" in a
    pa = {k: v for k, v in a.items() if k.startswith("outputs/")}
    pc = {k: v for k, v in c.items() if k.startswith("outputs/")}
    assert pa.keys() == pc.keys() and pa != pc


def test_a_restart_neither_rewrites_nor_duplicates_outputs(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, buildings=2, customers=1, backfill_hours=10)
    sim = Simulator(cfg, START, mlflow=False)
    sim.fast_forward(5)
    files = {p: p.stat().st_ino for p in (tmp_path / "outputs").rglob("*.jsonl")}
    sim2 = Simulator(cfg, START + 5 * sim.interval + 1, mlflow=False)
    sim2.fast_forward(3)
    after = {p: p.stat().st_ino for p in (tmp_path / "outputs").rglob("*.jsonl")}
    assert all(after[p] == ino for p, ino in files.items())  # untouched
    assert len(after) == len(files) + 3 * 2
    ids = [r["id"] for r in read_jsonl(tmp_path / "ground_truth.jsonl") if r["kind"] in KINDS]
    assert len(ids) == len(set(ids))  # ids continue after a restart


# ------------------------------------------------------------------------------------ incidents
def test_at_least_three_kinds_within_five_minutes_at_the_default_config() -> None:
    for demo in (DemoConfig(), DemoConfig(time_scale=120)):  # the defaults and config/fleetmon.yml
        fleet = FleetConfig(customers=generate_fleet(demo.seed, demo.customers, demo.buildings))
        s = Schedule(fleet, demo.seed, START, 3600 / demo.time_scale, demo.first_incident_after_seconds)
        s.advance(START + 300)
        under_way = {i.kind for i in s.active(START + 300)}
        assert len(under_way) >= 3, under_way
        assert not s.active(START + demo.first_incident_after_seconds - 1)


def test_quiet_buildings_are_never_touched_and_incidents_end_and_follow(run: Run) -> None:
    quiet = [r for r in run.truth if r["kind"] == "quiet_buildings"]
    assert len(quiet) == 1
    quiet_set = {(b["customer"], b["building"]) for b in quiet[0]["detail"]["buildings"]}
    assert len(quiet_set) >= 0.3 * 20
    # many waves ahead: still never a quiet building
    s = Schedule(FleetConfig(customers=generate_fleet(42, 4, 20)), 42, START, 30.0, 60.0)
    many = s.advance(START + 24 * 3600)
    assert len(many) > 200
    assert not {(i.key.customer, i.key.building) for i in many if i.key} & quiet_set
    assert not {(r["customer"], r["building"]) for r in run.incidents} & quiet_set
    # all incidents end; a calm gap; then a new wave
    starts = sorted(ts(r["start"]) for r in run.incidents)
    ends = sorted(ts(r["end"]) for r in run.incidents)
    assert all(ts(r["end"]) > ts(r["start"]) for r in run.incidents)
    first_wave_end = max(ts(r["end"]) for r in run.incidents if ts(r["start"]) < START + 300)
    later = [t for t in starts if t > first_wave_end]
    assert later and later[0] - first_wave_end >= 180
    assert ends[0] < START + HOURS * run.sim.interval


@pytest.mark.parametrize("feature", ["outdoor_temperature", "humidity", "solar_radiation"])
def test_drift_shifts_the_weather_features_of_that_model_only_and_a_ks_test_sees_it(
    run: Run, feature: str
) -> None:
    inc = run.first("data_drift")
    key, shift = run.key(inc), inc["detail"]["shifts"][feature]
    start, end = ts(inc["start"]), ts(inc["end"])
    mine = {r["target_time"]: r["features"][feature] for r in run.preds[key]}
    siblings = [m for m in run.preds if (m.customer, m.building) == (key.customer, key.building) and m != key]
    assert len(siblings) == 3
    for sib in siblings:
        for r in run.preds[sib]:
            t = r["target_time"]
            if t not in mine:
                continue
            delta = mine[t] - r["features"][feature]
            if start <= ts(t) < end:
                # clipped at the feature's physical bounds (no negative radiation, humidity within 0..100)
                assert delta == pytest.approx(shift, abs=0.11) or feature != "outdoor_temperature"
                assert abs(delta) > 0 or feature == "solar_radiation"
            else:
                assert delta == 0
    series = sorted(run.preds[key], key=lambda r: r["target_time"])
    times = np.array([ts(r["target_time"]) for r in series])
    values = np.array([r["features"][feature] for r in series])
    first_in = int(np.searchsorted(times, start))
    reference = values[max(0, first_in - 12 - 168) : first_in - 12]
    assert len(reference) == 168
    # a window of 12 points, six of them inside the incident (3 wall minutes at time scale 120)
    p_half = stats.ks_2samp(values[first_in - 6 : first_in + 6], reference).pvalue
    p_full = stats.ks_2samp(values[first_in : first_in + 12], reference).pvalue
    assert p_half < 0.05 and p_full < 1e-4
    # the same test on the same window of a sibling's feature finds far less
    sib_values = np.array(
        [r["features"][feature] for r in sorted(run.preds[siblings[0]], key=lambda r: r["target_time"])]
    )
    assert len(sib_values) == len(values)
    p_sib = stats.ks_2samp(
        sib_values[first_in : first_in + 12], sib_values[first_in - 180 : first_in - 12]
    ).pvalue
    assert p_sib > p_full * 100


def test_a_weather_station_fault_shifts_every_model_of_its_buildings_and_nothing_else(run: Run) -> None:
    """The shared-cause incident: one station's weather feed breaks, so every model of each of its buildings
    sees the same shift at once (one cause behind many models), and no other building's inputs move."""
    inc = run.first("weather_station_fault")
    station = fault_station(run.sim.cfg.fleet)
    assert station is not None
    on_station = {(b["customer"], b["building"]) for b in inc["detail"]["buildings"]}
    assert inc["detail"]["weather_station"] == station[0] and on_station == set(station[1])
    assert len(on_station) >= 2
    # every building the fleet config puts on that station, and only those
    assert on_station == {
        (c.id, b.id)
        for c in run.sim.cfg.fleet.customers
        for b in c.buildings
        if b.weather_station == station[0]
    }
    quiet = next(r for r in run.truth if r["kind"] == "quiet_buildings")
    assert not on_station & {(b["customer"], b["building"]) for b in quiet["detail"]["buildings"]}
    start, end = ts(inc["start"]), ts(inc["end"])
    # no other incident of its wave touches the station's buildings
    same_wave = [r for r in run.incidents if abs(ts(r["start"]) - start) < 150 and r["id"] != inc["id"]]
    assert same_wave and not {(r["customer"], r["building"]) for r in same_wave} & on_station
    world = run.sim.world
    shift = inc["detail"]["shifts"]["outdoor_temperature"]
    models = [m for m in run.preds if (m.customer, m.building) in on_station]
    assert len(models) == 4 * len(on_station)
    for key in run.preds:
        for r in run.preds[key]:
            t = ts(r["target_time"])
            if not start <= t < end:
                continue
            truth = world.truth(round(t / run.sim.interval)).features["outdoor_temperature"]
            served = r["features"]["outdoor_temperature"]
            bi = world.index[(key.customer, key.building)]
            expected = truth[bi] + (shift if (key.customer, key.building) in on_station else 0.0)
            drifting = [
                d
                for d in run.incidents
                if d["kind"] == "data_drift" and run.key(d) == key and ts(d["start"]) <= t < ts(d["end"])
            ]
            if not drifting:
                assert served == pytest.approx(expected, abs=0.011), (key, r["target_time"])


def test_stale_model_writes_nothing_in_its_window(run: Run) -> None:
    inc = run.first("stale_predictions")
    key, start, end = run.key(inc), ts(inc["start"]), ts(inc["end"])
    times = sorted(ts(r["target_time"]) for r in run.preds[key])
    assert not [t for t in times if start <= t < end]
    assert [t for t in times if start - 60 <= t < start]  # it wrote just before
    assert [t for t in times if end <= t < end + 60]  # and writes again after
    # the other models of the building kept writing
    sib = next(m for m in run.preds if m.building == key.building and m != key)
    assert len([r for r in run.preds[sib] if start <= ts(r["target_time"]) < end]) >= 15


def _abs_errors(run: Run, key: ModelKey, lo: float, hi: float) -> list[float]:
    out = []
    for r in run.preds[key]:
        a = run.actuals.get((key.customer, key.building, key.energy, r["target_time"]))
        if a is not None and lo <= ts(r["target_time"]) < hi:
            out.append(abs(r["prediction"] - a) / a)
    return out


def test_error_growth_raises_that_forecasters_error(run: Run) -> None:
    inc = run.first("error_growth")
    key, start, end = run.key(inc), ts(inc["start"]), ts(inc["end"])
    before = _abs_errors(run, key, start - 1800, start)
    late = _abs_errors(run, key, (start + end) / 2, end)
    assert len(before) > 30 and len(late) > 5
    assert np.mean(late) > 3 * np.mean(before)
    other = ModelKey(**{**key.labels(), "energy": "electricity" if key.energy == "heating" else "heating"})
    assert np.mean(_abs_errors(run, other, (start + end) / 2, end)) < 2 * np.mean(
        _abs_errors(run, other, start - 1800, start)
    )


# ------------------------------------------------------------------------------------------- logs
def _gateway(run: Run | Path) -> list[tuple[float, int, str, float]]:
    """(time, status, path, request_time) of every gateway access line (of a run, or under a logs dir)."""
    logs = run.out / "logs" if isinstance(run, Run) else run
    out = []
    for line in (logs / "gateway" / "gateway.log").read_text().splitlines():
        rec = json.loads(line)
        assert set(rec) == {"log", "stream", "time"} and rec["log"].endswith("\n") and NANO.match(rec["time"])
        m = ACCESS.match(rec["log"].rstrip("\n"))
        assert m, rec["log"]
        out.append((ts(rec["time"]), int(m.group(5)), m.group(4), float(m.group(7))))
    return out


def _serving(run: Run | Path) -> list[tuple[float, int, str, float]]:
    """(time, status, path, duration in seconds) of every model-serving request record."""
    logs = run.out / "logs" if isinstance(run, Run) else run
    out = []
    for line in (logs / "model-serving" / "model-serving.log").read_text().splitlines():
        inner = json.loads(line)["log"].rstrip("\n")
        if not inner.startswith("{"):
            continue  # the app's own (Python logging) lines
        rec = json.loads(inner)
        assert list(rec) == SERVING_KEYS, rec
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["time"])
        assert rec["logger"] == "serving.access" and rec["level"] == (
            "info" if rec["status"] < 500 else "error"
        )
        assert SERVING_PATH.match(rec["path"]) and rec["method"] == ("POST" if ":" in rec["path"] else "GET")
        assert isinstance(rec["duration_ms"], float) and rec["duration_ms"] > 0
        out.append((ts(rec["time"]), rec["status"], rec["path"], rec["duration_ms"] / 1000))
    return out


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def test_http_5xx_burst_raises_the_5xx_share_in_its_window(run: Run) -> None:
    reqs = [(t, s) for t, s, _, _ in _gateway(run)]
    assert {200, 302, 304, 404} <= {s for _, s in reqs}
    bursts = [(ts(r["start"]), ts(r["end"])) for r in run.incidents if r["kind"] == "http_5xx_burst"]
    assert all(r["app"] == "gateway" for r in run.incidents if r["kind"] == "http_5xx_burst")

    def in_burst(t: float) -> bool:
        return any(a <= t < b for a, b in bursts)

    inside = [s for t, s in reqs if in_burst(t)]
    outside = [s for t, s in reqs if not in_burst(t)]
    share_in = sum(s >= 500 for s in inside) / len(inside)
    share_out = sum(s >= 500 for s in outside) / len(outside)
    assert len(inside) > 500 and share_in > 0.2 and share_out < 0.02


def _spikes(run: Run, app: str) -> list[tuple[float, float, float]]:
    simulated = START + HOURS * run.sim.interval
    return [
        (ts(r["start"]), ts(r["end"]), r["detail"]["factor"])
        for r in run.incidents
        if r["kind"] == "latency_spike" and r["app"] == app and ts(r["end"]) <= simulated
    ]


def test_request_durations_are_realistic_per_route_and_quiet_outside_latency_spikes(run: Run) -> None:
    """Outside incidents: the gateway answers probes and cached files in milliseconds and proxied API calls
    in tens of milliseconds; model serving scores in 10-30 ms; p95 well under the alert thresholds."""

    def calm(reqs: list[tuple[float, int, str, float]], app: str) -> list[tuple[float, int, str, float]]:
        spikes = [
            (a, b)
            for r in run.incidents
            if r["kind"] == "latency_spike" and r["app"] == app
            for a, b in [(ts(r["start"]), ts(r["end"]))]
        ]
        return [x for x in reqs if not any(a <= x[0] < b for a, b in spikes)]

    gw = calm(_gateway(run), "gateway")
    ok = [x for x in gw if x[1] < 500]
    health = [d for _, _, path, d in ok if path == "/health"]
    static = [d for _, _, path, d in ok if path.startswith("/static/")]
    forecast = [d for _, _, path, d in ok if path.split("?")[0].endswith("/forecast")]
    assert np.median(health) <= 0.002 and np.median(static) <= 0.004
    assert 0.04 < np.median(forecast) < 0.09 and p95(forecast) < 0.25
    assert 0.1 < p95([d for *_, d in gw]) < 0.3  # the whole gateway (ApiHighLatency: 0.5 s)
    assert len({round(d, 3) for *_, d in gw}) > 200  # a distribution (in ms), not a few constants
    # a 504 is the upstream timeout; 502 / 503 are answered at once
    assert all(9.99 < d < 10.1 for _, s, _, d in gw if s == 504)
    assert all(d < 0.5 for _, s, _, d in gw if s in (502, 503))

    sv = calm(_serving(run), "model-serving")
    predict = [d for _, s, path, d in sv if path.endswith(":predict") and s == 200]
    forecasters = [d for _, s, path, d in sv if path.endswith("/forecast:predict") and s == 200]
    detectors = [d for _, s, path, d in sv if path.endswith("/anomaly:predict") and s == 200]
    assert len(predict) > 0.8 * len(sv) and 0.01 < np.median(predict) < 0.03
    assert np.median(detectors) < np.median(forecasters)
    assert 0.03 < p95([d for *_, d in sv]) < 0.08  # (ApiHighLatency: 0.1 s)
    assert {s for _, s, _, _ in sv} >= {200} and {s for _, s, _, _ in sv} <= {200, 400, 503}
    # model serving is slower than what the gateway answers itself
    assert np.median(predict) > 5 * np.median(health + static)


@pytest.mark.parametrize(("app", "factor"), [("gateway", 8.0), ("model-serving", 6.0)])
def test_latency_spike_slows_that_app_several_fold_in_its_window_only(
    tmp_path: Path, app: str, factor: float
) -> None:
    """The smallest factor the schedule draws for the app: its answers take about that much longer, the p95
    rises several-fold past the alert's threshold; health probes and the other app are not affected."""
    spike = Incident(
        id="i1", kind="latency_spike", start=START + 300, end=START + 600, app=app, detail={"factor": factor}
    )
    plat = Platform(tmp_path / "logs", FleetConfig(customers=generate_fleet(42, 4, 20)).models(), seed=3)
    for k in range(9):
        plat.emit(START + k * 100, START + (k + 1) * 100, [spike])
        plat.flush()
    threshold = {"gateway": 0.5, "model-serving": 0.1}  # ApiHighLatency (p95, prometheus/rules/recording.yml)
    for name, reqs in (
        ("gateway", _gateway(tmp_path / "logs")),
        ("model-serving", _serving(tmp_path / "logs")),
    ):
        work = [(t, d) for t, s, path, d in reqs if s == 200 and path != "/health"]
        inside = [d for t, d in work if spike.active(t)]
        around = [d for t, d in work if not spike.active(t)]
        assert len(inside) > 200 and len(around) > 400
        if name != app:  # the other app is not slowed down
            assert np.median(inside) < 1.3 * np.median(around) and p95(inside) < threshold[name]
            continue
        ratio = np.median(inside) / np.median(around)
        assert 0.7 * factor < ratio < 1.4 * factor, ratio
        assert p95(inside) > 3 * p95(around)
        assert p95(inside) > 2 * threshold[name] and threshold[name] > 1.5 * p95(around)
        # over a quarter of its answers are over the threshold: the 5-minute p95 crosses it within a minute
        assert sum(d > threshold[name] for d in inside) > 0.25 * len(inside)
        probes = [d for t, s, path, d in reqs if spike.active(t) and path == "/health"]
        assert probes and np.median(probes) < 0.002  # health probes do not touch the slow part


def test_wave_0_latency_spike_on_model_serving_shows_in_the_run(run: Run) -> None:
    inc = next(r for r in run.incidents if r["kind"] == "latency_spike")
    assert inc["app"] == "model-serving"
    start, end = ts(inc["start"]), ts(inc["end"])
    reqs = [(t, d) for t, s, path, d in _serving(run) if s == 200 and path.endswith(":predict")]
    inside = [d for t, d in reqs if start <= t < end]
    after = [d for t, d in reqs if end <= t < end + 300]
    assert p95(inside) > 3 * p95(after) and p95(after) < 0.1


def test_latency_spike_ground_truth_and_one_app_per_platform_incident() -> None:
    fleet = FleetConfig(customers=generate_fleet(42, 4, 20))
    s = Schedule(fleet, 42, START, 30.0, 60.0)
    incs = s.advance(START + 24 * 3600)
    spikes = [i for i in incs if i.kind == "latency_spike"]
    assert len(spikes) > 10 and {i.app for i in spikes} == set(LATENCY_APPS)
    for i in spikes:
        rec = i.record()
        assert rec["customer"] is rec["building"] is rec["model"] is None and rec["app"] in LATENCY_APPS
        factor = rec["detail"]["factor"]
        assert (8.0 <= factor <= 12.0) if i.app == "gateway" else (6.0 <= factor <= 9.0)
        assert rec["detail"]["cause"]
    assert {i.app for i in incs if i.kind == "replica_unhealthy"} <= set(REPLICA_APPS)
    # within a wave, the 5xx burst, the latency spike and the unhealthy replicas each have their own app
    waves: dict[int, list[str]] = defaultdict(list)
    for i in incs:
        if i.kind in ("http_5xx_burst", "latency_spike", "replica_unhealthy"):
            waves[int((i.start - s.wave_start(0)) // s.period)].append(str(i.app))
    assert len(waves) > 20
    assert all(len(apps) == len(set(apps)) for apps in waves.values()), waves
    # wave 0 holds every kind; its latency spike is model serving's (the gateway has the 5xx burst)
    wave0 = [i for i in incs if i.start < s.wave_start(1)]
    assert {i.kind for i in wave0} == set(KINDS)
    assert next(i.app for i in wave0 if i.kind == "latency_spike") == "model-serving"


def test_replica_unhealthy_reports_those_reasons_for_that_app_only(run: Run) -> None:
    recs = read_jsonl(run.out / "logs" / "system" / "containerapps.jsonl")
    incs = [r for r in run.incidents if r["kind"] == "replica_unhealthy"]
    assert incs
    for r in recs:
        assert r["Reason"] in REASONS and r["Type"] in ("Normal", "Warning")
        assert {"TimeGenerated", "ContainerAppName", "RevisionName", "ReplicaName", "Log", "Count"} <= set(r)
        if r["Reason"] == "ReplicaCount":
            assert isinstance(r["Replicas"], int)
        if r["Reason"] == "MemoryUsage":
            assert 0 < r["WorkingSetBytes"] < r["LimitBytes"]
        if r["Reason"] in ("ReplicaUnhealthy", "BackoffLimitExceeded"):
            t = ts(r["TimeGenerated"])
            assert any(
                i["app"] == r["ContainerAppName"] and ts(i["start"]) <= t < ts(i["end"]) + 0.001 for i in incs
            ), r
    for i in incs:
        if ts(i["end"]) > START + HOURS * run.sim.interval:
            continue  # scheduled ahead, not (fully) simulated
        inside = [
            r
            for r in recs
            if r["ContainerAppName"] == i["app"] and ts(i["start"]) <= ts(r["TimeGenerated"]) < ts(i["end"])
        ]
        assert sum(r["Reason"] == "ReplicaUnhealthy" for r in inside) >= 20


def test_training_failures_fail_that_models_jobs_in_its_window(run: Run) -> None:
    inc = run.first("training_failures")
    key, start, end = run.key(inc), ts(inc["start"]), ts(inc["end"])
    failed, finished = [], []
    for line in (run.out / "logs" / "training-processor" / "training-processor.log").read_text().splitlines():
        m = CRI.match(line)
        assert m, line
        msg = m.group(4)
        if "Failed to process" in msg:
            failed.append((ts(m.group(1)), msg))
        elif "Training job finished" in msg:
            finished.append((ts(m.group(1)), msg))
    labels = f"customer={key.customer} building={key.building} energy={key.energy} model={key.model}"
    mine = [t for t, msg in failed if labels in msg]
    assert len(mine) >= 5 and all(start <= t < end for t in mine)
    assert finished and not [t for t, msg in finished if labels in msg and start + 30 <= t < end]
    received = (run.out / "logs" / "training-api" / "training-api.log").read_text()
    assert received.count("Received message") == len(run.sim.jobs)


def test_log_lines_parse_in_their_wrappers(run: Run) -> None:
    logs = run.out / "logs"
    for app in ("api", "model-serving"):
        lines = (logs / app / f"{app}.log").read_text().splitlines()
        assert lines
        for line in lines:
            rec = json.loads(line)
            assert set(rec) == {"log", "stream", "time"} and NANO.match(rec["time"])
    errors = [json.loads(x)["log"] for x in (logs / "api" / "api.log").read_text().splitlines()]
    assert any(re.search(r" ERROR \[[\w.]+\] .*(\w+Error|Timeout|error_code=)", e) for e in errors)
    for app in ("training-api", "training-processor"):
        lines = (logs / app / f"{app}.log").read_text().splitlines()
        partial = False
        for line in lines:
            m = CRI.match(line)
            assert m, line
            partial = partial or m.group(3) == "P"
        assert lines and CRI.match(lines[-1]).group(3) == "F"  # type: ignore[union-attr]
    assert partial  # long lines were split into partial records
    for line in (logs / "mlflow" / "mlflow.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert rec["ContainerAppName"] == "mlflow" and rec["Log"] and rec["TimeGenerated"].endswith("Z")
    # a few KB/s of logs in all
    total = sum(p.stat().st_size for p in logs.rglob("*") if p.is_file())
    assert 500 < total / (HOURS * run.sim.interval) < 8000


def test_a_log_passing_its_size_limit_is_rotated_to_dot_1(tmp_path: Path) -> None:
    lf = LogFile(tmp_path / "x.log", max_bytes=1000)
    lf.write(["a" * 99] * 8)
    lf.write(["b" * 99] * 3)  # would pass 1000 bytes: rotate first
    assert (tmp_path / "x.log.1").read_text() == ("a" * 99 + "\n") * 8
    assert (tmp_path / "x.log").read_text() == ("b" * 99 + "\n") * 3
    plat = Platform(tmp_path / "logs", generate_fleet_models(), 1, max_bytes=20_000)
    plat.emit(START, START + 120)
    plat.flush()
    plat.emit(START + 120, START + 240)
    plat.flush()
    assert (tmp_path / "logs" / "gateway" / "gateway.log.1").exists()
    assert plat.files["gateway"].rotations >= 1


def generate_fleet_models() -> list[ModelKey]:
    return FleetConfig(customers=generate_fleet(1, 1, 2)).models()


def test_actuals_arrive_as_late_as_configured_per_building(tmp_path: Path) -> None:
    """demo.actual_delay_hours for every building, demo.actual_delay_overrides for one: its actuals of hour
    k are written at hour k + its delay; an override naming no building of the fleet is an error."""
    cfg = make_cfg(tmp_path, buildings=5, customers=1, actual_delay_hours=(1, 1))
    building = cfg.fleet.customers[0].buildings[2].id
    cfg.demo.actual_delay_overrides = {building: 7}
    sim = Simulator(cfg, start=START, mlflow=False)
    try:
        lags = dict(zip([b.id for _, b in sim.world.buildings], sim.world.actual_lag, strict=True))
        assert lags[building] == 7 and {v for k, v in lags.items() if k != building} == {1}
        j = sim.first_k + 20
        recs = sim.world.actual_records(j, sim.interval, sim.first_k)
        got = {r["building"]: ts(r["target_time"]) for r in recs}
        assert got[building] == pytest.approx((j - 7) * sim.interval)
        assert all(t == pytest.approx((j - 1) * sim.interval) for b, t in got.items() if b != building)
    finally:
        sim.close()
    cfg.demo.actual_delay_overrides = {"no-such-building": 3}
    with pytest.raises(ValueError, match="no-such-building"):
        Simulator(cfg, start=START, mlflow=False)
