"""The demo's training API (real HTTP against the real server) and its training outcomes pushed to a real
Pushgateway.

An in-process simulator without MLflow (1 customer, 2 buildings, 8 models; one simulated hour per 30 wall
seconds) is stepped by hand: a request accepted between two steps becomes a ``retrain`` job at the next one
and ends (8-25 s later) at the one after.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetmon.config import Config, DemoConfig, FleetConfig, ModelKey
from fleetmon.procs import free_port, port_open, spawn, stop_group, wait_for_http
from simulator.core import Simulator
from simulator.fleet import fleet_dict, generate_fleet
from simulator.training_api import MAX_BODY
from tests.test_push import scrape
from tests.test_simulator_outputs import START

ROOT = Path(__file__).resolve().parent.parent
MODEL = {"customer": "c01", "building": "c01-b001", "energy": "heating", "model": "forecast"}
KEY = ModelKey(**MODEL)
NO_INCIDENTS = 1e9  # first_incident_after_seconds: none within a test


def make_cfg(out: Path, **demo: Any) -> Config:
    return Config(
        fleet=FleetConfig(customers=generate_fleet(42, 1, 2)),
        demo=DemoConfig(
            output_dir=out,
            customers=1,
            buildings=2,
            **{
                "time_scale": 120,
                "backfill_hours": 2,
                "first_incident_after_seconds": NO_INCIDENTS,
                "training_api_port": free_port(),
                **demo,
            },
        ),
    )


def advance(sim: Simulator, steps: int = 1) -> None:
    for _ in range(steps):
        sim.step(sim.last_t + sim.interval)


def request(
    url: str,
    body: bytes | dict[str, Any] | list[Any] | None = None,
    method: str | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """(status, decoded JSON or text, headers) of one request; HTTP errors are answers too."""
    data = json.dumps(body).encode() if isinstance(body, dict | list) else body
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, raw, headers = r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        status, raw, headers = e.code, e.read(), dict(e.headers)
    text = raw.decode()
    return status, (json.loads(text) if headers.get("Content-Type") == "application/json" else text), headers


def log_lines(out: Path, app: str) -> str:
    path = out / "logs" / app / f"{app}.log"
    return path.read_text() if path.exists() else ""


class FakeTrainer:
    """Stands in for the MLflow worker: records what the simulator hands it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def submit(self, op: str, *args: Any) -> None:
        self.calls.append((op, *args))

    def close(self) -> None:
        pass


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    s = Simulator(make_cfg(tmp_path, training_api_max_pending=3), start=START, mlflow=False)
    s.trainer = FakeTrainer()  # type: ignore[assignment]
    api = s.serve_training_api()
    assert api is not None and api.port == s.cfg.demo.training_api_port
    s.step(START)  # the backfill
    try:
        yield s
    finally:
        s.close()
    assert s.api is None


def url(sim: Simulator, path: str) -> str:
    assert sim.api is not None
    return sim.api.url + path


# ------------------------------------------------------------------------------------------- contract
def test_an_accepted_request_becomes_a_retrain_job_logged_like_the_others(sim: Simulator) -> None:
    out = Path(sim.cfg.demo.output_dir)
    assert request(url(sim, "/-/healthy"))[0] == 200
    body = {**MODEL, "reason": "ModelDataDrift", "requested_by": "pytest", "request_id": "r-1"}
    status, doc, _ = request(url(sim, "/train"), body)
    assert status == 202 and doc["status"] == "accepted"
    job_id = doc["job_id"]
    assert uuid.UUID(job_id).version == 4
    # only queued so far: the HTTP thread never touches the simulator
    assert not [j for j in sim.jobs if j.trigger == "retrain"]
    assert [(r["job_id"], r["status"], r["request_id"]) for r in request(url(sim, "/requests"))[1]] == [
        (job_id, "accepted", "r-1")
    ]

    advance(sim)  # received
    [job] = [j for j in sim.jobs if j.trigger == "retrain"]
    assert (job.job_id, job.key, job.outcome) == (job_id, KEY, None)
    assert sim.last_t - sim.interval <= job.received <= sim.last_t
    received = re.findall(r"Received message job_id=(\S+) (.*) trigger=(\w+)", log_lines(out, "training-api"))
    assert (job_id, "customer=c01 building=c01-b001 energy=heating model=forecast", "retrain") in received
    assert request(url(sim, "/requests"))[1][-1]["status"] == "training"

    advance(sim)  # finished (8-25 s after it was received)
    m = re.search(
        rf"Training job finished job_id={job_id} customer=c01 building=c01-b001 energy=heating "
        r"model=forecast duration_s=([\d.]+)",
        log_lines(out, "training-processor"),
    )
    assert m and 8 <= float(m.group(1)) <= 25
    assert job.outcome == "success"
    rec = request(url(sim, "/requests"))[1][-1]
    assert rec == {
        "job_id": job_id,
        "status": "finished",
        "received_at": rec["received_at"],
        **MODEL,
        "reason": "ModelDataDrift",
        "requested_by": "pytest",
        "request_id": "r-1",
    }
    # Handed to MLflow's worker as a run tagged with the request, finishing as a new challenger version.
    trainer = sim.trainer
    assert isinstance(trainer, FakeTrainer)
    mine = [c for c in trainer.calls if c[2] == job_id]
    assert mine == [
        (
            "start",
            KEY,
            job_id,
            job.received,
            "retrain",
            {
                "fleetmon.retrain.reason": "ModelDataDrift",
                "fleetmon.retrain.requested_by": "pytest",
                "fleetmon.retrain.request_id": "r-1",
            },
        ),
        ("finish", KEY, job_id, job.finish, "FINISHED", True, False),
    ]


def test_a_retrain_does_not_shift_the_seeded_scheduled_jobs(tmp_path: Path) -> None:
    def scheduled(out: Path, retrain: bool) -> list[tuple[str, float, str | None]]:
        s = Simulator(make_cfg(out), start=START, mlflow=False)
        try:
            s.serve_training_api()
            s.step(START)
            for i in range(60):
                if retrain and i % 10 == 0:
                    assert request(url(s, "/train"), MODEL)[0] == 202
                advance(s)
            if retrain:
                assert len([j for j in s.jobs if j.trigger == "retrain"]) == 6
            return [(j.job_id, j.finish, j.outcome) for j in s.jobs if j.trigger != "retrain"]
        finally:
            s.close()

    plain = scheduled(tmp_path / "a", retrain=False)
    assert plain and plain == scheduled(tmp_path / "b", retrain=True)


def test_a_retrain_of_a_model_failing_to_train_fails(tmp_path: Path) -> None:
    s = Simulator(make_cfg(tmp_path, first_incident_after_seconds=0), start=START, mlflow=False)
    try:
        s.serve_training_api()
        s.step(START)
        advance(s)
        inc = next(i for i in s.schedule.incidents if i.kind == "training_failures")
        assert inc.key is not None and inc.active(s.last_t + 2 * s.interval)
        status, doc, _ = request(url(s, "/train"), inc.key.labels())
        assert status == 202
        advance(s, 2)
        assert f"Failed to process message job_id={doc['job_id']}" in log_lines(
            tmp_path, "training-processor"
        )
        assert [j.outcome for j in s.jobs if j.job_id == doc["job_id"]] == ["failure"]
        assert request(url(s, "/requests"))[1][-1]["status"] == "failed"
    finally:
        s.close()


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"", "not JSON"),
        ([MODEL], "must be a JSON object"),
        ("train me", "must be a JSON object"),
        ({k: v for k, v in MODEL.items() if k != "building"}, "missing field 'building'"),
        ({**MODEL, "model": 3}, "'model' must be a non-empty string"),
        ({**MODEL, "energy": ""}, "'energy' must be a non-empty string"),
        ({**MODEL, "reason": ["drift"]}, "'reason' must be a string"),
        ({**MODEL, "request_id": 42}, "'request_id' must be a string"),
    ],
)
def test_bad_bodies_are_400(sim: Simulator, body: Any, error: str) -> None:
    data = json.dumps(body).encode() if isinstance(body, str) else body
    status, doc, _ = request(url(sim, "/train"), data, method="POST")
    assert status == 400 and error in doc["error"], doc
    assert request(url(sim, "/requests"))[1] == []


def test_optional_fields_may_be_null_and_unknown_keys_are_ignored(sim: Simulator) -> None:
    status, _, _ = request(url(sim, "/train"), {**MODEL, "reason": None, "priority": 7})
    assert status == 202
    assert request(url(sim, "/requests"))[1][-1]["reason"] is None


def test_a_model_not_in_the_fleet_is_404(sim: Simulator) -> None:
    for body in (
        {**MODEL, "building": "c01-b999"},
        {**MODEL, "model": "Forecast"},
        {**MODEL, "customer": "x"},
    ):
        status, doc, _ = request(url(sim, "/train"), body)
        assert status == 404 and "in the fleet" in doc["error"], doc
    status, doc, _ = request(url(sim, "/nowhere"))
    assert status == 404
    status, _, headers = request(url(sim, "/train"))
    assert status == 405 and headers["Allow"] == "POST"


def test_a_body_over_64_kib_is_413(sim: Simulator) -> None:
    big = {**MODEL, "reason": "x" * MAX_BODY}
    status, doc, _ = request(url(sim, "/train"), big)
    assert status == 413 and "at most 65536" in doc["error"]
    # An exactly-64-KiB body is fine.
    pad = MAX_BODY - len(json.dumps({**MODEL, "reason": ""}).encode())
    status, _, _ = request(url(sim, "/train"), {**MODEL, "reason": "y" * pad})
    assert status == 202
    # A huge announced body is refused from its header alone.
    assert sim.api is not None
    conn = http.client.HTTPConnection(sim.api.host, sim.api.port, timeout=10)
    try:
        conn.putrequest("POST", "/train")
        conn.putheader("Content-Length", str(1 << 30))
        conn.endheaders()
        assert conn.getresponse().status == 413
    finally:
        conn.close()


def test_more_than_max_pending_waiting_is_429_until_they_finish(sim: Simulator) -> None:
    for _ in range(3):
        assert request(url(sim, "/train"), MODEL)[0] == 202
    status, doc, headers = request(url(sim, "/train"), MODEL)
    assert status == 429 and "try again later" in doc["error"]
    assert int(headers["Retry-After"]) > 0
    advance(sim)  # training now: still waiting
    assert request(url(sim, "/train"), MODEL)[0] == 429
    advance(sim)  # finished
    assert sim.retrain.pending == 0
    assert request(url(sim, "/train"), MODEL)[0] == 202
    assert len(request(url(sim, "/requests"))[1]) == 4  # refused requests are not listed


def test_the_request_list_keeps_the_last_1000(tmp_path: Path) -> None:
    s = Simulator(make_cfg(tmp_path, training_api_max_pending=2000), start=START, mlflow=False)
    try:
        for i in range(1005):
            s.retrain.submit(KEY, request_id=str(i))
        api = s.serve_training_api()
        assert api is not None
        recs = request(url(s, "/requests"))[1]
        assert [r["request_id"] for r in recs] == [str(i) for i in range(5, 1005)]
    finally:
        s.close()


def test_a_port_in_use_is_logged_and_the_simulator_runs_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_cfg(tmp_path)
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", cfg.demo.training_api_port))
        taken.listen()
        s = Simulator(cfg, start=START, mlflow=False)
        with caplog.at_level(logging.ERROR):
            assert s.serve_training_api() is None
        assert "port is in use" in caplog.text and "demo.training_api_port" in caplog.text
        s.step(START)
        advance(s, 3)
        s.close()
    finally:
        taken.close()
    # 0: off
    s = Simulator(make_cfg(tmp_path / "off", training_api_port=0), start=START, mlflow=False)
    assert s.serve_training_api() is None and s.api is None
    s.close()


def test_the_live_simulator_serves_the_api_and_stops_it_cleanly(tmp_path: Path) -> None:
    """`fleetmon demo run` (live, as the native stack runs it): the API answers while it runs, a request
    shows in the container logs, SIGTERM stops it and frees the port."""
    (tmp_path / "fleet.yml").write_text(yaml.safe_dump(fleet_dict(generate_fleet(42, 1, 2))))
    port = free_port()
    conf = {
        "fleet": {"include": "fleet.yml"},
        "outputs": {"features": ["outdoor_temperature", "occupancy"]},
        "demo": {"time_scale": 120, "backfill_hours": 2, "output_dir": "out", "training_api_port": port},
    }
    (tmp_path / "fleetmon.yml").write_text(yaml.safe_dump(conf))
    argv = [
        sys.executable,
        "-m",
        "fleetmon.cli",
        "demo",
        "run",
        "--config.file",
        str(tmp_path / "fleetmon.yml"),
    ]
    proc = spawn([*argv, "--no-mlflow", "--tick", "0.2"], tmp_path / "sim.log", env={"PYTHONUNBUFFERED": "1"})
    api = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{api}/-/healthy", timeout=60, proc=proc)
        status, doc, _ = request(f"{api}/train", {**MODEL, "requested_by": "pytest"})
        assert status == 202
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and doc["job_id"] not in log_lines(
            tmp_path / "out", "training-api"
        ):
            time.sleep(0.2)
        assert f"job_id={doc['job_id']} customer=c01 building=c01-b001" in log_lines(
            tmp_path / "out", "training-api"
        )
        assert request(f"{api}/requests")[1][-1]["status"] in ("training", "finished")
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        stop_group(proc)
    assert not port_open(port)
    log = (tmp_path / "sim.log").read_text()
    assert f"training API on {api}" in log and "Traceback" not in log


# ------------------------------------------------------------------------------------------- pushes
pushgateway = pytest.mark.skipif(
    shutil.which("prometheus-pushgateway") is None, reason="prometheus-pushgateway not installed"
)


def group(key: ModelKey, **labels: str) -> frozenset[tuple[str, str]]:
    return frozenset({"job": "training", "instance": "", **key.labels(), **labels}.items())


@pushgateway
def test_every_job_outcome_is_pushed_as_the_training_dashboard_reads_it(tmp_path: Path, gateway: str) -> None:
    # A training_failures incident from the start: failed retries next to scheduled successes.
    cfg = make_cfg(tmp_path / "out", first_incident_after_seconds=0, pushgateway_url=gateway)
    s = Simulator(cfg, start=START, mlflow=False)
    try:
        s.serve_training_api()
        s.step(START)
        assert request(url(s, "/train"), MODEL)[0] == 202
        advance(s, 40)
        assert s.pusher is not None and s.pusher.wait_idle(30)
        ended = [j for j in s.jobs if j.outcome is not None]
        assert s.pusher.pushed == len(ended) and s.pusher.failed == 0
    finally:
        s.close()
    assert {j.outcome for j in ended} == {"success", "failure"}
    assert "retrain" in {j.trigger for j in ended}
    samples = scrape(gateway)
    for key in {j.key for j in ended}:
        mine = sorted((j for j in ended if j.key == key), key=lambda j: j.finish)
        last = mine[-1]
        assert samples[("fleetmon_batch_job_last_outcome", group(key, outcome=last.outcome or ""))] == 1
        other = "failure" if last.outcome == "success" else "success"
        assert samples[("fleetmon_batch_job_last_outcome", group(key, outcome=other))] == 0
        assert samples[("fleetmon_batch_job_duration_seconds", group(key))] == pytest.approx(
            last.finish - last.received
        )
        assert samples[("fleetmon_batch_job_last_run_timestamp_seconds", group(key))] == pytest.approx(
            last.finish
        )
        for outcome in ("success", "failure"):
            these = [j for j in mine if j.outcome == outcome]
            got = samples.get((f"fleetmon_batch_job_last_{outcome}_timestamp_seconds", group(key)))
            assert got == (pytest.approx(these[-1].finish) if these else None)

    # The training dashboard's "Batch jobs (Pushgateway)" table reads exactly these series and labels.
    dash = json.loads((ROOT / "grafana" / "dashboards" / "fleetmon-training.json").read_text())
    panels = [p for row in dash["panels"] for p in [row, *row.get("panels", [])]]
    [panel] = [p for p in panels if p.get("title") == "Batch jobs (Pushgateway)"]
    exprs = [t["expr"] for t in panel["targets"]]
    assert exprs
    pushed = {name: labels for (name, labels) in samples if name.startswith("fleetmon_batch_job_")}
    for expr in exprs:
        for name in re.findall(r"fleetmon_batch_job_\w+", expr):
            assert name in pushed, (name, sorted(pushed))
            have = {k for k, _ in pushed[name]}
            [by] = re.findall(r"by \(([^)]*)\)", expr)
            assert {b.strip() for b in by.split(",")} <= have, (expr, have)
            for label in re.findall(r"(\w+)=~?\"", expr):
                assert label in have, (expr, label)


def test_a_pushgateway_that_is_down_never_breaks_the_simulator(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    s = Simulator(
        make_cfg(tmp_path, first_incident_after_seconds=0, pushgateway_url=down), start=START, mlflow=False
    )
    try:
        with caplog.at_level(logging.ERROR, logger="fleetmon.demo.training_api"):
            t0 = time.monotonic()
            s.step(START)
            advance(s, 40)
            assert time.monotonic() - t0 < 10
            assert s.pusher is not None and s.pusher.wait_idle(30)
        ended = [j for j in s.jobs if j.outcome is not None]
        assert len(ended) > 5 and s.pusher.failed == len(ended) and s.pusher.pushed == 0
        errors = [r for r in caplog.records if r.name == "fleetmon.demo.training_api"]
        assert len(errors) == 1 and "not pushed" in errors[0].getMessage()  # once a minute, not per job
        assert down in errors[0].getMessage()
    finally:
        s.close()


def test_the_outcome_queue_is_bounded() -> None:
    from simulator.training_api import OutcomePusher

    calls: list[Any] = []
    p = OutcomePusher("http://127.0.0.1:9", max_queue=2, push_fn=lambda *a, **k: calls.append(a))
    for _ in range(5):  # not started: nothing is taken off the queue
        p.submit(KEY, "success", 1.0, 0.0)
    assert p.dropped == 3
    p.start()
    assert p.wait_idle(5) and len(calls) == 2
    p.close()
    assert not p.thread.is_alive()


# --------------------------------------------------------------------------------------------- MLflow
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_a_retrain_run_is_tagged_and_becomes_the_challenger(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from simulator.mlflow_seed import FleetMlflow
    from simulator.world import World

    class Client:
        def __init__(self) -> None:
            self.calls: list[tuple[Any, ...]] = []

        def __getattr__(self, name: str) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                self.calls.append((name, args, kwargs))
                if name == "get_experiment_by_name":
                    return SimpleNamespace(experiment_id="7")
                if name == "create_run":
                    return SimpleNamespace(info=SimpleNamespace(run_id="run-1"))
                if name == "create_model_version":
                    return SimpleNamespace(version="4")
                return None

            return call

    cfg = make_cfg(tmp_path)
    client = Client()
    fm = FleetMlflow(cfg, World(cfg.fleet, 42), client)  # type: ignore[arg-type]
    run_id = fm.start_run(KEY, "job-1", 1000.0, "retrain", {"fleetmon.retrain.reason": "drift"})
    fm.finish_run(KEY, run_id, 1020.0, "FINISHED", new_version=True, promote=False)
    [create] = [c for c in client.calls if c[0] == "create_run"]
    tags = create[2]["tags"]
    assert tags["trigger"] == "retrain" and tags["job_id"] == "job-1"
    assert tags["fleetmon.retrain.reason"] == "drift" and tags["building"] == "c01-b001"
    aliases = [c[1] for c in client.calls if c[0] == "set_registered_model_alias"]
    assert aliases == [("c01.c01-b001.heating.forecast", "challenger", "4")]


# ---------------------------------------------------------------------------------------------- stack
def test_the_native_stack_points_the_simulator_at_its_own_pushgateway(tmp_path: Path) -> None:
    from fleetmon.config import ConfigError, load_config
    from fleetmon.stack import Paths, plan

    pg = free_port()
    path = tmp_path / "fleetmon.yml"

    def simulator(**demo: Any) -> Any:
        doc = {
            "stack": {"data_dir": str(tmp_path / "data"), "pushgateway_port": pg, **demo.pop("stack", {})},
            "demo": demo,
        }
        path.write_text(yaml.safe_dump(doc))
        cfg = load_config(path, environ={})
        return next(c for c in plan(cfg, Paths.of(cfg)) if c.name == "simulator")

    comp = simulator()
    assert comp.env == {
        "FLEETMON__DEMO__PUSHGATEWAY_URL": f"http://127.0.0.1:{pg}",
        "FLEETMON_PUSHGATEWAY_CA_FILE": "",  # the caller's own settings never leak to the stack's gateway
        "FLEETMON_PUSHGATEWAY_USERNAME": "",
        "FLEETMON_PUSHGATEWAY_PASSWORD_FILE": "",
    }
    assert comp.url == "http://127.0.0.1:9721" and comp.port is None  # a taken port must not stop it
    # what the simulator process then loads
    assert load_config(path, environ=comp.env).demo.pushgateway_url == f"http://127.0.0.1:{pg}"

    comp = simulator(stack={"secure": True})
    env = comp.env
    assert env["FLEETMON__DEMO__PUSHGATEWAY_URL"] == f"https://127.0.0.1:{pg}"
    assert env["FLEETMON_PUSHGATEWAY_USERNAME"] == "fleetmon"
    assert Path(env["FLEETMON_PUSHGATEWAY_CA_FILE"]).is_file()
    assert Path(env["FLEETMON_PUSHGATEWAY_PASSWORD_FILE"]).is_file()

    # The config's own choice wins: a gateway elsewhere, or "" for none; port 0: no API.
    assert simulator(pushgateway_url="https://pushgateway.example.com").env == {}
    comp = simulator(pushgateway_url="", training_api_port=0)
    assert comp.env == {} and comp.url is None
    assert load_config(path, environ={}).demo.pushgateway_url == ""
    path.write_text(yaml.safe_dump({"demo": {"pushgateway_url": "pushgateway:9091"}}))
    with pytest.raises(ConfigError, match=r"demo\.pushgateway_url.*http:// or https://"):
        load_config(path, environ={})
