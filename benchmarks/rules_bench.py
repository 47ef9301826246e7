"""Rules benchmark: what evaluating fleetmon's recording and alert rules costs a real Prometheus, by fleet size.

    .venv/bin/python -m benchmarks.rules_bench                       # fleets of 80, 1000 and 5000 models
    .venv/bin/python -m benchmarks.rules_bench --models 80 20000 --settle 60

For each fleet size a synthetic exporter serves, for every model, the series the rules read (drift per column,
quality windows, freshness, MLflow runs, building metadata with 5 building types and 8 buildings per
weather station, ...: about 30 per model, a few models drifting, stale or failing),
and a real Prometheus (free port, temporary directory) scrapes it every 5 s and evaluates the shipped rule
files every 5 s. After `--settle` seconds the last evaluation time of every rule group is read from
Prometheus' own metrics. Printed side by side: series scraped, each group's evaluation time, the sum as a
share of the shipped 15 s `evaluation_interval`, and the ratio to the smallest fleet.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from fleetmon.procs import free_port, spawn, stop_group, wait_for_http

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ("outdoor_temperature", "solar_radiation", "occupancy", "humidity")
# building types (the peer groups) and 8 buildings per weather station, across customers
TYPES = ("office", "school", "retail", "residential", "hospital")


def exposition(n_models: int, now: float) -> bytes:
    """Every series the rules read, for n_models models (4 per building, 5 buildings per customer)."""
    out: list[str] = []
    for i in range(n_models):
        b, m = divmod(i, 4)
        c = b // 5
        energy = ("electricity", "heating")[m % 2]
        role = ("forecast", "anomaly")[m // 2]
        fl = f'customer="c{c}",building="c{c}-b{b}",energy="{energy}",model="{role}"'
        drifting = i % 97 == 0
        out_col = "prediction" if role == "forecast" else "anomaly_score"
        for col in (*COLUMNS, out_col):
            flag = 1 if drifting and col == "humidity" else 0
            out.append(f'fleetmon_drift_column_drifted{{{fl},column="{col}",stattest="ks"}} {flag}')
            out.append(
                f'fleetmon_drift_column_score{{{fl},column="{col}",stattest="ks"}} {0.001 if flag else 0.4}'
            )
        out.append(f"fleetmon_drift_current_rows{{{fl}}} 24")
        out.append(f"fleetmon_drift_share{{{fl}}} {0.2 if drifting else 0.0}")
        if role == "anomaly":
            out.append(f'fleetmon_model_anomaly_ratio{{{fl},window="24h"}} {0.04 + (i % 7) * 0.01}')
        last = now - (300 if i % 101 == 0 else 10)
        out.append(f"fleetmon_model_last_prediction_timestamp_seconds{{{fl}}} {last}")
        for w, f in (("24h", 1.0 + (i % 89 == 0) * 2), ("7d", 1.0)):
            out.append(f'fleetmon_model_actual_coverage_ratio{{{fl},window="{w}"}} 0.9')
            if role == "forecast":
                out.append(f'fleetmon_model_mae_joules{{{fl},window="{w}"}} {1e6 * f}')
                out.append(f'fleetmon_model_mape_ratio{{{fl},window="{w}"}} {(0.05 + (i % 11) * 0.001) * f}')
        for kind in ("missing", "unexpected"):
            out.append(f'fleetmon_outputs_schema_mismatch{{{fl},kind="{kind}"}} 0')
        for st, v in (("failed", int(now // 30) if i % 103 == 0 else 1), ("finished", 4), ("running", 0)):
            out.append(f'fleetmon_mlflow_runs{{{fl},status="{st}"}} {v}')
        out.append(f"fleetmon_mlflow_training_last_success_timestamp_seconds{{{fl}}} {now - 86400}")
        out.append(f'fleetmon_mlflow_model_alias_version{{{fl},alias="champion"}} 3')
        if m == 0:
            out.append(
                f'fleetmon_building_info{{customer="c{c}",building="c{c}-b{b}",building_type="{TYPES[b % 5]}",'
                f'weather_station="w{b // 8}",latitude="52.0",longitude="4.0"}} 1'
            )
    return ("\n".join(out) + "\n").encode()


class Exporter:
    def __init__(self, n_models: int) -> None:
        self.n = n_models
        self.series = 0
        bench = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = exposition(bench.n, time.time())
                bench.series = body.count(b"\n")
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=30) as r:
        result: list[dict[str, Any]] = json.loads(r.read())["data"]["result"]
    return result


def run(n_models: int, settle: float) -> dict[str, Any]:
    exp = Exporter(n_models)
    tmp = Path(tempfile.mkdtemp(prefix="fleetmon-rules-bench-"))
    port = free_port()
    cfg = {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "rule_files": [str(p) for p in sorted((ROOT / "prometheus" / "rules").glob("*.yml"))],
        "scrape_configs": [
            {"job_name": "fleetmon-outputs", "static_configs": [{"targets": [f"127.0.0.1:{exp.port}"]}]},
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]},
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    proc = spawn(
        [
            shutil.which("prometheus") or "prometheus",
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp / "prometheus.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(base + "/-/ready", timeout=60, proc=proc)
        time.sleep(settle)
        groups = {
            r["metric"]["rule_group"].split(";")[-1]: float(r["value"][1])
            for r in query(base, "prometheus_rule_group_last_duration_seconds")
        }
        return {"models": n_models, "series": exp.series, "groups": groups}
    finally:
        stop_group(proc)
        exp.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rules_bench", description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, nargs="+", default=[80, 1000, 5000])
    p.add_argument(
        "--settle", type=float, default=40, help="seconds of scraping and evaluation per fleet size"
    )
    args = p.parse_args(argv)
    results = [run(n, args.settle) for n in args.models]
    names = sorted({g for r in results for g in r["groups"]})
    print(
        f"{'models':>7} {'series':>8} "
        + " ".join(f"{g[9:]:>17}" for g in names)
        + "   total  of 15s  vs first"
    )
    first = sum(results[0]["groups"].values()) or 1e-9
    for r in results:
        total = sum(r["groups"].values())
        cols = " ".join(f"{r['groups'].get(g, 0) * 1000:15.1f}ms" for g in names)
        print(
            f"{r['models']:>7} {r['series']:>8} {cols} {total * 1000:6.0f}ms {total / 15:6.1%} {total / first:8.1f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
