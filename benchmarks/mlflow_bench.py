"""MLflow exporter benchmark: a large fleet in a real `mlflow server`, full vs incremental polls, scrape time.

    .venv/bin/python -m benchmarks.mlflow_bench                     # 1,000 buildings: 4,000 models, 40,000 runs
    .venv/bin/python -m benchmarks.mlflow_bench --buildings 100     # quicker

The database is populated once per size and cached under ``var/bench/mlflow-<size>/`` (each run works on a
copy, so the cache stays pristine). Populating goes through MLflow's own SQLAlchemy store for the schema and
the experiments, and bulk inserts (SQLAlchemy Core, MLflow's table definitions) for runs, metrics, params,
tags, registered models, versions and aliases: creating runs over REST costs three requests per run
(create, log_batch, terminate); the benchmark times a sample of that path too and prints both rates.

Printed: time and MLflow requests of the first (full) poll, of a poll with nothing changed, of a poll after a
few changes (runs ending, aliases moving, new versions), the ratios, and the scrape time of the exposition.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import statistics
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import generate_latest

from collectors.mlflow import MlflowCollector
from fleetmon.config import Building, Config, Customer, FleetConfig, MlflowConfig
from fleetmon.exporter import Exporter
from fleetmon.procs import MLFLOW_ENV, free_port, start_mlflow_server, stop_group

ROOT = Path(__file__).resolve().parent.parent
ENERGIES = ("electricity", "heating")
ROLES = ("forecast", "anomaly")
BUILDINGS_PER_CUSTOMER = 20


def fleet_config(buildings: int, url: str, quarantine: Path) -> Config:
    customers = []
    for ci in range((buildings + BUILDINGS_PER_CUSTOMER - 1) // BUILDINGS_PER_CUSTOMER):
        cid = f"c{ci + 1:03d}"
        n = min(BUILDINGS_PER_CUSTOMER, buildings - ci * BUILDINGS_PER_CUSTOMER)
        customers.append(Customer(id=cid, buildings=[Building(id=f"{cid}-b{bi + 1:03d}") for bi in range(n)]))
    return Config(
        fleet=FleetConfig(energy_types=list(ENERGIES), model_roles=list(ROLES), customers=customers),
        mlflow=MlflowConfig(tracking_uri=url, timeout_seconds=60, quarantine_file=quarantine),
    )


# ------------------------------------------------------------------------------------------ populate
def populate(db: Path, cfg: Config, runs_per_model: int, versions_per_model: int) -> dict[str, float]:
    """Fill a fresh MLflow sqlite database (schema by MLflow itself) with the fleet's history."""
    import sqlalchemy as sa
    from mlflow.store.model_registry.dbmodels.models import (
        SqlModelVersion,
        SqlModelVersionTag,
        SqlRegisteredModel,
        SqlRegisteredModelAlias,
        SqlRegisteredModelTag,
    )
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{db}"
    artifacts = db.parent / "artifacts"
    t_schema = time.perf_counter()
    store = SqlAlchemyStore(uri, str(artifacts))  # creates and migrates the schema
    schema_seconds = time.perf_counter() - t_schema
    rng = random.Random(42)
    now = int(time.time() * 1000)
    rows: dict[str, list[dict[str, Any]]] = {
        k: []
        for k in ("runs", "tags", "params", "metrics", "latest", "rm", "rmtags", "mv", "mvtags", "alias")
    }
    n_running = 0
    for cust, bld in cfg.fleet.buildings():
        exp_id = store.create_experiment(f"{cust.id}/{bld.id}")
        for energy in ENERGIES:
            for role in ROLES:
                key = {"customer": cust.id, "building": bld.id, "energy": energy, "model": role}
                finished: list[str] = []
                for n in range(runs_per_model):
                    rid = uuid.UUID(int=rng.getrandbits(128)).hex
                    start = now - (runs_per_model - n) * 3_600_000 - rng.randint(0, 600_000)
                    dur = rng.randint(20_000, 900_000)
                    status = rng.choices(["FINISHED", "FAILED", "KILLED"], [0.9, 0.08, 0.02])[0]
                    end: int | None = start + dur
                    if n == runs_per_model - 1 and rng.random() < 0.01:
                        status, end = "RUNNING", None
                        n_running += 1
                    rows["runs"].append(
                        {
                            "run_uuid": rid, "name": f"train-{energy}-{role}-{n}", "source_type": "LOCAL",
                            "source_name": "", "entry_point_name": "", "user_id": "bench", "status": status,
                            "start_time": start, "end_time": end, "source_version": "",
                            "lifecycle_stage": "active", "artifact_uri": f"{artifacts}/{exp_id}/{rid}/artifacts",
                            "experiment_id": int(exp_id),
                        }
                    )  # fmt: skip
                    for k, v in {**key, "mlflow.runName": f"train-{energy}-{role}-{n}"}.items():
                        rows["tags"].append({"key": k, "value": v, "run_uuid": rid})
                    params = {
                        "algorithm": rng.choice(["gbm", "ridge", "prophet"]),
                        "lookback_hours": str(rng.choice([24, 48, 168])),
                        "n_estimators": str(rng.randint(50, 500)),
                        "learning_rate": f"{rng.uniform(0.01, 0.3):.3f}",
                    }
                    for k, v in params.items():
                        rows["params"].append({"key": k, "value": v, "run_uuid": rid})
                    if status != "RUNNING":
                        metrics: dict[str, float] = {
                            "mae": rng.uniform(0.5, 5), "rmse": rng.uniform(1, 7), "mape": rng.uniform(0.02, 0.3),
                            "training_duration_seconds": dur / 1000 * 0.9,
                            "inference_duration_seconds": rng.uniform(0.01, 0.4),
                        }  # fmt: skip
                        for k, mv in metrics.items():
                            m = {
                                "key": k,
                                "value": mv,
                                "timestamp": end,
                                "step": 0,
                                "is_nan": False,
                                "run_uuid": rid,
                            }
                            rows["metrics"].append(m)
                            rows["latest"].append(dict(m))
                    if status == "FINISHED":
                        finished.append(rid)
                name = f"{cust.id}.{bld.id}.{energy}.{role}"
                rows["rm"].append({"name": name, "creation_time": now - 86_400_000, "last_updated_time": now})
                for k, v in key.items():
                    rows["rmtags"].append({"name": name, "key": k, "value": v})
                chosen = finished[-versions_per_model:]
                for vi, rid in enumerate(chosen, start=1):
                    rows["mv"].append(
                        {
                            "name": name, "version": vi, "creation_time": now - (len(chosen) - vi) * 3_600_000,
                            "last_updated_time": now, "current_stage": "None", "source": f"runs:/{rid}/model",
                            "run_id": rid, "status": "READY", "user_id": "bench",
                        }
                    )  # fmt: skip
                    rows["mvtags"].append({"name": name, "version": vi, "key": "flavor", "value": "lightgbm"})
                if chosen:
                    rows["alias"].append({"name": name, "alias": "champion", "version": 1})
                    rows["alias"].append({"name": name, "alias": "challenger", "version": len(chosen)})
    engine = sa.create_engine(uri)
    tables = {
        "runs": SqlRun, "tags": SqlTag, "params": SqlParam, "metrics": SqlMetric, "latest": SqlLatestMetric,
        "rm": SqlRegisteredModel, "rmtags": SqlRegisteredModelTag, "mv": SqlModelVersion,
        "mvtags": SqlModelVersionTag, "alias": SqlRegisteredModelAlias,
    }  # fmt: skip
    with engine.begin() as conn:
        # a fleet that has existed for a month: its experiments are not "new" to the first incremental poll
        month_ago = now - 30 * 86_400_000
        conn.execute(
            sa.text(f"UPDATE experiments SET creation_time = {month_ago}, last_update_time = {month_ago}")
        )
        for k, model in tables.items():
            if rows[k]:
                conn.execute(sa.insert(model.__table__), rows[k])  # type: ignore[attr-defined]
    engine.dispose()
    store.engine.dispose()
    return {
        "schema_seconds": round(schema_seconds, 1),
        "experiments": len(cfg.fleet.buildings()),
        "runs": len(rows["runs"]),
        "running": n_running,
        "registered_models": len(rows["rm"]),
        "versions": len(rows["mv"]),
    }


def rest_sample(url: str, n: int) -> float:
    """Seconds per run when creating runs over REST with MLflow's client (create, log_batch, terminate)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    c = MlflowClient(url)
    exp = c.create_experiment(f"bench-rest-sample-{uuid.uuid4().hex[:8]}")
    t0 = time.perf_counter()
    ids = []
    for i in range(n):
        r = c.create_run(exp, tags={"customer": "sample", "building": "sample", "energy": "x", "model": "y"})
        c.log_batch(
            r.info.run_id,
            metrics=[Metric(k, float(i), 0, 0) for k in ("mae", "rmse", "mape", "training_duration_seconds")],
            params=[Param("algorithm", "gbm"), Param("n_estimators", "100")],
        )
        c.set_terminated(r.info.run_id, "FINISHED")
        ids.append(r.info.run_id)
    per_run = (time.perf_counter() - t0) / n
    return per_run


# ------------------------------------------------------------------------------------------- measure
BREAKDOWN: list[str] = []


def total(reg: Any, name: str, **labels: str) -> float:
    return sum(
        s.value
        for f in reg.collect()
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def timed_poll(exp: Exporter, coll: MlflowCollector, label: str) -> tuple[float, int]:
    r0 = coll.client.request_count()
    s0, c0 = coll.client.seconds(), coll.client.counts()
    t0 = time.perf_counter()
    if not exp.poll_once("mlflow"):
        raise SystemExit(f"poll failed: {exp.poll_states['mlflow'].last_error}")
    secs = time.perf_counter() - t0
    s1, c1 = coll.client.seconds(), coll.client.counts()
    parts = []
    for ep in sorted(s1):
        n = sum(v - c0.get(k, 0) for k, v in c1.items() if k[0] == ep)
        if n:
            parts.append(f"{ep} {n}x {s1[ep] - s0.get(ep, 0.0):.2f}s")
    BREAKDOWN.append(f"  {label}: " + ", ".join(parts))
    return secs, coll.client.request_count() - r0


def make_changes(url: str, cfg: Config, n: int) -> None:
    """A quiet minute of a real fleet: n runs start and end, n aliases move, n new versions."""
    from mlflow import MlflowClient

    c = MlflowClient(url)
    models = cfg.fleet.models()[:n]
    for k in models:
        exp = c.get_experiment_by_name(f"{k.customer}/{k.building}")
        assert exp is not None
        r = c.create_run(exp.experiment_id, tags=k.labels())
        c.log_batch(r.info.run_id, metrics=[], params=[])
        c.set_terminated(r.info.run_id, "FINISHED")
        name = f"{k.customer}.{k.building}.{k.energy}.{k.model}"
        mv = c.create_model_version(name, source=f"runs:/{r.info.run_id}/model", run_id=r.info.run_id)
        c.set_registered_model_alias(name, "champion", str(mv.version))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mlflow_bench", description=__doc__.split("\n")[0])
    p.add_argument("--buildings", type=int, default=1000, help="buildings (4 models each); default 1000")
    p.add_argument("--runs-per-model", type=int, default=10)
    p.add_argument("--versions-per-model", type=int, default=2)
    p.add_argument("--changes", type=int, default=20, help="models changed before the third poll")
    p.add_argument("--rest-sample", type=int, default=50, help="runs created over REST to time that path")
    p.add_argument("--scrapes", type=int, default=5)
    p.add_argument("--cache-dir", type=Path, default=ROOT / "var" / "bench")
    p.add_argument("--rebuild", action="store_true", help="populate again even if cached")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # no "View run ..." line per run

    size = f"mlflow-{args.buildings}b-{args.runs_per_model}r-{args.versions_per_model}v"
    cache = args.cache_dir / size
    work = args.cache_dir / "mlflow-work"
    cfg = fleet_config(args.buildings, "http://unused", work / "quarantine.jsonl")
    if args.rebuild and cache.exists():
        shutil.rmtree(cache)
    if not (cache / "complete").exists():
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        t0 = time.perf_counter()
        counts = populate(cache / "mlflow.db", cfg, args.runs_per_model, args.versions_per_model)
        secs = time.perf_counter() - t0
        (cache / "complete").write_text(f"{counts}\npopulate_seconds={secs:.1f}\n")
        rate = counts["runs"] / max(secs - counts["schema_seconds"], 1e-9)
        print(f"populated {counts} in {secs:.1f} s (after MLflow's schema migration: {rate:,.0f} runs/s)")
    else:
        print(f"using the cached database {cache} ({(cache / 'complete').read_text().splitlines()[0]})")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copy(cache / "mlflow.db", work / "mlflow.db")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    assert MLFLOW_ENV  # the server runs without MLflow's job runner, as in the stack
    server = start_mlflow_server(port, work, timeout=180)
    try:
        cfg = fleet_config(args.buildings, url, work / "quarantine.jsonl")
        coll = MlflowCollector(cfg)
        exp = Exporter("mlflow", {"mlflow": coll})
        proc = psutil.Process()
        rss0 = proc.memory_info().rss
        full_t, full_n = timed_poll(exp, coll, "full")
        rss1 = proc.memory_info().rss
        same_t, same_n = timed_poll(exp, coll, "unchanged")
        reg = exp.scraped  # registry output and pre-rendered parts, as a scrape sees them
        runs = total(reg, "fleetmon_mlflow_runs")
        print(f"\nfleet: {len(cfg.fleet.models()):,} models; exporter state holds {int(runs):,} mapped runs")
        print(f"{'poll':<34}{'seconds':>10}{'requests':>10}")
        print(f"{'first (full read)':<34}{full_t:>10.2f}{full_n:>10}")
        print(f"{'nothing changed (incremental)':<34}{same_t:>10.2f}{same_n:>10}")
        make_changes(url, cfg, args.changes)
        finished_before = total(reg, "fleetmon_mlflow_runs", status="finished")
        chg_t, chg_n = timed_poll(exp, coll, "changed")
        # the incremental poll saw every change
        assert total(reg, "fleetmon_mlflow_runs", status="finished") == finished_before + args.changes
        for k in cfg.fleet.models()[: args.changes]:
            labels = {**k.labels(), "alias": "champion"}
            champion = reg.get_sample_value("fleetmon_mlflow_model_alias_version", labels)
            assert champion == args.versions_per_model + 1, (k, champion)
        print(f"{f'{args.changes} models changed (incremental)':<34}{chg_t:>10.2f}{chg_n:>10}")
        print(
            f"unchanged poll vs full: {full_t / same_t:.1f}x less time, {full_n / same_n:.1f}x fewer requests"
        )
        print("time waiting for MLflow, by endpoint:\n" + "\n".join(BREAKDOWN))
        print(
            f"exporter memory for the state: {(rss1 - rss0) / 2**20:.0f} MiB (RSS growth over the full poll)"
        )

        # scrape: rendering the exposition, and a real HTTP scrape
        times = []
        for _ in range(args.scrapes):
            t0 = time.perf_counter()
            body = generate_latest(reg)
            times.append(time.perf_counter() - t0)
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        httpd, _ = exp.serve("127.0.0.1", 0)
        http_times = []
        try:
            for _ in range(args.scrapes):
                t0 = time.perf_counter()
                with urllib.request.urlopen(f"http://127.0.0.1:{httpd.server_port}/metrics", timeout=60) as r:
                    r.read()
                http_times.append(time.perf_counter() - t0)
        finally:
            httpd.shutdown()
            httpd.server_close()
        print(
            f"scrape: {series:,} series, {len(body) / 2**20:.1f} MiB; render median "
            f"{statistics.median(times) * 1000:.0f} ms, HTTP scrape median {statistics.median(http_times) * 1000:.0f} ms "
            f"(full poll / scrape: {full_t / statistics.median(http_times):.0f}x)"
        )
        exp.stop()

        if args.rest_sample:
            per_run = rest_sample(url, args.rest_sample)
            n_runs = len(cfg.fleet.models()) * args.runs_per_model
            print(
                f"populating over REST (MLflow client, 3 requests per run): {per_run * 1000:.0f} ms per run, "
                f"~{per_run * n_runs / 60:.0f} min for {n_runs:,} runs"
            )
    finally:
        stop_group(server)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
