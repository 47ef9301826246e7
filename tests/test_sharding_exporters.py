"""Sharded exporters give the answers of one unsharded exporter: every per-model series comes from exactly
one shard with the same value, and every row, run, registered model and log line is counted by exactly one.

Each test runs the same input unsharded and as shards 0/2 and 1/2 (real files, a real `mlflow server`) and
compares what they export.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from collectors.logs import LogsCollector
from collectors.mlflow import MlflowCollector
from collectors.outputs import OutputsCollector
from exporters.common import parse_args
from fleetmon.config import Config, ConfigError, load_config
from fleetmon.exporter import Exporter
from fleetmon.sharding import Shard

NOW = 1_800_000_000.0
H = 3600.0
SHARDS = [Shard(0, 2), Shard(1, 2)]


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")


def fleet(customers: int = 3, buildings: int = 8, prefix: str = "c") -> dict[str, Any]:
    return {
        "customers": [
            {"id": f"{prefix}{c}", "buildings": [{"id": f"{prefix}{c}-b{b}"} for b in range(buildings)]}
            for c in range(customers)
        ]
    }


def series(exporter: Exporter) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in exporter.scraped.collect()
        for s in fam.samples
    }


def polled(name: str, collector: Any, shard: Shard) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One poll of the collector, then its exporter's series; the collector closed."""
    try:
        collector.poll()
        return series(Exporter(name, {name: collector}, shard))
    finally:
        collector.close()


def per_building(samples: dict[Any, float]) -> dict[Any, float]:
    return {k: v for k, v in samples.items() if any(label == "building" for label, _ in k[1])}


def summed(parts: list[dict[Any, float]], name: str) -> Counter[tuple[tuple[str, str], ...]]:
    out: Counter[tuple[tuple[str, str], ...]] = Counter()
    for p in parts:
        for (n, labels), v in p.items():
            if n == name:
                out[labels] += v
    return out


def test_shard_config_key_and_flag(tmp_path: Path) -> None:
    path = tmp_path / "fleetmon.yml"
    path.write_text("shard: 1/3\n")
    assert load_config(path, environ={}).shard == Shard(1, 3)
    assert load_config(path, environ={"FLEETMON__SHARD": "2/3"}).shard == Shard(2, 3)
    path.write_text("shard: {index: 0, count: 2}\n")
    assert load_config(path, environ={}).shard == Shard(0, 2)
    for bad in ("shard: 3/3", "shard: two", "shard: {index: 0, shards: 2}"):
        path.write_text(bad + "\n")
        with pytest.raises(ConfigError, match="shard"):
            load_config(path, environ={})
    args, _ = parse_args("outputs", ["outputs"], ["--shard", "1/2"])
    assert args.shard == "1/2"
    assert Config().shard == Shard()


def write_outputs(tmp: Path) -> None:
    """Two days of hourly rows for every model of the fleet, in JSON lines and CSV, plus bad rows of every
    kind a shard must place: malformed lines, rows naming no building, unknown buildings, bad values."""
    (tmp / "pred").mkdir()
    (tmp / "act").mkdir()
    cfg = Config.model_validate({"fleet": fleet()})
    preds, acts, csv_rows = [], [], []
    for i, m in enumerate(cfg.fleet.models()):
        for h in range(48):
            t = NOW - (48 - h) * H
            row: dict[str, Any] = {
                "customer": m.customer, "building": m.building, "energy": m.energy, "model": m.model,
                "made_at": iso(t - H), "target_time": iso(t),
                "features": {"temp": float(h % 7), "occ": float(i % 3)},
            }  # fmt: skip
            if m.model == "forecast":
                row["prediction"] = 100.0 + i + (h % 5)
            else:
                row["anomaly_score"], row["anomaly_flag"] = (h % 10) / 10, int(h % 10 == 9)
            (csv_rows if h % 4 == 0 else preds).append(row)
        if m.model == "forecast":
            acts.extend(
                {"customer": m.customer, "building": m.building, "energy": m.energy,
                 "target_time": iso(NOW - (48 - h) * H), "actual": 101.0 + i + (h % 3)}
                for h in range(48)
            )  # fmt: skip
    bad = [
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"customer": "c0", "energy": "heating", "model": "forecast", "made_at": iso(NOW)}),
        json.dumps({"customer": "c9", "building": "c9-b1", "energy": "heating", "model": "forecast",
                    "made_at": iso(NOW - H), "target_time": iso(NOW), "prediction": 1.0}),
        json.dumps({"customer": "c1", "building": "c1-b3", "energy": "heating", "model": "forecast",
                    "made_at": iso(NOW - H), "target_time": iso(NOW), "prediction": "many"}),
        json.dumps({"customer": "c2", "building": "c2-b5", "energy": "electricity", "model": "forecast",
                    "made_at": iso(NOW - H), "target_time": iso(NOW), "prediction": None}),
    ]  # fmt: skip
    (tmp / "pred" / "p.jsonl").write_text("\n".join([*(json.dumps(r) for r in preds), *bad]) + "\n")
    flat = [
        {**{k: v for k, v in r.items() if k != "features"}, **{f"features.{k}": v for k, v in r["features"].items()}}
        for r in csv_rows
    ]  # fmt: skip
    import pandas as pd

    pd.DataFrame(flat).to_csv(tmp / "pred" / "p.csv", index=False)
    (tmp / "act" / "a.jsonl").write_text("\n".join(json.dumps(a) for a in acts) + "\n{broken\n")


def outputs_cfg(tmp: Path, run: str, shard: Shard) -> Config:
    return Config.model_validate(
        {
            "fleet": fleet(),
            "shard": str(shard),
            "outputs": {
                "predictions": [
                    {"glob": str(tmp / "pred" / "*.jsonl"), "name": "pred-jsonl"},
                    {"glob": str(tmp / "pred" / "*.csv"), "format": "csv", "name": "pred-csv"},
                ],
                "actuals": [{"glob": str(tmp / "act" / "*.jsonl"), "name": "actuals"}],
                "features": ["temp", "occ"],
                "quarantine_dir": str(tmp / run / "quarantine"),
                "state_dir": str(tmp / run / "state"),
                "drift": {"enabled": False},
            },
        }
    )


def outputs_exporter(tmp: Path, run: str, shard: Shard) -> tuple[Exporter, OutputsCollector]:
    coll = OutputsCollector(outputs_cfg(tmp, run, shard))
    coll.pipeline.clock = lambda: NOW
    coll.poll()
    return Exporter("outputs", {"outputs": coll}, shard), coll


def test_sharded_outputs_export_what_one_exporter_does(tmp_path: Path) -> None:
    write_outputs(tmp_path)
    whole, whole_c = outputs_exporter(tmp_path, "whole", Shard())
    shards = [outputs_exporter(tmp_path, f"shard{s.index}", s) for s in SHARDS]
    want = series(whole)
    got = [series(e) for e, _ in shards]

    # every per-model and per-building series from exactly one shard, with the unsharded value
    parts = [per_building(g) for g in got]
    assert parts[0] and parts[1], "both shards own buildings"
    assert not set(parts[0]) & set(parts[1])
    assert {**parts[0], **parts[1]} == per_building(want)

    # every row counted once: rows read and rejected (by reason) add up to the unsharded counts
    for name in ("fleetmon_outputs_rows_read_total", "fleetmon_outputs_rows_rejected_total"):
        assert summed(got, name) == summed([want], name), name
    assert summed([want], "fleetmon_outputs_rows_other_shard_total") == Counter(
        {(("source", s),): 0.0 for s in ("pred-jsonl", "pred-csv", "actuals")}
    )
    read, other = (
        summed(got[:1], n)
        for n in ("fleetmon_outputs_rows_read_total", "fleetmon_outputs_rows_other_shard_total")
    )
    read1 = summed(got[1:], "fleetmon_outputs_rows_read_total")
    for source, n in summed([want], "fleetmon_outputs_rows_read_total").items():
        assert read[source] + other[source] == n  # shard 0 left to shard 1 exactly what shard 1 counted
        assert other[source] == read1[source] > 0
    # what names no building (the malformed lines, the row without one) is shard 0's
    rejected = [summed([g], "fleetmon_outputs_rows_rejected_total") for g in got]
    malformed = [sum(v for k, v in r.items() if ("reason", "malformed") in k) for r in rejected]
    missing = [sum(v for k, v in r.items() if ("reason", "missing_field") in k) for r in rejected]
    assert malformed == [3, 0] and missing == [1, 0]
    # the quarantine holds each rejected row once over the shards
    lines = [
        sum(len(f.read_text().splitlines()) for f in (tmp_path / run / "quarantine").rglob("*.jsonl"))
        for run in ("shard0", "shard1", "whole")
    ]
    assert lines[0] + lines[1] == lines[2] > 0
    assert whole_c.pipeline.rows_other_shard.total() == 0


def test_sharded_mlflow_reads_only_its_buildings(mlflow_server: str, tmp_path: Path) -> None:
    prefix = f"s{uuid.uuid4().hex[:6]}"
    fl = fleet(2, 6, prefix)
    c = MlflowClient(mlflow_server)
    now = 1_790_000_000_000
    cfg = Config.model_validate({"fleet": fl})
    other_exp = c.create_experiment(f"{prefix}-shared")  # not one building's: every shard reads it
    for i, m in enumerate(cfg.fleet.models()):
        if m.energy != "heating":
            continue
        exp_name = f"{m.customer}/{m.building}"
        exp = c.get_experiment_by_name(exp_name)
        exp_id = exp.experiment_id if exp else c.create_experiment(exp_name)
        tags = {"customer": m.customer, "building": m.building, "energy": m.energy, "model": m.model}
        for j in range(2):
            run = c.create_run(other_exp if j else exp_id, start_time=now + i, tags=tags)
            c.log_metric(run.info.run_id, "mae", float(i + j), timestamp=now)
            c.set_terminated(run.info.run_id, "FINISHED", end_time=now + 1000 + i + j)
        name = f"{m.customer}.{m.building}.{m.energy}.{m.model}"
        c.create_registered_model(name, tags=tags if i % 2 else None)
        c.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    c.create_run(other_exp, tags={"note": "no fleet tags"})
    c.create_registered_model(f"{prefix}.unmapped")

    def scrape(shard: Shard, run: str, experiment_pattern: str = "") -> dict[Any, float]:
        shard_cfg = Config.model_validate(
            {
                "fleet": fl,
                "shard": str(shard),
                "mlflow": {
                    "tracking_uri": mlflow_server,
                    "quarantine_file": str(tmp_path / run / "mlflow.jsonl"),
                    "experiment_pattern": experiment_pattern,
                },
            }
        )
        return polled("mlflow", MlflowCollector(shard_cfg), shard)

    want = scrape(Shard(), "whole")
    got = [scrape(s, f"shard{s.index}") for s in SHARDS]
    parts = [per_building(g) for g in got]
    assert parts[0] and parts[1]
    assert not set(parts[0]) & set(parts[1])
    assert {**parts[0], **parts[1]} == per_building(want)
    quality = {k: v for k, v in per_building(want).items() if k[0] == "fleetmon_mlflow_model_quality"}
    assert len(quality) == 24  # the newest run of each heating model, wherever its experiment
    # unmapped objects (the shared server holds other tests' too) counted once over the shards
    for name in ("fleetmon_mlflow_unmapped_runs", "fleetmon_mlflow_unmapped_registered_models"):
        assert summed(got, name) == summed([want], name), name
    # each run and registered model is held by exactly one shard; other shards' experiments are not read
    held = [summed([g], "fleetmon_mlflow_objects") for g in [want, *got]]
    for kind in ("run", "registered_model", "model_version"):
        k = (("kind", kind),)
        assert held[1][k] + held[2][k] == held[0][k] and held[1][k] and held[2][k], kind
    # With experiments named per building (this test's are), a shard does not even read other shards':
    # the same series; the other tests' experiments on the shared server may break the convention, so the
    # unmapped counts are not compared here.
    pattern = "{customer}/{building}"
    pruned = [scrape(s, f"pruned{s.index}", pattern) for s in SHARDS]
    assert {**per_building(pruned[0]), **per_building(pruned[1])} == per_building(want)
    experiments = [summed([g], "fleetmon_mlflow_objects")[(("kind", "experiment"),)] for g in [want, *pruned]]
    assert experiments[1] + experiments[2] < 2 * experiments[0]
    # and each unmapped object is in one shard's quarantine
    quarantined = [
        len(f.read_text().splitlines()) if (f := tmp_path / run / "mlflow.jsonl").exists() else 0
        for run in ("whole", "shard0", "shard1")
    ]
    assert quarantined[1] + quarantined[2] == quarantined[0] > 0
    shard_info = [
        g[("fleetmon_exporter_shard_info", (("count", "2"), ("index", str(i))))] for i, g in enumerate(got)
    ]
    assert shard_info == [1.0, 1.0]


def test_logs_sharded_by_app(tmp_path: Path) -> None:
    apps = {f"app{i}": [str(tmp_path / f"app{i}" / "*.log")] for i in range(8)}
    for i, app in enumerate(apps):
        (tmp_path / app).mkdir()
        lines = [
            json.dumps({"log": f'10.0.0.1 - - [01/Dec/2026:10:00:00 +0000] "GET /r{j} HTTP/1.1" 200 5 "-" "x"\n',
                        "stream": "stdout", "time": "2026-12-01T10:00:00.000000001Z"})
            for j in range(i + 1)
        ]  # fmt: skip
        (tmp_path / app / "a.log").write_text("\n".join(lines) + "\n")

    def scrape(shard: Shard, run: str) -> dict[Any, float]:
        cfg = Config.model_validate(
            {
                "shard": str(shard),
                "platform": {
                    "logs": {
                        "apps": apps,
                        "state_file": str(tmp_path / run / "positions.json"),
                        "quarantine_file": str(tmp_path / run / "quarantine.jsonl"),
                    }
                },
            }
        )
        return polled("logs", LogsCollector(cfg), shard)

    want = scrape(Shard(), "whole")
    got = [scrape(s, f"shard{s.index}") for s in SHARDS]
    name = "fleetmon_logs_lines_total"
    lines = [summed([g], name) for g in got]
    assert lines[0] and lines[1] and not set(lines[0]) & set(lines[1])
    assert lines[0] + lines[1] == summed([want], name)
    assert sum(summed([want], name).values()) == sum(range(1, 9))


def test_rows_without_fleet_columns_are_shard_zeros() -> None:
    import numpy as np
    import pandas as pd

    from fleetmon.outputs.records import Batch, RowOwner

    batch = Batch("predictions", "s", "f.csv", pd.DataFrame({"x": [1, 2]}).astype(object), np.arange(2), str)
    kept = [RowOwner(s).own_rows(batch) for s in SHARDS]
    assert [(len(b.frame), skipped) for b, skipped in kept] == [(2, 0), (0, 2)]
    assert kept[0][0].original(1) == "1"
