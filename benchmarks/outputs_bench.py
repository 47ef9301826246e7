"""Model-outputs exporter benchmark: cycle time (ingest + quality + drift) and scrape time.

    .venv/bin/python -m benchmarks.outputs_bench                       # demo fleet and 1,000 buildings
    .venv/bin/python -m benchmarks.outputs_bench --buildings 20 --hours 48   # quick

Per fleet (the demo's 20 buildings, then 1,000 buildings = 4,000 models, from the simulator's fleet
generator), in a temporary directory:

- history: one Parquet predictions file and one actuals file per hour for ``--hours`` hours (one row per
  model and hour, the demo's six features), read by the exporter's first poll (the *initial load*, as after
  a restart);
- a steady cycle: one new JSON lines predictions file and one actuals file (what the demo writes every
  simulated hour), then ``ingest + quality`` (the ``outputs`` poll, including rendering its series) and a
  drift run over every model (rolling reference 7 d against the last 24 h) with the fleet engine;
- Evidently per model on a sample of ``--evidently-sample`` models, extrapolated to the fleet (so says the
  output), for the ratio against the engine;
- scrape: the exporter's ``/metrics`` body as served (pre-rendered bytes, plain and gzip) against encoding
  the same series with ``prometheus_client`` on each scrape (what a plain collector would do), side by side.

Figures are ratios measured in the same run; the machine's load is printed with them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FEATURES = ["outdoor_temperature", "solar_radiation", "hour_of_day", "day_of_week", "occupancy", "humidity"]
H = 3600.0


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")


def _fleet(buildings: int) -> dict[str, Any]:
    from simulator.fleet import fleet_dict, generate_fleet

    customers = max(1, min(40, buildings // 25)) if buildings > 20 else 4
    return fleet_dict(generate_fleet(seed=42, customers=customers, buildings=buildings))


def _hour_frame(models: list[Any], t: float, rng: np.random.Generator, anomaly: np.ndarray) -> pd.DataFrame:
    n = len(models)
    hour = int((t // H) % 24)
    df = pd.DataFrame(
        {
            "customer": [m.customer for m in models],
            "building": [m.building for m in models],
            "energy": [m.energy for m in models],
            "model": [m.model for m in models],
            "made_at": _iso(t - 600),
            "target_time": _iso(t),
            "prediction": np.where(anomaly, np.nan, rng.normal(50, 10, n).round(3)),
            "anomaly_score": np.where(anomaly, rng.uniform(0, 1, n).round(4), np.nan),
            "anomaly_flag": np.where(anomaly, (rng.uniform(0, 1, n) > 0.97).astype(float), np.nan),
            "features.outdoor_temperature": rng.normal(0, 5, n).round(1),
            "features.solar_radiation": np.maximum(0, rng.normal(200 if 8 <= hour <= 16 else 0, 50, n)).round(
                0
            ),
            "features.hour_of_day": float(hour),
            "features.day_of_week": float(int(t // 86400) % 7),
            "features.occupancy": rng.uniform(0, 1, n).round(2),
            "features.humidity": rng.uniform(30, 90, n).round(1),
        }
    )
    return df


def _actuals(models: list[Any], t: float, rng: np.random.Generator) -> pd.DataFrame:
    be = sorted({(m.customer, m.building, m.energy) for m in models})
    return pd.DataFrame(
        {
            "customer": [b[0] for b in be],
            "building": [b[1] for b in be],
            "energy": [b[2] for b in be],
            "target_time": _iso(t),
            "actual": rng.normal(50, 10, len(be)).round(3),
        }
    )


def _write_jsonl(path: Path, df: pd.DataFrame) -> None:
    recs = []
    for r in df.to_dict("records"):
        feats = {f: r.pop("features." + f) for f in FEATURES if "features." + f in r}
        rec = {k: v for k, v in r.items() if not (isinstance(v, float) and np.isnan(v))}
        if feats:
            rec["features"] = feats
        recs.append(rec)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    os.replace(tmp, path)


def _timed(fn: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def run(buildings: int, hours: int, evidently_sample: int, scrapes: int) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from collectors.outputs import DriftCollector, OutputsCollector, ingest_families, quality_families
    from fleetmon.config import Config
    from fleetmon.drift.evidently_backend import EvidentlyBackend
    from fleetmon.drift.render import render as render_drift
    from fleetmon.exporter import Exporter
    from fleetmon.outputs.drift_jobs import build_jobs
    from fleetmon.outputs.pipeline import OutputsPipeline

    with tempfile.TemporaryDirectory(prefix="outputs-bench-") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "hist").mkdir()
        (tmp / "pred").mkdir()
        (tmp / "act").mkdir()
        cfg = Config.model_validate(
            {
                "fleet": _fleet(buildings),
                "outputs": {
                    "predictions": [
                        {"glob": str(tmp / "hist" / "p-*.parquet"), "format": "parquet"},
                        {"glob": str(tmp / "pred" / "*.jsonl")},
                    ],
                    "actuals": [
                        {"glob": str(tmp / "hist" / "a-*.parquet"), "format": "parquet"},
                        {"glob": str(tmp / "act" / "*.jsonl")},
                    ],
                    "features": FEATURES,
                    "windows": {"24h": 24 * H, "7d": 7 * 24 * H},
                    "retention_seconds": (hours + 2) * H,
                    "quarantine_dir": str(tmp / "q"),
                    "state_dir": str(tmp / "state"),
                    "drift": {
                        "engine": "fleet",
                        "reference_window_seconds": max(H, (hours - 24) * H),
                        "current_window_seconds": 24 * H,
                        "exclude": ["hour_of_day", "day_of_week"],
                    },
                },
            }
        )
        models = cfg.fleet.models()
        anomaly = np.array([cfg.fleet.is_anomaly_detector(m.model) for m in models])
        rng = np.random.default_rng(1)
        now = (time.time() // H) * H
        t0 = time.perf_counter()
        for k in range(hours, 0, -1):
            t = now - k * H
            _hour_frame(models, t, rng, anomaly).to_parquet(tmp / "hist" / f"p-{k:04d}.parquet", index=False)
            _actuals(models, t - 2 * H, rng).to_parquet(tmp / "hist" / f"a-{k:04d}.parquet", index=False)
        setup = time.perf_counter() - t0
        print(
            f"\n== {buildings} buildings, {len(models)} models, {hours} h of history "
            f"({hours * len(models):,} prediction rows; written in {setup:.1f} s)"
        )

        clock = [now]
        pipeline = OutputsPipeline(cfg, clock=lambda: clock[0])
        outputs = OutputsCollector(cfg, pipeline)
        drift = DriftCollector(cfg, pipeline)
        exp = Exporter("outputs", {"outputs": outputs, "drift": drift})
        try:
            t_load, _ = _timed(outputs.poll)
            print(f"initial load (first poll: read history, quality, render): {t_load:8.3f} s")
            t_drift0, _ = _timed(drift.poll)
            print(f"first drift run (fleet engine: cold cache, numba compile):  {t_drift0:8.3f} s")

            # steady cycles: a new hour of predictions and actuals (JSON lines, as the demo writes)
            cycles = []
            for c in range(2):
                clock[0] = now + (c + 1) * H
                t = clock[0] - 60
                _write_jsonl(tmp / "pred" / f"p-{c}.jsonl", _hour_frame(models, t, rng, anomaly))
                _write_jsonl(tmp / "act" / f"a-{c}.jsonl", _actuals(models, t - 2 * H, rng))
                ti, _ = _timed(pipeline.ingest)
                tq, _ = _timed(pipeline.refresh_quality)
                td, _ = _timed(drift.poll)
                cycles.append((ti, tq, td))
            ti, tq, td = cycles[-1]
            tr, _ = _timed(outputs.poll)  # the whole outputs poll, now with nothing new to read
            fams = quality_families(pipeline, pipeline.quality) + ingest_families(pipeline)  # type: ignore[arg-type]
            n_quality = sum(len(f.samples) for f in fams)
            print(f"steady cycle, one new hour of {len(models)} predictions + actuals:")
            print(f"  ingest (read + validate + dedup)      {ti:8.3f} s")
            print(f"  quality (all windows, all models)     {tq:8.3f} s")
            print(f"  outputs poll with nothing new (incl. render of {n_quality:,} series) {tr:8.3f} s")
            print(f"  drift (jobs + fleet engine, {len(drift.results)} models) {td:8.3f} s")
            print(f"  cycle = ingest + quality + drift      {ti + tq + td:8.3f} s")

            # The drift poll in parts: jobs from the store, the engine cold (a rolling reference moves
            # every cycle, so a real cycle is cold) and warm, rendering
            now_d = clock[0]
            snap = pipeline.store.snapshot(now_d)
            tj, jobs = _timed(
                lambda: build_jobs(snap, pipeline.fleet, pipeline.features, cfg.outputs.drift, now_d)
            )
            engine = drift.backend
            engine.forget()
            tc, res = _timed(lambda: engine.run(jobs.jobs))
            tf, _ = _timed(lambda: engine.run(jobs.jobs))
            trd, _ = _timed(lambda: render_drift(res))
            print(
                f"  drift in parts: jobs {tj:.3f} s, engine cold {tc:.3f} s (warm {tf:.3f} s), "
                f"render {trd:.3f} s"
            )
            # Evidently per model, on a sample, extrapolated
            sample = jobs.jobs[: max(1, min(evidently_sample, len(jobs.jobs)))]
            ev = EvidentlyBackend()
            ev.run(sample[:1])  # warm up imports
            te, _ = _timed(lambda: ev.run(sample))
            per_model = te / len(sample)
            print(
                f"drift backends on {len(jobs.jobs)} models: fleet engine {tc:.3f} s cold, {tf:.3f} s warm; "
                f"Evidently {per_model:.3f} s/model on a sample of {len(sample)}, extrapolated "
                f"{per_model * len(jobs.jobs):.1f} s ({per_model * len(jobs.jobs) / max(tc, 1e-9):.0f}x the engine "
                f"cold, {per_model * len(jobs.jobs) / max(tf, 1e-9):.0f}x warm)"
            )

            # scrape: served bytes vs encoding on each scrape
            def served(gz: bool) -> bytes:
                return exp.exposition(gzipped=gz)

            body = served(False)
            n_series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
            t_plain = min(_timed(lambda: served(False))[0] for _ in range(scrapes))
            t_gz = min(_timed(lambda: served(True))[0] for _ in range(scrapes))
            drift_fams = list(_parse_families(drift.prerendered().body))

            class Live:
                def collect(self) -> Any:
                    return fams + drift_fams

            reg = CollectorRegistry(auto_describe=False)
            reg.register(Live())  # type: ignore[arg-type]
            t_live = min(_timed(lambda: generate_latest(reg))[0] for _ in range(scrapes))
            print(
                f"scrape ({n_series:,} series, {len(body) / 1e6:.1f} MB, gzip {len(served(True)) / 1e3:.0f} kB; "
                f"best of {scrapes}): served plain {t_plain * 1e3:.1f} ms, gzip {t_gz * 1e3:.1f} ms; "
                f"encoding per scrape with prometheus_client {t_live * 1e3:.0f} ms "
                f"({t_live / max(t_plain, 1e-9):.0f}x plain)"
            )
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"peak RSS of the benchmark process so far: {rss:.0f} MiB")
        finally:
            exp.stop()


def _parse_families(body: bytes) -> Any:
    from prometheus_client.parser import text_string_to_metric_families

    return text_string_to_metric_families(body.decode())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.outputs_bench", description=__doc__.splitlines()[0]
    )
    p.add_argument("--buildings", type=int, nargs="+", default=[20, 1000], help="fleet sizes (4 models each)")
    p.add_argument("--hours", type=int, default=192, help="hours of history (reference 7 d + current 24 h)")
    p.add_argument("--evidently-sample", type=int, default=8, help="models timed with Evidently per model")
    p.add_argument("--scrapes", type=int, default=3, help="scrapes timed (best of)")
    args = p.parse_args(argv)
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start")
    for b in args.buildings:
        run(b, args.hours, args.evidently_sample, args.scrapes)
    load = os.getloadavg()
    print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
