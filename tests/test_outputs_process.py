"""The outputs exporter as a real process: flags, config file, background polls, /metrics over HTTP."""

from __future__ import annotations

import gzip
import json
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from fleetmon.procs import free_port, spawn, stop_group, wait_for_http


def test_exporter_process_serves_model_metrics(tmp_path: Path) -> None:
    (tmp_path / "pred").mkdir()
    now = time.time()

    def iso(t: float) -> str:
        import datetime as dt

        return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")

    rec = {
        "customer": "c1",
        "building": "b1",
        "energy": "heating",
        "model": "forecast",
        "made_at": iso(now - 60),
        "target_time": iso(now + 3600),
        "prediction": 4.0,
        "features": {"temp": 1.0},
    }
    (tmp_path / "pred" / "p.jsonl").write_text(json.dumps(rec) + "\nnot json\n")
    cfg = {
        "fleet": {"customers": [{"id": "c1", "buildings": [{"id": "b1"}]}]},
        "outputs": {
            "predictions": [{"glob": "pred/*.jsonl"}],
            "features": ["temp"],
            "poll_interval_seconds": 0.5,
            "quarantine_dir": "quarantine",
            "state_dir": "state",
        },
    }
    cfg_file = tmp_path / "fleetmon.yml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    port = free_port()
    fleetmon = str(Path(sys.executable).with_name("fleetmon"))
    argv = [fleetmon, "exporter", "outputs", "--config.file", str(cfg_file), "--no-collector.drift"]
    proc = spawn([*argv, "--web.listen-address", f"127.0.0.1:{port}"], tmp_path / "exporter.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(base + "/-/healthy", timeout=60, proc=proc)
        want = 'fleetmon_model_predictions_total{building="b1",customer="c1",energy="heating",model="forecast"} 1.0'
        deadline = time.monotonic() + 30
        body = ""
        while time.monotonic() < deadline:
            req = urllib.request.Request(base + "/metrics", headers={"Accept-Encoding": "gzip"})
            with urllib.request.urlopen(req, timeout=5) as r:
                body = gzip.decompress(r.read()).decode()
            if want in body:
                break
            time.sleep(0.3)
        assert want in body, body[-2000:]
        assert (
            'fleetmon_outputs_rows_rejected_total{building="",customer="",energy="",kind="predictions",model="",reason="malformed"} 1.0'
            in body
        )
        assert 'fleetmon_poll_success{collector="outputs"} 1.0' in body
        assert "fleetmon_drift_share" not in body  # --no-collector.drift
        with urllib.request.urlopen(base + "/", timeout=5) as r:
            assert b"/metrics" in r.read()
        assert (tmp_path / "state" / "state.json").exists()
        assert len(list((tmp_path / "quarantine").glob("*.jsonl"))) == 1
    finally:
        stop_group(proc)
