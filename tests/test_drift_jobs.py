"""Drift jobs from the outputs store: array-form windows equal to an independent per-model selection.

``build_jobs`` builds every model's windows as views into one matrix; here the expected windows are
selected model by model with plain pandas masks on the same snapshot, and compared value by value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetmon.config import Config, DriftConfig
from fleetmon.drift.engine import FleetDriftEngine
from fleetmon.drift.evidently_backend import EvidentlyBackend
from fleetmon.outputs.drift_jobs import ReferenceFiles, build_jobs
from fleetmon.outputs.records import FEATURE_PREFIX, FleetIndex
from fleetmon.outputs.store import Snapshot

H = 3600.0
NOW = 1_800_000_000.0
FEATURES = ["temp", "occ", "hour"]
FLEET = {"customers": [{"id": "c1", "buildings": [{"id": "b1"}, {"id": "b2"}, {"id": "b3"}]}]}


def snapshot(fleet: FleetIndex, seed: int = 0) -> Snapshot:
    """Predictions of every model but the last, at irregular times, in shuffled order, some NaN."""
    rng = np.random.default_rng(seed)
    parts = []
    for mid in range(len(fleet.models) - 1):  # the last model has no rows at all
        n = int(rng.integers(20, 80))
        made = NOW - rng.uniform(0, 60 * H, n)
        made[:2] = [NOW - 10 * H, NOW]  # on the window bounds
        anomaly = fleet.is_anomaly[mid]
        parts.append(
            pd.DataFrame(
                {
                    "model": mid,
                    "be": int(fleet.be_of_model[mid]),
                    "made_at": made,
                    "target": made + H,
                    "prediction": np.nan if anomaly else rng.normal(50, 5, n),
                    "score": rng.uniform(0, 1, n) if anomaly else np.nan,
                    "flag": np.nan,
                    FEATURE_PREFIX + "temp": np.where(rng.random(n) < 0.1, np.nan, rng.normal(0, 1, n)),
                    FEATURE_PREFIX + "occ": rng.uniform(0, 1, n),
                    FEATURE_PREFIX + "hour": rng.integers(0, 24, n).astype(float),
                }
            )
        )
    pred = pd.concat(parts, ignore_index=True).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return Snapshot(pred, pd.DataFrame())


def expected(snap: Snapshot, mid: int, cols: list[str], lo: float, hi: float, right: bool) -> pd.DataFrame:
    p = snap.predictions
    m = p[p["model"] == mid].sort_values("made_at", kind="stable")
    sel = (m["made_at"] >= lo) & ((m["made_at"] <= hi) if right else (m["made_at"] < hi))
    src = {
        c: ("score" if c == "anomaly_score" else c if c == "prediction" else FEATURE_PREFIX + c) for c in cols
    }
    return pd.DataFrame({c: m.loc[sel, src[c]].to_numpy() for c in cols})


def setup(tmp_path: Path, **drift) -> tuple[FleetIndex, DriftConfig]:
    cfg = Config.model_validate(
        {
            "fleet": FLEET,
            "outputs": {
                "features": FEATURES,
                "quarantine_dir": str(tmp_path / "q"),
                "state_dir": str(tmp_path / "s"),
                "drift": {"reference_window_seconds": 40 * H, "current_window_seconds": 10 * H, **drift},
            },
        }
    )
    return FleetIndex(cfg.fleet), cfg.outputs.drift


@pytest.mark.parametrize("exclude", [[], ["hour"], ["hour", "prediction"]])
def test_rolling_windows_are_each_models_rows(tmp_path: Path, exclude: list[str]) -> None:
    fleet, drift = setup(tmp_path, exclude=exclude, columns={"prediction": {"stattest": "ks"}})
    snap = snapshot(fleet)
    jobs = build_jobs(snap, fleet, FEATURES, drift, NOW)
    assert len(jobs.jobs) == len(fleet.models) - 1 and jobs.skipped == {"no_reference_rows": 1}
    for job in jobs.jobs:
        mid = fleet.models.index(job.key)
        out = "anomaly_score" if fleet.is_anomaly[mid] else "prediction"
        cols = [c for c in [*FEATURES, out] if c not in exclude]
        assert job.numerical == cols and job.categorical == []
        assert set(job.overrides) == ({"prediction"} & set(cols))
        assert isinstance(job.reference_values, np.ndarray) and isinstance(job.current_values, np.ndarray)
        # views into one matrix, not copies
        assert job.reference_values.base is not None and job.current_values.base is not None
        want_ref = expected(snap, mid, cols, NOW - 50 * H, NOW - 10 * H, right=False)
        want_cur = expected(snap, mid, cols, NOW - 10 * H, NOW, right=True)
        pd.testing.assert_frame_equal(job.reference, want_ref)
        pd.testing.assert_frame_equal(job.current, want_cur)
        assert job.reference_version == f"rolling:{NOW - 50 * H:.3f}:{NOW - 10 * H:.3f}:{len(want_ref)}"


def test_file_references(tmp_path: Path) -> None:
    fleet, drift = setup(
        tmp_path, reference="file", reference_path=str(tmp_path / "ref" / "{building}-{energy}-{model}.csv")
    )
    snap = snapshot(fleet)
    rng = np.random.default_rng(4)
    (tmp_path / "ref").mkdir()
    written = {}
    for mid, key in enumerate(fleet.models[:-2]):  # the last two models have no file
        out = "anomaly_score" if fleet.is_anomaly[mid] else "prediction"
        frame = pd.DataFrame({FEATURE_PREFIX + "temp": rng.normal(0, 1, 30), out: rng.normal(0, 1, 30)})
        if mid % 3 == 0:  # a file with one more feature
            frame[FEATURE_PREFIX + "occ"] = rng.uniform(0, 1, 30)
        frame.to_csv(tmp_path / "ref" / f"{key.building}-{key.energy}-{key.model}.csv", index=False)
        written[mid] = frame
    refs = ReferenceFiles(drift.reference_path or "", FEATURES, tmp_path / "cache")
    jobs = build_jobs(snap, fleet, FEATURES, drift, NOW, refs)
    assert jobs.skipped == {"reference_unavailable": 2}
    assert len(jobs.jobs) == len(written)
    for job in jobs.jobs:
        mid = fleet.models.index(job.key)
        frame = written[mid]
        out = "anomaly_score" if fleet.is_anomaly[mid] else "prediction"
        cols = [c for c in [*FEATURES, out] if c == out or FEATURE_PREFIX + c in frame.columns]
        assert job.numerical == cols  # only the columns the file has, in the usual order
        want_ref = pd.DataFrame(
            {c: frame[c if c == out else FEATURE_PREFIX + c].to_numpy(float) for c in cols}
        )
        pd.testing.assert_frame_equal(job.reference, want_ref)
        pd.testing.assert_frame_equal(job.current, expected(snap, mid, cols, NOW - 10 * H, NOW, right=True))
    # the reference is read once per file version; a new file version is a new reference version
    again = build_jobs(snap, fleet, FEATURES, drift, NOW, refs)
    assert [j.reference_version for j in again.jobs] == [j.reference_version for j in jobs.jobs]
    assert again.jobs[0].reference_values[0] is jobs.jobs[0].reference_values[0]
    # and the engine's numbers on these jobs are Evidently's
    with FleetDriftEngine() as engine:
        got = engine.run(jobs.jobs[:3])
    ev = EvidentlyBackend().run(jobs.jobs[:3])
    for g, e in zip(got, ev, strict=True):
        for a, b in zip(g.columns, e.columns, strict=True):
            assert (a.column, a.stattest, a.drifted, a.error) == (b.column, b.stattest, b.drifted, b.error)
            assert a.score == pytest.approx(b.score, rel=1e-9, abs=1e-12)


def test_file_references_from_mlflow_artifacts(tmp_path: Path, mlflow_server: str) -> None:
    """The training sample logged as a run artifact is the reference (downloaded once, from the configured MLflow)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    run = client.create_run(client.create_experiment(f"refs-{tmp_path.name}"))
    rng = np.random.default_rng(7)
    (tmp_path / "art").mkdir()
    pattern = f"runs:/{run.info.run_id}/refs/{{building}}-{{energy}}-{{model}}/reference.csv"
    fleet, drift = setup(tmp_path, reference="file", reference_path=pattern)
    written = {}
    for mid, key in enumerate(fleet.models):
        out = "anomaly_score" if fleet.is_anomaly[mid] else "prediction"
        frame = pd.DataFrame({FEATURE_PREFIX + "temp": rng.normal(0, 1, 25), out: rng.normal(0, 1, 25)})
        name = f"{key.building}-{key.energy}-{key.model}"
        (tmp_path / "art" / name).mkdir()
        frame.to_csv(tmp_path / "art" / name / "reference.csv", index=False)
        client.log_artifact(run.info.run_id, str(tmp_path / "art" / name / "reference.csv"), f"refs/{name}")
        written[mid] = frame
    client.set_terminated(run.info.run_id)
    refs = ReferenceFiles(pattern, FEATURES, tmp_path / "cache", tracking_uri=mlflow_server)
    jobs = build_jobs(snapshot(fleet), fleet, FEATURES, drift, NOW, refs)
    assert not jobs.skipped and len(jobs.jobs) == len(written)
    for job in jobs.jobs:
        mid = fleet.models.index(job.key)
        out = "anomaly_score" if fleet.is_anomaly[mid] else "prediction"
        want = written[mid]
        np.testing.assert_allclose(
            job.reference["temp"].to_numpy(), want[FEATURE_PREFIX + "temp"].to_numpy(), rtol=1e-12
        )
        np.testing.assert_allclose(job.reference[out].to_numpy(), want[out].to_numpy(), rtol=1e-12)
    # downloaded once: a second cycle reads the cache, even with the server unreachable
    refs.tracking_uri = "http://127.0.0.1:9"
    again = build_jobs(snapshot(fleet), fleet, FEATURES, drift, NOW, refs)
    assert [j.reference_version for j in again.jobs] == [j.reference_version for j in jobs.jobs]
