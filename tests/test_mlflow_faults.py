"""MLflow faults: 5xx, garbage, slow answers (through a proxy written here) and a real server stopped mid-run.

The exporter keeps answering scrapes with the last good values, says ``fleetmon_mlflow_up 0``, logs a cause
once and recovers by itself.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml
from mlflow import MlflowClient

from collectors.mlflow import MlflowCollector
from fleetmon.config import Building, Config, Customer, FleetConfig, MlflowConfig
from fleetmon.exporter import Exporter
from fleetmon.procs import free_port, spawn, start_mlflow_server, stop_group, wait_for_http


class FaultProxy:
    """A tiny HTTP proxy in front of MLflow whose ``mode`` injects faults.

    pass: forward; 500: answer 500 (500_runs: only to runs/search); garbage: 200 with a body that is not JSON; slow: sleep, then forward;
    bad_run: forward, and add a run without a status to every runs/search answer.
    """

    def __init__(self, upstream: str, slow_seconds: float = 2.0) -> None:
        self.upstream = upstream
        self.mode = "pass"
        self.slow_seconds = slow_seconds
        self.hits = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                proxy.hits += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                mode = proxy.mode
                if mode == "500" or (mode == "500_runs" and "runs/search" in self.path):
                    return self._send(500, b'{"error_code": "INTERNAL_ERROR", "message": "boom"}')
                if mode == "garbage":
                    return self._send(200, b"<html>502 bad gateway, but with status 200</html>")
                if mode == "deep":  # JSON nested deeper than Python's recursion limit
                    return self._send(200, b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
                if mode == "slow":
                    time.sleep(proxy.slow_seconds)
                with requests.Session() as s:
                    r = s.request(
                        self.command,
                        proxy.upstream + self.path,
                        data=body,
                        headers={"Content-Type": self.headers.get("Content-Type", "application/json")},
                        timeout=30,
                    )
                content = r.content
                if mode == "bad_run" and "runs/search" in self.path and r.status_code == 200:
                    data = r.json()
                    data.setdefault("runs", []).append({"info": {"run_id": "deadbeef-no-status"}})
                    content = json.dumps(data).encode()
                self._send(r.status_code, content)

            def _send(self, code: int, content: bytes) -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(content)))
                    self.end_headers()
                    self.wfile.write(content)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): expected in the slow mode

            do_GET = _handle
            do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def proxy(mlflow_server: str) -> Iterator[FaultProxy]:
    p = FaultProxy(mlflow_server)
    try:
        yield p
    finally:
        p.close()


def fleet(cust: str) -> FleetConfig:
    return FleetConfig(customers=[Customer(id=cust, buildings=[Building(id=f"{cust}-b1")])])


def seed_run(url: str, cust: str) -> dict[str, str]:
    c = MlflowClient(url)
    exp = c.create_experiment(f"{cust}/{cust}-b1/{uuid.uuid4().hex[:6]}")
    key = {"customer": cust, "building": f"{cust}-b1", "energy": "heating", "model": "forecast"}
    run = c.create_run(exp, tags=key)
    c.log_metric(run.info.run_id, "mae", 2.5)
    c.set_terminated(run.info.run_id, "FINISHED")
    return key


def test_5xx_garbage_and_slow_answers(
    proxy: FaultProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cust = f"f{uuid.uuid4().hex[:8]}"
    key = seed_run(proxy.upstream, cust)
    cfg = Config(
        fleet=fleet(cust),
        mlflow=MlflowConfig(
            tracking_uri=proxy.url,
            timeout_seconds=0.5,
            max_retries=1,
            retry_backoff_seconds=0.01,
            quarantine_file=tmp_path / "q.jsonl",
        ),
    )
    exp = Exporter("mlflow", {"mlflow": MlflowCollector(cfg)})
    httpd, _ = exp.serve("127.0.0.1", 0)
    reg = exp.scraped

    def v(name: str, /, **labels: str) -> float | None:
        return reg.get_sample_value(name, labels)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{httpd.server_port}/metrics", timeout=5) as r:
            return r.read().decode()  # type: ignore[no-any-return]

    finished = {**key, "status": "finished"}
    try:
        assert exp.poll_once("mlflow")
        assert v("fleetmon_mlflow_up") == 1 and v("fleetmon_mlflow_runs", **finished) == 1
        good_ts = v("fleetmon_mlflow_last_success_timestamp_seconds")

        caplog.set_level(logging.INFO)
        proxy.mode = "500"
        assert not exp.poll_once("mlflow")
        assert not exp.poll_once("mlflow")
        assert v("fleetmon_mlflow_up") == 0
        # the last good values are still served, and their age grows
        assert v("fleetmon_mlflow_runs", **finished) == 1
        assert v("fleetmon_mlflow_model_quality", **key, metric="mae") == 2.5
        assert v("fleetmon_mlflow_last_success_timestamp_seconds") == good_ts
        assert v("fleetmon_mlflow_last_success_age_seconds") > 0
        assert v("fleetmon_poll_success", collector="mlflow") == 0
        # every attempt is counted: 2 polls x (1 try + 1 retry)
        assert v("fleetmon_mlflow_requests_total", endpoint="experiments/search", code="500") == 4
        body = scrape()
        assert "fleetmon_mlflow_up 0.0" in body and 'status="finished"} 1.0' in body
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]  # the cause is logged once
        assert "HTTP 500" in errors[0].getMessage() and "experiments" in errors[0].getMessage()

        proxy.mode = "garbage"
        assert not exp.poll_once("mlflow")
        assert "malformed JSON" in caplog.records[-1].getMessage()
        proxy.mode = "deep"
        assert not exp.poll_once("mlflow")
        assert "malformed JSON" in caplog.records[-1].getMessage()
        proxy.mode = "slow"
        start = time.monotonic()
        assert not exp.poll_once("mlflow")
        assert time.monotonic() - start < 3  # 2 attempts x 0.5 s timeout, not the proxy's 2 s x 2
        assert "no answer" in caplog.records[-1].getMessage()
        assert v("fleetmon_mlflow_requests_total", endpoint="experiments/search", code="error") == 2
        assert v("fleetmon_mlflow_runs", **finished) == 1 and "fleetmon_mlflow_up 0.0" in scrape()

        proxy.mode = "pass"
        assert exp.poll_once("mlflow")
        assert v("fleetmon_mlflow_up") == 1
        assert v("fleetmon_mlflow_last_success_timestamp_seconds") > good_ts
        assert any("answers again" in r.getMessage() for r in caplog.records)

        # a malformed run in an otherwise good answer is counted and quarantined, not fatal
        proxy.mode = "bad_run"
        assert exp.poll_once("mlflow")
        assert v("fleetmon_mlflow_unmapped_runs", reason="malformed") == 1
        q = [json.loads(x) for x in (tmp_path / "q.jsonl").read_text().splitlines()]
        assert {"kind": "run", "id": "deadbeef-no-status", "reason": "malformed"}.items() <= next(
            x for x in q if x["id"] == "deadbeef-no-status"
        ).items()
        assert v("fleetmon_mlflow_runs", **finished) == 1
    finally:
        httpd.shutdown()
        httpd.server_close()
        exp.stop()


def test_exporter_process_survives_mlflow_restart(tmp_path: Path) -> None:
    """The real exporter process, with its own mlflow server stopped and started again under it."""
    cust = f"r{uuid.uuid4().hex[:8]}"
    mlflow_port, exporter_port = free_port(), free_port()
    url = f"http://127.0.0.1:{mlflow_port}"
    data = tmp_path / "mlflow"
    server = start_mlflow_server(mlflow_port, data)
    cfg_file = tmp_path / "fleetmon.yml"
    cfg_file.write_text(
        yaml.safe_dump(
            {
                "fleet": {"customers": [{"id": cust, "buildings": [{"id": f"{cust}-b1"}]}]},
                "mlflow": {
                    "tracking_uri": url,
                    "poll_interval_seconds": 0.5,
                    "timeout_seconds": 1,
                    "max_retries": 1,
                    "retry_backoff_seconds": 0.05,
                    "quarantine_file": str(tmp_path / "q.jsonl"),
                },
            }
        )
    )
    log_file = tmp_path / "exporter.log"
    exporter = None
    metrics_url = f"http://127.0.0.1:{exporter_port}/metrics"

    def wait_for(pattern: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        body = ""
        while time.monotonic() < deadline:
            with urllib.request.urlopen(metrics_url, timeout=5) as r:
                body = r.read().decode()
            if re.search(pattern, body, re.M):
                return body
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} not in the exposition:\n{body}")

    try:
        key = seed_run(url, cust)
        exporter = spawn(
            [sys.executable, "-m", "exporters.mlflow", "--config.file", str(cfg_file),
             "--web.listen-address", f"127.0.0.1:{exporter_port}"],
            log_file,
            cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        wait_for_http(metrics_url, timeout=60, proc=exporter)
        labels = f'building="{key["building"]}",customer="{cust}",energy="heating",model="forecast"'
        finished = rf'^fleetmon_mlflow_runs\{{{labels},status="finished"\}} 1\.0$'
        wait_for(r"^fleetmon_mlflow_up 1\.0$")
        wait_for(finished)

        stop_group(server)  # MLflow goes away mid-run
        body = wait_for(r"^fleetmon_mlflow_up 0\.0$")
        assert re.search(finished, body, re.M)  # last good values still served
        time.sleep(2)  # several failing polls
        body = wait_for(r"^fleetmon_mlflow_up 0\.0$")
        assert re.search(finished, body, re.M)
        assert re.search(
            r'^fleetmon_mlflow_requests_total\{code="error",endpoint="[a-z/-]+"\} [1-9]', body, re.M
        )
        failures = [
            line.split(" poll failed: ", 1)[1]
            for line in log_file.read_text().splitlines()
            if "poll failed" in line
        ]
        # each cause logged once, not once per poll (a request cut off by the shutdown may be a second cause)
        assert len(failures) == len(set(failures)) and 1 <= len(failures) <= 3, failures
        assert any("cannot connect" in f and "connection refused" in f for f in failures), failures

        server = start_mlflow_server(mlflow_port, data)  # back, same data
        wait_for(r"^fleetmon_mlflow_up 1\.0$", timeout=30)
        wait_for(finished)
    finally:
        if exporter is not None:
            stop_group(exporter)
        stop_group(server)


def test_failed_full_read_keeps_the_previous_state(proxy: FaultProxy, tmp_path: Path) -> None:
    """Every poll full (full_resync_seconds 0): a full read failing half-way must not wipe the state."""
    cust = f"g{uuid.uuid4().hex[:8]}"
    key = seed_run(proxy.upstream, cust)
    cfg = Config(
        fleet=fleet(cust),
        mlflow=MlflowConfig(
            tracking_uri=proxy.url,
            max_retries=0,
            full_resync_seconds=0,
            quarantine_file=tmp_path / "q.jsonl",
        ),
    )
    coll = MlflowCollector(cfg)
    exp = Exporter("mlflow", {"mlflow": coll})
    finished = {**key, "status": "finished"}
    try:
        assert exp.poll_once("mlflow")
        assert exp.scraped.get_sample_value("fleetmon_mlflow_runs", finished) == 1
        proxy.mode = "500_runs"  # experiments answer, runs fail: the new state would be empty
        assert not exp.poll_once("mlflow")
        assert exp.scraped.get_sample_value("fleetmon_mlflow_up") == 0
        assert exp.scraped.get_sample_value("fleetmon_mlflow_runs", finished) == 1
        assert coll._runs, "the previous state was put back"
        proxy.mode = "pass"
        assert exp.poll_once("mlflow")
        assert exp.scraped.get_sample_value("fleetmon_mlflow_runs", finished) == 1
        assert (
            exp.scraped.get_sample_value("fleetmon_mlflow_last_poll_requests", {"mode": "incremental"})
            is None
        )
    finally:
        exp.stop()
