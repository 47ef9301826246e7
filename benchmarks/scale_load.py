"""The scale benchmark's load generator (benchmarks/scale_bench.py): a fleet, its outputs files, its MLflow.

Nothing here comes from ``simulator/``: the fleet is generated directly (20 buildings per customer, ids
``c0001`` / ``c0001-b001``, a few building types, weather stations and coordinates), four models per
building (electricity / heating x forecast / anomaly).

- **Outputs** (``write_outputs``): the generators of benchmarks/outputs_bench.py (``_hour_frame``,
  ``_actuals``, ``_write_jsonl``: one row per model and hour with the six features). History is one Parquet
  predictions file and one actuals file per hour (fast to write and to read back: the exporter's initial
  load, which is not what is measured); the two newest hours are JSON lines files, as the demo writes them,
  staged in ``stage/`` and hard-linked into a shard's watched directory when its cycle starts. Each
  prediction row names its registry version (``model_version`` 1, alias ``champion``); a share of the
  models also runs a challenger (version 2, alias ``challenger``: shadow rows). Actuals come 2 h late.
- **MLflow** (``seed_mlflow``): ``benchmarks.mlflow_bench.populate`` (MLflow's own schema, bulk inserts of
  runs, metrics, params, tags, registered models, versions and aliases), one experiment per building named
  ``{customer}/{building}``; cached under ``var/bench/scale-mlflow-<size>/`` and copied for each run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.outputs_bench import FEATURES, H, _actuals, _hour_frame, _write_jsonl

BUILDINGS_PER_CUSTOMER = 20
BUILDING_TYPES = ("office", "school", "hospital", "retail", "residential", "warehouse")


def fleet_dict(buildings: int) -> dict[str, Any]:
    """The ``fleet`` section of a config: ``buildings`` buildings, 20 per customer."""
    rng = np.random.default_rng(7)
    customers = []
    for ci in range((buildings + BUILDINGS_PER_CUSTOMER - 1) // BUILDINGS_PER_CUSTOMER):
        cid = f"c{ci + 1:04d}"
        n = min(BUILDINGS_PER_CUSTOMER, buildings - ci * BUILDINGS_PER_CUSTOMER)
        lat, lon = float(rng.uniform(45, 60)), float(rng.uniform(-5, 20))
        customers.append(
            {
                "id": cid,
                "name": f"Customer {ci + 1}",
                "buildings": [
                    {
                        "id": f"{cid}-b{bi + 1:03d}",
                        "building_type": BUILDING_TYPES[(ci + bi) % len(BUILDING_TYPES)],
                        "volume_m3": float(rng.integers(2_000, 60_000)),
                        "weather_station": f"ws{ci % 97:02d}",
                        "latitude": round(lat + float(rng.normal(0, 0.05)), 4),
                        "longitude": round(lon + float(rng.normal(0, 0.05)), 4),
                    }
                    for bi in range(n)
                ],
            }
        )
    return {"customers": customers}


def _predictions(models: list[Any], t: float, rng: np.random.Generator, anomaly: np.ndarray,
                 challenger: np.ndarray) -> pd.DataFrame:  # fmt: skip
    """One hour of every model's predictions (champion, version 1) plus the challengers' shadow rows."""
    df = _hour_frame(models, t, rng, anomaly)
    df["model_version"] = 1
    df["alias"] = "champion"
    shadow = df[challenger].copy()
    shadow["model_version"] = 2
    shadow["alias"] = "challenger"
    shadow["prediction"] = (shadow["prediction"] * rng.normal(1, 0.05, len(shadow))).round(3)
    return pd.concat([df, shadow], ignore_index=True)


def write_outputs(work: Path, fleet: dict[str, Any], hours: int, challenger_share: float) -> dict[str, Any]:
    """History (Parquet, ``hours - 2`` hours ending 2 h ago) and two staged JSON lines hours (1 h ago, now)."""
    from fleetmon.config import FleetConfig

    fc = FleetConfig.model_validate(fleet)
    models = fc.models()
    anomaly = np.array([fc.is_anomaly_detector(m.model) for m in models])
    rng = np.random.default_rng(1)
    challenger = rng.uniform(0, 1, len(models)) < challenger_share
    hist, stage = work / "hist", work / "stage"
    for d in (hist, stage):
        d.mkdir(parents=True, exist_ok=True)
    now = (time.time() // H) * H  # the newest hour: everything lies in the past for the real clock
    t0 = time.perf_counter()
    rows = 0
    for k in range(hours, 2, -1):
        t = now - (k - 1) * H
        p = _predictions(models, t, rng, anomaly, challenger)
        p.to_parquet(hist / f"p-{k:04d}.parquet", index=False)
        _actuals(models, t - 2 * H, rng).to_parquet(hist / f"a-{k:04d}.parquet", index=False)
        rows += len(p)
    t_hist = time.perf_counter() - t0
    t0 = time.perf_counter()
    for c, t in ((1, now - H), (2, now)):  # the two cycles' new hours, as the demo writes them
        _write_jsonl(stage / f"p-{c}.jsonl", _predictions(models, t - 60, rng, anomaly, challenger))
        _write_jsonl(stage / f"a-{c}.jsonl", _actuals(models, t - 60 - 2 * H, rng))
    return {
        "hour": now,
        "history_hours": hours - 2,
        "history_prediction_rows": rows,
        "rows_per_hour": rows // max(1, hours - 2),
        "challenger_models": int(challenger.sum()),
        "history_seconds": round(t_hist, 1),
        "jsonl_seconds": round(time.perf_counter() - t0, 1),
        "jsonl_bytes_per_hour": os.path.getsize(stage / "p-2.jsonl") + os.path.getsize(stage / "a-2.jsonl"),
    }


def outputs_section(work: Path, shard_dir: Path, hours: int) -> dict[str, Any]:
    """The ``outputs`` config of one shard: the shared history, its own watched directories and state."""
    return {
        "predictions": [
            {"glob": str(work / "hist" / "p-*.parquet"), "format": "parquet", "name": "history"},
            {"glob": str(shard_dir / "pred" / "*.jsonl"), "name": "predictions"},
        ],
        "actuals": [
            {"glob": str(work / "hist" / "a-*.parquet"), "format": "parquet", "name": "history-actuals"},
            {"glob": str(shard_dir / "act" / "*.jsonl"), "name": "actuals"},
        ],
        "features": FEATURES,
        "windows": {"24h": 24 * H, "7d": 7 * 24 * H},
        "retention_seconds": (hours + 2) * H,
        "quarantine_dir": str(shard_dir / "quarantine"),
        "state_dir": str(shard_dir / "state"),
        "drift": {
            "engine": "fleet",
            "reference_window_seconds": max(H, (hours - 24) * H),
            "current_window_seconds": 24 * H,
            "exclude": ["hour_of_day", "day_of_week"],
        },
    }


def stage_cycle(work: Path, shard_dir: Path, cycle: int) -> None:
    """A cycle's new hour appears in the shard's watched directories (hard links: written whole, at once)."""
    for kind, d in (("p", "pred"), ("a", "act")):
        (shard_dir / d).mkdir(parents=True, exist_ok=True)
        os.link(work / "stage" / f"{kind}-{cycle}.jsonl", shard_dir / d / f"{kind}-{cycle}.jsonl")


def seed_mlflow(
    cache_root: Path, fleet: dict[str, Any], runs: int, versions: int
) -> tuple[Path, dict[str, Any]]:
    """The cached MLflow database for this fleet (populated on first use); returns (cache dir, counts)."""
    from benchmarks.mlflow_bench import populate
    from fleetmon.config import Config

    buildings = sum(len(c["buildings"]) for c in fleet["customers"])
    cache = cache_root / f"scale-mlflow-{buildings}b-{runs}r-{versions}v"
    done = cache / "complete"
    if done.exists():
        counts = json.loads(done.read_text())
        return cache, {**counts, "cached": True}
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    t0 = time.perf_counter()
    counts = populate(cache / "mlflow.db", Config.model_validate({"fleet": fleet}), runs, versions)
    counts["seed_seconds"] = round(time.perf_counter() - t0, 1)
    done.write_text(json.dumps(counts) + "\n")
    return cache, {**counts, "cached": False}
