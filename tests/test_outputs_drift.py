"""Drift wired end to end: files -> window -> DriftJobs -> backend -> cached metrics; and drift-report.

The expected frames are built here from the generated rows (not from the exporter's jobs), and Evidently
computes the expected numbers on them: the exporter must hand Evidently the right windows and columns.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from collectors.outputs import DriftCollector, OutputsCollector
from fleetmon.config import Config, ModelKey
from fleetmon.drift.types import DriftJob
from fleetmon.exporter import Exporter
from fleetmon.outputs.pipeline import OutputsPipeline

H = 3600.0
FEATURES = ["temp", "occ"]
FLEET = {"customers": [{"id": "c1", "buildings": [{"id": "b1"}]}]}
REF_W, CUR_W = 40 * H, 10 * H
STEP = 12 * 60.0  # a prediction every 12 minutes: 200 reference rows, 50 current rows per model
SHIFTED = ("electricity", "forecast")  # this model's temp shifts in the current window


def iso(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")


def generate(
    now: float, seed: int = 7
) -> tuple[list[dict[str, Any]], dict[tuple[str, str], dict[str, pd.DataFrame]]]:
    """Rows for the 4 models of b1 and, per model, the reference / current frames they should give."""
    rng = np.random.default_rng(seed)
    recs: list[dict[str, Any]] = []
    frames: dict[tuple[str, str], dict[str, pd.DataFrame]] = {}
    made = np.arange(now - REF_W - CUR_W - 20 * H, now - 1, STEP)  # starts 20 h before the reference window
    for energy in ("electricity", "heating"):
        for model in ("forecast", "anomaly"):
            out_col = "prediction" if model == "forecast" else "anomaly_score"
            temp = rng.normal(0, 1, len(made))
            occ = rng.uniform(0, 1, len(made))
            out = rng.normal(50, 5, len(made)) if model == "forecast" else rng.uniform(0, 1, len(made))
            current = made >= now - CUR_W
            reference = (made >= now - CUR_W - REF_W) & ~current
            if (energy, model) == SHIFTED:
                temp = np.where(current, temp + 3.0, temp)
            temp = np.where(made < now - CUR_W - REF_W, temp + 50.0, temp)  # outside both windows: ignored
            for i, t in enumerate(made):
                rec: dict[str, Any] = {
                    "customer": "c1",
                    "building": "b1",
                    "energy": energy,
                    "model": model,
                    "made_at": iso(t),
                    "target_time": iso(t + H),
                    "features": {"temp": float(temp[i]), "occ": float(occ[i])},
                }
                if model == "forecast":
                    rec["prediction"] = float(out[i])
                else:
                    rec["anomaly_score"], rec["anomaly_flag"] = float(out[i]), int(out[i] > 0.95)
                recs.append(rec)
            cols = {"temp": temp, "occ": occ, out_col: out}
            frames[(energy, model)] = {
                "reference": pd.DataFrame({c: v[reference] for c, v in cols.items()}),
                "current": pd.DataFrame({c: v[current] for c, v in cols.items()}),
            }
    return recs, frames


def outputs_cfg(tmp: Path, engine: str) -> dict[str, Any]:
    return {
        "predictions": [{"glob": str(tmp / "pred" / "*.jsonl")}],
        "features": FEATURES,
        "windows": {"24h": 24 * H},
        "retention_seconds": 4 * 24 * H,
        "quarantine_dir": str(tmp / "quarantine"),
        "state_dir": str(tmp / "state"),
        "drift": {
            "engine": engine,
            "reference_window_seconds": REF_W,
            "current_window_seconds": CUR_W,
            # an override: the prediction tested with normed Wasserstein at threshold 0.5
            "columns": {"prediction": {"stattest": "wasserstein", "threshold": 0.5}},
        },
    }


def write(tmp: Path, recs: list[dict[str, Any]]) -> None:
    (tmp / "pred").mkdir(parents=True, exist_ok=True)
    with open(tmp / "pred" / "outputs.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)


def value(exp: Exporter, name: str, **labels: str) -> float | None:
    for fam in text_string_to_metric_families(exp.exposition().decode()):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


ENGINES = ["evidently"] + (["fleet"] if importlib.util.find_spec("fleetmon.drift.engine") else [])


@pytest.mark.parametrize("engine", ENGINES)
def test_shifted_feature_drifts_for_that_model_only_with_evidentlys_numbers(
    tmp_path: Path, engine: str
) -> None:
    from fleetmon.drift.evidently_backend import EvidentlyBackend

    now = 1_800_000_000.0
    recs, frames = generate(now)
    write(tmp_path, recs)
    cfg = Config.model_validate({"fleet": FLEET, "outputs": outputs_cfg(tmp_path, engine)})
    pipeline = OutputsPipeline(cfg, clock=lambda: now)
    drift = DriftCollector(cfg, pipeline)
    exp = Exporter("outputs", {"outputs": OutputsCollector(cfg, pipeline), "drift": drift})
    try:
        assert exp.poll_once("outputs")
        assert exp.poll_once("drift"), exp.poll_states["drift"].last_error
        results = {(r.key.energy, r.key.model): r for r in drift.results}
        assert set(results) == set(frames)

        # Evidently on the frames built here, with the same override and share
        from fleetmon.drift.types import ColumnOverride

        jobs = [
            DriftJob(
                key=ModelKey(customer="c1", building="b1", energy=e, model=m),
                reference=f["reference"],
                current=f["current"],
                numerical=list(f["reference"].columns),
                overrides={"prediction": ColumnOverride("wasserstein", 0.5)} if m == "forecast" else {},
                drift_share=0.5,
            )
            for (e, m), f in frames.items()
        ]
        expected = {(r.key.energy, r.key.model): r for r in EvidentlyBackend().run(jobs)}
        for key, want in expected.items():
            got = results[key]
            assert (got.n_reference, got.n_current) == (200, 50)
            assert got.n_reference == want.n_reference and got.n_current == want.n_current
            g = {c.column: c for c in got.columns}
            for w in want.columns:
                assert g[w.column].stattest == w.stattest
                assert g[w.column].score == pytest.approx(w.score, rel=1e-9, abs=1e-12), (key, w.column)
                assert g[w.column].drifted == w.drifted
            assert got.share_drifted == pytest.approx(want.share_drifted)
            assert got.dataset_drift == want.dataset_drift
        # the shift shows up on the right model and column only
        drifted = {(k, c.column) for k, r in results.items() for c in r.columns if c.drifted}
        assert drifted == {(SHIFTED, "temp")}
        assert {c.column: c.stattest for c in results[SHIFTED].columns}["prediction"] == "wasserstein"

        labels = {"customer": "c1", "building": "b1", "energy": SHIFTED[0], "model": SHIFTED[1]}
        assert value(exp, "fleetmon_drift_share", **labels) == pytest.approx(1 / 3)
        temp = {**labels, "column": "temp", "stattest": "ks"}
        assert value(exp, "fleetmon_drift_column_drifted", **temp) == 1
        assert value(exp, "fleetmon_drift_column_score", **temp) == pytest.approx(
            next(c.score for c in expected[SHIFTED].columns if c.column == "temp"), rel=1e-9
        )
        assert value(exp, "fleetmon_drift_last_success_timestamp_seconds") > time.time() - 60
        assert value(exp, "fleetmon_drift_models") == 4
        assert value(exp, "fleetmon_drift_models_skipped", reason="no_reference_rows") == 0
        body = exp.exposition()
        res = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30)
        assert res.returncode == 0, res.stderr.decode()
    finally:
        exp.stop()


def test_drift_collector_survives_a_failing_backend_and_keeps_the_last_results(tmp_path: Path) -> None:
    class Flaky:
        def __init__(self) -> None:
            self.fail = False

        def run(self, jobs: list[DriftJob]) -> list[Any]:
            if self.fail:
                raise RuntimeError("backend exploded")
            from fleetmon.drift.types import DriftResult

            return [DriftResult(j.key, [], 0.25, 0, False, len(j.reference), len(j.current)) for j in jobs]

    now = 1_800_000_000.0
    recs, _ = generate(now)
    write(tmp_path, recs)
    cfg = Config.model_validate({"fleet": FLEET, "outputs": outputs_cfg(tmp_path, "evidently")})
    pipeline = OutputsPipeline(cfg, clock=lambda: now)
    backend = Flaky()
    exp = Exporter(
        "outputs",
        {"outputs": OutputsCollector(cfg, pipeline), "drift": DriftCollector(cfg, pipeline, backend)},
    )
    try:
        exp.poll_once("outputs")
        assert exp.poll_once("drift")
        labels = {"customer": "c1", "building": "b1", "energy": "heating", "model": "anomaly"}
        first = value(exp, "fleetmon_drift_last_success_timestamp_seconds")
        backend.fail = True
        assert not exp.poll_once("drift")
        # cached results stay served, with the time of the last successful run; the failure is visible
        assert value(exp, "fleetmon_drift_share", **labels) == 0.25
        assert value(exp, "fleetmon_drift_last_success_timestamp_seconds") == first
        assert value(exp, "fleetmon_poll_success", collector="drift") == 0
    finally:
        exp.stop()


def test_drift_report_writes_evidentlys_html_for_one_building_and_model(tmp_path: Path) -> None:
    from fleetmon.drift import report

    recs, _ = generate(time.time())
    write(tmp_path, recs)
    cfg_file = tmp_path / "fleetmon.yml"
    cfg_file.write_text(yaml.safe_dump({"fleet": FLEET, "outputs": outputs_cfg(tmp_path, "evidently")}))
    out = tmp_path / "report.html"
    argv = [
        "--config.file",
        str(cfg_file),
        "--building",
        "b1",
        "--energy",
        "electricity",
        "--model",
        "forecast",
    ]
    assert report.main([*argv, "--out", str(out)]) == 0
    html = out.read_text()
    assert "<html" in html.lower() and "temp" in html and "occ" in html
    # read-only: the exporter's state and quarantine are untouched
    assert not (tmp_path / "state").exists() and not (tmp_path / "quarantine").exists()
    # a model that is not in the fleet is refused
    assert (
        report.main(
            ["--config.file", str(cfg_file), "--building", "b9", "--energy", "heating", "--model", "forecast"]
        )
        == 2
    )


def test_jobs_use_the_windows_columns_and_exclusions_of_the_config(tmp_path: Path) -> None:
    from fleetmon.outputs.drift_jobs import build_jobs

    now = 1_800_000_000.0
    recs, frames = generate(now)
    write(tmp_path, recs)
    out = outputs_cfg(tmp_path, "evidently")
    out["drift"]["exclude"] = ["occ"]
    cfg = Config.model_validate({"fleet": FLEET, "outputs": out})
    pipeline = OutputsPipeline(cfg, clock=lambda: now)
    try:
        pipeline.ingest()
        jobs = build_jobs(pipeline.store.snapshot(now), pipeline.fleet, FEATURES, cfg.outputs.drift, now)
    finally:
        pipeline.close()
    assert len(jobs.jobs) == 4 and not jobs.skipped
    for job in jobs.jobs:
        want = frames[(job.key.energy, job.key.model)]
        cols = ["temp", "prediction" if job.key.model == "forecast" else "anomaly_score"]
        assert job.numerical == cols
        pd.testing.assert_frame_equal(job.reference, want["reference"][cols].reset_index(drop=True))
        pd.testing.assert_frame_equal(job.current, want["current"][cols].reset_index(drop=True))
        assert set(job.overrides) == ({"prediction"} if job.key.model == "forecast" else set())


def test_multivariate_drift_is_exported_with_nannymls_numbers(tmp_path: Path) -> None:
    """The drift cycle also scores every model's features together (NannyML's data reconstruction, batched:
    fleetmon.drift.multivariate) and exports the error and its band. The exported numbers equal NannyML's
    own calculator on the same windows; a model whose features keep their distributions but lose their
    correlation is outside the band; `multivariate.enabled: false` exports none of it."""
    import os

    os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")  # NannyML sends usage events otherwise
    import nannyml as nml

    now = 1_800_000_000.0
    rng = np.random.default_rng(11)
    made = np.arange(now - REF_W - CUR_W + STEP / 2, now - 1, STEP)
    current = made >= now - CUR_W
    feats = ["a", "b", "c"]
    recs: list[dict[str, Any]] = []
    frames: dict[tuple[str, str], tuple[pd.DataFrame, pd.DataFrame]] = {}
    for energy in ("electricity", "heating"):
        for model in ("forecast", "anomaly"):
            a = rng.normal(0, 1, len(made))
            b = 0.8 * a + rng.normal(0, 0.6, len(made))
            c = rng.normal(5, 2, len(made))
            if (energy, model) == SHIFTED:  # b no longer follows a: same marginal, broken correlation
                b = np.where(current, rng.permutation(b), b)
            cols = {"a": a, "b": b, "c": c}
            frames[(energy, model)] = (
                pd.DataFrame({k: v[~current] for k, v in cols.items()}),
                pd.DataFrame({k: v[current] for k, v in cols.items()}),
            )
            for i, t in enumerate(made):
                rec: dict[str, Any] = {
                    "customer": "c1",
                    "building": "b1",
                    "energy": energy,
                    "model": model,
                    "made_at": iso(t),
                    "target_time": iso(t + H),
                    "features": {k: float(v[i]) for k, v in cols.items()},
                }
                if model == "forecast":
                    rec["prediction"] = 50.0 + float(a[i])
                else:
                    rec["anomaly_score"], rec["anomaly_flag"] = 0.1, 0
                recs.append(rec)
    write(tmp_path, recs)
    outputs = {**outputs_cfg(tmp_path, "fleet"), "features": feats}
    cfg = Config.model_validate({"fleet": FLEET, "outputs": outputs})
    pipeline = OutputsPipeline(cfg, clock=lambda: now)
    drift = DriftCollector(cfg, pipeline)
    exp = Exporter("outputs", {"outputs": OutputsCollector(cfg, pipeline), "drift": drift})
    try:
        assert exp.poll_once("outputs")
        assert exp.poll_once("drift"), exp.poll_states["drift"].last_error
        for (energy, model), (ref, cur) in frames.items():
            assert (len(ref), len(cur)) == (200, 50)
            with warnings.catch_warnings():  # "too few chunks" (4): a warning, an error where they are
                warnings.simplefilter("ignore")
                calc = nml.DataReconstructionDriftCalculator(column_names=feats, chunk_size=len(cur))
                res = calc.fit(ref).calculate(cur).filter(period="analysis").to_df()
            want = float(res[("reconstruction_error", "value")].iloc[0])
            labels = {"customer": "c1", "building": "b1", "energy": energy, "model": model}
            got = value(exp, "fleetmon_drift_multivariate_error", **labels)
            assert got == pytest.approx(want, rel=1e-9), (energy, model)
            upper = value(exp, "fleetmon_drift_multivariate_upper_threshold", **labels)
            assert upper == pytest.approx(calc.upper_threshold_value, rel=1e-9)
            lower = value(exp, "fleetmon_drift_multivariate_lower_threshold", **labels)
            if calc.lower_threshold_value is None:
                assert lower is None
            else:
                assert lower == pytest.approx(calc.lower_threshold_value, rel=1e-9, abs=1e-12)
            alert = bool(res[("reconstruction_error", "alert")].iloc[0])
            assert alert == ((energy, model) == SHIFTED), (energy, model, got, upper)
            assert (got > upper) == alert
        body = exp.exposition()
        res_check = subprocess.run(
            ["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30
        )
        assert res_check.returncode == 0, res_check.stderr.decode()
    finally:
        exp.stop()

    off = Config.model_validate(
        {
            "fleet": FLEET,
            "outputs": {**outputs, "drift": {**outputs["drift"], "multivariate": {"enabled": False}}},
        }
    )
    pipeline = OutputsPipeline(off, clock=lambda: now)
    exp = Exporter(
        "outputs", {"outputs": OutputsCollector(off, pipeline), "drift": DriftCollector(off, pipeline)}
    )
    try:
        assert exp.poll_once("outputs") and exp.poll_once("drift")
        lines = exp.exposition().splitlines()
        assert not [line for line in lines if line.startswith(b"fleetmon_drift_multivariate")]
    finally:
        exp.stop()
