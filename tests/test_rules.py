"""The Prometheus rules: promtool checks and unit tests, and the conventions every alert must follow."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from fleetmon.dashboards.common import UID

ROOT = Path(__file__).resolve().parent.parent
RULES = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((ROOT / "tests" / "rules").glob("*.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"
GRAFANA = "http://localhost:3000"
RUNBOOK_BASE = "https://github.com/fleetmon/fleetmon/blob/main/docs/runbooks.md"
FLEET_VARS = {"customer", "building", "energy", "model"}

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")


def rules() -> list[dict[str, Any]]:
    return [r for f in RULES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


def rule_tests() -> list[dict[str, Any]]:
    return [t for f in RULE_TESTS for t in yaml.safe_load(f.read_text())["tests"]]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_promtool_check_rules() -> None:
    assert RULES
    r = promtool("check", "rules", *map(str, RULES))
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_check_config() -> None:
    r = promtool("check", "config", str(ROOT / "prometheus" / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_rule_unit_tests() -> None:
    assert RULE_TESTS
    r = promtool("test", "rules", *map(str, RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_follows_the_conventions() -> None:
    names = set()
    for a in alerts():
        name = a["alert"]
        names.add(name)
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", name), name
        assert "for" in a, f"{name}: no for:"
        assert a["labels"]["severity"] in ("critical", "warning", "info"), name
        ann = a["annotations"]
        assert set(ann) == {"summary", "description", "runbook_url", "dashboard_url"}, name
        assert "{{" not in ann["summary"], f"{name}: summary must be fixed text"
        if name != "Watchdog":  # the one alert with nothing to fill in
            assert "{{" in ann["description"], f"{name}: description must be templated"
        assert ann["runbook_url"] == f"{RUNBOOK_BASE}#{name.lower()}", name
        # A Grafana dashboard of the fixed uids, with only fleet variables filled from the alert's labels.
        url = urlsplit(ann["dashboard_url"])
        assert f"{url.scheme}://{url.netloc}" == GRAFANA, name
        uid = url.path.split("/")[2]
        assert uid in UID.values(), f"{name}: {uid} is not a dashboard uid"
        allowed = FLEET_VARS | ({"app"} if uid == UID["platform"] else set())
        for var, values in parse_qs(url.query).items():
            label = var.removeprefix("var-")
            assert var.startswith("var-") and label in allowed, f"{name}: {var}"
            assert values == ["{{ $labels." + label + " }}"], f"{name}: {var}"
        if uid == UID["model"] or uid == UID["training"]:
            assert set(parse_qs(url.query)) == {f"var-{v}" for v in FLEET_VARS}, name
        if uid == UID["platform"]:  # per-app alerts open the platform dashboard on their app
            assert set(parse_qs(url.query)) == {"var-app"}, name
    # at least what the issue asks for
    assert {
        "ModelDataDrift",
        "ModelPredictionDrift",
        "ModelErrorAboveBaseline",
        "ModelPredictionsStale",
        "BuildingActualsMissing",
        "ModelTrainingFailing",
        "ModelTrainingOverdue",
        "ChampionAliasChanged",
        "ModelInputSchemaChanged",
        "ApiHighErrorRatio",
        "ApiHighLatency",
        "AppReplicasUnhealthy",
        "MlflowUnreachable",
        "OutputsSourceUnreadable",
        "FleetmonTargetMissing",
        "FleetmonTargetDown",
        "PrometheusScrapeLimitHit",
        "HostMemoryNearlyFull",
        "GpuMemoryNearlyFull",
        "Watchdog",
    } <= names


def test_every_alert_has_a_runbook_and_every_runbook_an_alert() -> None:
    sections = set(re.findall(r"^### (\w+)\s*$", RUNBOOKS.read_text(), re.M))
    names = {a["alert"] for a in alerts()}
    assert names - sections == set(), "alerts without a runbook section"
    assert sections - names == set(), "runbook sections of no alert"
    for name in names:  # each section says what it means, how to confirm, what to do
        text = RUNBOOKS.read_text().split(f"### {name}\n", 1)[1].split("\n### ", 1)[0]
        assert all(h in text for h in ("**Meaning.**", "**Confirm.**", "**Do.**")), name


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for t in rule_tests():
        for case in t.get("alert_rule_test") or []:
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - firing == set(), "alerts never tested firing"
    # the Watchdog always fires, by design
    assert names - silent == {"Watchdog"}, "alerts never tested silent"


def test_recording_rules_are_named_and_tested() -> None:
    records = {r["record"] for r in rules() if "record" in r}
    for name in records:
        assert re.fullmatch(r"[a-z_]+:fleetmon_[a-z0-9_]+:[a-z0-9_]+", name), name
    tested = " ".join(e["expr"] for t in rule_tests() for e in t.get("promql_expr_test") or [])
    used_by_alerts = " ".join(a["expr"] for a in alerts())
    untested = {r for r in records if r not in tested and r not in used_by_alerts}
    assert not untested, f"recording rules without a promql_expr_test or an alert test: {untested}"


def test_rules_use_only_documented_metrics() -> None:
    """A typo in a metric name makes an alert that can never fire: every name must be in docs/metrics.md."""
    documented = (ROOT / "docs" / "metrics.md").read_text()
    expanded = set(re.findall(r"fleetmon_[a-z0-9_]+", documented))
    # table rows like `fleetmon_host_memory_{total,available}_bytes`
    for stem, alts, tail in re.findall(r"(fleetmon_[a-z0-9_]*)\{([a-z0-9_,]+)\}([a-z0-9_]*)", documented):
        expanded |= {f"{stem}{a}{tail}" for a in alts.split(",")}
    used = {m for r in rules() for m in re.findall(r"(?<![:\w])fleetmon_[a-z0-9_]+", r["expr"])}
    assert used - expanded == set()
