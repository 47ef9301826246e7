"""Drift benchmark: Evidently per model vs Evidently's stattest functions vs the fleet engine.

    .venv/bin/python -m benchmarks.drift_bench                      # 4,000 and 40,000 models, small fleet
    .venv/bin/python -m benchmarks.drift_bench --fleets 4000 --small-models 4000   # quicker
    .venv/bin/python -m benchmarks.drift_bench --form frames     # jobs as pandas DataFrames

One generated fleet per size, 6 features per model like the demo's (outdoor temperature at 0.1 degC,
solar radiation in whole W/m2, hour of day and day of week as small integers, occupancy at 0.01, humidity
at 0.1 %), 5 % of the models with a shifted current window. Jobs are in array form by default (one
array per column and window, as the model-outputs exporter builds them; ``--form frames``: a DataFrame
per window). Each fleet size runs in its own child process so its peak memory (RSS) is its own. Printed
per fleet:

- Evidently: ``Report([DataDriftPreset()])`` per model, timed on a sample of models and extrapolated
  to the fleet (running it on 40,000 models would take hours);
- Evidently's own per-column stattest functions in a loop (clean, pick the test, call it: what the
  report does per column minus the report), timed on a sample and extrapolated;
- the engine: a cold cycle (reference cache built: what every cycle of a rolling reference is) and a
  warm cycle (references cached, every current window read, cleaned, sorted and tested again), the
  ratios against both, and the peak RSS of the process;
- a check that the engine's results equal Evidently's on the sampled models;
- for the first fleet: rendering the drift metrics once (text + gzip) and a real HTTP scrape of the
  rendered bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd

from fleetmon.config import ModelKey
from fleetmon.drift import DriftJob
from fleetmon.drift.types import DriftResult

FEATURES = ["outdoor_temperature", "solar_radiation", "hour_of_day", "day_of_week", "occupancy", "humidity"]


def _features(rng: np.random.Generator, n_models: int, n: int, shift: np.ndarray) -> dict[str, np.ndarray]:
    s = shift[:, None]
    hour = rng.integers(0, 24, (n_models, n))
    temp = np.round(rng.normal(8.0, 6.0, (n_models, n)) + 4 * np.sin(hour / 24 * 2 * np.pi) + 6 * s, 1)
    solar = np.round(np.clip(np.sin((hour - 6) / 12 * np.pi), 0, None) * rng.uniform(200, 800, (n_models, n)))
    return {
        "outdoor_temperature": temp,
        "solar_radiation": solar,
        "hour_of_day": hour.astype(np.int8),
        "day_of_week": rng.integers(0, 7, (n_models, n)).astype(np.int8),
        "occupancy": np.round(np.clip(rng.beta(2, 3, (n_models, n)) + 0.3 * s, 0, 1), 2),
        "humidity": np.round(np.clip(rng.normal(70, 12, (n_models, n)) - 10 * s, 0, 100), 1),
    }


def make_fleet(
    n_models: int, n_ref: int, n_cur: int, seed: int = 1, chunk: int = 2000, form: str = "arrays"
) -> list[DriftJob]:
    """Jobs for a generated fleet (built chunk by chunk so generation does not double the memory).

    ``form="arrays"``: each window one 1-D array per feature, views into the generated blocks (how the
    model-outputs exporter hands its windows over); ``form="frames"``: one pandas DataFrame per window.
    """
    rng = np.random.default_rng(seed)
    jobs: list[DriftJob] = []
    for start in range(0, n_models, chunk):
        m = min(chunk, n_models - start)
        shifted = (rng.random(m) < 0.05).astype(float)
        ref = _features(rng, m, n_ref, np.zeros(m))
        cur = _features(rng, m, n_cur, shifted)
        for j in range(m):
            i = start + j
            key = ModelKey(
                customer=f"c{i // 400:03d}",
                building=f"c{i // 400:03d}-b{(i // 4) % 100:03d}",
                energy=("electricity", "heating")[(i // 2) % 2],
                model=("forecast", "anomaly")[i % 2],
            )
            if form == "frames":
                windows: dict = {
                    "reference": pd.DataFrame({f: ref[f][j] for f in FEATURES}),
                    "current": pd.DataFrame({f: cur[f][j] for f in FEATURES}),
                }
            else:
                windows = {
                    "reference_values": [ref[f][j] for f in FEATURES],
                    "current_values": [cur[f][j] for f in FEATURES],
                }
            jobs.append(DriftJob(key, numerical=FEATURES, reference_version=f"ref-{i}-v1", **windows))
        del ref, cur
    return jobs


def input_bytes(jobs: list[DriftJob]) -> int:
    """Bytes of the generated input data (arrays, or the frames' columns)."""
    total = 0
    for j in jobs:
        if j.reference_values is not None and j.current_values is not None:
            total += sum(v.nbytes for v in [*j.reference_values, *j.current_values])
        else:
            total += int(
                j.reference.memory_usage(index=False).sum() + j.current.memory_usage(index=False).sum()
            )
    return total


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def evidently_column_loop(job: DriftJob) -> None:
    """What Evidently's report does per column, minus the report: clean, pick the test, run it."""
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    for c in job.numerical:
        ref = job.reference[c].replace([-np.inf, np.inf], np.nan).dropna()
        cur = job.current[c].replace([-np.inf, np.inf], np.nan).dropna()
        test = get_stattest(ref, cur, ColumnType.Numerical, None)
        test(ref, cur, ColumnType.Numerical, None)


def _same(a: DriftResult, b: DriftResult) -> bool:
    for x, y in zip(a.columns, b.columns, strict=True):
        if x.error != y.error or x.drifted != y.drifted or x.stattest != y.stattest:
            return False
        if x.score is not None and (y.score is None or abs(x.score - y.score) > 1e-9 * max(1, abs(x.score))):
            return False
    return a.share_drifted == b.share_drifted and a.dataset_drift == b.dataset_drift


def _scrape_seconds(body: bytes, gz: bytes, repeats: int = 5) -> float:
    """Median time of a real HTTP GET (gzip) of the rendered drift metrics from a local server."""
    import requests

    from fleetmon.procs import free_port

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            use_gz = "gzip" in (self.headers.get("Accept-Encoding") or "")
            data = gz if use_gz else body
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            if use_gz:
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a: object) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    times = []
    try:
        with requests.Session() as s:
            for _ in range(repeats):
                t0 = time.perf_counter()
                r = s.get(f"http://127.0.0.1:{port}/metrics", headers={"Accept-Encoding": "gzip"}, timeout=30)
                _ = r.content
                times.append(time.perf_counter() - t0)
    finally:
        server.shutdown()
        server.server_close()
        t.join()
    return float(np.median(times))


def one_fleet(
    n_models: int, n_ref: int, n_cur: int, sample: int, loop_sample: int, scrape: bool, form: str = "arrays"
) -> dict:
    """Runs in a child process: every figure for one fleet."""
    from fleetmon.drift.engine import FleetDriftEngine
    from fleetmon.drift.evidently_backend import EvidentlyBackend
    from fleetmon.drift.render import render

    out: dict = {"models": n_models, "features": len(FEATURES), "n_ref": n_ref, "n_cur": n_cur, "form": form}
    t0 = time.perf_counter()
    jobs = make_fleet(n_models, n_ref, n_cur, form=form)
    out["generate_s"] = time.perf_counter() - t0
    out["input_bytes"] = input_bytes(jobs)
    out["rss_after_generate_bytes"] = _peak_rss_bytes()

    with FleetDriftEngine() as engine:
        # warm the JIT on one model (compiled code is cached on disk after the first run)
        engine.run(jobs[:1])
        engine.forget()
        t0 = time.perf_counter()
        engine.run(jobs)
        out["engine_cold_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = engine.run(jobs)
        out["engine_warm_s"] = time.perf_counter() - t0
        out["engine_stats"] = dict(engine.stats)
    out["peak_rss_bytes"] = _peak_rss_bytes()
    out["drifting_models"] = sum(r.dataset_drift for r in results)
    out["stattests"] = sorted({c.stattest for r in results for c in r.columns})

    rng = np.random.default_rng(0)
    idx = rng.choice(n_models, min(sample, n_models), replace=False)
    ev = EvidentlyBackend()
    ev.run_one(jobs[0])  # first report pays imports
    t0 = time.perf_counter()
    ev_results = [ev.run_one(jobs[i]) for i in idx]
    out["evidently_per_model_s"] = (time.perf_counter() - t0) / len(idx)
    out["evidently_sample"] = len(idx)
    out["evidently_fleet_s_extrapolated"] = out["evidently_per_model_s"] * n_models
    out["mismatches_in_sample"] = sum(not _same(a, results[i]) for a, i in zip(ev_results, idx, strict=True))

    lidx = rng.choice(n_models, min(loop_sample, n_models), replace=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        for i in lidx:
            evidently_column_loop(jobs[i])
    out["column_loop_per_model_s"] = (time.perf_counter() - t0) / len(lidx)
    out["column_loop_sample"] = len(lidx)
    out["column_loop_fleet_s_extrapolated"] = out["column_loop_per_model_s"] * n_models
    for cycle in ("cold", "warm"):
        t = out[f"engine_{cycle}_s"]
        out[f"speedup_vs_evidently_{cycle}"] = out["evidently_fleet_s_extrapolated"] / t
        out[f"speedup_vs_column_loop_{cycle}"] = out["column_loop_fleet_s_extrapolated"] / t

    if scrape:
        t0 = time.perf_counter()
        rendered = render(results)
        out["render_s"] = time.perf_counter() - t0
        out["series"] = rendered.series
        out["body_bytes"] = len(rendered.body)
        out["gzip_bytes"] = len(rendered.gzipped)
        out["scrape_s"] = _scrape_seconds(rendered.body, rendered.gzipped)
    return out


def _print(r: dict) -> None:
    gib = 1024**3
    print(
        f"\n== {r['models']:,} models x {r['features']} features, reference {r['n_ref']} / current {r['n_cur']} rows"
        f" (jobs as {r['form']})"
    )
    print(f"   input data {r['input_bytes'] / gib:.2f} GiB; tests used: {', '.join(r['stattests'])}; "
          f"{r['drifting_models']} models with dataset drift")  # fmt: skip
    print(
        f"   Evidently Report per model    {r['evidently_per_model_s'] * 1e3:9.1f} ms  "
        f"(sample of {r['evidently_sample']}) -> fleet {r['evidently_fleet_s_extrapolated']:,.0f} s extrapolated"
    )
    print(
        f"   Evidently stattest loop       {r['column_loop_per_model_s'] * 1e3:9.2f} ms/model "
        f"(sample of {r['column_loop_sample']}) -> fleet {r['column_loop_fleet_s_extrapolated']:,.1f} s extrapolated"
    )
    print(f"   engine, cold cycle            {r['engine_cold_s']:9.2f} s   (reference cache built)")
    print(f"   engine, warm cycle            {r['engine_warm_s']:9.2f} s   (references cached)")
    print(
        f"   speed-up vs Evidently Report  {r['speedup_vs_evidently_cold']:9,.0f} x cold, "
        f"{r['speedup_vs_evidently_warm']:,.0f} x warm"
    )
    print(f"   speed-up vs stattest loop     {r['speedup_vs_column_loop_cold']:9,.1f} x cold, "
          f"{r['speedup_vs_column_loop_warm']:,.1f} x warm")  # fmt: skip
    print(
        f"   peak RSS                      {r['peak_rss_bytes'] / gib:9.2f} GiB (after generating the fleet: "
        f"{r['rss_after_generate_bytes'] / gib:.2f} GiB)"
    )
    print(
        f"   engine == Evidently on the sample: {r['evidently_sample'] - r['mismatches_in_sample']}"
        f"/{r['evidently_sample']} models"
    )
    if "render_s" in r:
        print(
            f"   render once per cycle         {r['render_s'] * 1e3:9.0f} ms ({r['series']:,} series, "
            f"{r['body_bytes'] / 1e6:.1f} MB, gzip {r['gzip_bytes'] / 1e6:.2f} MB)"
        )
        print(f"   scrape (HTTP, gzip, median)   {r['scrape_s'] * 1e3:9.1f} ms")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.drift_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--fleets", default="4000,40000", help="model counts (reference 2000 / current 500 rows)")
    ap.add_argument(
        "--small-models", type=int, default=40000, help="models in the small-sample fleet (0: skip)"
    )
    ap.add_argument("--ref", type=int, default=2000)
    ap.add_argument("--cur", type=int, default=500)
    ap.add_argument("--small-ref", type=int, default=200)
    ap.add_argument("--small-cur", type=int, default=50)
    ap.add_argument("--sample", type=int, default=10, help="models timed with Evidently's Report")
    ap.add_argument("--loop-sample", type=int, default=300, help="models timed with the stattest loop")
    ap.add_argument(
        "--form",
        choices=["arrays", "frames"],
        default="arrays",
        help="jobs as arrays (what the model-outputs exporter builds) or as one pandas DataFrame per window",
    )
    ap.add_argument("--json", help="also write all figures to this file")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child process: one fleet as JSON
    a = ap.parse_args(argv)

    if a.one:
        n, ref, cur, scrape = (int(x) for x in a.one.split(","))
        print(json.dumps(one_fleet(n, ref, cur, a.sample, a.loop_sample, bool(scrape), a.form)))
        return 0

    print(f"cores: {os.cpu_count()}, load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    runs = [(int(n), a.ref, a.cur, i == 0) for i, n in enumerate(a.fleets.split(",")) if n]
    if a.small_models:
        runs.append((a.small_models, a.small_ref, a.small_cur, False))
    figures = []
    for n, ref, cur, scrape in runs:
        cmd = [sys.executable, "-m", "benchmarks.drift_bench", "--one", f"{n},{ref},{cur},{int(scrape)}",
               "--sample", str(a.sample), "--loop-sample", str(a.loop_sample), "--form", a.form]  # fmt: skip
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            print(f"\n== {n} models: FAILED\n{p.stderr[-3000:]}")
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        figures.append(r)
        _print(r)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
