"""The fleet's rollups are the same sharded as unsharded (issue 14; `make test-scale`).

The demo simulator writes a day and a half of the demo fleet's outputs. The outputs exporter reads them once
whole and once as shards 0/2 and 1/2 (a frozen clock, so both see the same instant). Each side's series go
into its own real VictoriaMetrics (the shards' with their ``shard`` and ``instance`` labels, as the scale
mode's Prometheus agents write them), a real vmalert evaluates ``prometheus/rules/recording.yml`` on each,
and every recorded series must be the same on both sides.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetmon.procs import free_port, spawn, stop_group, wait_for_http
from fleetmon.sharding import Shard
from simulator.core import Simulator
from tests.demo_outputs import demo_config, exposition

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "prometheus" / "rules" / "recording.yml"
HOURS = 36
# The outputs exporter's rollups: per customer, per building type, the fleet quantiles (the ends of chains).
LAST_LINKS = (
    "customer:fleetmon_models:count",
    "customer:fleetmon_models_stale:sum",
    "customer:fleetmon_models_drifting:sum",
    "customer:fleetmon_models_erroring:sum",
    "building_type:fleetmon_models:count",
    "building_type:fleetmon_models_drifting:sum",
    "building_type:fleetmon_models_stale:sum",
    "energy_window:fleetmon_model_mape_ratio:quantile",
)
pytestmark = [
    pytest.mark.scale,
    pytest.mark.skipif(
        shutil.which("victoria-metrics") is None or shutil.which("vmalert") is None,
        reason="victoria-metrics / vmalert not installed (scripts/install-system-deps.sh)",
    ),
]


class Store:
    """A VictoriaMetrics with a vmalert evaluating the recording rules on it."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.port, self.vmalert_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs = [
            spawn(
                [
                    "victoria-metrics",
                    f"-storageDataPath={tmp / name}",
                    f"-httpListenAddr=127.0.0.1:{self.port}",
                    "-search.latencyOffset=1s",
                    "-retentionPeriod=1",
                ],
                tmp / f"{name}.log",
            )
        ]
        wait_for_http(f"{self.url}/health", timeout=30, proc=self.procs[0])
        self.tmp, self.name = tmp, name

    def feed(self, parts: list[tuple[bytes, dict[str, str]]], stop: threading.Event) -> threading.Thread:
        """Import each exposition every 2 s, as a scrape would, until ``stop``."""

        def run() -> None:
            while not stop.is_set():
                for body, labels in parts:
                    query = urllib.parse.urlencode([("extra_label", f"{k}={v}") for k, v in labels.items()])
                    url = f"{self.url}/api/v1/import/prometheus?{query}"
                    urllib.request.urlopen(
                        urllib.request.Request(url, data=body, method="POST"), timeout=60
                    ).read()
                stop.wait(2)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def evaluate_rules(self) -> None:
        vmalert = spawn(
            [
                "vmalert",
                f"-rule={RULES}",
                f"-datasource.url={self.url}",
                f"-remoteWrite.url={self.url}",
                "-remoteWrite.flushInterval=200ms",
                f"-httpListenAddr=127.0.0.1:{self.vmalert_port}",
                "-evaluationInterval=5s",
                "-external.label=monitor=fleetmon",
            ],
            self.tmp / f"{self.name}-vmalert.log",
        )
        self.procs.append(vmalert)
        wait_for_http(f"http://127.0.0.1:{self.vmalert_port}/health", timeout=30, proc=vmalert)

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        params = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{params}", timeout=30) as r:
            return list(json.loads(r.read())["data"]["result"])

    def close(self) -> None:
        for p in reversed(self.procs):
            stop_group(p)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, Store, float]]:
    tmp = tmp_path_factory.mktemp("rollups")
    out = tmp / "demo"
    now = time.time()
    cfg = demo_config(out, tmp)
    # the simulated hours end now: the stores' clock (time() in the rules) is the exporters' frozen one
    sim = Simulator(cfg, start=now - HOURS * 3600 / cfg.demo.time_scale, mlflow=False)
    try:
        sim.fast_forward(HOURS)
    finally:
        sim.close()
    whole, sharded = Store(tmp, "whole"), Store(tmp, "sharded")
    try:
        stop = threading.Event()
        labels = {"job": "fleetmon-outputs", "instance": "o:9702"}
        feeds = [whole.feed([(exposition(out, tmp / "whole", now, Shard()), labels)], stop)]
        parts = []
        for s in (Shard(0, 2), Shard(1, 2)):
            labels = {
                "job": "fleetmon-outputs",
                "instance": f"o{s.index}:980{s.index}",
                "shard": str(s.index),
            }
            parts.append((exposition(out, tmp / f"shard{s.index}", now, s), labels))
        feeds.append(sharded.feed(parts, stop))
        for store in (whole, sharded):
            store.evaluate_rules()
        # Chained rules read the results of the ones before them, which a new series shows only after a few
        # seconds: wait until the last links of every chain are there on both sides, then a little more.
        deadline = time.time() + 120
        while missing := [
            (s.name, n) for s in (whole, sharded) for n in LAST_LINKS if not s.query(n, time.time())
        ]:
            assert time.time() < deadline, (
                f"the recording rules' chains did not complete in 2 minutes: {missing}"
            )
            time.sleep(2)
        time.sleep(5)
        yield whole, sharded, time.time() - 1
    finally:
        stop.set()
        whole.close()
        sharded.close()


def recorded_names() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return sorted({r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r})


def by_labels(result: list[dict[str, Any]]) -> dict[tuple[tuple[str, str], ...], float]:
    drop = {"instance", "shard"}  # where a series came from, not what it says
    out = {}
    for r in result:
        key = tuple(sorted((k, v) for k, v in r["metric"].items() if k not in drop))
        assert key not in out, f"two series for {key}: a rollup kept a shard apart"
        out[key] = float(r["value"][1])
    return out


def test_every_recorded_series_is_the_same_sharded_as_unsharded(stores: tuple[Store, Store, float]) -> None:
    whole, sharded, at = stores
    compared = []
    for name in recorded_names():
        want = by_labels(whole.query(name, at))
        got = by_labels(sharded.query(name, at))
        assert set(got) == set(want), name
        for key, value in want.items():
            tol = 5.0 if name.endswith("age:seconds") else 1e-9  # time() of two evaluations, a second apart
            assert math.isclose(got[key], value, rel_tol=1e-9, abs_tol=tol) or (
                math.isnan(value) and math.isnan(got[key])
            ), (name, key, value, got[key])
        if want:
            compared.append(name)
    for name in (*LAST_LINKS, "model:fleetmon_model_error_ratio:24h_7d"):
        assert name in compared, name
    counts = by_labels(whole.query("customer:fleetmon_models:count", at))
    assert sorted(counts.values()) == [20.0] * 4  # 4 customers x 5 buildings x 4 models


def test_each_shard_holds_about_half_and_no_model_twice(stores: tuple[Store, Store, float]) -> None:
    _, sharded, at = stores
    result = sharded.query("count by (shard) (fleetmon_model_last_prediction_timestamp_seconds)", at)
    per_shard = {r["metric"]["shard"]: float(r["value"][1]) for r in result}
    assert set(per_shard) == {"0", "1"} and sum(per_shard.values()) == 80 and min(per_shard.values()) >= 20
    twice = sharded.query(
        "count by (customer, building, energy, model) (fleetmon_model_last_prediction_timestamp_seconds) > 1",
        at,
    )
    assert twice == []
