"""End to end: every panel query of every dashboard, executed against the real demo stack's Prometheus.

Each variable is set to a real value from its own variable query (chained in order) and Grafana's macros
are substituted the way Grafana does (`fleetmon.dashboards.verify`). A query fails the test when
Prometheus answers with an error, or when it is still empty once the demo has had time to produce the
series (drift cycles, matured predictions, incidents), unless it is on the allow-list below: panels that
are empty by design.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from fleetmon.dashboards.verify import Prometheus, Result, panels, run_dashboard, targets
from fleetmon.push import push_job

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = {
    p.stem: json.loads(p.read_text()) for p in sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
}
# How long after the stack came up the slowest series may take (a few drift cycles, the first incidents).
WAIT_AFTER_START_S = 300
RETRY_EVERY_S = 10

# Panels empty by design: (dashboard uid, panel title) -> why. Documented in docs/dashboards.md.
ALLOWED_EMPTY = {
    ("fleetmon-fleet", "Firing alerts"): "no alert fires (tables only; the stat shows 0)",
    # Only a model whose predictions carry a second version has these series; the demo runs challengers
    # for a few forecasters (demo.challenger_share), never in a quiet building, and the dashboard opens on
    # the first building, which may be quiet (with the shipped seed it is).
    ("fleetmon-model", "Error by version (kWh)"): "the selected model runs no challenger version",
    ("fleetmon-model", "Challenger verdict"): "the selected model runs no challenger version",
    # Exported only where values are missing (docs/metrics.md, series budget).
    ("fleetmon-model", "Missing feature values"): "no feature value of the selected model is missing",
}
# Empty only on a host without a GPU (fleetmon_gpu_available == 0 there).
GPU_PANELS = {
    ("fleetmon-infrastructure", "GPU utilization"),
    ("fleetmon-infrastructure", "GPU memory"),
    ("fleetmon-infrastructure", "GPU temperature and power"),
}
METRIC_RE = re.compile(r"(?<![:\w])fleetmon_\w+\b(?!:)")
RECORDED_RE = re.compile(r"\b[a-z_]+:fleetmon_\w+:\w+")
GPU_METRICS = re.compile(r"^fleetmon_gpu_(?!available$)\w+$")
# Series that exist only once something is wrong (the panels count them with `or vector(0)`).
ABSENT_WHEN_HEALTHY = {
    "fleetmon_drift_column_computable": "exported only for columns whose drift cannot be computed",
    "fleetmon_outputs_rows_rejected_total": "exported once a row has been rejected",
    "fleetmon_model_feature_missing_ratio": "exported only where feature values are missing (series budget)",
}


def _names(prom_url: str) -> set[str]:
    with urllib.request.urlopen(prom_url + "/api/v1/label/__name__/values", timeout=10) as r:
        return set(json.loads(r.read())["data"])


def _push_first_building(cfg: Any, gateway: str) -> None:
    """A successful training push for every model of the building the dashboards open on (the first
    customer and building by id, as the sorted variables pick them), so the Pushgateway panels show what a
    real batch job leaves (fleetmon.push, as a job would call it). From the config: the stack may not
    have exported the models' series yet."""
    customer, building = min((c.id, b.id) for c, b in cfg.fleet.buildings())
    for key in cfg.fleet.models():
        if (key.customer, key.building) == (customer, building):
            push_job("training", key, outcome="success", duration=12.5, gateway=gateway)


def test_every_panel_query_answers_on_the_demo_stack(demo_stack: Any, record_property: Any) -> None:
    prom = Prometheus(demo_stack.prometheus_url)
    gpu = demo_stack.query("max(fleetmon_gpu_available)")
    no_gpu = not gpu or float(gpu[0]["value"][1]) == 0
    allowed = dict(ALLOWED_EMPTY)
    if no_gpu:
        allowed.update({p: "no GPU on this host" for p in GPU_PANELS})
    _push_first_building(demo_stack.cfg, demo_stack.pushgateway_url)

    results: dict[str, Result] = {}
    pending = {uid: {t.key for t in targets(doc)} for uid, doc in DASHBOARDS.items()}
    # The stack may have served other tests for a while already: the pushed series still need a scrape.
    deadline = max(demo_stack.started_at + WAIT_AFTER_START_S, time.time() + 60)
    rounds = 0
    while True:
        rounds += 1
        for uid, doc in DASHBOARDS.items():
            if not pending[uid]:
                continue
            for r in run_dashboard(doc, prom, only=pending[uid]):
                results[r.target.key] = r
        errors = [r for r in results.values() if r.status == "error"]
        assert not errors, "queries Prometheus refused:\n" + "\n".join(
            f"{r.target.dashboard} / {r.target.panel} [{r.target.ref}]: {r.error}\n    {r.expr}"
            for r in errors
        )
        pending = {uid: {k for k in keys if results[k].status != "ok"} for uid, keys in pending.items()}
        waiting = [
            results[k]
            for keys in pending.values()
            for k in keys
            if (results[k].target.dashboard, results[k].target.panel) not in allowed
        ]
        if not waiting or time.time() > deadline:
            break
        time.sleep(RETRY_EVERY_S)

    n_panels = sum(1 for doc in DASHBOARDS.values() for p in panels(doc) if p["type"] != "row")
    n_ok = sum(r.status == "ok" for r in results.values())
    summary = (
        f"{len(DASHBOARDS)} dashboards, {n_panels} panels, {len(results)} queries, {n_ok} non-empty "
        f"({n_ok / len(results):.0%}), {len(results) - n_ok} empty and allowed, {rounds} round(s), "
        f"{time.time() - demo_stack.started_at:.0f} s after stack start"
    )
    print(summary)
    record_property("dashboards_summary", summary)
    assert not waiting, f"{summary}\nempty queries:\n" + "\n".join(
        f"{r.target.dashboard} / {r.target.panel} [{r.target.ref}] with {r.values}:\n    {r.expr}"
        for r in waiting
    )
    for r in results.values():  # what was left empty is only what the allow-list names
        if r.status != "ok":
            assert (r.target.dashboard, r.target.panel) in allowed

    # `or vector(0)` keeps a count panel non-empty: prove every metric and recorded series the dashboards
    # name exists (the model states are the alerting rules' recorded flags).
    exported = _names(demo_stack.prometheus_url)
    named = {n for doc in DASHBOARDS.values() for t in targets(doc) for n in METRIC_RE.findall(t.expr)}
    named |= {n for doc in DASHBOARDS.values() for t in targets(doc) for n in RECORDED_RE.findall(t.expr)}
    missing = {
        n for n in named - exported if n not in ABSENT_WHEN_HEALTHY and not (no_gpu and GPU_METRICS.match(n))
    }
    assert not missing, f"series queried by the dashboards that Prometheus does not have: {sorted(missing)}"
