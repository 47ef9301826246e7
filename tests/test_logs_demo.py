"""The demo simulator's platform logs (simulator/logs.py) go through the tailer without a single rejection,
and its incidents show: the gateway's 5xx burst and an app's unhealthy replicas."""

from __future__ import annotations

from pathlib import Path

import pytest

from collectors.logs import LogTailer
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
    apps = {a: [str(tmp_path / "logs" / a / "*.log")] for a in sim.APPS if a != "mlflow"}
    apps["mlflow"] = [str(tmp_path / "logs" / "mlflow" / "*.jsonl")]
    apps["system"] = [str(tmp_path / "logs" / "system" / "*.jsonl")]
    t = LogTailer(LogsConfig(apps=apps, state_file=tmp_path / "s.json", quarantine_file=tmp_path / "q.jsonl"))
    try:
        five_xx_before_burst = 0
        for k in range(50):
            pf.emit(T0 + k * 10, T0 + (k + 1) * 10, [burst, unhealthy])
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
    finally:
        t.close()


def _5xx(t: LogTailer) -> int:
    return sum(v for (_, _, status), v in t.stats["gateway"].requests.items() if status.startswith("5"))
