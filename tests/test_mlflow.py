"""MLflow collector against a real `mlflow server`: runs, durations, metrics, registry, incremental polls."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from collectors.mlflow import MlflowCollector
from fleetmon.config import Building, Config, Customer, FleetConfig, MlflowConfig
from fleetmon.exporter import Exporter, ScrapeView


def unique_fleet(tmp_path: Path, url: str, **mlflow: Any) -> tuple[Config, str, str]:
    """A one-building fleet with ids no other test uses (the MLflow server is shared by the session)."""
    cust = f"t{uuid.uuid4().hex[:8]}"
    building = f"{cust}-b1"
    cfg = Config(
        fleet=FleetConfig(customers=[Customer(id=cust, buildings=[Building(id=building)])]),
        mlflow=MlflowConfig(
            tracking_uri=url,
            quarantine_file=tmp_path / "quarantine" / "mlflow.jsonl",
            **{"full_resync_seconds": 3600, **mlflow},
        ),
    )
    return cfg, cust, building


def promtool_check(exporter: Exporter) -> None:
    out = subprocess.run(
        ["promtool", "check", "metrics"],
        input=exporter.exposition(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, (out.stdout + out.stderr).decode()


def make_run(
    c: MlflowClient,
    exp: str,
    tags: dict[str, str],
    *,
    start_ms: int,
    end_ms: int | None,
    status: str = "FINISHED",
    metrics: dict[str, float] | None = None,
    params: dict[str, str] | None = None,
) -> str:
    run = c.create_run(exp, start_time=start_ms, tags=tags)
    rid = run.info.run_id
    c.log_batch(
        rid,
        metrics=[Metric(k, v, start_ms, 0) for k, v in (metrics or {}).items()],
        params=[Param(k, v) for k, v in (params or {}).items()],
    )
    if end_ms is not None:
        c.set_terminated(rid, status, end_time=end_ms)
    return rid


@pytest.mark.filterwarnings("ignore:.*transition_model_version_stage.*:FutureWarning")
def test_runs_durations_metrics_registry_and_changes(mlflow_server: str, tmp_path: Path) -> None:
    cfg, cust, b = unique_fleet(tmp_path, mlflow_server)
    c = MlflowClient(mlflow_server)
    exp = c.create_experiment(f"{cust}/{b}")
    hf = {"customer": cust, "building": b, "energy": "heating", "model": "forecast"}
    now = int(time.time() * 1000)
    r_old = make_run(
        c, exp, hf, start_ms=now - 600_000, end_ms=now - 540_000,
        metrics={"mae": 3.0, "training_duration_seconds": 55.0, "inference_duration_seconds": 0.9},
        params={"algorithm": "gbm", "n_estimators": "100"},
    )  # fmt: skip
    r_new = make_run(
        c, exp, hf, start_ms=now - 300_000, end_ms=now - 258_000,
        metrics={"mae": 1.5, "rmse": 2.25, "mape": 0.12, "training_duration_seconds": 40.0, "loss": 7.0},
        params={"algorithm": "gbm", "n_estimators": "200"},
    )  # fmt: skip
    r_running = make_run(c, exp, hf, start_ms=now - 10_000, end_ms=None)
    make_run(c, exp, {"customer": cust}, start_ms=now, end_ms=now + 1)  # missing tags
    make_run(c, exp, {**hf, "building": "elsewhere"}, start_ms=now, end_ms=now + 1)  # not in the fleet

    # registry: by name pattern (no tags), by tags (any name), and one that maps to nothing
    name = f"{cust}.{b}.heating.forecast"
    c.create_registered_model(name)
    c.create_model_version(name, source=f"runs:/{r_old}/model", run_id=r_old)
    c.create_model_version(name, source=f"runs:/{r_new}/model", run_id=r_new, tags={"flavor": "lightgbm"})
    c.set_registered_model_alias(name, "champion", "1")
    c.set_registered_model_alias(name, "challenger", "2")
    c.transition_model_version_stage(name, "1", "Production")
    ea = {**hf, "energy": "electricity", "model": "anomaly"}
    c.create_registered_model(f"anomaly-detector-{cust}", tags=ea)
    c.create_model_version(f"anomaly-detector-{cust}", source="s3://bucket/model")
    c.create_registered_model(f"{cust}-scratch")

    coll = MlflowCollector(cfg)
    exp_ = Exporter("mlflow", {"mlflow": coll})
    try:
        assert exp_.poll_once("mlflow")
        reg = exp_.scraped

        def v(name: str, /, **labels: str) -> float | None:
            return reg.get_sample_value(name, labels)

        L = hf
        assert v("fleetmon_mlflow_up") == 1
        assert v("fleetmon_mlflow_runs", **L, status="finished") == 2
        assert v("fleetmon_mlflow_runs", **L, status="running") == 1
        assert v("fleetmon_mlflow_runs", **L, status="failed") == 0
        # every fleet model is listed, with zero runs where there are none
        assert v("fleetmon_mlflow_runs", **ea, status="finished") == 0
        assert v("fleetmon_mlflow_training_last_success_timestamp_seconds", **L) == (now - 258_000) / 1000
        assert v("fleetmon_mlflow_run_duration_seconds", **L, kind="wall") == 42.0
        assert v("fleetmon_mlflow_run_duration_seconds", **L, kind="training") == 40.0
        # the newest finished run did not log an inference duration: the newest one that did counts
        assert v("fleetmon_mlflow_run_duration_seconds", **L, kind="inference") == 0.9
        assert v("fleetmon_mlflow_model_quality", **L, metric="mae") == 1.5
        assert v("fleetmon_mlflow_model_quality", **L, metric="rmse") == 2.25
        assert v("fleetmon_mlflow_model_quality", **L, metric="mape") == 0.12
        assert v("fleetmon_mlflow_model_quality", **L, metric="loss") is None  # not configured
        assert v("fleetmon_mlflow_unmapped_runs", reason="missing_tags") >= 1
        assert v("fleetmon_mlflow_unmapped_runs", reason="unknown_fleet_key") >= 1
        # registry
        assert v("fleetmon_mlflow_model_versions", **L) == 2
        assert v("fleetmon_mlflow_model_versions", **ea) == 1
        assert v("fleetmon_mlflow_model_alias_version", **L, alias="champion") == 1
        assert v("fleetmon_mlflow_model_alias_version", **L, alias="challenger") == 2
        assert v("fleetmon_mlflow_model_stage_version", **L, stage="production") == 1
        newest = c.get_model_version(name, "2").creation_timestamp / 1000
        assert v("fleetmon_mlflow_model_latest_version_creation_timestamp_seconds", **L) == newest
        info = {
            s.labels["alias"]: s.labels
            for fam in reg.collect()
            if fam.name == "fleetmon_mlflow_model_version_info"
            for s in fam.samples
            if s.labels["customer"] == cust and s.labels["energy"] == "heating"
        }
        assert set(info) == {"champion", "challenger", "latest"}
        assert info["champion"]["version"] == "1" and info["champion"]["run_id"] == r_old
        assert info["champion"]["stage"] == "production" and info["champion"]["flavor"] == "unknown"
        assert info["latest"]["version"] == "2" and info["latest"]["flavor"] == "lightgbm"
        assert info["champion"]["params_digest"] != info["challenger"]["params_digest"] != ""
        assert v("fleetmon_mlflow_unmapped_registered_models", reason="no_fleet_mapping") >= 1
        quarantined = [json.loads(x) for x in cfg.mlflow.quarantine_file.read_text().splitlines()]
        reasons = {(q["kind"], q["reason"]) for q in quarantined}
        assert ("run", "missing_tags") in reasons and ("run", "unknown_fleet_key") in reasons
        assert ("registered_model", "no_fleet_mapping") in reasons
        promtool_check(exp_)

        # --- changes: the running run fails, a new run finishes, the champion moves, v1 is deleted
        c.set_terminated(r_running, "FAILED")
        t = int(time.time() * 1000)
        make_run(
            c, exp, hf, start_ms=t - 5000, end_ms=t, metrics={"mae": 1.0, "training_duration_seconds": 4.0}
        )
        c.set_registered_model_alias(name, "champion", "2")
        c.delete_model_version(name, "1")
        assert exp_.poll_once("mlflow")
        assert v("fleetmon_mlflow_last_poll_requests", mode="incremental") is not None
        assert v("fleetmon_mlflow_runs", **L, status="running") == 0
        assert v("fleetmon_mlflow_runs", **L, status="failed") == 1
        assert v("fleetmon_mlflow_runs", **L, status="finished") == 3
        assert v("fleetmon_mlflow_model_quality", **L, metric="mae") == 1.0
        assert v("fleetmon_mlflow_model_quality", **L, metric="rmse") is None  # the new run logged none
        assert v("fleetmon_mlflow_run_duration_seconds", **L, kind="wall") == 5.0
        assert v("fleetmon_mlflow_training_last_success_timestamp_seconds", **L) == t / 1000
        assert v("fleetmon_mlflow_model_alias_version", **L, alias="champion") == 2
        assert v("fleetmon_mlflow_model_versions", **L) == 1
        assert v("fleetmon_mlflow_model_stage_version", **L, stage="production") is None

        # --- a restart (fresh state, full read) gives exactly the same figures as the incremental one
        fresh = Exporter("mlflow", {"mlflow": MlflowCollector(cfg)})
        try:
            assert fresh.poll_once("mlflow")
            assert ours(fresh.scraped, cust) == ours(reg, cust)
        finally:
            fresh.stop()
    finally:
        exp_.stop()


def ours(reg: ScrapeView, cust: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """This test's per-model samples (the server holds other tests' data too)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in reg.collect()
        for s in fam.samples
        if s.labels.get("customer") == cust
    }


def test_incremental_poll_asks_for_far_less(mlflow_server: str, tmp_path: Path) -> None:
    # margin 0: runs that ended before the first poll are not asked for again
    cfg, cust, b = unique_fleet(tmp_path, mlflow_server, incremental_margin_seconds=0)
    c = MlflowClient(mlflow_server)
    exp = c.create_experiment(f"{cust}/{b}")
    key = {"customer": cust, "building": b, "energy": "electricity", "model": "forecast"}
    now = int(time.time() * 1000)
    for i in range(30):
        make_run(
            c, exp, key, start_ms=now - 1000 * (60 - i), end_ms=now - 1000 * (30 - i), metrics={"mae": i}
        )
    coll = MlflowCollector(cfg)
    coll.client.runs_page_size = 5  # many pages without creating thousands of runs
    exp_ = Exporter("mlflow", {"mlflow": coll})
    try:
        assert exp_.poll_once("mlflow")
        full = exp_.scraped.get_sample_value("fleetmon_mlflow_last_poll_requests", {"mode": "full"})
        assert exp_.poll_once("mlflow")
        incr = exp_.scraped.get_sample_value("fleetmon_mlflow_last_poll_requests", {"mode": "incremental"})
        assert full >= 6 + 3  # at least 30 / 5 pages of runs, experiments, models, versions
        assert incr <= 4 and incr * 2 < full
        assert exp_.scraped.get_sample_value("fleetmon_mlflow_runs", {**key, "status": "finished"}) == 30
        assert exp_.scraped.get_sample_value("fleetmon_mlflow_model_quality", {**key, "metric": "mae"}) == 29
        # a run ending now is seen by the next incremental poll
        t = int(time.time() * 1000)
        make_run(c, exp, key, start_ms=t - 1000, end_ms=t, status="KILLED")
        assert exp_.poll_once("mlflow")
        assert exp_.scraped.get_sample_value("fleetmon_mlflow_runs", {**key, "status": "killed"}) == 1
        # a new experiment filled with runs from the past (a seeder, an import) is read whole
        exp2 = c.create_experiment(f"{cust}/{b}/imported")
        day_ago = t - 86_400_000
        make_run(
            c, exp2, {**key, "model": "anomaly"}, start_ms=day_ago, end_ms=day_ago + 1000, status="FAILED"
        )
        assert exp_.poll_once("mlflow")
        failed = {**key, "model": "anomaly", "status": "failed"}
        assert exp_.scraped.get_sample_value("fleetmon_mlflow_runs", failed) == 1
    finally:
        exp_.stop()


def test_full_resync_every_poll_when_configured(mlflow_server: str, tmp_path: Path) -> None:
    """full_resync_seconds: 0 turns incremental polling off; a deleted run disappears from the counts."""
    cfg, cust, b = unique_fleet(tmp_path, mlflow_server, full_resync_seconds=0)
    c = MlflowClient(mlflow_server)
    exp = c.create_experiment(f"{cust}/{b}")
    key = {"customer": cust, "building": b, "energy": "heating", "model": "anomaly"}
    now = int(time.time() * 1000)
    rids = [make_run(c, exp, key, start_ms=now - 2000, end_ms=now - 1000) for _ in range(2)]
    exp_ = Exporter("mlflow", {"mlflow": MlflowCollector(cfg)})
    try:
        assert exp_.poll_once("mlflow")
        assert exp_.scraped.get_sample_value("fleetmon_mlflow_runs", {**key, "status": "finished"}) == 2
        c.delete_run(rids[0])
        assert exp_.poll_once("mlflow")
        assert exp_.scraped.get_sample_value("fleetmon_mlflow_runs", {**key, "status": "finished"}) == 1
        assert (
            exp_.scraped.get_sample_value("fleetmon_mlflow_last_poll_requests", {"mode": "incremental"})
            is None
        )
    finally:
        exp_.stop()


def test_fleetmons_own_evaluation_runs_are_not_read(mlflow_server: str, tmp_path: Path) -> None:
    """`fleetmon evaluations` logs its runs (no fleet tags) to evaluations.experiment: they are not the
    platform's training runs, so they must not show up as unmapped runs."""
    cfg, _, _ = unique_fleet(tmp_path, mlflow_server, full_resync_seconds=0)
    evaluations = f"fleetmon-evals-{uuid.uuid4().hex[:8]}"
    cfg = cfg.model_copy(
        update={"evaluations": cfg.evaluations.model_copy(update={"experiment": evaluations})}
    )
    c = MlflowClient(mlflow_server)
    coll = MlflowCollector(cfg)
    exporter = Exporter("mlflow", {"mlflow": coll})

    def missing_tags() -> float:
        coll.poll()
        return (
            ScrapeView(exporter).get_sample_value("fleetmon_mlflow_unmapped_runs", {"reason": "missing_tags"})
            or 0.0
        )

    try:
        before = missing_tags()
        own = c.create_experiment(evaluations)
        other = c.create_experiment(f"{evaluations}-not-ours")
        for exp in (own, own, other):
            c.create_run(exp, tags={"fleetmon.evaluation.model_version": "x/1"})
        assert missing_tags() == before + 1
    finally:
        coll.close()
