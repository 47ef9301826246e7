"""Dashboards benchmark: what one refresh of each dashboard costs Prometheus, against a one-line query.

    .venv/bin/python -m benchmarks.dashboards_bench                              # the stack on :9090
    .venv/bin/python -m benchmarks.dashboards_bench --prometheus URL --repeat 5

Every dashboard's variables are resolved as Grafana would (first value), then all its queries run one after
the other (Grafana sends them in parallel; the sum is the work Prometheus does), `--repeat` times. Side by
side in the same run, the baseline is `count(fleetmon_model_last_prediction_timestamp_seconds)`: one
selector over every model. Printed per dashboard: queries, median refresh wall time, the ratio to the
baseline, and the samples Prometheus touched (`stats=all`); then the five heaviest queries. The model-state
expressions (stale, drifting, erroring, failing training, per model) are the expensive part: they are what
to turn into recording rules first if a large fleet makes the fleet dashboard slow.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from fleetmon.dashboards.build import OUTPUT_DIR
from fleetmon.dashboards.verify import Context, Prometheus, load_dashboards, resolve, targets

BASELINE = "count(fleetmon_model_last_prediction_timestamp_seconds)"


def _samples(doc: dict[str, Any]) -> int:
    return int(
        ((doc.get("data") or {}).get("stats") or {}).get("samples", {}).get("totalQueryableSamples", 0)
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.dashboards_bench", description=__doc__.splitlines()[0]
    )
    p.add_argument("--prometheus", default="http://127.0.0.1:9090")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    prom = Prometheus(args.prometheus)
    dashboards = load_dashboards(OUTPUT_DIR)

    now = time.time()
    baseline_ctx = Context(now=now, range_s=6 * 3600)
    base_times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        base = prom.query(BASELINE, baseline_ctx, instant=True, stats=True)
        base_times.append(time.perf_counter() - t0)
    base_s = statistics.median(base_times)
    print(f"baseline {BASELINE}: {base_s * 1000:.1f} ms, {_samples(base)} samples")
    print(f"{'dashboard':<26}{'queries':>8}{'refresh ms':>12}{'x baseline':>12}{'samples':>12}")

    per_query: list[tuple[float, str, str]] = []
    for uid, doc in dashboards.items():
        ctx = Context(now=now, range_s=6 * 3600)
        resolve(doc, prom, ctx)
        ts = targets(doc)
        refresh_times = []
        samples = 0
        for i in range(args.repeat):
            t_refresh = 0.0
            for t in ts:
                t0 = time.perf_counter()
                answer = prom.query(ctx.interpolate(t.expr), ctx, t.instant, stats=True)
                elapsed = time.perf_counter() - t0
                t_refresh += elapsed
                if i == 0:
                    samples += _samples(answer)
                    per_query.append((elapsed, f"{uid} / {t.panel} [{t.ref}]", t.expr))
            refresh_times.append(t_refresh)
        refresh_s = statistics.median(refresh_times)
        print(f"{uid:<26}{len(ts):>8}{refresh_s * 1000:>12.0f}{refresh_s / base_s:>12.0f}{samples:>12}")

    print("heaviest queries (first run):")
    for elapsed, where, _expr in sorted(per_query, reverse=True)[:5]:
        print(f"  {elapsed * 1000:8.1f} ms  {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
