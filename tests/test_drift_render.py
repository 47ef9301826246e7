"""Drift results rendered once per cycle: valid exposition (promtool), right values, gzip, escaping."""

from __future__ import annotations

import gzip
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetmon.config import ModelKey
from fleetmon.drift.render import CONTENT_TYPE, render
from fleetmon.drift.types import ColumnDrift, DriftResult


def results() -> list[DriftResult]:
    k1 = ModelKey(customer="c01", building="c01-b001", energy="heating", model="forecast")
    k2 = ModelKey(customer="c01", building="c01-b002", energy="electricity", model="anomaly")
    return [
        DriftResult(
            key=k1,
            columns=[
                ColumnDrift("outdoor_temperature", "wasserstein", 0.1, 0.42, True),
                ColumnDrift("hour_of_day", "ks", 0.05, 0.3, False),
                ColumnDrift('odd"name\\x', "z", 0.05, 1e-300, True),
                ColumnDrift("humidity", "", float("nan"), None, None, "empty_current", "An empty column"),
            ],
            share_drifted=2 / 3,
            n_drifted=2,
            dataset_drift=True,
            n_reference=2000,
            n_current=500,
        ),
        DriftResult(
            key=k2,
            columns=[],
            share_drifted=0.0,
            n_drifted=0,
            dataset_drift=False,
            n_reference=0,
            n_current=0,
        ),
    ]


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_values_and_labels() -> None:
    r = render(results())
    got = samples(r.body.decode())
    base = {"customer": "c01", "building": "c01-b001", "energy": "heating", "model": "forecast"}

    def v(name: str, **labels: str) -> float:
        return got[(name, frozenset((base | labels).items()))]

    assert v("fleetmon_drift_column_score", column="outdoor_temperature", stattest="wasserstein") == 0.42
    assert v("fleetmon_drift_column_drifted", column="outdoor_temperature", stattest="wasserstein") == 1
    assert v("fleetmon_drift_column_drifted", column="hour_of_day", stattest="ks") == 0
    assert v("fleetmon_drift_column_score", column='odd"name\\x', stattest="z") == 1e-300
    assert v("fleetmon_drift_column_computable", column="humidity", reason="empty_current") == 0
    assert not any(k[0] == "fleetmon_drift_column_score" and ("column", "humidity") in k[1] for k in got)
    assert v("fleetmon_drift_share") == pytest.approx(2 / 3)
    assert v("fleetmon_drift_dataset_drifted") == 1
    assert v("fleetmon_drift_columns") == 4
    assert (v("fleetmon_drift_reference_rows"), v("fleetmon_drift_current_rows")) == (2000, 500)
    other = frozenset(
        {"customer": "c01", "building": "c01-b002", "energy": "electricity", "model": "anomaly"}.items()
    )
    assert got[("fleetmon_drift_share", other)] == 0.0
    assert r.series == len(got)


def test_gzip_and_headers() -> None:
    r = render(results())
    assert gzip.decompress(r.gzipped) == r.body
    assert render(results()).gzipped == r.gzipped  # deterministic bytes
    body, headers = r.for_request("gzip, deflate")
    assert body == r.gzipped and headers == {"Content-Type": CONTENT_TYPE, "Content-Encoding": "gzip"}
    body, headers = r.for_request(None)
    assert body == r.body and "Content-Encoding" not in headers


def test_promtool_check_metrics() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed")
    text = render(results()).body
    p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert p.returncode == 0, (p.stdout + p.stderr).decode()
    assert not (p.stdout + p.stderr).strip(), (p.stdout + p.stderr).decode()  # no lint warnings either
