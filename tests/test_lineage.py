"""Lineage (issue "closing the loop"): which version a model serves, and that version's run, training data and
code version in the registry.

- Outputs side: ``fleetmon_model_serving_version_info`` / ``fleetmon_model_serving_version`` from real files
  through the real ``OutputsPipeline`` (the harness of tests/test_outputs.py).
- MLflow side: ``fleetmon_mlflow_model_version_lineage_info`` and the registered version ranges against a
  real ``mlflow server`` (the session's, tests/conftest.py), runs logged with MLflow's own client: dataset
  inputs (``log_inputs``, what ``mlflow.log_input`` sends), source tags, a configured training data tag.
- The join of both (recording rules, alert) is tested with promtool in tests/rules/lineage.yml.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag

from collectors.mlflow import MAX_VERSION_RANGES, _ranges
from fleetmon.exporter import Exporter
from tests.test_mlflow import make_run, promtool_check, unique_fleet
from tests.test_outputs import NOW, H, Harness, make_cfg, pred, write_jsonl

MODEL = {"customer": "c1", "building": "b1", "energy": "heating", "model": "forecast"}


def vpred(target: float, version: Any = None, alias: str | None = None, made: float | None = None,
          b: str = "b1", m: str = "forecast") -> dict[str, Any]:  # fmt: skip
    rec = pred(b, "heating", m, target, made=made, prediction=1.0, score=0.1, flag=False)
    if version is not None:
        rec["model_version"] = version
    if alias is not None:
        rec["alias"] = alias
    return rec


def serving(h: Harness) -> dict[tuple[str, str, str, str], tuple[str, float]]:
    """model -> (version label of the info series, value of the numeric series)."""
    numbers = {
        (lab["customer"], lab["building"], lab["energy"], lab["model"]): v
        for lab, v in h.samples("fleetmon_model_serving_version")
    }
    out = {}
    for lab, v in h.samples("fleetmon_model_serving_version_info"):
        assert v == 1
        key = (lab["customer"], lab["building"], lab["energy"], lab["model"])
        out[key] = (lab["version"], numbers.pop(key))
    assert not numbers, "a numeric serving version without its info series"
    return out


FC = ("c1", "b1", "heating", "forecast")


# ------------------------------------------------------------------------------------ outputs side
def test_serving_version_is_the_newest_served_record_that_carries_one(tmp_path: Path) -> None:
    h = Harness(make_cfg(tmp_path))
    try:
        write_jsonl(
            tmp_path / "pred" / "p1.jsonl",
            [
                # the newest versioned served row is v7 (made NOW - 2h), although v6's file lists it later
                vpred(NOW - H, 7, "champion", made=NOW - 2 * H),
                vpred(NOW - 2 * H, 6, "champion", made=NOW - 3 * H),
                # newer, but shadow rows (alias set, not champion): never the serving version
                vpred(NOW, 8, "challenger", made=NOW - 60),
                vpred(NOW, 9, "canary", made=NOW - 60),
                # newer and served, but without a version: leaves the serving version as it is
                vpred(NOW + H, made=NOW - 30),
                # another model whose rows carry no version at all: no series
                vpred(NOW - H, b="b2"),
                # an anomaly detector with a version (no alias: served)
                vpred(NOW - H, "3", m="anomaly", made=NOW - 2 * H),
            ],
        )
        h.poll()
        assert serving(h) == {FC: ("7", 7.0), ("c1", "b1", "heating", "anomaly"): ("3", 3.0)}
        # a file read later with an older version made earlier does not move it back ...
        write_jsonl(tmp_path / "pred" / "p2.jsonl", [vpred(NOW - 3 * H, 5, made=NOW - 5 * H)])
        h.poll()
        assert serving(h)[FC] == ("7", 7.0)
        # ... a newer one does (no alias = served); equal made_at: the row read last wins
        write_jsonl(
            tmp_path / "pred" / "p3.jsonl",
            [vpred(NOW + 2 * H, 10, made=NOW - 10), vpred(NOW + 3 * H, 11, made=NOW - 10)],
        )
        h.poll()
        assert serving(h)[FC] == ("11", 11.0)
        # one series per model: the old version's series is gone
        assert [lab["version"] for lab, _ in h.samples("fleetmon_model_serving_version_info")
                if lab["model"] == "forecast"] == ["11"]  # fmt: skip
        promtool = shutil.which("promtool")
        if promtool:
            out = subprocess.run(
                [promtool, "check", "metrics"], input=h.exporter.exposition(), capture_output=True, timeout=30
            )
            assert out.returncode == 0, (out.stdout + out.stderr).decode()
    finally:
        h.close()


def test_no_versions_in_the_records_no_serving_series(tmp_path: Path) -> None:
    h = Harness(make_cfg(tmp_path))
    try:
        write_jsonl(
            tmp_path / "pred" / "p.jsonl", [vpred(NOW - H), vpred(NOW - H, b="b2"), vpred(NOW, 2, "x")]
        )
        h.poll()
        assert h.samples("fleetmon_model_serving_version_info") == []
        assert h.samples("fleetmon_model_serving_version") == []
        # the families are there (HELP/TYPE), empty
        assert b"# TYPE fleetmon_model_serving_version_info gauge" in h.exporter.exposition()
    finally:
        h.close()


def test_serving_version_survives_a_restart_after_its_rows_expired(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, retention_seconds=10 * H)
    h = Harness(cfg)
    try:
        write_jsonl(tmp_path / "pred" / "p1.jsonl", [vpred(NOW - H, 4, "champion", made=NOW - 2 * H)])
        h.poll()
        assert serving(h) == {FC: ("4", 4.0)}
    finally:
        h.close()
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["counters"]["serving_versions"] == [[*FC, 4, NOW - 2 * H]]

    later = NOW + 24 * H  # the row is past the retention: a restart cannot re-read it into the window
    h2 = Harness(cfg, now=later)
    try:
        h2.poll()
        assert h2.pipeline.store.rows() == (0, 0)
        assert serving(h2) == {FC: ("4", 4.0)}
        # and newer rows still win over the restored one
        write_jsonl(tmp_path / "pred" / "p2.jsonl", [vpred(later, 5, made=later - 60)])
        h2.poll()
        assert serving(h2) == {FC: ("5", 5.0)}
    finally:
        h2.close()

    # a restart while the row is still within the retention: restored and re-read agree
    h3 = Harness(cfg, now=NOW + 24 * H)
    try:
        h3.poll()
        assert serving(h3) == {FC: ("5", 5.0)}
    finally:
        h3.close()


# ------------------------------------------------------------------------------------- MLflow side
def test_version_ranges() -> None:
    assert _ranges([]) == []
    assert _ranges([3, 1, 2]) == [(1, 3)]
    assert _ranges([1, 2, 4, 7, 8]) == [(1, 2), (4, 4), (7, 8)]
    many = list(range(1, 4 * MAX_VERSION_RANGES, 2))  # every other version deleted
    r = _ranges(many)
    assert len(r) == MAX_VERSION_RANGES
    assert r[-1] == (many[-1], many[-1]) and r[0][0] == 1  # the oldest merged, the newest exact
    assert all(any(a <= v <= b for a, b in r) for v in many)


def dataset_input(name: str, digest: str, uri: str, context: str | None = "training") -> DatasetInput:
    """What ``mlflow.log_input(mlflow.data.from_pandas(df, source=uri, name=name), context=...)`` logs."""
    tags = [InputTag("mlflow.data.context", context)] if context else []
    return DatasetInput(
        Dataset(name, digest, "http", json.dumps({"url": uri}), schema="{}", profile="{}"), tags
    )


def lineage_samples(reg: Any, cust: str) -> dict[tuple[str, str], dict[str, str]]:
    """(energy, version) -> labels of this test's lineage series."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for fam in reg.collect():
        if fam.name != "fleetmon_mlflow_model_version_lineage_info":
            continue
        for s in fam.samples:
            if s.labels["customer"] == cust:
                key = (s.labels["energy"], s.labels["version"])
                assert key not in out, f"two lineage series for {key}"
                assert s.value == 1
                out[key] = dict(s.labels)
    return out


def test_lineage_of_exported_versions_from_a_real_server(mlflow_server: str, tmp_path: Path) -> None:
    cfg, cust, b = unique_fleet(tmp_path, mlflow_server)
    c = MlflowClient(mlflow_server)
    exp = c.create_experiment(f"{cust}/{b}")
    hf = {"customer": cust, "building": b, "energy": "heating", "model": "forecast"}
    now = int(time.time() * 1000)
    commit = "0123456789abcdef0123456789abcdef01234567"

    # v1: a tagged training data set only, code by source name; never exported below (neither aliased nor
    # the newest), so no lineage series of its own
    r1 = make_run(c, exp, {**hf, "training_data": "s3://data/old.parquet", "mlflow.source.name": "train.py"},
                  start_ms=now - 900_000, end_ms=now - 890_000)  # fmt: skip
    # v2 (champion): two training inputs and an evaluation input, the git commit
    r2 = make_run(c, exp, {**hf, "mlflow.source.git.commit": commit, "mlflow.source.name": "train.py",
                           "training_data": "ignored: dataset inputs win"},
                  start_ms=now - 600_000, end_ms=now - 590_000)  # fmt: skip
    c.log_inputs(
        r2,
        [
            dataset_input("weather", "w1", "https://data.example/weather.csv"),
            dataset_input("consumption", "c9", "https://data.example/consumption.csv"),
            dataset_input("holdout", "h0", "https://data.example/holdout.csv", context="evaluation"),
        ],
    )
    # v4 (challenger and newest): an input without a context, nothing else
    r4 = make_run(c, exp, hf, start_ms=now - 300_000, end_ms=now - 290_000)
    c.log_inputs(r4, [dataset_input("consumption", "c10", "https://data.example/c10.csv", context=None)])

    name = f"{cust}.{b}.heating.forecast"
    c.create_registered_model(name)
    for rid in (r1, r2, r1, r4):  # v3 is deleted below: ranges 1-2 and 4-4
        c.create_model_version(name, source=f"runs:/{rid}/model", run_id=rid)
    c.delete_model_version(name, "3")
    c.set_registered_model_alias(name, "champion", "2")
    c.set_registered_model_alias(name, "challenger", "4")
    # a model whose version's run is unknown to MLflow's tracking (registered from elsewhere)
    c.create_registered_model(f"{cust}.{b}.electricity.anomaly")
    c.create_model_version(f"{cust}.{b}.electricity.anomaly", source="s3://bucket/model")

    from collectors.mlflow import MlflowCollector

    coll = MlflowCollector(cfg)
    exp_ = Exporter("mlflow", {"mlflow": coll})
    try:
        assert exp_.poll_once("mlflow")
        reg = exp_.scraped
        got = lineage_samples(reg, cust)
        assert set(got) == {("heating", "2"), ("heating", "4"), ("electricity", "1")}
        v2 = got[("heating", "2")]
        assert v2 == {
            **hf,
            "version": "2",
            "run_id": r2,
            "dataset": "consumption,weather",
            "dataset_digest": "c9,w1",
            "dataset_source": "https://data.example/consumption.csv,https://data.example/weather.csv",
            "code_version": commit,
        }
        v4 = got[("heating", "4")]
        assert (v4["run_id"], v4["dataset"], v4["dataset_digest"]) == (r4, "consumption", "c10")
        assert (v4["dataset_source"], v4["code_version"]) == ("https://data.example/c10.csv", "")
        assert got[("electricity", "1")] == {
            **hf,
            "energy": "electricity",
            "model": "anomaly",
            "version": "1",
            "run_id": "",
            "dataset": "",
            "dataset_digest": "",
            "dataset_source": "",
            "code_version": "",
        }

        def ranges(fam_name: str) -> dict[str, float]:
            return {
                s.labels["range"]: s.value
                for fam in reg.collect()
                if fam.name == fam_name
                for s in fam.samples
                if s.labels["customer"] == cust and s.labels["energy"] == "heating"
            }

        assert ranges("fleetmon_mlflow_model_version_range_first") == {"1": 1, "4": 4}
        assert ranges("fleetmon_mlflow_model_version_range_last") == {"1": 2, "4": 4}
        # lineage costs no request of its own: the same endpoints as before, one answer each
        endpoints = {e for (e, _code) in coll.client.counts()}
        assert endpoints == {
            "experiments/search", "runs/search", "registered-models/search", "model-versions/search",
        }  # fmt: skip
        promtool_check(exp_)

        # --- the champion moves to v1 (tag lineage): seen by an incremental poll, same as a fresh full read
        c.set_registered_model_alias(name, "champion", "1")
        assert exp_.poll_once("mlflow")
        got = lineage_samples(reg, cust)
        assert set(got) == {("heating", "1"), ("heating", "4"), ("electricity", "1")}
        v1 = got[("heating", "1")]
        assert (v1["run_id"], v1["dataset"], v1["dataset_digest"], v1["dataset_source"]) == (
            r1, "s3://data/old.parquet", "", "",
        )  # fmt: skip
        assert v1["code_version"] == "train.py"
        fresh = Exporter("mlflow", {"mlflow": MlflowCollector(cfg)})
        try:
            assert fresh.poll_once("mlflow")
            assert lineage_samples(fresh.scraped, cust) == got
        finally:
            fresh.stop()
    finally:
        exp_.stop()


def test_training_data_tag_follows_the_config(mlflow_server: str, tmp_path: Path) -> None:
    """``mlflow.training_data_tag`` names the run tag read when a run logged no dataset input."""
    cfg, cust, b = unique_fleet(tmp_path, mlflow_server)
    c = MlflowClient(mlflow_server)
    exp = c.create_experiment(f"{cust}/{b}")
    hf = {"customer": cust, "building": b, "energy": "heating", "model": "forecast"}
    now = int(time.time() * 1000)
    rid = make_run(c, exp, {**hf, "training_data": "default-tag", "data.snapshot": "snap-2027-01-15"},
                   start_ms=now - 10_000, end_ms=now - 5_000)  # fmt: skip
    name = f"{cust}.{b}.heating.forecast"
    c.create_registered_model(name)
    c.create_model_version(name, source=f"runs:/{rid}/model", run_id=rid)

    from collectors.mlflow import MlflowCollector

    coll = MlflowCollector(cfg)
    assert coll.training_data_tag == "training_data"
    coll.training_data_tag = "data.snapshot"  # as `mlflow.training_data_tag: data.snapshot` would set it
    exp_ = Exporter("mlflow", {"mlflow": coll})
    try:
        assert exp_.poll_once("mlflow")
        assert lineage_samples(exp_.scraped, cust)[("heating", "1")]["dataset"] == "snap-2027-01-15"
    finally:
        exp_.stop()


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ('{"uri": "s3://b/k.parquet"}', "s3://b/k.parquet"),
        ('{"path": "/data/x.csv"}', "/data/x.csv"),
        ('{"table_name": "main.sales"}', "main.sales"),
        ("not json", "not json"),
        ("[1, 2]", "[1, 2]"),
        ("", ""),
        (None, ""),
        ('{"uri": "' + "x" * 500 + '"}', "x" * 197 + "..."),
    ],
)
def test_dataset_source_is_its_location(source: Any, shown: str) -> None:
    from collectors.mlflow import _dataset_source

    assert _dataset_source(source) == shown
