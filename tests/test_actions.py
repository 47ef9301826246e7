"""Actions on alerts (fleetmon.actions) through the real webhook receiver over HTTP: retraining requests to a
training API (a local HTTP server standing in for the platform's, which this machine does not have; the
demo's own simulated one is used end to end), and champion promotion against a real ``mlflow server``."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetmon.actions import Actions
from fleetmon.config import ActionsConfig, MlflowConfig
from fleetmon.webhook import Receiver

NOW = 1_800_000_000.0


class TrainingApi:
    """Records the POSTs it gets; answers ``status`` (202 unless a test changes it)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.status = 202
        api = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                api.requests.append(json.loads(body))
                api.headers.append(dict(self.headers))
                out = json.dumps({"job_id": f"job-{len(api.requests)}", "status": "accepted"}).encode()
                self.send_response(api.status)
                if api.status == 429:
                    self.send_header("Retry-After", "30")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/train"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[TrainingApi]:
    a = TrainingApi()
    yield a
    a.close()


class Clock:
    def __init__(self) -> None:
        self.t = NOW

    def __call__(self) -> float:
        return self.t


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def alert(name: str, model: str = "forecast", status: str = "firing", **labels: str) -> dict[str, Any]:
    starts = labels.pop("starts", None) or rfc3339(NOW - 600)
    lab = {
        "alertname": name,
        "severity": "warning",
        "customer": "c01",
        "building": "c01-b001",
        "energy": "heating",
        "model": model,
        **labels,
    }
    return {
        "status": status,
        "labels": {k: v for k, v in lab.items() if v},
        "annotations": {"summary": f"{name} summary", "description": f"{name} of {model}"},
        "startsAt": starts,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": uuid.uuid4().hex[:16],
    }


def payload(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "4",
        "status": "firing",
        "receiver": "fleetmon-actions",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "groupKey": "{}:{}",
        "alerts": list(alerts),
    }


def post(url: str, body: Any) -> tuple[int, Any]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def counts(url: str) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (s.labels["action"], s.labels["outcome"]): s.value
        for f in text_string_to_metric_families(text)
        if f.name == "fleetmon_webhook_actions"
        for s in f.samples
        if s.name.endswith("_total")
    }


def audit(data: Path) -> list[dict[str, Any]]:
    p = data / "actions.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


class Server:
    def __init__(self, data: Path, cfg: ActionsConfig, mlflow: MlflowConfig | None = None) -> None:
        self.clock = Clock()
        self.actions = Actions(cfg, mlflow or MlflowConfig(), data, clock=self.clock)
        self.receiver = Receiver(data, port=0, actions=self.actions).start()
        self.url = f"http://127.0.0.1:{self.receiver.port}"

    def send(self, *alerts: dict[str, Any]) -> tuple[int, Any]:
        code, body = post(self.url + "/actions", payload(*alerts))
        self.actions.drain()
        return code, body

    def close(self) -> None:
        self.receiver.close()


def retrain_cfg(url: str, **kw: Any) -> ActionsConfig:
    return ActionsConfig.model_validate({"retrain": {"enabled": True, "dry_run": False, "url": url, **kw}})


def test_retraining_requested_once_per_model_and_rate_limited(api: TrainingApi, tmp_path: Path) -> None:
    s = Server(tmp_path, retrain_cfg(api.url, min_interval_seconds=3600, max_per_hour=2))
    try:
        assert s.send(alert("ModelDataDrift")) == (200, {"status": "queued", "alerts": 1})
        assert len(api.requests) == 1
        req = api.requests[0]
        assert {k: req[k] for k in ("customer", "building", "energy", "model", "reason", "requested_by")} == {
            "customer": "c01",
            "building": "c01-b001",
            "energy": "heating",
            "model": "forecast",
            "reason": "ModelDataDrift",
            "requested_by": "fleetmon",
        }
        # Alertmanager's repeat, and the other alert of the same model: no second request
        s.clock.t += 600
        s.send(alert("ModelDataDrift"), alert("ModelErrorAboveBaseline", severity="critical"))
        assert len(api.requests) == 1
        # another model: requested; a third within the hour: rate limited fleet-wide
        s.send(alert("ModelErrorAboveBaseline", model="other"))
        s.send(alert("ModelErrorAboveBaseline", model="third"))
        assert [r["model"] for r in api.requests] == ["forecast", "other"]
        # an hour later both limits have passed
        s.clock.t += 3600
        s.send(alert("ModelDataDrift"), alert("ModelErrorAboveBaseline", model="third"))
        assert [r["model"] for r in api.requests] == ["forecast", "other", "forecast", "third"]
        # resolved alerts and alerts no action takes are counted, not acted on
        s.send(alert("ModelDataDrift", model="x", status="resolved"), alert("SomethingElse", model="y"))
        assert len(api.requests) == 4
        c = counts(s.url)
        assert c[("retrain", "requested")] == 4
        assert c[("retrain", "deduplicated")] == 2
        assert c[("retrain", "rate_limited")] == 1
        assert c[("retrain", "ignored")] == 2
        lines = audit(tmp_path)
        assert [x["outcome"] for x in lines].count("requested") == 4
        first = lines[0]
        assert first["job_id"] == "job-1" and first["alert"]["labels"]["alertname"] == "ModelDataDrift"
        assert first["dry_run"] is False and first["request"]["model"] == "forecast"
        # the audit trail over HTTP, newest last
        with urllib.request.urlopen(s.url + "/actions?limit=2", timeout=10) as r:
            assert [x["outcome"] for x in json.loads(r.read())] == [x["outcome"] for x in lines[-2:]]
        # what is kept is the alert, not the notifications page
        assert not (tmp_path / "notifications.jsonl").exists()
    finally:
        s.close()


def test_a_restart_remembers_what_was_requested(api: TrainingApi, tmp_path: Path) -> None:
    cfg = retrain_cfg(api.url)
    s = Server(tmp_path, cfg)
    s.send(alert("ModelDataDrift"))
    s.close()
    s = Server(tmp_path, cfg)
    try:
        s.clock.t += 600
        s.send(alert("ModelDataDrift"))
        assert len(api.requests) == 1
        assert counts(s.url)[("retrain", "deduplicated")] == 1
    finally:
        s.close()
    # a damaged state file: moved aside and counted, the receiver starts (without the limits it held)
    (tmp_path / "actions-state.json").write_text('{"last_done": ')
    s = Server(tmp_path, cfg)
    try:
        assert list(tmp_path.glob("actions-state.json.corrupt-*"))
        text = urllib.request.urlopen(s.url + "/metrics", timeout=10).read().decode()
        assert "fleetmon_webhook_actions_state_errors_total 1.0" in text
        s.send(alert("ModelDataDrift"))
        assert len(api.requests) == 2
    finally:
        s.close()


def test_a_failing_training_api_is_retried_on_the_next_repeat(api: TrainingApi, tmp_path: Path) -> None:
    s = Server(tmp_path, retrain_cfg(api.url))
    try:
        api.status = 429
        s.send(alert("ModelDataDrift"))
        api.status = 500
        s.send(alert("ModelDataDrift"))
        api.status = 202
        s.send(alert("ModelDataDrift"))
        assert len(api.requests) == 3
        outcomes = [(x["outcome"], x["detail"]) for x in audit(tmp_path)]
        assert outcomes[0] == ("failed", "training API answered HTTP 429 (Retry-After 30)")
        assert outcomes[1] == ("failed", "training API answered HTTP 500")
        assert outcomes[2][0] == "requested"
        c = counts(s.url)
        assert c[("retrain", "failed")] == 2 and c[("retrain", "requested")] == 1
    finally:
        s.close()
    # the API is gone: failed with the reason, the receiver carries on
    api.close()
    s = Server(tmp_path / "b", retrain_cfg(api.url))
    try:
        s.send(alert("ModelDataDrift"))
        (line,) = audit(tmp_path / "b")
        assert line["outcome"] == "failed" and line["detail"].startswith("training API: ")
    finally:
        s.close()


def test_dry_run_disabled_and_invalid(api: TrainingApi, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    dry = ActionsConfig.model_validate(
        {"retrain": {"enabled": True, "url": api.url, "token_file": str(token)}}
    )
    assert dry.retrain.dry_run  # dry run unless turned off
    s = Server(tmp_path / "dry", dry)
    try:
        s.send(alert("ModelDataDrift"), alert("ModelDataDrift", model=""))
        assert api.requests == []
        dry_line, invalid = audit(tmp_path / "dry")
        assert dry_line["outcome"] == "dry_run" and dry_line["request"]["model"] == "forecast"
        assert invalid["outcome"] == "invalid" and invalid["detail"] == "no model label"
        # a dry run counts like a request for the limits: one line per model, not one per repeat
        s.clock.t += 600
        s.send(alert("ModelDataDrift"))
        assert [x["outcome"] for x in audit(tmp_path / "dry")][-1] == "deduplicated"
    finally:
        s.close()
    s = Server(tmp_path / "off", ActionsConfig())
    try:
        s.send(alert("ModelDataDrift"), alert("ChallengerOutperformsChampion"))
        assert counts(s.url)[("retrain", "disabled")] == 1
        assert counts(s.url)[("promote", "disabled")] == 1
        assert audit(tmp_path / "off") == []
    finally:
        s.close()
    # the token goes to the training API and nowhere in fleetmon's own files
    s = Server(tmp_path / "tok", retrain_cfg(api.url, token_file=str(token)))
    try:
        s.send(alert("ModelDataDrift"))
        assert api.headers[-1]["Authorization"] == "Bearer s3cret-token"
        assert "s3cret" not in (tmp_path / "tok" / "actions.jsonl").read_text()
    finally:
        s.close()


def test_bad_payloads_on_actions_are_rejected_like_notifications(tmp_path: Path) -> None:
    s = Server(tmp_path, ActionsConfig())
    try:
        code, body = post(s.url + "/actions", {"version": "4", "alerts": "no"})
        assert code == 400 and body["error"] in ("missing_field", "bad_alerts")
        assert (tmp_path / "quarantine.jsonl").exists()
    finally:
        s.close()
    # a receiver without actions says so
    r = Receiver(tmp_path / "plain", port=0).start()
    try:
        code, body = post(f"http://127.0.0.1:{r.port}/actions", payload(alert("ModelDataDrift")))
        assert code == 404
    finally:
        r.close()


def test_config_requires_a_url() -> None:
    with pytest.raises(ValueError, match="url is required"):
        ActionsConfig.model_validate({"retrain": {"enabled": True}})
    with pytest.raises(ValueError, match="http"):
        ActionsConfig.model_validate({"retrain": {"url": "ftp://x"}})


# ---------------------------------------------------------------------------------------- promotion
def registered(
    mlflow_server: str, versions: int = 2, champion: int = 1, named: str | None = None
) -> tuple[str, dict[str, str]]:
    """A registered model with fleet tags and ``versions`` versions; the champion alias on ``champion``;
    ``named``: a name of its own (found by its tags, not by the name pattern)."""
    from mlflow import MlflowClient

    c = MlflowClient(mlflow_server)
    b = "b" + uuid.uuid4().hex[:8]
    labels = {"customer": "c01", "building": b, "energy": "heating", "model": "forecast"}
    name = named or f"c01.{b}.heating.forecast"
    c.create_registered_model(name, tags=labels)
    exp = c.create_experiment(f"c01/{b}")
    for _ in range(versions):
        run = c.create_run(exp)
        c.set_terminated(run.info.run_id)
        c.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)
    c.set_registered_model_alias(name, "champion", str(champion))
    return name, labels


def verdict(
    labels: dict[str, str], champion: str = "1", challenger: str = "2", held: float = 7200
) -> dict[str, Any]:
    a = alert(
        "ChallengerOutperformsChampion",
        severity="info",
        champion_version=champion,
        challenger_version=challenger,
        starts=rfc3339(NOW - held),
    )
    a["labels"].update(labels)
    a["annotations"]["description"] = "Version 2 has a 42% lower loss ... (Diebold-Mariano p = 0.001)."
    return a


def promote_cfg(**kw: Any) -> ActionsConfig:
    return ActionsConfig.model_validate({"promote": {"enabled": True, "dry_run": False, **kw}})


def test_promotion_moves_the_alias_with_an_audit_trail(mlflow_server: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    c = MlflowClient(mlflow_server)
    name, labels = registered(mlflow_server)
    s = Server(tmp_path, promote_cfg(hold_seconds=3600), MlflowConfig(tracking_uri=mlflow_server))
    try:
        # not held long enough yet: nothing moves
        s.send(verdict(labels, held=1800))
        assert c.get_registered_model(name).aliases["champion"] == "1"
        s.send(verdict(labels))
        rm = c.get_registered_model(name)
        assert rm.aliases["champion"] == "2"
        v2 = c.get_model_version(name, "2")
        assert v2.tags["fleetmon.promotion.from_version"] == "1"
        assert "Diebold-Mariano p = 0.001" in v2.tags["fleetmon.promotion.evidence"]
        assert "ChallengerOutperformsChampion" in v2.tags["fleetmon.promotion.by"]
        assert json.loads(rm.tags["fleetmon.last_promotion"])["to"] == "2"
        held, promoted = audit(tmp_path)
        assert held["outcome"] == "held" and promoted["outcome"] == "promoted"
        assert promoted["registered_model"] == name
        # the verdict compared version 1, which is no longer the champion: stale, nothing moves
        s.clock.t += 24 * 3600 + 1
        s.send(verdict(labels))
        assert audit(tmp_path)[-1]["outcome"] == "stale"
        assert c.get_registered_model(name).aliases["champion"] == "2"
    finally:
        s.close()


def test_promotion_dry_run_unknown_version_and_mlflow_down(mlflow_server: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    c = MlflowClient(mlflow_server)
    name, labels = registered(mlflow_server, versions=1)
    _, two = registered(mlflow_server, versions=2, named="heat-forecaster-" + uuid.uuid4().hex[:6])
    s = Server(tmp_path, promote_cfg(dry_run=True, hold_seconds=0), MlflowConfig(tracking_uri=mlflow_server))
    try:
        s.send(verdict(two))
        line = audit(tmp_path)[-1]
        assert line["outcome"] == "dry_run" and "move champion from version 1 to 2" in line["detail"]
        assert line["registered_model"].startswith("heat-forecaster-")  # found by its fleet tags
        # a challenger version the registry does not know: failed, with MLflow's reason
        s.send(verdict(labels))
        line = audit(tmp_path)[-1]
        assert line["outcome"] == "failed" and "version 2" in line["detail"]
        assert c.get_registered_model(name).aliases["champion"] == "1"
        # a model MLflow does not have at all
        s.send(verdict({**labels, "building": "nowhere"}))
        assert "no registered model" in audit(tmp_path)[-1]["detail"]
    finally:
        s.close()
    down = MlflowConfig(tracking_uri="http://127.0.0.1:9", max_retries=0, timeout_seconds=2)
    s = Server(tmp_path / "down", promote_cfg(hold_seconds=0), down)
    try:
        s.send(verdict(two))
        line = audit(tmp_path / "down")[-1]
        assert line["outcome"] == "failed" and "cannot connect" in line["detail"]
    finally:
        s.close()


def test_a_slow_training_api_never_holds_alertmanager(tmp_path: Path) -> None:
    """The receiver answers before the action runs: Alertmanager's request is never held by it."""
    gate = threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            gate.wait(10)
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    s = Server(tmp_path, retrain_cfg(f"http://127.0.0.1:{srv.server_address[1]}/train"))
    try:
        t0 = time.monotonic()
        code, _ = post(s.url + "/actions", payload(alert("ModelDataDrift")))
        assert code == 200 and time.monotonic() - t0 < 2
        gate.set()
        s.actions.drain()
        assert audit(tmp_path)[-1]["outcome"] == "requested"
    finally:
        gate.set()
        s.close()
        srv.shutdown()
        srv.server_close()
