"""The Alertmanager configuration: amtool checks, a routing table, and a real Alertmanager that groups,
inhibits and renders the notification templates (Slack-format receiver pointed at a local server)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetmon.config import load_config
from fleetmon.procs import free_port, spawn, stop_group, wait_for_http

ROOT = Path(__file__).resolve().parent.parent
AM_DIR = ROOT / "alertmanager"
AM_YML = AM_DIR / "alertmanager.yml"
AM_BIN = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")

pytestmark = pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool not installed")


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["amtool", *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def route_of(**labels: str) -> str:
    r = amtool(
        "config", "routes", "test", f"--config.file={AM_YML}", *(f"{k}={v}" for k, v in labels.items())
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip()


def test_amtool_check_config() -> None:
    r = amtool("check-config", str(AM_YML))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "templates" in r.stdout  # the template files were found and parsed


# labels of an alert -> the receiver it must reach
ROUTES = [
    ({"alertname": "Watchdog", "severity": "info"}, "watchdog"),
    ({"alertname": "ChampionAliasChanged", "severity": "info", "customer": "c01"}, "fleetmon-info"),
    # alerts fleetmon acts on reach /actions too, and their team as before
    (
        {"alertname": "ModelErrorAboveBaseline", "severity": "critical", "customer": "c01"},
        "fleetmon-actions,team-east-pager",
    ),
    (
        {"alertname": "ModelDataDrift", "severity": "warning", "customer": "c02"},
        "fleetmon-actions,team-east-tickets",
    ),
    (
        {"alertname": "ChallengerOutperformsChampion", "severity": "info", "customer": "c03"},
        "fleetmon-actions,fleetmon-info",
    ),
    ({"alertname": "ModelPredictionDrift", "severity": "warning", "customer": "c02"}, "team-east-tickets"),
    ({"alertname": "CustomerPredictionsStale", "severity": "critical", "customer": "c03"}, "team-west-pager"),
    ({"alertname": "ModelPredictionsStale", "severity": "warning", "customer": "c03"}, "team-west-tickets"),
    ({"alertname": "ApiHighErrorRatio", "severity": "critical", "app": "gateway"}, "ops-pager"),
    ({"alertname": "ApiHighLatency", "severity": "warning", "app": "model-serving"}, "ops-tickets"),
    ({"alertname": "HostMemoryNearlyFull", "severity": "warning"}, "ops-tickets"),
    # a customer missing from the route table still pages someone
    ({"alertname": "ModelPredictionsStale", "severity": "critical", "customer": "c99"}, "ops-pager"),
    # no severity: the default receiver
    ({"alertname": "Unlabelled"}, "fleetmon-webhook"),
]


@pytest.mark.parametrize(("labels", "receiver"), ROUTES, ids=[r for _, r in ROUTES])
def test_amtool_routes(labels: dict[str, str], receiver: str) -> None:
    assert route_of(**labels) == receiver


def test_every_customer_routes_to_its_team() -> None:
    """The customer route table matches the fleet config's `team:` of every customer."""
    cfg = load_config(ROOT / "config" / "fleetmon.yml", environ={})
    assert cfg.fleet.customers
    for c in cfg.fleet.customers:
        assert route_of(alertname="X", severity="critical", customer=c.id) == f"{c.team}-pager", c.id
        assert route_of(alertname="X", severity="warning", customer=c.id) == f"{c.team}-tickets", c.id


# ------------------------------------------------------------------------------ a real Alertmanager
class Capture:
    """A local HTTP server that keeps every POST body by path (the webhook and the Slack API stand-in)."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[dict[str, Any]]] = {}
        self.lock = threading.Lock()
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with capture.lock:
                    capture.bodies.setdefault(self.path, []).append(json.loads(body))
                try:
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(b"ok")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # Alertmanager gave up waiting (a loaded machine); the body is kept

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait(self, path: str, pred: Any, timeout: float = 20) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                got = list(self.bodies.get(path, []))
            if pred(got):
                return got
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting on {path}: {got}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def am(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Capture]]:
    """The shipped config, every receiver delivering to a local capture server, one Slack receiver
    rendering the shipped templates; short group timers."""
    if AM_BIN is None:
        pytest.skip("alertmanager not installed")
    tmp = tmp_path_factory.mktemp("am")
    cap = Capture()
    doc = yaml.safe_load(AM_YML.read_text())
    doc["templates"] = [str(AM_DIR / t) for t in doc["templates"]]
    doc["route"].update(group_wait="1s", group_interval="1s")
    for rt in doc["route"]["routes"]:
        if rt["receiver"] == "fleetmon-actions":
            rt["group_wait"] = "1s"
    for r in doc["receivers"]:
        for w in r.get("webhook_configs", []):
            w["url"] = f"{cap.url}/{r['name']}"
        if r["name"] == "team-east-tickets":  # the commented Slack example, enabled
            r["slack_configs"] = [
                {
                    "api_url": f"{cap.url}/slack",
                    "channel": "#team-east-alerts",
                    "send_resolved": True,
                    "title": '{{ template "fleetmon.title" . }}',
                    "text": '{{ template "fleetmon.text" . }}',
                }
            ]
    cfg = tmp / "alertmanager.yml"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    port = free_port()
    proc = spawn(
        [
            AM_BIN,
            f"--config.file={cfg}",
            f"--storage.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        tmp / "alertmanager.log",
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/-/ready", timeout=30, proc=proc)
        yield f"http://127.0.0.1:{port}", cap
    finally:
        stop_group(proc)
        cap.close()


def post_alerts(url: str, alerts: list[dict[str, Any]]) -> None:
    now = datetime.now(UTC)
    body = [
        {
            "labels": a["labels"],
            "annotations": a.get("annotations", {}),
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(minutes=5)).isoformat(),
        }
        for a in alerts
    ]
    req = urllib.request.Request(
        url + "/api/v2/alerts",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


def am_alerts(url: str) -> dict[tuple[str, str], dict[str, Any]]:
    with urllib.request.urlopen(url + "/api/v2/alerts", timeout=10) as r:
        got = json.loads(r.read())
    return {
        (a["labels"]["alertname"], a["labels"].get("model", a["labels"].get("source", ""))): a for a in got
    }


def model_alert(name: str, severity: str, model: str, **extra: str) -> dict[str, Any]:
    labels = {
        "alertname": name,
        "severity": severity,
        "customer": "c01",
        "building": "c01-b003",
        "energy": "heating",
        "model": model,
        "job": "fleetmon-outputs",
        "instance": "o:9702",
        **extra,
    }
    return {
        "labels": labels,
        "annotations": {
            "summary": f"{name} summary",
            "description": f"{name} of c01/c01-b003 heating {model}: value 2.5x",
            "dashboard_url": f"http://localhost:3000/d/fleetmon-model/fleetmon-model?var-customer=c01&var-building=c01-b003&var-energy=heating&var-model={model}",
            "runbook_url": f"https://example.org/runbooks.md#{name.lower()}",
        },
    }


def test_grouping_and_the_slack_template(am: tuple[str, Capture]) -> None:
    url, cap = am
    # two models of one building drifting: one notification listing both
    post_alerts(
        url, [model_alert("ModelDataDrift", "warning", m, column="humidity") for m in ("forecast", "anomaly")]
    )
    bodies = cap.wait("/team-east-tickets", lambda b: any(len(n["alerts"]) == 2 for n in b))
    n = next(n for n in bodies if len(n["alerts"]) == 2)
    assert n["groupLabels"] == {"alertname": "ModelDataDrift", "customer": "c01", "building": "c01-b003"}
    # ... and to /actions one notification per alert (each model is acted on by itself), the team's
    # route still notified (continue)
    acts = cap.wait(
        "/fleetmon-actions",
        lambda b: (
            {
                a["labels"]["model"]
                for n in b
                for a in n["alerts"]
                if a["labels"]["alertname"] == "ModelDataDrift"
            }
            >= {"forecast", "anomaly"}
        ),
    )
    drift = [n for n in acts if n["alerts"][0]["labels"]["alertname"] == "ModelDataDrift"]
    assert all(len(n["alerts"]) == 1 for n in drift), drift
    # the Slack message (rendered by the shipped templates) names building, models, value and links
    slack = cap.wait("/slack", lambda b: any("anomaly" in m["attachments"][0]["text"] for m in b))
    msg = next(m for m in slack if "anomaly" in m["attachments"][0]["text"])["attachments"][0]
    assert msg["title"] == "[FIRING:2] ModelDataDrift c01/c01-b003 (warning)"
    text = msg["text"]
    for want in (
        "c01/c01-b003 heating forecast",
        "c01/c01-b003 heating anomaly",
        "value 2.5x",
        "Dashboard: http://localhost:3000/d/fleetmon-model/fleetmon-model?var-customer=c01&var-building=c01-b003",
        "Runbook: https://example.org/runbooks.md#modeldatadrift",
    ):
        assert want in text, text


def test_inhibitions(am: tuple[str, Capture]) -> None:
    url, _ = am
    post_alerts(
        url,
        [
            # the outputs source is down: the staleness it causes (same exporter) is silenced
            {
                "labels": {
                    "alertname": "OutputsSourceUnreadable",
                    "severity": "critical",
                    "job": "fleetmon-outputs",
                    "instance": "o:9702",
                    "source": "predictions-0",
                }
            },
            model_alert("ModelPredictionsStale", "warning", "forecast"),
            # ... but not a stale model read by another outputs exporter
            model_alert("ModelPredictionsStale", "warning", "other", instance="o2:9702"),
            # critical silences its warning twin of the same model, not other warnings of that model
            model_alert("ModelErrorAboveBaseline", "critical", "e1", job="x"),
            model_alert("ModelErrorAboveBaseline", "warning", "e1", job="x"),
            model_alert("ModelInputSchemaChanged", "warning", "e1", job="x", kind="missing"),
        ],
    )
    time.sleep(1)
    got = am_alerts(url)
    inhibited = {k: bool(a["status"]["inhibitedBy"]) for k, a in got.items()}
    assert inhibited[("ModelPredictionsStale", "forecast")] is True
    assert inhibited[("ModelPredictionsStale", "other")] is False
    assert inhibited[("OutputsSourceUnreadable", "predictions-0")] is False
    assert inhibited[("ModelInputSchemaChanged", "e1")] is False
    # the two ModelErrorAboveBaseline alerts share a key above: read them by filter
    with urllib.request.urlopen(url + "/api/v2/alerts?filter=alertname%3D%22ModelErrorAboveBaseline%22") as r:
        errors = json.loads(r.read())
    by_sev = {a["labels"]["severity"]: bool(a["status"]["inhibitedBy"]) for a in errors}
    assert by_sev == {"critical": False, "warning": True}


def test_an_app_answering_5xx_does_not_also_get_a_latency_ticket(am: tuple[str, Capture]) -> None:
    """Timeouts are 5xx and slow: ApiHighErrorRatio of an app inhibits its ApiHighLatency, not another app's."""
    url, _ = am
    post_alerts(
        url,
        [
            {"labels": {"alertname": "ApiHighErrorRatio", "severity": "critical", "app": "gateway"}},
            {"labels": {"alertname": "ApiHighLatency", "severity": "warning", "app": "gateway"}},
            {"labels": {"alertname": "ApiHighLatency", "severity": "warning", "app": "model-serving"}},
        ],
    )
    time.sleep(1)
    with urllib.request.urlopen(url + "/api/v2/alerts?filter=alertname%3D%22ApiHighLatency%22") as r:
        latency = json.loads(r.read())
    inhibited = {a["labels"]["app"]: bool(a["status"]["inhibitedBy"]) for a in latency}
    assert inhibited == {"gateway": True, "model-serving": False}


def test_a_shared_cause_holds_back_the_model_alerts_it_explains(am: tuple[str, Capture]) -> None:
    """WeatherFeedFault silences the drift, error and peer alerts of models on its station only;
    CustomerDataFeedFault those of its customer's models; a model's own error holds back its peer outlier."""
    url, _ = am
    # an exporter of their own (the other tests' OutputsSourceUnreadable silences o:9702's alerts)
    exporter = {"instance": "o3:9702"}
    on_station = {"weather_station": "st-broken", "customer": "c77", "building": "c77-b1", **exporter}
    elsewhere = {"weather_station": "st-fine", "customer": "c77", "building": "c77-b2", **exporter}
    feed = {"customer": "c88", "building": "c88-b1", "weather_station": "st-other", **exporter}
    post_alerts(
        url,
        [
            {
                "labels": {
                    "alertname": "WeatherFeedFault",
                    "severity": "critical",
                    "weather_station": "st-broken",
                }
            },
            {"labels": {"alertname": "CustomerDataFeedFault", "severity": "critical", "customer": "c88"}},
            model_alert("ModelErrorAboveBaseline", "warning", "wf-err", **on_station),
            model_alert("ModelPredictionDrift", "warning", "wf-pred", **on_station),
            model_alert("ModelPeerOutlier", "warning", "wf-peer", signal="error_ratio", **on_station),
            # a stale model on the station is not explained by its weather
            model_alert("ModelPredictionsStale", "warning", "wf-stale", **on_station),
            model_alert("ModelErrorAboveBaseline", "warning", "fine-err", **elsewhere),
            model_alert("ModelDataDrift", "warning", "cf-drift", **feed),
            {"labels": {"alertname": "CustomerModelsErroring", "severity": "critical", "customer": "c88"}},
            # the model's own error alert holds back its peer outlier (same model only)
            model_alert("ModelErrorAboveBaseline", "warning", "own", **elsewhere),
            model_alert("ModelPeerOutlier", "warning", "own", signal="error_ratio", **elsewhere),
            model_alert("ModelPeerOutlier", "warning", "alone", signal="error_ratio", **elsewhere),
        ],
    )
    time.sleep(1)
    with urllib.request.urlopen(url + "/api/v2/alerts", timeout=10) as r:
        got = json.loads(r.read())
    inhibited = {
        (a["labels"]["alertname"], a["labels"].get("model", a["labels"].get("customer", ""))): bool(
            a["status"]["inhibitedBy"]
        )
        for a in got
        if a["labels"].get("customer") in ("c77", "c88") or "weather_station" in a["labels"]
    }
    assert inhibited == {
        ("WeatherFeedFault", ""): False,
        ("CustomerDataFeedFault", "c88"): False,
        ("ModelErrorAboveBaseline", "wf-err"): True,
        ("ModelPredictionDrift", "wf-pred"): True,
        ("ModelPeerOutlier", "wf-peer"): True,
        ("ModelPredictionsStale", "wf-stale"): False,
        ("ModelErrorAboveBaseline", "fine-err"): False,
        ("ModelDataDrift", "cf-drift"): True,
        ("CustomerModelsErroring", "c88"): True,
        ("ModelErrorAboveBaseline", "own"): False,
        ("ModelPeerOutlier", "own"): True,
        ("ModelPeerOutlier", "alone"): False,
    }, inhibited
