"""The native stack's scale mode end to end (``stack.scale.shards: 2``): two exporter shards, a Prometheus agent
per shard remote-writing to VictoriaMetrics, vmalert on the shipped rules, two clustered Alertmanagers.

Run by ``make test-scale`` (not ``make test``: it starts a second whole stack).
"""

from __future__ import annotations

import copy
import json
import shutil
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetmon.procs import free_port_below_ephemeral, port_open
from tests.conftest import DEMO_STACK_TUNING, _demo_stack_config, _run_stack

pytestmark = [
    pytest.mark.scale,
    pytest.mark.e2e,
    pytest.mark.skipif(
        any(shutil.which(b) is None for b in ("victoria-metrics", "vmalert", "prometheus")),
        reason="victoria-metrics, vmalert or prometheus not installed (scripts/install-system-deps.sh)",
    ),
]


def get(url: str, **params: str) -> Any:
    with urllib.request.urlopen(
        url + ("?" + urllib.parse.urlencode(params) if params else ""), timeout=10
    ) as r:
        return json.loads(r.read())


class ScaleStack:
    def __init__(self, tmp: Path) -> None:
        tuning = copy.deepcopy(DEMO_STACK_TUNING["config"])
        port = free_port_below_ephemeral
        self.scale = {
            "shards": 2,
            "victoria_metrics_port": port(),
            "vmalert_port": port(),
            "alertmanager_peer_port": port(),
            "alertmanager_cluster_ports": [port(), port()],
            "port_base": 30000 + port() % 2000 * 10,
            "scrape_interval": "5s",
            "evaluation_interval": "5s",
        }
        tuning["stack"] = {"secure": False, "scale": self.scale}
        self.config = _demo_stack_config(tmp, tuning)
        self.state = tmp / "state"
        self.vm = f"http://127.0.0.1:{self.scale['victoria_metrics_port']}"
        doc = yaml.safe_load(self.config.read_text())
        self.webhook = f"http://127.0.0.1:{doc['stack']['webhook_port']}"
        self.alertmanagers = [doc["stack"]["alertmanager_port"], self.scale["alertmanager_peer_port"]]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(get(self.vm + "/api/v1/query", query=expr)["data"]["result"])

    def wait(self, what: str, check: Any, timeout: float = 240) -> Any:
        deadline = time.time() + timeout
        while True:
            got = check()
            if got:
                return got
            if time.time() > deadline:
                logs = self.state / "log"
                tails = {p.name: p.read_text(errors="replace")[-1500:] for p in sorted(logs.glob("*.log"))}
                raise AssertionError(f"{what}: not within {timeout:.0f} s; logs: {json.dumps(tails)[:6000]}")
            time.sleep(3)


@pytest.fixture(scope="module")
def scale_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaleStack]:
    stack = ScaleStack(tmp_path_factory.mktemp("scale"))
    up = _run_stack(stack.config, stack.state, "up", timeout=600)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield stack
    finally:
        down = _run_stack(stack.config, stack.state, "down", timeout=300)
        assert down.returncode == 0, down.stdout + down.stderr


def test_every_shard_and_component_reaches_the_central_store(scale_stack: ScaleStack) -> None:
    s = scale_stack

    def targets_up() -> Counter[str] | None:
        up = Counter(r["metric"]["job"] for r in s.query("up == 1"))
        need = {"fleetmon-outputs": 2, "fleetmon-mlflow": 2, "fleetmon-platform": 2, "prometheus": 3}
        need |= {
            "alertmanager": 2,
            "pushgateway": 1,
            "fleetmon-webhook": 1,
            "victoria-metrics": 1,
            "vmalert": 1,
        }
        return up if all(up[j] >= n for j, n in need.items()) and not s.query("up == 0") else None

    s.wait("every target up in VictoriaMetrics", targets_up)
    # each shard's exporters carry its shard label; the models are split between them, none twice

    def models_per_shard() -> dict[str, float] | None:
        got = {
            r["metric"].get("shard"): float(r["value"][1])
            for r in s.query("count by (shard) (fleetmon_model_last_prediction_timestamp_seconds)")
        }
        # until both shards' first polls have reached the store (one may be slower to start)
        return got if len(got) >= 2 else None

    per_shard = s.wait("models of both shards", models_per_shard)
    assert set(per_shard) == {"0", "1"} and sum(per_shard.values()) == 80, per_shard
    assert not s.query(
        "count by (customer, building, energy, model) (fleetmon_model_last_prediction_timestamp_seconds) > 1"
    )
    # vmalert's rollups over both shards: one series per customer, every model counted
    counts = s.wait("customer rollups", lambda: s.query("customer:fleetmon_models:count"))
    assert sorted(float(r["value"][1]) for r in counts) == [20.0] * 4
    # fleet-wide series of the shards never collide: one per shard and source
    sources = s.query("fleetmon_outputs_source_up")
    assert len({(r["metric"]["shard"], r["metric"]["source"]) for r in sources}) == len(sources) >= 4


def test_two_alertmanagers_one_cluster_each_notification_once(scale_stack: ScaleStack) -> None:
    s = scale_stack
    for port in s.alertmanagers:
        status = s.wait(
            f"Alertmanager {port} in a cluster of two",
            lambda port=port: (
                (st := get(f"http://127.0.0.1:{port}/api/v2/status"))
                and len(st["cluster"].get("peers") or []) == 2
                and st
            ),
        )
        assert status["cluster"]["status"] == "ready"
    # both receive every alert from vmalert ...
    for port in s.alertmanagers:
        s.wait(
            f"Watchdog at Alertmanager {port}",
            lambda port=port: get(f"http://127.0.0.1:{port}/api/v2/alerts", filter="alertname=Watchdog"),
        )
    # ... and on-call gets each notification once: the webhook receiver sees no notification twice
    s.wait("notifications at the webhook receiver", lambda: get(s.webhook + "/notifications"))
    time.sleep(20)  # past the second peer's wait (peer position x 15 s): a duplicate would be here by now
    notes = get(s.webhook + "/notifications")
    seen = Counter(
        (n["groupKey"], n["status"], tuple(sorted((a["fingerprint"], a["status"]) for a in n["alerts"])))
        for n in notes
    )
    assert notes and max(seen.values()) == 1, [k for k, v in seen.items() if v > 1]
    assert any(n["groupLabels"].get("alertname") == "Watchdog" for n in notes)


def test_status_shows_every_component_of_the_scale_mode_healthy(scale_stack: ScaleStack) -> None:
    status = _run_stack(scale_stack.config, scale_stack.state, "status", "--json")
    rows = {r["name"]: r for r in json.loads(status.stdout)}
    want = {"victoria-metrics", "vmalert", "alertmanager", "alertmanager-2", "prometheus", "webhook"}
    want |= {f"prometheus-agent-{i}" for i in (0, 1)}
    want |= {f"exporter-{e}-{i}" for e in ("mlflow", "outputs", "platform") for i in (0, 1)}
    assert want <= set(rows)
    assert not {"exporter-outputs", "exporter-mlflow", "exporter-platform"} & set(rows)  # only the shards'
    for name in want:
        assert (rows[name]["state"], rows[name]["health"]) == ("running", "ok"), rows[name]
        assert port_open(rows[name]["port"])
