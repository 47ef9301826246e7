"""The demo fleet in a real MLflow server: seeded history per the MLflow convention, idempotently,
then live training runs that match the training events in the container logs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml

from fleetmon.config import Config, DemoConfig, FleetConfig, MlflowConfig, load_config
from fleetmon.procs import spawn, stop_group
from simulator.fleet import fleet_dict, generate_fleet
from simulator.mlflow_seed import HISTORY_TAG, FleetMlflow, wait_for_mlflow
from simulator.world import World

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def _prefix() -> str:
    return "t" + uuid.uuid4().hex[:6]


@pytest.fixture(autouse=True)
def _quiet_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def test_seeding_follows_the_convention_and_is_idempotent(mlflow_server: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    prefix = _prefix()
    cfg = Config(
        fleet=FleetConfig(customers=generate_fleet(42, 1, 2, customer_prefix=prefix)),
        mlflow=MlflowConfig(tracking_uri=mlflow_server),
        demo=DemoConfig(output_dir=tmp_path),
    )
    fm = FleetMlflow(cfg, World(cfg.fleet, 42))
    created = fm.seed()
    assert created["experiments"] == 2 and created["registered_models"] == 8
    first_requests = fm.requests
    assert first_requests < created["runs"] * 4 + 8 * 6 + 2 * 3

    client = MlflowClient(mlflow_server)
    statuses: Counter[str] = Counter()
    runs_by_id = {}
    for _, b in cfg.fleet.buildings():
        exp = client.get_experiment_by_name(f"{prefix}01/{b.id}")
        assert exp is not None
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        per_building = Counter(r.info.status for r in runs)
        assert per_building["FAILED"] >= 1 and per_building["KILLED"] >= 1
        assert per_building["FINISHED"] > per_building["FAILED"] + per_building["KILLED"]
        statuses.update(per_building)
        for r in runs:
            runs_by_id[r.info.run_id] = r
            tags = r.data.tags
            assert tags["customer"] == f"{prefix}01" and tags["building"] == b.id
            assert tags["energy"] in ("electricity", "heating") and tags["model"] in ("forecast", "anomaly")
            assert {"algorithm", "lookback_hours"} <= set(r.data.params)
            assert r.data.metrics["training_duration_seconds"] > 0
            assert r.info.end_time >= r.info.start_time
            if r.info.status == "FINISHED":
                m = r.data.metrics
                assert {"mae", "rmse", "mape", "inference_duration_seconds"} <= set(m)
                assert m["rmse"] >= m["mae"] > 0 and 0 < m["mape"] < 1
            else:
                assert "mae" not in r.data.metrics
    assert sum(statuses.values()) == created["runs"]

    versions_total = 0
    for key in cfg.fleet.models():
        name = f"{key.customer}.{key.building}.{key.energy}.{key.model}"
        rm = client.get_registered_model(name)
        assert rm.tags == key.labels()
        versions = client.search_model_versions(f"name='{name}'")
        assert 1 <= len(versions) <= 3
        versions_total += len(versions)
        for v in versions:
            run = runs_by_id[v.run_id]
            assert run.info.status == "FINISHED"
            assert {k: run.data.tags[k] for k in key.labels()} == key.labels()
            assert v.tags[HISTORY_TAG] == run.data.tags[HISTORY_TAG]
        aliases = rm.aliases
        newest = str(max(int(v.version) for v in versions))
        if len(versions) >= 2:
            assert aliases == {"champion": str(int(newest) - 1), "challenger": newest}
        else:
            assert aliases == {"champion": newest}
    assert versions_total == created["versions"]

    # a second seeding (a restart, the same day) adds nothing
    again = FleetMlflow(cfg, World(cfg.fleet, 42)).seed()
    assert again == {"experiments": 0, "runs": 0, "registered_models": 0, "versions": 0}
    total = 0
    for _, b in cfg.fleet.buildings():
        exp = client.get_experiment_by_name(f"{prefix}01/{b.id}")
        assert exp is not None
        total += len(client.search_runs([exp.experiment_id], max_results=1000))
    assert total == created["runs"]


def _write_config(tmp_path: Path, prefix: str, mlflow_uri: str) -> Path:
    fleet = fleet_dict(generate_fleet(42, 1, 2, customer_prefix=prefix))
    (tmp_path / "fleet.yml").write_text(yaml.safe_dump(fleet))
    cfg = {
        "fleet": {"include": "fleet.yml"},
        "mlflow": {"tracking_uri": mlflow_uri, "timeout_seconds": 10, "max_retries": 1},
        "outputs": {"features": ["outdoor_temperature", "occupancy"]},
        "demo": {
            "seed": 42,
            "time_scale": 120,
            "backfill_hours": 12,
            "output_dir": "out",
            "first_incident_after_seconds": 0,
            "training_api_port": 0,  # a test's live simulator must not take the demo's port
        },
    }
    p = tmp_path / "fleetmon.yml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_fast_forward_run_trains_in_mlflow_matching_the_logs(mlflow_server: str, tmp_path: Path) -> None:
    """`fleetmon demo run --until-sim-hours`: a real process, real MLflow, jobs matched by job_id."""
    from mlflow.tracking import MlflowClient

    prefix = _prefix()
    conf = _write_config(tmp_path, prefix, mlflow_server)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetmon.cli",
            "demo",
            "run",
            "--config.file",
            str(conf),
            "--until-sim-hours",
            "24",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr
    assert "View run" not in r.stdout
    out = tmp_path / "out"
    received = re.findall(
        r"Received message job_id=(\S+) customer=(\S+) building=(\S+) energy=(\S+) model=(\S+)",
        (out / "logs" / "training-api" / "training-api.log").read_text(),
    )
    ends = {}
    for line in (out / "logs" / "training-processor" / "training-processor.log").read_text().splitlines():
        m = re.search(r"(Training job finished|Failed to process message) job_id=(\S+)", line)
        if m:
            ends[m.group(2)] = "FINISHED" if m.group(1).startswith("Training") else "FAILED"
    assert received and "FAILED" in ends.values()  # a training_failures incident at 0 s

    client = MlflowClient(mlflow_server)
    live = {}
    for _, b in load_config(conf, {}).fleet.buildings():
        exp = client.get_experiment_by_name(f"{prefix}01/{b.id}")
        assert exp is not None
        for run in client.search_runs(
            [exp.experiment_id], filter_string="tags.job_id != ''", max_results=1000
        ):
            live[run.data.tags["job_id"]] = run
    assert {j[0] for j in received} == set(live)
    for job_id, cust, bld, energy, model in received:
        run = live[job_id]
        assert (run.data.tags["customer"], run.data.tags["building"]) == (cust, bld)
        assert (run.data.tags["energy"], run.data.tags["model"]) == (energy, model)
        assert run.info.status == ends.get(job_id, "RUNNING")


def test_sigterm_stops_the_simulator_cleanly(tmp_path: Path) -> None:
    conf = _write_config(tmp_path, _prefix(), "http://127.0.0.1:9")  # nothing listens: MLflow is awaited
    proc = spawn(
        [sys.executable, "-m", "fleetmon.cli", "demo", "run", "--config.file", str(conf), "--tick", "0.2"],
        tmp_path / "sim.log",
        env={"PYTHONUNBUFFERED": "1"},
    )
    try:
        preds = tmp_path / "out" / "outputs" / "predictions"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(preds.glob("*.jsonl"))) < 12:
            time.sleep(0.2)
        assert len(list(preds.glob("*.jsonl"))) >= 12  # the backfill
        state = json.loads((tmp_path / "out" / "simulator.json").read_text())
        assert state["pid"] == proc.pid and state["interval_seconds"] == 30
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        stop_group(proc)
    log = (tmp_path / "sim.log").read_text()
    assert "stopping" in log and "Traceback" not in log


def test_wait_for_mlflow_gives_up_when_stopped(mlflow_server: str) -> None:
    import threading

    stop = threading.Event()
    assert wait_for_mlflow(mlflow_server, stop, timeout=10)
    stop.set()
    assert not wait_for_mlflow("http://127.0.0.1:9", stop)


def test_forecaster_versions_are_real_models_loadable_with_pyfunc(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every seeded forecaster version gets a real scikit-learn model (once), and a live version gets its
    own: ``mlflow.pyfunc.load_model("models:/<name>/<version>")`` predicts the building's consumption."""
    import mlflow.pyfunc
    import numpy as np
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from simulator.mlflow_seed import MODEL_TAG

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # where models:/ URIs are looked up
    prefix = _prefix()
    cfg = Config(
        fleet=FleetConfig(customers=generate_fleet(42, 1, 2, customer_prefix=prefix)),
        mlflow=MlflowConfig(tracking_uri=mlflow_server),
        demo=DemoConfig(output_dir=tmp_path),
    )
    world = World(cfg.fleet, 42)
    fm = FleetMlflow(cfg, world)
    now = time.time()
    fm.seed(now)
    client = MlflowClient(mlflow_server)
    forecasters = [m for m in world.models if cfg.fleet.is_forecaster(m.model)]
    plan = fm.version_plan(int(now * 1000))
    want = sum(plan[m][1] or plan[m][0] for m in forecasters)  # versions are numbered 1..n
    assert fm.log_seeded_models(int(now * 1000)) == want
    assert fm.log_seeded_models(int(now * 1000)) == 0  # once
    assert world.serving == {} and fm.champions() == {m: plan[m][0] for m in world.models}

    key = forecasters[0]
    name = fm.model_name(key)
    latest = max(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    assert client.get_model_version(name, str(latest)).tags[MODEL_TAG] == "sklearn"
    anomaly = fm.model_name(next(m for m in world.models if not cfg.fleet.is_forecaster(m.model)))
    assert all(MODEL_TAG not in v.tags for v in client.search_model_versions(f"name='{anomaly}'"))

    # features of the hours after now (what the rows will hold)
    interval = 3600.0 / cfg.demo.time_scale
    bi = world.index[(key.customer, key.building)]
    hours = [world.truth(int(now // interval) + k) for k in range(1, 49)]
    x = pd.DataFrame({f: [float(t.features[f][bi]) for t in hours] for f in fm.feature_names()})
    actual = np.array([t.actual[key.energy][bi] for t in hours])
    regular = ~np.array([t.anomaly[key.energy][bi] for t in hours])
    # a seeded version was trained on its run's days, seasons ago in simulated time: it loads and forecasts
    seeded = np.asarray(mlflow.pyfunc.load_model(f"models:/{name}/{latest}").predict(x), dtype=float)
    assert len(seeded) == len(x) and np.all(np.isfinite(seeded))

    # a live training run that becomes a version logs its own model
    run_id = fm.start_run(key, "job-" + prefix, now, "schedule")
    fm.finish_run(key, run_id, now + 60, "FINISHED", new_version=True, promote=True)
    new = max(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    assert new == latest + 1
    assert client.get_model_version(name, str(new)).tags[MODEL_TAG] == "sklearn"
    assert world.serving[key] == new  # promoted: its rows name the new champion
    # trained on the week up to now, it forecasts the next two days' measured consumption well
    got = np.asarray(mlflow.pyfunc.load_model(f"models:/{name}/{new}").predict(x), dtype=float)
    mape = float(np.mean(np.abs(got - actual)[regular] / actual[regular]))
    assert mape < 0.12, mape
