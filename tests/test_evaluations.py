"""``fleetmon evaluations``: the version benchmark read from a real Prometheus, logged back to a real
``mlflow server`` as an evaluation run per version and tags on the model version (issue: closing the loop).

Prometheus scrapes a small HTTP server that serves an exposition in the outputs exporter's families (their
names and labels are checked against the real exporter in tests/test_outputs_versions.py)."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collectors.mlflow_client import MlflowRest
from fleetmon import evaluations
from fleetmon.config import Config, EvaluationsConfig, MlflowConfig
from fleetmon.procs import free_port, spawn, stop_group, wait_for_http

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Prometheus")

J = 3.6e6


def exposition(prefix: str) -> str:
    fc = f'customer="{prefix}",building="b1",energy="heating",model="forecast"'
    an = f'customer="{prefix}",building="b1",energy="heating",model="anomaly"'
    lost = f'customer="{prefix}",building="b9",energy="heating",model="forecast"'
    return "\n".join(
        [
            f'fleetmon_model_version_paired_targets{{{fc},version="1",alias="champion"}} 48',
            f'fleetmon_model_version_paired_targets{{{fc},version="2",alias="challenger"}} 48',
            f'fleetmon_model_version_mae_joules{{{fc},version="1",alias="champion"}} {2.0 * J}',
            f'fleetmon_model_version_mae_joules{{{fc},version="2",alias="challenger"}} {1.5 * J}',
            f'fleetmon_model_version_mape_ratio{{{fc},version="2",alias="challenger"}} 0.04',
            f'fleetmon_model_challenger_dm_pvalue{{{fc},champion_version="1",challenger_version="2"}} 0.001',
            f'fleetmon_model_challenger_loss_improvement_ratio{{{fc},champion_version="1",challenger_version="2"}} 0.3',
            f'fleetmon_model_challenger_outperforms{{{fc},champion_version="1",challenger_version="2"}} 1',
            # an anomaly detector: F1 and McNemar
            f'fleetmon_model_version_paired_targets{{{an},version="1",alias="champion"}} 100',
            f'fleetmon_model_version_f1_ratio{{{an},version="1",alias="champion"}} 0.8',
            f'fleetmon_model_challenger_mcnemar_pvalue{{{an},champion_version="1",challenger_version="3"}} 0.2',
            # a version the registry does not know (v7), a model it does not know (b9)
            f'fleetmon_model_version_paired_targets{{{fc},version="7",alias=""}} 48',
            f'fleetmon_model_version_paired_targets{{{lost},version="1",alias="champion"}} 48',
            "",
        ]
    )


class _Serve(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real Prometheus scraping an exposition with a unique customer; yields (its URL, the customer)."""
    prefix = "ev" + uuid.uuid4().hex[:8]
    handler = type("Serve", (_Serve,), {"body": exposition(prefix).encode()})
    target = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=target.serve_forever, daemon=True).start()
    port = free_port()
    conf = tmp_path / "prometheus.yml"
    conf.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: fleetmon-outputs\n    static_configs: [{{targets: ['127.0.0.1:{target.server_port}']}}]\n"
    )
    proc = spawn(
        [
            "prometheus",
            f"--config.file={conf}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp_path / "prometheus.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/-/ready", timeout=60, proc=proc)
        deadline = time.time() + 60
        q = urllib.parse.quote("count(fleetmon_model_version_paired_targets)")
        while time.time() < deadline:
            with urllib.request.urlopen(f"{url}/api/v1/query?query={q}", timeout=5) as r:
                if json.load(r)["data"]["result"]:
                    break
            time.sleep(0.5)
        yield url, prefix
    finally:
        stop_group(proc)
        target.shutdown()
        target.server_close()


def register(rest: MlflowRest, prefix: str, model: str, versions: int) -> str:
    name = f"{prefix}.b1.heating.{model}"
    tags = {"customer": prefix, "building": "b1", "energy": "heating", "model": model}
    rest.call(
        "POST",
        "registered-models/create",
        "create",
        body={"name": name, "tags": [{"key": f"fleetmon.{k}", "value": v} for k, v in tags.items()]},
    )
    for _ in range(versions):
        rest.call(
            "POST", "model-versions/create", "create", body={"name": name, "source": "s3://bucket/model"}
        )
    return name


def test_benchmarked_versions_are_logged_to_their_evaluation_runs_and_tagged(
    mlflow_server: str, prometheus: tuple[str, str], tmp_path: Path
) -> None:
    prom_url, prefix = prometheus
    cfg = Config(
        mlflow=MlflowConfig(tracking_uri=mlflow_server),
        evaluations=EvaluationsConfig(
            enabled=True,
            prometheus_url=prom_url,
            experiment=f"{prefix}/production-benchmarks",
            state_file=tmp_path / "state.json",
        ),
    )
    rest = MlflowRest(mlflow_server)
    forecast = register(rest, prefix, "forecast", 2)
    anomaly = register(rest, prefix, "anomaly", 3)
    clock = [1_800_000_000.0]
    reporter = evaluations.Reporter(cfg, clock=lambda: clock[0])
    try:
        res = reporter.cycle()
        assert res.error is None
        # forecast v1, v2, anomaly v1, v3 logged; forecast v7 and b9 unknown to the registry
        assert (res.versions, res.logged, res.unregistered) == (6, 4, 2)

        def version(name: str, v: str) -> dict[str, Any]:
            got = rest.call("GET", "model-versions/get", "get", params={"name": name, "version": v})
            return dict(got["model_version"])

        tags = {t["key"]: t["value"] for t in version(forecast, "2").get("tags", [])}
        assert tags["fleetmon.production.production_mae_kwh"] == "1.5"
        assert tags["fleetmon.production.production_mape"] == "0.04"
        assert tags["fleetmon.production.challenger_outperforms"] == "1"
        assert tags["fleetmon.production.challenger_pvalue"] == "0.001"
        assert tags["fleetmon.production.compared_with"] == "1"
        assert tags["fleetmon.production.evaluated_at"] == "2027-01-15T08:00:00Z"
        run_id = tags["fleetmon.production.evaluation_run_id"]
        run = rest.call("GET", "runs/get", "get", params={"run_id": run_id})["run"]
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert metrics["production_mae_kwh"] == pytest.approx(1.5)
        assert metrics["challenger_loss_improvement"] == pytest.approx(0.3)
        run_tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert run_tags["fleetmon.evaluation.model_version"] == f"{forecast}/2"
        a3 = {t["key"]: t["value"] for t in version(anomaly, "3").get("tags", [])}
        assert a3["fleetmon.production.challenger_pvalue"] == "0.2"  # McNemar's
        a1 = {t["key"]: t["value"] for t in version(anomaly, "1").get("tags", [])}
        assert a1["fleetmon.production.production_f1"] == "0.8"

        # the next cycle adds to the same run's history; a new reporter without its state finds the run
        clock[0] += 3600
        assert reporter.cycle().logged == 4
        (tmp_path / "state.json").unlink()
        again = evaluations.Reporter(cfg, clock=lambda: clock[0] + 3600)
        try:
            assert again.cycle().logged == 4
        finally:
            again.close()
        hist = rest.call(
            "GET",
            "metrics/get-history",
            "history",
            params={"run_id": run_id, "metric_key": "production_mae_kwh"},
        )["metrics"]
        assert len(hist) == 3
        runs = rest.call(
            "POST",
            "runs/search",
            "search",
            body={"experiment_ids": [reporter._experiment()], "max_results": 100},
        )["runs"]
        assert len(runs) == 4  # one per logged version, never a second one
    finally:
        reporter.close()
        rest.close()


def test_an_unreachable_prometheus_is_a_reported_failure_not_a_crash(
    tmp_path: Path, mlflow_server: str
) -> None:
    cfg = Config(
        mlflow=MlflowConfig(tracking_uri=mlflow_server),
        evaluations=EvaluationsConfig(
            enabled=True, prometheus_url=f"http://127.0.0.1:{free_port()}", state_file=tmp_path / "s.json"
        ),
    )
    reporter = evaluations.Reporter(cfg)
    try:
        res = reporter.cycle()
        assert res.error is not None and "cannot query" in res.error
        assert res.logged == 0
    finally:
        reporter.close()
    assert evaluations.main(["--config.file", str(tmp_path / "missing.yml"), "--once"]) == 2
