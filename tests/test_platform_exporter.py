"""The platform exporter as a real process: flags, config, /metrics through promtool, clean shutdown."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from fleetmon.procs import free_port, wait_for_http

ROOT = Path(__file__).resolve().parent.parent


def test_platform_exporter_serves_all_collectors(tmp_path: Path) -> None:
    logs = tmp_path / "logs" / "gateway"
    logs.mkdir(parents=True)
    line = '10.0.0.7 - - [22/Nov/2026:10:00:00 +0000] "GET /api/v1/runs/17 HTTP/1.1" 502 12 "-" "curl/8"'
    (logs / "a.log").write_text(json.dumps({"log": line + "\n", "stream": "stdout", "time": "x"}) + "\n")
    cfg = {
        "platform": {
            "logs": {
                "apps": {"gateway": ["logs/gateway/*.log"]},
                "poll_interval_seconds": 0.5,
                "state_file": "state/pos.json",
                "quarantine_file": "quarantine/logs.jsonl",
            },
            "processes": [{"name": "exporter", "match": "exporters\\.platform"}],
            # never bound: --web.listen-address below overrides it with a free port
            "listen": {"host": "127.0.0.1", "port": 9703},
        }
    }
    (tmp_path / "fleetmon.yml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporters.platform",
            f"--config.file={tmp_path / 'fleetmon.yml'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/-/healthy", timeout=30, proc=proc)  # type: ignore[arg-type]
        url = f"http://127.0.0.1:{port}/metrics"
        text = ""
        for _ in range(50):  # the first log poll runs in the background right after start
            with urllib.request.urlopen(url, timeout=10) as r:
                text = r.read().decode()
            if "fleetmon_http_requests_total{" in text:
                break
            time.sleep(0.2)
        assert (
            'fleetmon_http_requests_total{app="gateway",method="GET",route="/api/v1/runs/{num}",status="502"} 1.0'
            in text
        )
        assert 'fleetmon_process_up{group="exporter"} 1.0' in text
        assert "fleetmon_host_memory_total_bytes" in text
        assert "fleetmon_gpu_available 0.0" in text
        for c in ("logs", "host", "processes", "gpu"):
            assert f'fleetmon_scrape_collector_success{{collector="{c}"}} 1.0' in text
        promtool = shutil.which("promtool")
        if promtool:
            r = subprocess.run(
                [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
            )
            assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert b"logs" in r.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out.decode()[-2000:]
    assert (tmp_path / "state" / "pos.json").exists()


def test_no_collector_flag_switches_a_collector_off(tmp_path: Path) -> None:
    from exporters.common import parse_args
    from exporters.platform import COLLECTOR_NAMES

    _, enabled = parse_args("platform", COLLECTOR_NAMES, ["--no-collector.gpu", "--collector.host"])
    assert enabled == {"gpu": False, "host": True}


def test_bad_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.yml").write_text("platform:\n  logs:\n    max_routes: zero\n")
    r = subprocess.run(
        [sys.executable, "-m", "exporters.platform", f"--config.file={tmp_path / 'bad.yml'}"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert b"platform.logs.max_routes" in r.stderr
