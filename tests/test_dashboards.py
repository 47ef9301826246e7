"""Dashboards as code: the committed JSON is the builders' output, its structure and links hold, every
query parses (promtool), and the model-state PromQL means what the dashboards say (promtool unit tests).

The end-to-end proof against the real demo stack is in tests/test_dashboards_e2e.py.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetmon.dashboards import build, common
from fleetmon.dashboards.verify import (
    VARIABLE_RE,
    Context,
    Variable,
    custom_options,
    dashboard_links,
    link_errors,
    panels,
    prom_duration,
    resolve,
    round_interval,
    targets,
    variable_names,
)

ROOT = Path(__file__).resolve().parent.parent
DASH_DIR = ROOT / "grafana" / "dashboards"
BUILT = build.build_all()
COMMITTED = {p.name: json.loads(p.read_text()) for p in sorted(DASH_DIR.glob("*.json"))}
VARIABLES = {doc["uid"]: variable_names(doc) for doc in BUILT.values()}
# Grafana's own variables that links and queries may use.
GRAFANA_BUILTINS = {
    "__rate_interval",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
    "__data",
    "__field",
    "__url_time_range",
    "__value",
    "__series",
    "__all",
    "__from",
    "__to",
    "__timeFilter",
}


def by_uid(uid: str) -> dict[str, Any]:
    return next(doc for doc in BUILT.values() if doc["uid"] == uid)


# ------------------------------------------------------------------------------------ generated JSON


def test_committed_json_is_the_builders_output() -> None:
    assert sorted(COMMITTED) == sorted(BUILT), "run `make dashboards` and commit grafana/dashboards/"
    for name, doc in BUILT.items():
        assert (DASH_DIR / name).read_text() == build.render(doc), f"{name} is stale: run `make dashboards`"


def test_build_command_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert build.main(["--check"]) == 0
    assert build.main(["--output-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(BUILT)
    assert build.main(["--check", "--output-dir", str(tmp_path)]) == 0
    edited = tmp_path / "fleetmon-fleet.json"
    edited.write_text(edited.read_text().replace("Fleet overview", "Fleet overwiev"))
    (tmp_path / "stray.json").write_text("{}")
    assert build.main(["--check", "--output-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "fleetmon-fleet.json differs" in err and "stray.json is not built" in err
    assert build.main(["--output-dir", str(tmp_path)]) == 0  # rewrites the edited file
    assert edited.read_text() == build.render(BUILT["fleetmon-fleet.json"])


def test_build_is_deterministic() -> None:
    again = build.build_all()
    assert {n: build.render(d) for n, d in again.items()} == {n: build.render(d) for n, d in BUILT.items()}


# ---------------------------------------------------------------------------------------- structure


def test_uids_are_the_fixed_ones() -> None:
    assert sorted(VARIABLES) == sorted(common.UID.values())
    for name, doc in BUILT.items():
        assert name == f"{doc['uid']}.json"
        assert common.TAG in doc["tags"]


@pytest.mark.parametrize("name", sorted(BUILT))
def test_panels_have_unique_ids_a_datasource_and_targets(name: str) -> None:
    doc = BUILT[name]
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}"
    titles = [p["title"] for p in panels(doc) if p["type"] != "row"]
    assert len(titles) == len(set(titles)), f"duplicate panel titles in {name} (the e2e allow-list uses them)"
    for panel in panels(doc):
        if panel["type"] == "row":
            continue
        where = f"{name}: panel {panel['id']} {panel.get('title')!r}"
        assert panel.get("title"), where
        assert panel.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel.get("targets"), f"{where} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        for t in panel["targets"]:
            assert t["expr"].strip(), where
            assert t["datasource"] == panel["datasource"], where
            assert t.get("instant") != t.get("range"), f"{where}: a query is instant or range, not both"
        w, x = panel["gridPos"]["w"], panel["gridPos"]["x"]
        assert 0 < w and x + w <= 24, where


@pytest.mark.parametrize("name", sorted(BUILT))
def test_datasource_variable_and_readonly(name: str) -> None:
    doc = BUILT[name]
    ds = [v for v in doc["templating"]["list"] if v["type"] == "datasource"]
    assert [v["name"] for v in ds] == ["datasource"]
    assert ds[0]["query"] == "prometheus"
    assert ds[0]["current"]["value"] == common.DATASOURCE_UID
    assert doc["editable"] is False  # provisioned from code: edits belong in fleetmon/dashboards/


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("customer", ["customer"]),
        ("building", ["customer", "building"]),
        ("model", ["customer", "building", "energy", "model"]),
        ("training", ["customer", "building", "energy", "model"]),
    ],
)
def test_fleet_variables_are_chained(key: str, expected: list[str]) -> None:
    doc = by_uid(common.UID[key])
    fleet = [v for v in doc["templating"]["list"] if v["name"] in common.FLEET_LABELS]
    assert [v["name"] for v in fleet] == expected
    for i, var in enumerate(fleet):
        assert var["type"] == "query" and var["datasource"]["uid"] == "${datasource}"
        used = {m.group(1) or m.group(4) for m in VARIABLE_RE.finditer(var["query"])}
        assert used == set(expected[:i]), f"{var['name']} must be filtered by exactly the variables before it"
        assert var["query"].startswith("label_values(") and var["query"].endswith(f", {var['name']})")


@pytest.mark.parametrize("name", sorted(BUILT))
def test_every_variable_used_is_defined(name: str) -> None:
    doc = BUILT[name]
    defined = variable_names(doc) | GRAFANA_BUILTINS
    texts = [t.expr for t in targets(doc)] + dashboard_links(doc)
    texts += [p.get("title", "") for p in panels(doc)] + [x.get("title", "") for x in doc.get("links") or []]
    for text in texts:
        for match in VARIABLE_RE.finditer(text):
            var = match.group(1) or match.group(2) or match.group(4)
            assert var in defined, f"{name}: ${var} in {text!r} is not a variable of the dashboard"


@pytest.mark.parametrize("name", sorted(BUILT))
def test_range_selectors_use_grafana_intervals(name: str) -> None:
    """Rates over `$__rate_interval` (Grafana sizes it from the scrape interval and the zoom), totals over
    `$__range`."""
    for t in targets(BUILT[name]):
        for window in re.findall(r"[}\w]\[([^\]]+)\]", t.expr):  # a range selector, not a regex class
            assert window in ("$__rate_interval", "$__range"), f"{name}: [{window}] in {t.expr}"
        for fn, window in re.findall(r"\b(rate|irate)\((?:[^()]|\([^()]*\))*\[([^\]]+)\]", t.expr):
            assert window == "$__rate_interval", f"{name}: {fn} over [{window}]"


def test_energy_is_shown_in_kwh() -> None:
    for doc in BUILT.values():
        for panel in panels(doc):
            for t in panel.get("targets") or []:
                expr = t["expr"]
                # joules shown as values (not only compared, counted or divided by joules)
                shown = "_joules" in expr and not any(x in expr for x in ("count", " > ", "/ ignoring"))
                if shown and panel["type"] != "table":
                    assert f"/ {common.KWH}" in t["expr"], f"{panel['title']}: joules not converted to kWh"
                    assert panel["fieldConfig"]["defaults"]["unit"] == "kwatth", panel["title"]


# -------------------------------------------------------------------------------------------- links


def test_link_checker_flags_bad_links() -> None:
    assert (
        link_errors("/d/fleetmon-model/x?var-customer=a&var-building=b&var-energy=e&var-model=m", VARIABLES)
        == []
    )
    assert link_errors("https://example.org/report.html", VARIABLES) == []
    assert link_errors("/d/fleetmon-nope/x?var-customer=a", VARIABLES)
    errors = link_errors("/d/fleetmon-customer/c?var-customer=a&var-building=b", VARIABLES)
    assert errors == [
        "/d/fleetmon-customer/c?var-customer=a&var-building=b: dashboard 'fleetmon-customer' "
        "has no variable 'building'"
    ]
    templated = "http://h:3000/d/fleetmon-building/b?var-customer={{ $labels.customer }}&var-model={{ $labels.model }}"
    assert len(link_errors(templated, VARIABLES)) == 1


@pytest.mark.parametrize("name", sorted(BUILT))
def test_links_point_to_existing_dashboards_and_variables(name: str) -> None:
    urls = dashboard_links(BUILT[name])
    assert urls, f"{name} links nowhere"
    for url in urls:
        assert link_errors(url, VARIABLES) == []


def _linked_uids(doc: dict[str, Any]) -> set[str]:
    return {m.group(1) for url in dashboard_links(doc) for m in [re.search(r"/d/([\w-]+)", url)] if m}


def test_drill_down_and_back_up() -> None:
    uid = common.UID
    down = {"fleet": "customer", "customer": "building", "building": "model"}
    for level, below in down.items():
        assert uid[below] in _linked_uids(by_uid(uid[level])), f"{level} does not link down to {below}"
    for level, above in {"customer": "fleet", "building": "customer", "model": "building"}.items():
        assert uid[above] in _linked_uids(by_uid(uid[level])), f"{level} does not link back up to {above}"
    # The building and model links fill in every variable of their target.
    for doc in BUILT.values():
        for url in dashboard_links(doc):
            for key in ("building", "model"):
                if f"/d/{uid[key]}/" in url:
                    given = set(re.findall(r"var-(\w+)=", url))
                    assert given == set(common.LEVEL_VARS[key]), url


def test_alert_dashboard_urls_point_to_existing_dashboards() -> None:
    """Every `dashboard_url` annotation of the alert rules (prometheus/rules/*.yml, whatever exists)."""
    checked = 0
    for path in sorted((ROOT / "prometheus" / "rules").glob("*.yml")):
        doc = yaml.safe_load(path.read_text()) or {}
        for group in doc.get("groups") or []:
            for rule in group.get("rules") or []:
                url = (rule.get("annotations") or {}).get("dashboard_url")
                if url is None:
                    continue
                assert "/d/" in url, f"{path.name}: {rule.get('alert')}: {url} is not a dashboard link"
                assert link_errors(url, VARIABLES) == [], f"{path.name}: {rule.get('alert')}"
                checked += 1
    if not checked:
        pytest.skip("no alert rule with a dashboard_url yet")


# ------------------------------------------------------------------------------------------ metrics


def _documented_metrics() -> set[str]:
    names: set[str] = set()
    for token in re.findall(r"`(fleetmon_[a-z0-9_{},]+)`", (ROOT / "docs" / "metrics.md").read_text()):
        parts = re.split(r"\{([^}]*)\}", token)  # fleetmon_host_memory_{total,free}_bytes -> expansions
        options = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
        names.update("".join(x) for x in itertools.product(*options))
    return names


# Exported names (not the `fleetmon_` inside a recorded `level:fleetmon_...:op` name)
METRIC_RE = re.compile(r"(?<![:\w])fleetmon_\w+\b(?!:)")
RECORDED_RE = re.compile(r"\b[a-z_]+:fleetmon_\w+:\w+")


def query_metric_names() -> set[str]:
    return {n for doc in BUILT.values() for t in targets(doc) for n in METRIC_RE.findall(t.expr)}


def test_every_metric_queried_is_documented() -> None:
    missing = query_metric_names() - _documented_metrics()
    assert not missing, f"queried but not in docs/metrics.md: {sorted(missing)}"


# -------------------------------------------------------------------------- Grafana's interpolation


def test_interpolation_like_grafana() -> None:
    ctx = Context(now=time.time(), range_s=6 * 3600)
    single = Variable("customer", "query")
    multi = Variable("building", "query", multi=True, include_all=True, all_value=".*")
    listed = Variable("app", "query", multi=True, include_all=True)
    ctx.variables = {v.name: v for v in (single, multi, listed)}
    ctx.values = {"customer": "c.01", "building": ["b.1", "b2"], "app": "$__all"}
    ctx.options = {"app": ["api", "model-serving"]}
    out = ctx.interpolate('x{customer=~"$customer",building=~"${building}",app=~"[[app]]"}[$__rate_interval]')
    # single-value variables are not regex-escaped; multi values are, and joined as a group
    assert out == 'x{customer=~"c.01",building=~"(b\\\\.1|b2)",app=~"(api|model-serving)"}[60s]'
    ctx.values["building"] = "$__all"
    assert ctx.interpolate("${building}") == ".*"  # allValue wins
    assert ctx.interpolate("$unknown $__range") == "$unknown 21600s"
    # 6 h over 1000 points -> 21.6 s -> rounded to 20 s; rate interval = max(20 + 15, 4 x 15)
    assert ctx.interpolate("$__interval") == "20s" and ctx.rate_interval_s == 60
    wide = Context(now=0, range_s=7 * 86400)
    assert prom_duration(wide.interval_s) == "600s" and wide.rate_interval_s == 615
    assert round_interval(21600) == 20000 and round_interval(5) == 10
    assert custom_options("1m : 60,2m : 120,x") == [("1m", "60"), ("2m", "120"), ("x", "x")]


# ------------------------------------------------------------------------------ PromQL, via promtool


def _sample_context() -> Context:
    """Every variable of every dashboard with a plausible value, to make the queries parseable."""
    ctx = Context(now=time.time(), range_s=6 * 3600)
    for doc in BUILT.values():
        for raw in doc["templating"]["list"]:
            var = Variable.from_json(raw)
            ctx.variables.setdefault(var.name, var)
            if var.type == "custom":
                ctx.values.setdefault(var.name, var.current)
            else:
                ctx.values.setdefault(var.name, f"sample-{var.name}")
    return ctx


def test_every_query_parses(tmp_path: Path) -> None:
    """promtool (Prometheus' own parser) accepts every interpolated query, written as recording rules."""
    ctx = _sample_context()
    rules = []
    for doc in BUILT.values():
        for i, t in enumerate(targets(doc)):
            rules.append(
                {"record": f"dashboard:{doc['uid'].replace('-', '_')}:q{i}", "expr": ctx.interpolate(t.expr)}
            )
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    out = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(rules)} rules found" in out.stdout


# The model-state semantics, on synthetic series through the real recording rules (the states are their
# recorded flags): at 10 min, m1 ok, m2 drifting, m3 erroring, m4 failing training, m5 stale, m6 known to
# MLflow but never predicting (stale), m7 drifting and stale (the worst, stale, wins). One building per
# model (a feature drifting for several models of one building is the weather, not a model's input);
# "drifted" applies to two input features of the model.
STATE_SERIES: dict[str, dict[str, str | None]] = {
    "m1": {},
    "m2": {"drifted": "1x60"},
    "m3": {"mae24": "1000x60", "mape24": "1x60"},
    "m4": {"failed": "0+1x60", "finished": "5x60"},
    "m5": {"pred": "0x60"},
    "m6": {"pred": None},
    "m7": {"drifted": "1x60", "pred": "0x60"},
}
EXPECTED_STATE = {"m1": 0, "m2": 1, "m3": 2, "m4": 3, "m5": 4, "m6": 4, "m7": 4}
RECORDING_RULES = ROOT / "prometheus" / "rules" / "recording.yml"


def _labels(model: str, **extra: str) -> str:
    labels = {"customer": "c1", "building": f"b-{model}", "energy": "heating", "model": model, **extra}
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _state_input() -> list[dict[str, str]]:
    series: dict[str, str] = {}
    for model, spec in STATE_SERIES.items():
        series[f"fleetmon_mlflow_runs{_labels(model, status='failed')}"] = spec.get("failed") or "0x60"
        series[f"fleetmon_mlflow_runs{_labels(model, status='finished')}"] = spec.get("finished") or "10x60"
        if "pred" in spec and spec["pred"] is None:
            continue  # known to MLflow only
        # every 15 s the newest prediction is "now" (value = the evaluation time in seconds)
        series[f"fleetmon_model_last_prediction_timestamp_seconds{_labels(model)}"] = (
            spec.get("pred") or "0+15x60"
        )
        # a model drifts when at least two of its own input features do (the recording rule's definition)
        for feature in ("outdoor_temperature", "humidity"):
            column = _labels(model, column=feature, stattest="ks")
            series[f"fleetmon_drift_column_drifted{column}"] = spec.get("drifted") or "0x60"
        series[f"fleetmon_model_mae_joules{_labels(model, window='24h')}"] = spec.get("mae24") or "100x60"
        series[f"fleetmon_model_mae_joules{_labels(model, window='7d')}"] = "100x60"
        series[f"fleetmon_model_mape_ratio{_labels(model, window='24h')}"] = spec.get("mape24") or "0.1x60"
        series[f"fleetmon_model_mape_ratio{_labels(model, window='7d')}"] = "0.1x60"
    return [{"series": k, "values": v} for k, v in series.items()]


def _in_state(model: str, state: str) -> bool:
    spec = STATE_SERIES[model]
    flags = {
        "drifting": "drifted" in spec,
        "erroring": "mae24" in spec,
        "failing training": "failed" in spec,
        "stale": "pred" in spec,
    }
    return not any(flags.values()) if state == "ok" else flags[state]


def test_model_states_mean_what_the_dashboards_say(tmp_path: Path) -> None:
    """The fleet dashboard's state panels and the per-model state code, on top of the recording rules."""
    fleet = by_uid(common.UID["fleet"])
    stat_expr = {p["title"]: p["targets"][0]["expr"] for p in panels(fleet) if p["type"] == "stat"}
    tests: list[dict[str, Any]] = [
        {
            "expr": common.model_state(""),
            "eval_time": "10m",
            "exp_samples": [{"labels": _labels(m), "value": code} for m, code in EXPECTED_STATE.items()],
        },
        {
            "expr": stat_expr["Models"],
            "eval_time": "10m",
            "exp_samples": [{"labels": "{}", "value": len(STATE_SERIES)}],
        },
    ]
    for state in common.STATES:
        count = sum(1 for m in EXPECTED_STATE if _in_state(m, state))
        tests.append(
            {
                "expr": stat_expr[state.capitalize()],
                "eval_time": "10m",
                "exp_samples": [{"labels": "{}", "value": count}],
            }
        )
    doc = {
        "rule_files": [str(RECORDING_RULES)],
        "evaluation_interval": "15s",
        "tests": [{"interval": "15s", "input_series": _state_input(), "promql_expr_test": tests}],
    }
    path = tmp_path / "states_test.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_recorded_series_queried_are_defined() -> None:
    """The dashboards' recorded series (`level:metric:operations`) exist in prometheus/rules/*.yml."""
    defined = {
        rule["record"]
        for path in sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups") or []
        for rule in group.get("rules") or []
        if "record" in rule
    }
    used = {n for doc in BUILT.values() for t in targets(doc) for n in RECORDED_RE.findall(t.expr)}
    assert used >= set(common.STATE_RULES.values())
    assert used <= defined, f"not recorded by any rule: {sorted(used - defined)}"


# ------------------------------------------------------------------------------------ golden signals


def test_platform_shows_the_four_golden_signals_per_app_and_for_model_serving() -> None:
    """Side by side (one line of the grid): latency percentiles with the alert's threshold, traffic, errors,
    saturation; first for the selected apps, then for model serving alone. Latency, traffic and errors are
    the recorded series the alerts evaluate."""
    doc = by_uid(common.UID["platform"])
    top = doc["panels"]
    rows = [p["title"] for p in top if p["type"] == "row"]
    assert rows[:3] == ["Golden signals", "Model serving", "Latency by route"]
    first = top[1:5]
    assert [p["title"] for p in first] == [
        "Latency (p50 / p95 / p99)",
        "Traffic",
        "Errors (5xx ratio)",
        "Saturation",
    ]
    assert len({p["gridPos"]["y"] for p in first}) == 1 and sum(p["gridPos"]["w"] for p in first) == 24
    exprs = {p["title"]: [t["expr"] for t in p["targets"]] for p in panels(doc) if p["type"] != "row"}
    latency = exprs["Latency (p50 / p95 / p99)"]
    assert [re.search(r'quantile="([\d.]+)"', e).group(1) for e in latency[:3]] == ["0.5", "0.95", "0.99"]  # type: ignore[union-attr]
    assert all(
        e.startswith("app:fleetmon_http_request_duration_seconds:quantile_rate5m{") for e in latency[:3]
    )
    assert latency[3].startswith("app:fleetmon_http_request_duration_seconds:p95_threshold")
    assert exprs["Traffic"] == ['app:fleetmon_http_requests:rate5m{app=~"$app"}']
    assert exprs["Errors (5xx ratio)"] == ['app:fleetmon_http_requests_5xx:ratio_rate5m{app=~"$app"}']
    saturation = " ".join(exprs["Saturation"])
    for metric in (
        "fleetmon_app_memory_utilization_max_ratio",
        "fleetmon_host_cpu_seconds_total",
        "fleetmon_app_replicas",
    ):
        assert metric in saturation
    for title in ("Latency (p50 / p95 / p99)", "Traffic", "Errors (5xx ratio)"):
        assert all('app=~"$app"' in e for e in exprs[title])
    # model serving: the same signals, filtered to it
    serving = {t: e for t, e in exprs.items() if t.startswith("Model serving")}
    assert {"Model serving latency (p50 / p95 / p99)", "Model serving saturation"} <= set(serving)
    assert all('app="model-serving"' in e for es in serving.values() for e in es if "host_cpu" not in e)


def test_variables_take_the_value_the_dashboard_opens_with() -> None:
    """A variable saved as All (fleet-wide dashboards) is evaluated as All, the others on their first value;
    the label values come from the variable's own query, chained."""

    class Labels:
        def __init__(self) -> None:
            self.asked: list[tuple[str, str | None]] = []

        def label_values(self, label: str, match: str | None, ctx: Context) -> list[str]:
            self.asked.append((label, match))
            return {"customer": ["c1", "c2"], "building": ["b1", "b2"]}[label]

    fleetwide = {
        "name": "customer",
        "type": "query",
        "query": "label_values(m, customer)",
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
    }
    single = {
        "name": "building",
        "type": "query",
        "query": 'label_values(m{customer=~"$customer"}, building)',
    }
    labels = Labels()
    ctx = Context(now=0, range_s=3600)
    resolve({"templating": {"list": [fleetwide, single]}}, labels, ctx)  # type: ignore[arg-type]
    assert (
        ctx.interpolate('m{customer=~"$customer",building=~"$building"}')
        == 'm{customer=~".*",building=~"b1"}'
    )
    assert labels.asked == [("customer", "m"), ("building", 'm{customer=~".*"}')]
    # saved on one value: the first option, as before
    ctx = Context(now=0, range_s=3600)
    resolve({"templating": {"list": [{**fleetwide, "current": {"value": "c2"}}, single]}}, Labels(), ctx)  # type: ignore[arg-type]
    assert ctx.values["customer"] == "c1"
