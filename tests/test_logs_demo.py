"""The demo simulator's platform logs (simulator/logs.py) go through the tailer without a single rejection,
and its incidents show: the gateway's 5xx burst, an app's unhealthy replicas, model serving's latency spike.
Every request of the gateway (nginx `$request_time`) and of model serving (JSON request log, `duration_ms`)
is observed in the latency histogram."""

from __future__ import annotations

from pathlib import Path

import pytest

from collectors.logs import LogTailer
from collectors.logstats import LATENCY_BUCKETS, AppStats
from fleetmon.config import LogsConfig, ModelKey

sim = pytest.importorskip("simulator.logs")
incidents = pytest.importorskip("simulator.incidents")

T0 = 1795341600.0


def test_demo_logs_parse_cleanly_and_show_the_incidents(tmp_path: Path) -> None:
    models = [
        ModelKey(customer="c01", building=f"c01-b00{i}", energy="heating", model="forecast") for i in range(4)
    ]
    pf = sim.Platform(tmp_path / "logs", models, seed=7, max_bytes=100_000)  # small: forces rotations
    burst = incidents.Incident(
        id="i1", kind="http_5xx_burst", start=T0 + 200, end=T0 + 300, app="gateway", detail={"share_5xx": 0.5}
    )
    unhealthy = incidents.Incident(
        id="i2", kind="replica_unhealthy", start=T0 + 100, end=T0 + 400, app="model-serving"
    )
    slow = incidents.Incident(
        id="i3",
        kind="latency_spike",
        start=T0 + 300,
        end=T0 + 400,
        app="model-serving",
        detail={"factor": 6.0},
    )
    apps = {a: [str(tmp_path / "logs" / a / "*.log")] for a in sim.APPS if a != "mlflow"}
    apps["mlflow"] = [str(tmp_path / "logs" / "mlflow" / "*.jsonl")]
    apps["system"] = [str(tmp_path / "logs" / "system" / "*.jsonl")]
    t = LogTailer(LogsConfig(apps=apps, state_file=tmp_path / "s.json", quarantine_file=tmp_path / "q.jsonl"))
    try:
        five_xx_before_burst = 0
        over_before_spike: dict[str, int] = {}
        for k in range(50):
            if k == 30:
                over_before_spike = {app: _over(t.stats[app], 0.1) for app in ("gateway", "model-serving")}
            pf.emit(T0 + k * 10, T0 + (k + 1) * 10, [burst, unhealthy, slow])
            pf.training_received(T0 + k * 10 + 1, models[0], f"job{k:04d}", "schedule")
            pf.training_failed(T0 + k * 10 + 2, models[1], f"job{k:04d}", "ValueError")
            pf.flush()
            t.poll()
            if k == 19:
                five_xx_before_burst = _5xx(t)
        gw = t.stats["gateway"]
        assert sum(sum(s.rejected.values()) for s in t.stats.values()) == 0
        assert gw.rotations >= 1  # rotated files were read to their end
        assert _5xx(t) - five_xx_before_burst > 20  # the burst
        assert max(gw.last_error.values()) >= T0 + 200
        ms = t.stats["model-serving"]
        assert ms.events[("ReplicaUnhealthy", "Warning")] > 10
        assert ms.replicas_max is not None and ms.replicas is not None
        assert t.stats["training-api"].training["received"] == 50
        assert t.stats["training-processor"].training["failed"] == 50
        assert t.stats["training-processor"].errors["ValueError"] == 50
        assert len(gw.routes) < 20  # ids, uuids and hashes replaced
        # every request carries its duration: the histogram's count is the requests'
        for app in ("gateway", "model-serving"):
            st = t.stats[app]
            assert sum(sum(b) for b in st.latency.values()) == sum(st.requests.values()) > 400
        serving_routes = {r for _, r in ms.latency}
        assert {
            "/health",
            "/v1/models/{id}/heating/forecast:predict",
            "/v1/models/{id}/heating/forecast",
        } <= (serving_routes)
        # the latency spike (100 s of model serving, not the gateway): requests over 0.1 s jump
        assert _over(ms, 0.1) - over_before_spike["model-serving"] > 40
        assert _over(gw, 0.1) - over_before_spike["gateway"] < 0.2 * sum(sum(b) for b in gw.latency.values())
    finally:
        t.close()


def _5xx(t: LogTailer) -> int:
    return sum(v for (_, _, status), v in t.stats["gateway"].requests.items() if status.startswith("5"))


def _over(st: AppStats, bound: float) -> int:
    """Requests observed slower than ``bound`` (a bucket bound)."""
    i = LATENCY_BUCKETS.index(bound) + 1
    return sum(sum(b[i:]) for b in st.latency.values())
