"""``fleetmon score`` against a real ``mlflow server``: scikit-learn versions registered in MLflow, loaded with
``mlflow.pyfunc`` in worker processes, score the features of the served rows; their shadow rows go through
the real outputs pipeline into the version benchmark. Misbehaving models (raising, hanging, eating memory,
answering the wrong number of rows, missing artifacts) are reported with a reason and stop nothing."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetmon.config import Config
from fleetmon.scoring import CycleResult, Scorer, main, push_cycle
from tests.fixtures.scoring import models as bad_models
from tests.test_outputs import Harness

H = 3600.0
NOW = 1_800_000_000.0
FEATURES = ["temp", "occ"]


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


@contextmanager
def tracking(uri: str) -> Iterator[None]:
    import mlflow

    # set_tracking_uri also sets MLFLOW_TRACKING_URI in os.environ, which every later subprocess of the
    # session (a `fleetmon demo run` of another test) would inherit: restore the variable exactly.
    env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


class Fleet:
    """A fleet of its own (a unique customer id: the MLflow server is shared by the whole session)."""

    def __init__(self, tmp: Path, mlflow_server: str, buildings: int = 1, **scoring: Any) -> None:
        self.customer = "s" + uuid.uuid4().hex[:8]
        self.buildings = [f"b{i + 1}" for i in range(buildings)]
        self.tmp = tmp
        self.server = mlflow_server
        (tmp / "pred").mkdir(parents=True, exist_ok=True)
        (tmp / "act").mkdir(parents=True, exist_ok=True)
        self.cfg = Config.model_validate(
            {
                "fleet": {
                    "customers": [{"id": self.customer, "buildings": [{"id": b} for b in self.buildings]}]
                },
                "mlflow": {"tracking_uri": mlflow_server, "max_retries": 0},
                "outputs": {
                    "predictions": [
                        {"glob": str(tmp / "pred" / "*.jsonl"), "name": "pred"},
                        {"glob": str(tmp / "scored" / "*.jsonl"), "name": "scored"},
                    ],
                    "actuals": [{"glob": str(tmp / "act" / "*.jsonl"), "name": "act"}],
                    "features": FEATURES,
                    "windows": {"24h": 24 * H, "7d": 7 * 24 * H},
                    "retention_seconds": 8 * 24 * H,
                    "quarantine_dir": str(tmp / "quarantine"),
                    "state_dir": str(tmp / "state"),
                    "versions": {"min_targets": 24},
                },
                "scoring": {
                    "enabled": True,
                    "output_dir": str(tmp / "scored"),
                    "state_dir": str(tmp / "scoring-state"),
                    "window_seconds": 7 * 24 * H,
                    "workers": 2,
                    "timeout_seconds": 60,
                    **scoring,
                },
            }
        )
        self.rng = np.random.default_rng(7)
        self._files = 0

    def name(self, b: str, model: str = "forecast") -> str:
        return f"{self.customer}.{b}.heating.{model}"

    def features(self, n: int) -> np.ndarray:
        return np.column_stack([self.rng.normal(5, 8, n), self.rng.integers(0, 2, n).astype(float)])

    def truth(self, x: np.ndarray) -> np.ndarray:
        return 100 - 2.5 * x[:, 0] + 30 * x[:, 1]

    def register(self, b: str, model: Any, alias: str | None = None, **log: Any) -> int:
        """Log ``model`` (scikit-learn, or a pyfunc PythonModel) as a new version of the building's
        forecaster, with the fleet tags; returns the version."""
        import mlflow
        from mlflow import MlflowClient

        name = self.name(b)
        c = MlflowClient(self.server)
        with tracking(self.server):
            try:
                c.create_registered_model(
                    name,
                    tags={"customer": self.customer, "building": b, "energy": "heating", "model": "forecast"},
                )
            except mlflow.exceptions.MlflowException:
                pass
            mlflow.set_experiment(f"{self.customer}/{b}")
            with mlflow.start_run():
                if isinstance(model, mlflow.pyfunc.PythonModel):
                    info = mlflow.pyfunc.log_model(
                        name="model", python_model=model, registered_model_name=name, **log
                    )
                else:
                    x = self.features(5)
                    sig = mlflow.models.infer_signature(
                        _frame(x).astype({"occ": "int64"}), model.predict(_frame(x))
                    )
                    info = mlflow.sklearn.log_model(
                        model, name="model", signature=sig, registered_model_name=name, **log
                    )
        version = int(info.registered_model_version)
        if alias:
            c.set_registered_model_alias(name, alias, str(version))
        return version

    def write_hours(self, b: str, start: float, hours: int, champion: Any, version: int = 1) -> np.ndarray:
        """Served rows (the champion's, with features) and actuals for ``hours`` targets from ``start``."""
        x = self.features(hours)
        targets = start + H * np.arange(hours)
        preds = champion.predict(_frame(x))
        recs = [
            {
                "customer": self.customer,
                "building": b,
                "energy": "heating",
                "model": "forecast",
                "made_at": iso(t - H),
                "target_time": iso(t),
                "prediction": float(p),
                "model_version": version,
                "alias": "champion",
                "features": {"temp": float(xi[0]), "occ": int(xi[1])},
            }
            for t, p, xi in zip(targets, preds, x, strict=True)
        ]
        acts = [
            {
                "customer": self.customer,
                "building": b,
                "energy": "heating",
                "target_time": iso(t),
                "actual": float(a),
            }
            for t, a in zip(targets, self.truth(x), strict=True)
        ]
        self._files += 1
        _write(self.tmp / "pred" / f"p{self._files:03d}.jsonl", recs)
        _write(self.tmp / "act" / f"a{self._files:03d}.jsonl", acts)
        return x


def _frame(x: np.ndarray) -> Any:
    import pandas as pd

    return pd.DataFrame({"temp": x[:, 0], "occ": x[:, 1]})


def _write(path: Path, recs: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in recs))
    os.replace(tmp, path)


def scored_rows(tmp: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for p in sorted((tmp / "scored").glob("*.jsonl"))
        for line in p.read_text().splitlines()
    ]


def failures(tmp: Path) -> list[dict[str, Any]]:
    p = tmp / "scoring-state" / "failures.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def test_challengers_are_scored_and_benchmarked(mlflow_server: str, tmp_path: Path) -> None:
    from sklearn.dummy import DummyRegressor
    from sklearn.linear_model import LinearRegression

    f = Fleet(tmp_path, mlflow_server)
    # the champion only knows the mean; the challenger learned the truth; a third, newer version has no alias
    xs = f.features(200)
    champion = DummyRegressor().fit(_frame(xs), f.truth(xs))
    challenger = LinearRegression().fit(_frame(xs), f.truth(xs) + f.rng.normal(0, 1, 200))
    v1 = f.register("b1", champion, alias="champion")
    v2 = f.register("b1", challenger, alias="challenger")
    v3 = f.register("b1", LinearRegression().fit(_frame(xs), f.truth(xs) * 1.5))
    assert (v1, v2, v3) == (1, 2, 3)
    x = f.write_hours("b1", NOW - 48 * H, 40, champion)

    scorer = Scorer(f.cfg, clock=lambda: NOW)
    try:
        res = scorer.cycle()
        assert res.registry_error is None and res.versions == 2, res  # v2 (challenger) and v3 (newer)
        assert res.calls == 2, (res, len(scorer.rows))
        assert res.failures == dict.fromkeys(res.failures, 0)
        rows = scored_rows(tmp_path)
        assert {(r["model_version"], r["alias"]) for r in rows} == {(2, "challenger"), (3, "candidate")}
        by_v = {v: [r for r in rows if r["model_version"] == v] for v in (2, 3)}
        assert len(by_v[2]) == len(by_v[3]) == 40
        # exactly what the model predicts on the stored features, for the champion rows' targets
        want = challenger.predict(_frame(x))
        got = np.array([r["prediction"] for r in sorted(by_v[2], key=lambda r: r["target_time"])])
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert sorted(r["target_time"] for r in by_v[2]) == [iso(NOW - 48 * H + i * H) for i in range(40)]
        # nothing new: nothing scored twice; the loaded models stay cached in their workers
        res = scorer.cycle()
        assert res.rows_scored == 0 and res.calls == 0
        f.write_hours("b1", NOW - 8 * H, 5, champion)
        res = scorer.cycle()
        assert res.rows_scored == 10 and res.cache_hits == 2
    finally:
        scorer.close()
    # a restart remembers what was scored
    scorer = Scorer(f.cfg, clock=lambda: NOW)
    try:
        assert scorer.cycle().rows_scored == 0
    finally:
        scorer.close()

    # the outputs exporter reads the shadow rows: the challenger beats the champion on the same targets
    h = Harness(f.cfg, now=NOW)
    h.poll()
    labels = {"customer": f.customer, "building": "b1", "energy": "heating", "model": "forecast"}
    assert not h.samples("fleetmon_outputs_rows_rejected_total"), h.samples(
        "fleetmon_outputs_rows_rejected_total"
    )
    assert h.get("fleetmon_model_version_paired_targets", **labels, version="2", alias="challenger") == 45
    assert (
        h.get("fleetmon_model_challenger_outperforms", **labels, champion_version="1", challenger_version="2")
        == 1
    )
    assert (
        h.get("fleetmon_model_challenger_outperforms", **labels, champion_version="1", challenger_version="3")
        == 0
    )
    # served series are the champion's alone
    assert sum(v for _, v in h.samples("fleetmon_model_predictions_total")) == 45


def test_versions_the_platform_scores_are_left_alone_and_a_restart_reads_the_rows_again(
    mlflow_server: str, tmp_path: Path
) -> None:
    from sklearn.linear_model import LinearRegression

    f = Fleet(tmp_path, mlflow_server, buildings=2)
    xs = f.features(100)
    model = LinearRegression().fit(_frame(xs), f.truth(xs))
    for b in ("b1", "b2"):
        f.register(b, model, alias="champion")
        f.register(b, model, alias="challenger")
    f.write_hours("b1", NOW - 30 * H, 24, model)
    x2 = f.write_hours("b2", NOW - 30 * H, 24, model)
    # b2's platform runs its challenger (v2) itself: shadow rows of v2 beside the champion's
    shadow = [
        {
            "customer": f.customer,
            "building": "b2",
            "energy": "heating",
            "model": "forecast",
            "made_at": iso(NOW - 31 * H + i * H),
            "target_time": iso(NOW - 30 * H + i * H),
            "prediction": 1.0,
            "model_version": 2,
            "alias": "challenger",
            "features": {"temp": float(x2[i, 0]), "occ": int(x2[i, 1])},
        }
        for i in range(24)
    ]
    _write(tmp_path / "pred" / "platform-shadow.jsonl", shadow)
    scorer = Scorer(f.cfg, clock=lambda: NOW)
    try:
        res = scorer.cycle()
        assert res.versions == 1 and res.rows_scored == 24, res  # b1's v2 only
        assert {r["building"] for r in scored_rows(tmp_path)} == {"b1"}
    finally:
        scorer.close()
    # a version registered while the job was down is scored on the rows read before the restart
    v3 = f.register("b1", model)
    scorer = Scorer(f.cfg, clock=lambda: NOW)
    try:
        res = scorer.cycle()
        assert res.rows_scored == 24, res
        assert sum(r["model_version"] == v3 for r in scored_rows(tmp_path)) == 24
    finally:
        scorer.close()
    h = Harness(f.cfg, now=NOW)
    h.poll()
    assert not h.samples("fleetmon_outputs_rows_rejected_total")  # no duplicates of the platform's rows


def test_misbehaving_models_are_reported_and_stop_nothing(mlflow_server: str, tmp_path: Path) -> None:
    from sklearn.linear_model import LinearRegression

    f = Fleet(tmp_path, mlflow_server, buildings=6, timeout_seconds=8, memory_limit_mb=2048, workers=1)
    xs = f.features(100)
    champion = LinearRegression().fit(_frame(xs), f.truth(xs))
    import cloudpickle

    # shipped inside the pickle, as a user's own model code is: the workers need not import this test suite
    cloudpickle.register_pickle_by_value(bad_models)
    broken = {
        "b1": bad_models.Raises(),
        "b2": bad_models.Sleeps(),
        "b3": bad_models.Hogs(),
        "b4": bad_models.WrongLength(),
    }
    for b in f.buildings:
        f.register(b, champion, alias="champion")
        f.write_hours(b, NOW - 30 * H, 10, champion)
    for b, model in broken.items():
        f.register(b, model, alias="challenger")
    f.register("b5", champion, alias="challenger")
    # b6: a version whose artifacts are gone
    from mlflow import MlflowClient

    v6 = f.register("b6", champion, alias="challenger")
    where = MlflowClient(mlflow_server).get_model_version_download_uri(f.name("b6"), str(v6))
    shutil.rmtree(where.removeprefix("file://"))

    now = [NOW]
    scorer = Scorer(f.cfg, clock=lambda: now[0])
    try:
        res = scorer.cycle()
        reasons = {r["building"]: r["reason"] for r in failures(tmp_path)}
        assert reasons["b1"] == "predict_failed"
        assert reasons["b2"] == "timeout"
        assert reasons["b3"] in ("memory", "worker_died")
        assert reasons["b4"] == "bad_output"
        assert reasons["b6"] == "load_failed"
        assert "b5" not in reasons
        detail = {r["building"]: r["detail"] for r in failures(tmp_path)}
        assert "this model cannot predict" in detail["b1"]
        assert "1 predictions for 10 rows" in detail["b4"]
        # the good one after them all was scored, by a replaced worker
        assert {r["building"] for r in scored_rows(tmp_path)} == {"b5"}
        assert res.rows_scored == 10 and sum(res.failures.values()) == 5
        assert scorer.workers[0].restarts >= 1
        # failed versions wait for retry_after_seconds, then are tried again
        assert scorer.cycle().calls == 0
        now[0] += f.cfg.scoring.retry_after_seconds + 1
        again = scorer.cycle()
        assert again.calls == 5 and sum(again.failures.values()) == 5
    finally:
        scorer.close()


def test_mlflow_down_is_a_failed_cycle(tmp_path: Path) -> None:
    f = Fleet(tmp_path, "http://127.0.0.1:9")
    scorer = Scorer(f.cfg, clock=lambda: NOW)
    try:
        res = scorer.cycle()
        assert res.registry_error is not None and "cannot connect" in res.registry_error
        assert res.rows_scored == 0
    finally:
        scorer.close()


@pytest.mark.parametrize("bad", ["{", '{"scored": 5}'])
def test_a_damaged_state_file_scores_afresh(tmp_path: Path, bad: str) -> None:
    f = Fleet(tmp_path, "http://127.0.0.1:9")
    (tmp_path / "scoring-state").mkdir(parents=True)
    (tmp_path / "scoring-state" / "scored.json").write_text(bad)
    scorer = Scorer(f.cfg, clock=lambda: NOW)
    try:
        assert scorer.scored == {}
    finally:
        scorer.close()


def test_a_cycle_is_pushed_as_the_benchmark_job(gateway: str) -> None:
    res = CycleResult(versions=3, rows_scored=120, calls=4, cache_hits=3, seconds=2.5)
    res.failures["timeout"] = 1
    push_cycle(res, [], gateway=gateway)
    text = urllib.request.urlopen(gateway + "/metrics", timeout=10).read().decode()
    got = {
        (s.name, s.labels.get("job"), s.labels.get("reason"), s.labels.get("outcome")): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert got[("fleetmon_scoring_rows_scored", "fleetmon-scoring", None, None)] == 120
    assert got[("fleetmon_scoring_cache_hit_ratio", "fleetmon-scoring", None, None)] == 0.75
    assert got[("fleetmon_scoring_failures", "fleetmon-scoring", "timeout", None)] == 1
    assert got[("fleetmon_batch_job_last_outcome", "benchmark", None, "success")] == 1
    assert got[("fleetmon_batch_job_duration_seconds", "benchmark", None, None)] == 2.5
    # a gateway that is not there: logged, never raised
    push_cycle(res, [], gateway="http://127.0.0.1:9")


def test_the_command_refuses_when_scoring_is_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "fleetmon.yml"
    cfg.write_text("scoring:\n  enabled: false\n")
    assert main(["--config.file", str(cfg), "--once"]) == 2
    assert "scoring.enabled is false" in capsys.readouterr().err


def test_a_version_whose_files_the_search_named_loads_without_asking_the_registry(tmp_path: Path) -> None:
    """The registry's version search names where a version's files are (``storage_location``, or a
    ``source`` that is an artifact location): the worker loads from there, with no request per version to
    resolve ``models:/<name>/<version>`` (here no registry is reachable at all). ``models:/`` and
    ``runs:/`` sources are still resolved by the registry."""
    import mlflow.sklearn
    from sklearn.linear_model import LinearRegression

    from fleetmon.scoring import _score_one, artifact_location

    files = (tmp_path / "v7").as_uri()
    assert artifact_location({"source": files}) == files
    assert artifact_location({"source": "runs:/abc/model", "storage_location": files}) == files
    assert artifact_location({"source": "runs:/abc/model"}) == ""
    assert artifact_location({"source": "models:/m-0123"}) == ""
    assert artifact_location({}) == ""

    x = np.arange(12, dtype=np.float64).reshape(6, 2)
    model = LinearRegression().fit(pd.DataFrame(x, columns=["a", "b"]), x @ np.array([2.0, -1.0]) + 3.0)
    mlflow.sklearn.save_model(model, str(tmp_path / "v7"))
    cache: Any = __import__("collections").OrderedDict()
    status, preds, hit = _score_one(cache, 4, "models:/no-registry-here/7", ["a", "b"], x, {}, location=files)
    assert (status, hit) == ("ok", False), preds
    assert np.allclose(preds, x @ np.array([2.0, -1.0]) + 3.0)
    # without the location, resolving the URI needs the registry (none here): a load failure, reported
    status, detail, _ = _score_one(cache, 4, "models:/no-registry-here/8", ["a", "b"], x, {})
    assert status == "load_failed", detail
