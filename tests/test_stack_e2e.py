"""End to end: the real `fleetmon stack up` on the demo fleet, every Prometheus target up, then down.

Runs the shipped config with every port moved to a free one and every path (demo outputs, logs, state,
pid files, data) under a temporary directory, so it neither disturbs nor depends on a developer's
running `make up` stack. This is the plain mode `make up` runs; the session's `demo_stack` (tests/conftest.py)
runs the secure mode, so both are tested end to end.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from fleetmon.config import load_config
from fleetmon.procs import port_open

ROOT = Path(__file__).resolve().parent.parent
JOBS = {
    "prometheus",
    "alertmanager",
    "pushgateway",
    "fleetmon-mlflow",
    "fleetmon-outputs",
    "fleetmon-platform",
    "fleetmon-webhook",
}


def prom_get(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())["data"]


def pids(state: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in (state / "run").glob("*.pid")}


def still_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.e2e
@pytest.mark.timeout(420)
def test_stack_up_all_targets_up_then_down_leaves_nothing(
    tmp_path: Path,
    make_stack_config: Callable[[Path], Path],
    run_stack: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    missing = [
        m
        for m in ("exporters/mlflow.py", "exporters/outputs.py", "exporters/platform.py")
        if not (ROOT / m).exists()
    ]
    assert not missing, f"the stack cannot be complete without {missing}"
    cfg_path = make_stack_config(tmp_path)
    cfg = load_config(cfg_path, environ={})
    state = tmp_path / "stack"
    ports = [
        cfg.stack.prometheus_port,
        cfg.stack.alertmanager_port,
        cfg.stack.pushgateway_port,
        cfg.stack.mlflow_port,
        cfg.stack.webhook_port,
        cfg.mlflow.listen.port,
        cfg.outputs.listen.port,
        cfg.platform.listen.port,
    ]
    started: dict[str, int] = {}
    try:
        t0 = time.monotonic()
        up = run_stack(cfg_path, state, "up")
        up_seconds = time.monotonic() - t0
        started = pids(state)
        assert up.returncode == 0, up.stdout + up.stderr
        assert set(started) >= {"mlflow", "prometheus", "alertmanager", "pushgateway", "webhook", "simulator"}
        assert {"exporter-mlflow", "exporter-outputs", "exporter-platform"} <= set(started)

        # Every target up within 60 s of `up` returning.
        returned = time.monotonic()
        health: dict[str, str] = {}
        while time.monotonic() - returned < 60:
            targets = prom_get(cfg.stack.prometheus_port, "/api/v1/targets")["activeTargets"]
            health = {t["labels"]["job"]: t["health"] for t in targets}
            if set(health) == JOBS and all(h == "up" for h in health.values()):
                break
            time.sleep(2)
        targets_seconds = time.monotonic() - returned
        assert set(health) == JOBS and all(h == "up" for h in health.values()), health

        # Prometheus holds fleetmon_ series from each exporter and the webhook receiver.
        result = prom_get(
            cfg.stack.prometheus_port, "/api/v1/query", query='count by (job) ({__name__=~"fleetmon_.+"})'
        )["result"]
        per_job = {r["metric"]["job"]: int(r["value"][1]) for r in result}
        assert {"fleetmon-mlflow", "fleetmon-outputs", "fleetmon-platform", "fleetmon-webhook"} <= set(
            per_job
        )
        print(f"\nup took {up_seconds:.1f}s; all targets up {targets_seconds:.1f}s later; series {per_job}")

        # `up` again starts nothing new.
        again = run_stack(cfg_path, state, "up")
        assert again.returncode == 0, again.stdout + again.stderr
        assert pids(state) == started
        assert again.stdout.count("already running") == len(started)
        status = run_stack(cfg_path, state, "status", "--json")
        rows = {r["name"]: r for r in json.loads(status.stdout)}
        assert all(rows[n]["state"] == "running" for n in started)
        assert status.returncode == 0, status.stdout
    finally:
        down = run_stack(cfg_path, state, "down", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    # No process left: neither the group leaders nor anything in their groups, nor anything using our dirs.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(still_running(p) for p in started.values()):
        time.sleep(0.2)
    assert not [n for n, p in started.items() if still_running(p)]
    leftovers = [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline", "status"])
        if p.info["status"] != psutil.STATUS_ZOMBIE and str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ]
    assert not leftovers, leftovers
    assert not [p for p in ports if port_open(p)]
