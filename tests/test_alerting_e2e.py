"""End to end: the demo's injected incidents page, through the real Prometheus rules and Alertmanager routing,
at the webhook receiver, with the right building, model and dashboard link; they resolve when the incident
ends; buildings without incidents raise nothing.

Runs on the session's `demo_stack` (tests/conftest.py: the demo 4x faster than `make up`, short incidents,
fast rule evaluation and grouping; the rules and `for:` durations are the shipped ones).
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from fleetmon.config import FleetConfig
from simulator.incidents import Schedule

FLEET = ("customer", "building", "energy", "model")
# incident kind -> the alert it must raise, and the dashboard its link must open
EXPECTED = {
    "data_drift": ("ModelDataDrift", "fleetmon-model"),
    "error_growth": ("ModelErrorAboveBaseline", "fleetmon-model"),
    "stale_predictions": ("ModelPredictionsStale", "fleetmon-model"),
    "training_failures": ("ModelTrainingFailing", "fleetmon-training"),
    "http_5xx_burst": ("ApiHighErrorRatio", "fleetmon-platform"),
    "replica_unhealthy": ("AppReplicasUnhealthy", "fleetmon-platform"),
    "latency_spike": ("ApiHighLatency", "fleetmon-platform"),
    "weather_station_fault": ("WeatherFeedFault", "fleetmon-fleet"),
}
PLATFORM_KINDS = ("http_5xx_burst", "replica_unhealthy", "latency_spike")
# what a broken weather feed would otherwise raise for each model on the station (WeatherFeedFault holds
# them back)
EXPLAINED_BY_STATION = (
    "ModelDataDrift",
    "ModelPredictionDrift",
    "ModelErrorAboveBaseline",
    "ModelPeerOutlier",
)


def ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def notifications(webhook_url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(webhook_url + "/notifications", timeout=10) as r:
        items: list[dict[str, Any]] = json.loads(r.read())
    return items


def matches(alert: dict[str, Any], inc: dict[str, Any]) -> bool:
    labels = alert["labels"]
    if labels.get("alertname") != EXPECTED[inc["kind"]][0]:
        return False
    if inc["kind"] in PLATFORM_KINDS:
        return bool(labels.get("app") == inc["app"])
    if inc["kind"] == "weather_station_fault":
        return bool(labels.get("weather_station") == inc["detail"]["weather_station"])
    return all(labels.get(k) == inc[k] for k in FLEET)


def team_of(cfg_fleet: FleetConfig, customer: str) -> str:
    return next(c.team for c in cfg_fleet.customers if c.id == customer)


def test_schedule_takes_configured_incident_durations() -> None:
    """The demo knob the alerting test relies on: incidents last within [min, max] wall seconds."""
    fleet = FleetConfig.model_validate(
        {"customers": [{"id": "c1", "buildings": [{"id": f"b{i}"} for i in range(5)]}]}
    )
    s = Schedule(fleet, 42, 1000.0, 30.0, 20.0, durations=(120.0, 150.0))
    new = s.advance(1000.0)
    assert new and all(120.0 <= i.end - i.start <= 150.0 for i in new)
    default = Schedule(fleet, 42, 1000.0, 30.0, 20.0)
    assert all(480.0 <= i.end - i.start <= 840.0 for i in default.advance(1000.0))


@pytest.mark.e2e
@pytest.mark.timeout(840)
def test_demo_incidents_page_resolve_and_quiet_buildings_stay_silent(demo_stack: Any) -> None:
    gt = demo_stack.scheduled_ground_truth()
    quiet = {(b["customer"], b["building"]) for b in gt[0]["detail"]["buildings"]}
    assert gt[0]["kind"] == "quiet_buildings" and quiet
    # The demo's challenger versions (kind "challenger", no incident: ChallengerOutperformsChampion is info)
    # are never in a quiet building.
    challengers = [g for g in gt[1:] if g["kind"] == "challenger"]
    assert not {(g["customer"], g["building"]) for g in challengers} & quiet, challengers
    incidents = [g for g in gt[1:] if g["kind"] != "challenger"]
    # Wave 0: every kind, started within 105 s of the first incident.
    first = min(ts(g["start"]) for g in incidents)
    wave = [g for g in incidents if ts(g["start"]) <= first + 120]
    assert {g["kind"] for g in wave} == set(EXPECTED), wave

    fired: dict[
        str, tuple[float, dict[str, Any], dict[str, Any]]
    ] = {}  # id -> (received, notification, alert)
    resolved: dict[str, float] = {}
    items: list[dict[str, Any]] = []
    deadline = time.time() + 660
    while time.time() < deadline:
        items = notifications(demo_stack.webhook_url)
        for n in items:
            got = ts(n["received_at"])
            for a in n["alerts"]:
                for inc in wave:
                    if not matches(a, inc):
                        continue
                    if a["status"] == "firing" and inc["id"] not in fired:
                        fired[inc["id"]] = (got, n, a)
                    # resolved after the incident ended (a flapping alert may resolve earlier and fire again)
                    if a["status"] == "resolved" and got >= ts(inc["end"]) and inc["id"] not in resolved:
                        resolved[inc["id"]] = got
        if len(fired) == len(wave) and len(resolved) == len(wave):
            break
        time.sleep(5)
    Path(demo_stack.state_dir, "notifications-e2e.json").write_text(json.dumps(items, indent=1))

    report = []
    for inc in wave:
        n_firing = sum(
            1 for n in items if n["status"] == "firing" and any(matches(a, inc) for a in n["alerts"])
        )
        f = fired.get(inc["id"])
        report.append(
            f"{inc['kind']:<18} {inc['id']} fired "
            + (f"{f[0] - ts(inc['start']):5.0f}s after start" if f else "never")
            + (
                f", resolved {resolved[inc['id']] - ts(inc['end']):4.0f}s after end"
                if inc["id"] in resolved
                else ""
            )
            + f", {n_firing} firing notification(s)"
        )
    print("\n" + "\n".join(report))
    missing = [i["kind"] for i in wave if i["id"] not in fired]
    assert not missing, f"no notification for {missing}\n" + "\n".join(report)
    unresolved = [i["kind"] for i in wave if i["id"] not in resolved]
    assert not unresolved, f"not resolved after the incident ended: {unresolved}\n" + "\n".join(report)

    fleet = demo_stack.cfg.fleet
    for inc in wave:
        _, n, alert = fired[inc["id"]]
        alertname, uid = EXPECTED[inc["kind"]]
        labels, ann = alert["labels"], alert["annotations"]
        # The link opens the dashboard that shows the cause, with the incident's variables filled in.
        url = urlsplit(ann["dashboard_url"])
        assert url.path.startswith(f"/d/{uid}"), ann["dashboard_url"]
        assert ann["runbook_url"].endswith("#" + alertname.lower())
        assert ann["summary"] and ann["description"]
        if inc["kind"] == "weather_station_fault":
            # one page for the station, naming its buildings, on the fleet dashboard (ops: no customer)
            for b in inc["detail"]["buildings"]:
                assert f"{b['customer']}/{b['building']}" in ann["description"], ann["description"]
            assert n["receiver"] == "ops-pager" and labels["severity"] == "critical"
            assert n["groupLabels"] == {"alertname": alertname}
            assert [a["labels"]["weather_station"] for a in n["alerts"]] == [inc["detail"]["weather_station"]]
        elif inc["kind"] in PLATFORM_KINDS:
            assert inc["app"] in ann["description"]
            assert n["receiver"] == f"ops-{'pager' if labels['severity'] == 'critical' else 'tickets'}"
            assert n["groupLabels"] == {"alertname": alertname, "app": inc["app"]}
            # the platform dashboard opens on the app
            assert parse_qs(url.query) == {"var-app": [inc["app"]]}, ann["dashboard_url"]
        else:
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            assert query == {f"var-{k}": inc[k] for k in FLEET}, ann["dashboard_url"]
            assert inc["building"] in ann["description"] and inc["model"] in ann["description"]
            team = team_of(fleet, inc["customer"])
            kind = "pager" if labels["severity"] == "critical" else "tickets"
            assert n["receiver"] == f"{team}-{kind}"
            # grouped by alert name and building: the building's models in one notification
            assert n["groupLabels"] == {
                "alertname": alertname,
                "customer": inc["customer"],
                "building": inc["building"],
            }
        assert all(a["labels"]["alertname"] == alertname for a in n["alerts"])

    # Slow answers page for the slow app only, while it is slow, and as a ticket (warning): nothing else
    # (a 5xx burst's timeouts included) raises ApiHighLatency.
    spikes = [i for i in demo_stack.ground_truth()[1:] if i["kind"] == "latency_spike"]
    for n in items:
        for a in n["alerts"]:
            if a["labels"]["alertname"] != "ApiHighLatency":
                continue
            began = ts(re.sub(r"(\.\d{6})\d+", r"\1", a["startsAt"]))
            assert a["labels"]["severity"] == "warning", a["labels"]
            assert any(
                i["app"] == a["labels"]["app"] and ts(i["start"]) <= began <= ts(i["end"]) + 60
                for i in spikes
            ), (a["labels"], a["startsAt"])
    # One cause, one page: the station's fault notified once, no other station's did, and none of the
    # models on the station notified drift, error or peer alerts of their own while it lasted.
    for inc in (i for i in wave if i["kind"] == "weather_station_fault"):
        station = inc["detail"]["weather_station"]
        pages = [
            n
            for n in items
            if n["status"] == "firing"
            and any(a["labels"]["alertname"] == "WeatherFeedFault" for a in n["alerts"])
        ]
        assert [a["labels"]["weather_station"] for n in pages for a in n["alerts"]] == [station], pages
        on_station = {(b["customer"], b["building"]) for b in inc["detail"]["buildings"]}
        explained = [
            (a["labels"]["alertname"], a["labels"]["customer"], a["labels"]["building"], a["labels"]["model"])
            for n in items
            for a in n["alerts"]
            if a["status"] == "firing"
            and a["labels"]["alertname"] in EXPLAINED_BY_STATION
            and (a["labels"].get("customer"), a["labels"].get("building")) in on_station
        ]
        assert not explained, explained
    # Buildings without incidents raise nothing (info-level records such as a champion change aside).
    noisy = [
        (a["labels"]["alertname"], a["labels"].get("customer"), a["labels"].get("building"))
        for n in items
        for a in n["alerts"]
        if (a["labels"].get("customer"), a["labels"].get("building")) in quiet
        and a["labels"].get("severity") != "info"
    ]
    assert not noisy, noisy
    # The Watchdog reaches its own receiver and nothing else does.
    assert any(n["receiver"] == "watchdog" for n in items)
    assert all(
        (n["receiver"] == "watchdog") == (n["groupLabels"].get("alertname") == "Watchdog") for n in items
    )


@pytest.mark.e2e
@pytest.mark.timeout(420)
def test_a_degrading_model_is_retrained_and_its_new_version_registered(demo_stack: Any) -> None:
    """The loop in the demo: a drift or error incident's alert reaches the webhook receiver's /actions, which
    posts a retraining request to the simulator's training API; the job trains a real model and registers
    it as a new version that takes the challenger alias in MLflow; fleetmon score scores it on the served
    rows' features, the outputs exporter benchmarks it against the champion (a verdict), and fleetmon
    evaluations logs its figures back to the version in MLflow."""
    from mlflow import MlflowClient

    cfg = demo_stack.cfg
    api = f"http://127.0.0.1:{cfg.demo.training_api_port}"
    deadline = time.time() + 360
    requested: list[dict[str, Any]] = []
    # a forecaster's request: fleetmon score benchmarks forecasters' versions
    while time.time() < deadline and not any(d["model"] == "forecast" for d in requested):
        with urllib.request.urlopen(demo_stack.webhook_url + "/actions", timeout=10) as r:
            decisions = json.loads(r.read())
        requested = [d for d in decisions if d["action"] == "retrain" and d["outcome"] == "requested"]
        if not any(d["model"] == "forecast" for d in requested):
            time.sleep(5)
    assert requested, f"no retraining requested; decisions: {decisions[-10:]}"
    first = next(d for d in requested if d["model"] == "forecast")
    assert first["alert"]["labels"]["alertname"] in ("ModelDataDrift", "ModelErrorAboveBaseline")
    assert first["dry_run"] is False and first["job_id"]
    # the training API got it, as a job of that model
    with urllib.request.urlopen(api + "/requests", timeout=10) as r:
        jobs = {j["job_id"]: j for j in json.loads(r.read())}
    job = jobs[first["job_id"]]
    assert {k: job[k] for k in FLEET} == {k: first[k] for k in FLEET}
    # ... which trains and registers a new challenger version of the model
    client = MlflowClient(demo_stack.mlflow_url)
    name = cfg.mlflow.registered_model_pattern.format(**{k: first[k] for k in FLEET})
    run = None
    while time.time() < deadline:
        runs = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            f"tags.job_id = '{first['job_id']}'",
        )
        run = runs[0] if runs else None
        if run is not None and run.info.status in ("FINISHED", "FAILED"):
            break
        time.sleep(5)
    assert run is not None, f"no MLflow run for retraining job {first['job_id']}"
    assert run.data.tags["trigger"] == "retrain"
    assert run.data.tags["fleetmon.retrain.reason"] == first["alert"]["labels"]["alertname"]
    if run.info.status == "FINISHED":
        versions = [v for v in client.search_model_versions(f"name='{name}'") if v.run_id == run.info.run_id]
        assert versions, f"the finished retraining run {run.info.run_id} registered no version of {name}"
        # it took the challenger alias (a scheduled job of the model may have registered a newer one since)
        challenger = client.get_registered_model(name).aliases.get("challenger")
        assert challenger is not None and int(challenger) >= int(versions[0].version), challenger
        # ... a real model, which fleetmon score loads and scores on the served rows' features: the outputs
        # exporter benchmarks it on the champion's targets and gives its verdict ...
        new = versions[0].version
        sel = ",".join(f'{k}="{first[k]}"' for k in FLEET)
        verdict: list[dict[str, Any]] = []
        paired: list[dict[str, Any]] = []
        until = time.time() + 240
        while time.time() < until and not (verdict and paired):
            verdict = demo_stack.query(
                f'fleetmon_model_challenger_outperforms{{{sel},challenger_version="{new}"}}'
            )
            paired = demo_stack.query(f'fleetmon_model_version_paired_targets{{{sel},version="{new}"}}')
            time.sleep(5)
        assert verdict, f"no verdict on version {new} of {name} (paired targets: {paired})"
        assert float(paired[0]["value"][1]) >= cfg.outputs.versions.min_targets, paired
        assert (
            verdict[0]["metric"]["champion_version"] == client.get_registered_model(name).aliases["champion"]
        )
        # ... and fleetmon evaluations logs how it did back to MLflow, on the version
        tags: dict[str, str] = {}
        while time.time() < until and "fleetmon.production.evaluation_run_id" not in tags:
            tags = client.get_model_version(name, new).tags
            time.sleep(5)
        assert "fleetmon.production.evaluation_run_id" in tags, tags
        assert (
            float(tags["fleetmon.production.production_paired_targets"]) >= cfg.outputs.versions.min_targets
        )
        run_metrics = client.get_run(tags["fleetmon.production.evaluation_run_id"]).data.metrics
        assert "production_mae_kwh" in run_metrics and "challenger_outperforms" in run_metrics
    else:  # a training_failures incident on that very model: failed, as the platform would
        assert any(
            g["kind"] == "training_failures" and all(g[k] == first[k] for k in FLEET)
            for g in demo_stack.ground_truth()[1:]
        )
