"""End to end: the real `fleetmon stack up` on the demo fleet: every Prometheus target up, `up` again starts
nothing, `status` shows it all running.

Runs on the session's `demo_stack` (tests/conftest.py: the shipped config with every port moved to a free one
and every path under a temporary directory, so it neither disturbs nor depends on a developer's running
`make up` stack); the fixture's teardown checks that `fleetmon stack down` leaves no process and no port behind.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

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


def pids(state: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in (state / "run").glob("*.pid")}


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_stack_up_all_targets_up_up_again_starts_nothing(
    demo_stack: Any, run_stack: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    missing = [
        m
        for m in ("exporters/mlflow.py", "exporters/outputs.py", "exporters/platform.py")
        if not (ROOT / m).exists()
    ]
    assert not missing, f"the stack cannot be complete without {missing}"
    started = pids(demo_stack.state_dir)
    assert set(started) >= {"mlflow", "prometheus", "alertmanager", "pushgateway", "webhook", "simulator"}
    assert {"exporter-mlflow", "exporter-outputs", "exporter-platform"} <= set(started)

    # Every target up (the fixture waited for that), every job there.
    targets = demo_stack.query_api("/api/v1/targets")["activeTargets"]
    health = {t["labels"]["job"]: t["health"] for t in targets}
    assert set(health) == JOBS and all(h == "up" for h in health.values()), health

    # Prometheus holds fleetmon_ series from each exporter and the webhook receiver.
    result = demo_stack.query('count by (job) ({__name__=~"fleetmon_.+"})')
    per_job = {r["metric"]["job"]: int(r["value"][1]) for r in result}
    assert {"fleetmon-mlflow", "fleetmon-outputs", "fleetmon-platform", "fleetmon-webhook"} <= set(per_job)
    print(f"\nseries per job {per_job}")

    # `up` again starts nothing new.
    again = run_stack(demo_stack.config_path, demo_stack.state_dir, "up")
    assert again.returncode == 0, again.stdout + again.stderr
    assert pids(demo_stack.state_dir) == started
    assert again.stdout.count("already running") == len(started)
    status = run_stack(demo_stack.config_path, demo_stack.state_dir, "status", "--json")
    rows = {r["name"]: r for r in json.loads(status.stdout)}
    assert all(rows[n]["state"] == "running" for n in started)
    assert status.returncode == 0, status.stdout
