"""Scale-out benchmark (issue 14): a 40,000-model fleet through sharded exporters into one central store.

    .venv/bin/python -m benchmarks.scale_bench --models 40000 --json var/bench/scale-40000.json
    .venv/bin/python -m benchmarks.scale_bench --models 4000                     # quick check (~5 min)

What is measured, and how, in one run:

1. **Load** (benchmarks/scale_load.py, not the simulator): ``models / 4`` buildings, 20 per customer, four
   models each; ``--hours`` of hourly predictions and actuals (history as Parquet, the two newest hours as
   JSON lines with features, model versions and challenger shadow rows); MLflow runs, registered models,
   versions and aliases in a real ``mlflow server`` (seeded once per size under
   ``var/bench/scale-mlflow-<size>/``, copied for the run; seeding time is reported apart). No platform
   logs: the platform exporter shards by app and host, its series do not grow with the models.
2. **Exporters, 1 shard and 2 shards** (``fleetmon.sharding.Shard``, config key ``shard``), one after the
   other in the same run, each shard's outputs exporter and MLflow exporter in a subprocess of its own (a
   clean peak RSS, ``resource.getrusage``), in-process otherwise (the product's collectors and ``Exporter``):
   - outputs: initial load (first poll over the history), then two cycles of one new hour each; the
     second is timed in parts by timers around the product's own functions (ingest, quality, versions,
     families, render; drift: jobs, engine, render). *Cycle* = the outputs poll that read the new hour plus
     a drift run (drift runs every 300 s, the poll every 15 s: the sum is the worst case);
   - *no-change poll*: the next poll with nothing new (``outputs.refresh_seconds`` 60: it skips
     recomputing); *full recompute*: the same poll with ``refresh_seconds`` 0 (quality, versions, render);
   - MLflow: a full poll (what a start and every ``full_resync_seconds`` costs) and an incremental poll with
     nothing changed; the MLflow server's CPU during the full poll is reported too;
   - scrape: ``Exporter.exposition()`` plain and gzip (best of 3), bytes and series;
   - CPU-seconds (``time.process_time``) per 1,000 models per cycle: the outputs cycle plus the MLflow full
     poll, summed over a configuration's shards, divided by the fleet's thousands of models.
3. **Central store**: a real VictoriaMetrics (``victoria-metrics``, single node, the scale mode's flags).
   The largest shard count's expositions (outputs and MLflow of every shard) are imported with
   ``/api/v1/import/prometheus`` with the labels a shard's Prometheus agent adds (``job``, ``instance``,
   ``shard``, ``monitor``), each line given the scrape's timestamp: ``--backfill-scrapes`` scrapes
   ``--scrape-interval`` apart ending now, as fast as VictoriaMetrics takes them (ingestion rate), then one
   scrape every interval in real time for the rest of the run (the load the rules and dashboards see;
   each import must finish within the interval to keep up). Reported: active series, samples/s, the VM
   process's RSS (peak: ``VmHWM``), disk per day: the data directory's growth between the first and the
   last backfilled scrape (after ``/internal/force_flush``), per sample, times the samples of a day at the
   interval, plus the size after the first scrape (the index of a day's series). An estimate: VM's
   background merges compress older data further, so it is an upper bound.
4. **Rules**: a real vmalert on the copies of ``prometheus/rules/*.yml`` without ``keep_firing_for``
   (``fleetmon.scale.render_vmalert_rules``), evaluating every 15 s against VM and writing back to it, for
   ``--rule-seconds``; per group the evaluation time from vmalert's ``/metrics``
   (``vmalert_iteration_duration_seconds``: mean and the largest quantile), as a fraction of the interval.
5. **Dashboards**: every panel query of the fleet, customer and building dashboards (variables resolved
   and substituted by ``fleetmon.dashboards.verify``, as benchmarks/dashboards_bench.py does; each
   dashboard's own range, 6 h) against VM, ``--query-repeats`` times each, while the real-time feed and
   vmalert run: p50 and p95 per query, the largest p95. Note the store holds only the minutes imported,
   not 6 h: range panels would scan more samples on a store that ran for hours (most panels are instant).

The machine's load average is printed with the figures: another process on the machine inflates wall
times more than CPU-seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gzip
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "prometheus" / "rules"
DASHBOARDS = ("fleetmon-fleet", "fleetmon-customer", "fleetmon-building")
RULE_INTERVAL = 15.0
GiB = 2**30
CHUNK = 8 * 2**20  # bytes per import request: a scrape's exposition goes in pieces of whole lines

# Goals of the issue, at 40,000 models.
GOAL_CYCLE_S = 15.0
GOAL_NOCHANGE_SHARE = 0.05
GOAL_DASHBOARD_P95_S = 1.0
GOAL_RULE_FRACTION = 0.20
GOAL_STORE_RSS = 6 * GiB


def _load() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.2f} {b:.2f} {c:.2f}"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%H:%M:%S")


def log(msg: str) -> None:
    print(f"[{_now()} load {_load()}] {msg}", flush=True)


# =============================================================================================== workers
class Parts:
    """Wall and CPU seconds spent in wrapped functions, by name (timers around the product's own code)."""

    def __init__(self) -> None:
        self.wall: Counter[str] = Counter()
        self.cpu: Counter[str] = Counter()

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **k: Any) -> Any:
            w, c = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                self.wall[name] += time.perf_counter() - w
                self.cpu[name] += time.process_time() - c

        return timed

    def take(self) -> dict[str, dict[str, float]]:
        out = {n: {"wall": round(self.wall[n], 4), "cpu": round(self.cpu[n], 4)} for n in sorted(self.wall)}
        self.wall.clear()
        self.cpu.clear()
        return out


def _timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def _scrape(exp: Any, path: Path | None) -> dict[str, Any]:
    """Exposition timings (best of 3) and size; the plain body goes to ``path`` for the central store."""
    body = exp.exposition()
    gz = exp.exposition(gzipped=True)
    plain_s = min(_timed(exp.exposition)[0] for _ in range(3))
    gzip_s = min(_timed(lambda: exp.exposition(gzipped=True))[0] for _ in range(3))
    series = body.count(b"\n") - body.count(b"\n#") - body.startswith(b"#")
    if path is not None:
        path.write_bytes(body)
    return {
        "series": series,
        "bytes": len(body),
        "gzip_bytes": len(gz),
        "plain_seconds": round(plain_s, 4),
        "gzip_seconds": round(gzip_s, 4),
        # gzip sanity: the served stream decompresses to the same series
        "gzip_ok": gzip.decompress(gz).count(b"\n") == body.count(b"\n"),
    }


def _rss() -> dict[str, int]:
    return {
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_bytes": psutil.Process().memory_info().rss,
    }


def worker_outputs(params: dict[str, Any], shard_text: str, expo: Path | None) -> dict[str, Any]:
    import collectors.outputs as co
    import fleetmon.outputs.pipeline as pl
    from benchmarks.scale_load import outputs_section
    from fleetmon.config import Config
    from fleetmon.exporter import Exporter
    from fleetmon.sharding import Shard

    shard = Shard.parse(shard_text)
    work = Path(params["work"])
    sdir = work / "shards" / f"{shard.count}-{shard.index}"
    shutil.rmtree(sdir, ignore_errors=True)
    cfg = Config.model_validate(
        {
            "fleet": params["fleet"],
            "shard": shard_text,
            "outputs": outputs_section(work, sdir, params["hours"]),
        }
    )
    models = len(cfg.fleet.models(shard))
    parts = Parts()
    # Timers around the product's functions, as the collectors call them (module globals and methods).
    pl.compute = parts.wrap("quality", pl.compute)
    pl.compute_versions = parts.wrap("versions", pl.compute_versions)
    for name in ("quality_families", "versions_families", "ingest_families"):
        setattr(co, name, parts.wrap("families", getattr(co, name)))
    co.render_families = parts.wrap("render", co.render_families)
    co.build_jobs = parts.wrap("drift_jobs", co.build_jobs)
    co.render_drift = parts.wrap("drift_render", co.render_drift)

    pipeline = co.pipeline_for(cfg)
    pipeline.ingest = parts.wrap("ingest", pipeline.ingest)  # type: ignore[method-assign]
    outputs, drift = co.OutputsCollector(cfg, pipeline), co.DriftCollector(cfg, pipeline)
    backend = drift.backend
    backend.run = parts.wrap("drift_engine", backend.run)
    exp = Exporter("outputs", {"outputs": outputs, "drift": drift}, shard)
    out: dict[str, Any] = {"kind": "outputs", "shard": shard_text, "models": models}
    try:
        w, c, _ = _timed(outputs.poll)
        out["initial_load"] = {"wall": round(w, 3), "cpu": round(c, 3), "parts": parts.take()}
        w, c, _ = _timed(drift.poll)  # cold: the engine's kernels compile here
        out["first_drift"] = {"wall": round(w, 3), "cpu": round(c, 3), "parts": parts.take()}
        with _measuring(work, shard):
            _measure_outputs(work, sdir, cfg, pipeline, outputs, drift, exp, parts, expo, out)
        out.update(_rss())
    finally:
        exp.stop()
    return out


@contextlib.contextmanager
def _measuring(work: Path, shard: Any) -> Iterator[None]:
    """The shards of a configuration load their history side by side (to save time), then measure one at
    a time: wait until every shard has loaded, then take the measuring lock."""
    import fcntl

    (work / f"loaded-{shard.count}-{shard.index}").touch()
    while not all((work / f"loaded-{shard.count}-{i}").exists() for i in range(shard.count)):
        time.sleep(0.5)
    with open(work / "measure.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _measure_outputs(work: Path, sdir: Path, cfg: Any, pipeline: Any, outputs: Any, drift: Any, exp: Any,
                     parts: Parts, expo: Path | None, out: dict[str, Any]) -> None:  # fmt: skip
    from benchmarks.scale_load import stage_cycle

    for cycle in (1, 2):  # the first warms caches; the second is the one reported
        stage_cycle(work, sdir, cycle)
        wp, cp, _ = _timed(outputs.poll)
        poll_parts = parts.take()
        wd, cd, _ = _timed(drift.poll)
        out[f"cycle{cycle}"] = {
            "poll_wall": round(wp, 3), "poll_cpu": round(cp, 3), "poll_parts": poll_parts,
            "drift_wall": round(wd, 3), "drift_cpu": round(cd, 3), "drift_parts": parts.take(),
            "wall": round(wp + wd, 3), "cpu": round(cp + cd, 3),
        }  # fmt: skip
    out["rows_retained"] = dict(zip(("predictions", "actuals"), map(int, pipeline.store.rows()), strict=True))
    out["drift_models"] = len(drift.results)
    # no-change polls: refresh_seconds (60) not reached, nothing new: the last series stand
    nochange = [_timed(outputs.poll) for _ in range(3)]
    skipped = parts.take()
    out["nochange"] = {
        "wall": round(statistics.median(x[0] for x in nochange), 4),
        "cpu": round(statistics.median(x[1] for x in nochange), 4),
        "walls": [round(x[0], 4) for x in nochange],
        "parts": skipped,
        "skipped_recompute": "quality" not in skipped,
    }
    cfg.outputs.refresh_seconds = 0  # every poll recomputes quality and versions and renders
    full = [_timed(outputs.poll) for _ in range(2)]
    out["full_recompute"] = {
        "wall": round(statistics.median(x[0] for x in full), 3),
        "cpu": round(statistics.median(x[1] for x in full), 3),
        "parts": {k: {kk: vv / 2 for kk, vv in v.items()} for k, v in parts.take().items()},
    }
    out["scrape"] = _scrape(exp, expo)


def _server_cpu(pid: int) -> float:
    """CPU-seconds of the MLflow server and its workers so far."""
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def worker_mlflow(params: dict[str, Any], shard_text: str, expo: Path | None) -> dict[str, Any]:
    import collectors.mlflow as cm
    from fleetmon.config import Config
    from fleetmon.exporter import Exporter
    from fleetmon.sharding import Shard

    shard = Shard.parse(shard_text)
    work = Path(params["work"])
    cfg = Config.model_validate(
        {
            "fleet": params["fleet"],
            "shard": shard_text,
            "mlflow": {
                "tracking_uri": params["mlflow_url"],
                "timeout_seconds": 300,
                "quarantine_file": str(work / "shards" / f"mlflow-{shard.count}-{shard.index}.jsonl"),
                # docs/scale.md: a shard skips other shards' experiments only with this set
                "experiment_pattern": params.get("experiment_pattern", ""),
            },
        }
    )
    parts = Parts()
    cm.render_families = parts.wrap("render", cm.render_families)
    coll = cm.MlflowCollector(cfg)
    coll._build_families = parts.wrap("families", coll._build_families)  # type: ignore[method-assign]
    exp = Exporter("mlflow", {"mlflow": coll}, shard)
    out: dict[str, Any] = {"kind": "mlflow", "shard": shard_text, "models": len(cfg.fleet.models(shard))}
    try:
        unchanged = params["mlflow_unchanged"] or shard.count == params["top"]
        for label in ("full", "unchanged") if unchanged else ("full",):
            r0, s0 = coll.client.request_count(), sum(coll.client.seconds().values())
            srv0 = _server_cpu(params["mlflow_pid"])
            w, c, ok = _timed(lambda: exp.poll_once("mlflow"))
            if not ok:
                raise SystemExit(f"mlflow poll failed: {exp.poll_states['mlflow'].last_error}")
            out[label] = {
                "wall": round(w, 3),
                "cpu": round(c, 3),
                "requests": coll.client.request_count() - r0,
                "waiting_for_mlflow": round(sum(coll.client.seconds().values()) - s0, 3),
                "server_cpu": round(_server_cpu(params["mlflow_pid"]) - srv0, 3),
                "parts": parts.take(),
            }
        out["runs_kept"] = len(coll._runs)
        out["registered_models_kept"] = len(coll._models)
        out["scrape"] = _scrape(exp, expo)
        out.update(_rss())
    finally:
        exp.stop()
    return out


def worker_main(args: argparse.Namespace) -> int:
    params = json.loads(Path(args.params).read_text())
    fn = {"outputs": worker_outputs, "mlflow": worker_mlflow}[args.worker]
    result = fn(params, args.shard, Path(args.exposition) if args.exposition else None)
    Path(args.result).write_text(json.dumps(result, indent=1))
    return 0


def run_workers(kind: str, shards: list[str], params: Path, work: Path,
                expos: list[Path | None]) -> list[dict[str, Any]]:  # fmt: skip
    """One subprocess per shard, all at once (outputs workers then measure one at a time: _measuring)."""
    procs, results = [], []
    t0 = time.perf_counter()
    for shard, expo in zip(shards, expos, strict=True):
        result = work / f"result-{kind}-{shard.replace('/', 'of')}.json"
        cmd = [sys.executable, "-m", "benchmarks.scale_bench", "--worker", kind, "--shard", shard,
               "--params", str(params), "--result", str(result)]  # fmt: skip
        if expo is not None:
            cmd += ["--exposition", str(expo)]
        procs.append(subprocess.Popen(cmd, cwd=ROOT))
        results.append(result)
    try:
        for proc in procs:
            if proc.wait(timeout=3600) != 0:
                raise SystemExit(f"{kind} worker failed: {proc.args}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outs = [json.loads(r.read_text()) for r in results]
    for o in outs:
        o["process_seconds"] = round(time.perf_counter() - t0, 1)
    return outs


# ========================================================================================= central store
def _get(url: str, timeout: float = 120) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        data: bytes = r.read()
        return data


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.path.getsize(os.path.join(root, f))
    return total


def _metric(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """Samples of ``name`` in a text exposition (simple parser: enough for VM's and vmalert's /metrics)."""
    out = []
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name) : len(name) + 1] not in ("{", " "):
            continue
        head, _, value = line.rpartition(" ")
        lab: dict[str, str] = {}
        if "{" in head:
            for item in head[head.index("{") + 1 : head.rindex("}")].split('",'):
                k, _, v = item.partition("=")
                lab[k.strip()] = v.strip().strip('"')
        if all(lab.get(k) == v for k, v in labels.items()):
            out.append((lab, float(value)))
    return out


class Central:
    """A VictoriaMetrics fed the shards' expositions as their Prometheus agents would write them."""

    def __init__(self, work: Path, interval: float) -> None:
        from fleetmon.procs import free_port, spawn, wait_for_http

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = work / "victoria-metrics"
        shutil.rmtree(self.data, ignore_errors=True)
        self.proc = spawn(
            [
                "victoria-metrics",
                f"-storageDataPath={self.data}",
                f"-httpListenAddr=127.0.0.1:{self.port}",
                "-retentionPeriod=1",
                "-search.latencyOffset=5s",  # as the scale mode runs it (fleetmon/scale.py)
            ],
            work / "victoria-metrics.log",
        )
        wait_for_http(f"{self.url}/health", timeout=60, proc=self.proc)
        self.ps = psutil.Process(self.proc.pid)
        self.interval = interval
        self.parts: list[tuple[bytes, str, int]] = []  # body, extra_label query, samples
        self.imports: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rss_samples: list[int] = []

    def add(self, body: bytes, labels: dict[str, str]) -> None:
        query = urllib.parse.urlencode([("extra_label", f"{k}={v}") for k, v in labels.items()])
        samples = body.count(b"\n") - body.count(b"\n#") - body.startswith(b"#")
        self.parts.append((body, query, samples))

    @property
    def samples_per_scrape(self) -> int:
        return sum(n for _, _, n in self.parts)

    def scrape(self, ts: float) -> dict[str, float]:
        """Import one scrape of every part, each line stamped ``ts`` (ms); returns samples and seconds."""
        stamp = b" %d\n" % int(ts * 1000)
        t0 = time.perf_counter()
        for body, query, _ in self.parts:
            # '# HELP' / '# TYPE' lines get the stamp too: they are comments, VM ignores them
            stamped = body.replace(b"\n", stamp)
            url = f"{self.url}/api/v1/import/prometheus?{query}"
            pos = 0
            while pos < len(stamped):
                end = stamped.find(b"\n", min(pos + CHUNK, len(stamped) - 1)) + 1 or len(stamped)
                req = urllib.request.Request(url, data=stamped[pos:end], method="POST")
                urllib.request.urlopen(req, timeout=600).read()
                pos = end
        rec = {"ts": ts, "samples": self.samples_per_scrape, "seconds": time.perf_counter() - t0}
        self.imports.append(rec)
        self.rss_samples.append(self.ps.memory_info().rss)
        return rec

    def flush(self) -> None:
        _get(f"{self.url}/internal/force_flush")
        time.sleep(1)

    def feed(self) -> None:
        """From now on one scrape every interval, in real time, until ``stop``."""

        def run() -> None:
            nxt = time.time()
            while not self._stop.is_set():
                nxt += self.interval
                try:
                    self.scrape(time.time())
                except Exception as e:  # keep feeding; the report shows the gap
                    log(f"import failed: {e}")
                self._stop.wait(max(0.0, nxt - time.time()))

        self._thread = threading.Thread(target=run, name="feed", daemon=True)
        self._thread.start()

    def stop_feed(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=600)

    def series(self) -> dict[str, float]:
        text = _get(f"{self.url}/metrics").decode()
        active = _metric(text, "vm_cache_entries", type="storage/hour_metric_ids")
        rows = _metric(text, "vm_rows_inserted_total")
        count = json.loads(_get(f"{self.url}/api/v1/series/count", timeout=300)).get("data", [0])[0]
        return {
            "active_series": active[0][1] if active else float("nan"),
            "series_total": float(count),
            "rows_inserted_total": sum(v for _, v in rows),
        }

    def rss(self) -> dict[str, int]:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        hwm = next(
            (int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM")), 0
        )
        return {"rss_bytes": self.ps.memory_info().rss, "peak_rss_bytes": hwm}

    def close(self) -> None:
        from fleetmon.procs import stop_group

        self.stop_feed()
        stop_group(self.proc)


def central_store(work: Path, parts: list[tuple[Path, dict[str, str]]], args: argparse.Namespace,
                  report: dict[str, Any], procs: list[Any]) -> Central:  # fmt: skip
    """Start VM, backfill ``--backfill-scrapes`` scrapes, measure; leaves the real-time feed running."""
    vm = Central(work, args.scrape_interval)
    procs.append(vm)
    for path, labels in parts:
        vm.add(path.read_bytes(), labels)
    k = args.backfill_scrapes
    end = time.time()
    start = end - (k - 1) * args.scrape_interval
    log(f"VM: backfilling {k} scrapes of {vm.samples_per_scrape:,} samples ...")
    first = vm.scrape(start)
    vm.flush()
    size1 = _dir_bytes(vm.data)
    log(f"VM: first scrape (new series) {first['seconds']:.1f} s, data dir {size1 / 2**20:.0f} MiB")
    t0 = time.perf_counter()
    rows0 = vm.series()["rows_inserted_total"]
    for j in range(1, k):
        vm.scrape(start + j * args.scrape_interval)
    backfill_s = time.perf_counter() - t0
    rows1 = vm.series()["rows_inserted_total"]
    vm.flush()
    size_k = _dir_bytes(vm.data)
    n = vm.samples_per_scrape
    per_sample = (size_k - size1) / max(1, (k - 1) * n)
    per_day_samples = n * 86400 / args.scrape_interval
    series = vm.series()
    report["central_store"] = {
        "import": "VictoriaMetrics /api/v1/import/prometheus, lines stamped with the scrape time, "
        "extra labels job/instance/shard/monitor as a shard's agent adds",
        "samples_per_scrape": n,
        "scrape_interval_seconds": args.scrape_interval,
        "backfill_scrapes": k,
        "first_scrape_seconds": round(first["seconds"], 2),
        "first_scrape_samples_per_second": round(n / first["seconds"]),
        "backfill_seconds": round(backfill_s, 2),
        "ingest_samples_per_second": round((k - 1) * n / backfill_s) if k > 1 else None,
        "vm_rows_inserted_per_second": round((rows1 - rows0) / backfill_s) if k > 1 else None,
        "needed_samples_per_second": round(n / args.scrape_interval),
        "active_series": series["active_series"],
        "series_total": series["series_total"],
        "disk_bytes_after_first_scrape": size1,
        "disk_bytes_after_backfill": size_k,
        "disk_bytes_per_sample": round(per_sample, 3),
        "disk_bytes_per_day": round(per_sample * per_day_samples + size1),
        "disk_method": "(size after the last backfilled scrape - size after the first) / samples between, "
        "x samples per day at the interval, + the size after the first scrape (one day's index); "
        "both after /internal/force_flush; an upper bound (background merges compress further)",
        **{f"after_backfill_{k2}": v for k2, v in vm.rss().items()},
    }
    log(
        f"VM: backfill {backfill_s:.1f} s ({report['central_store']['ingest_samples_per_second'] or 0:,} "
        f"samples/s), {series['active_series']:,.0f} active series, RSS {vm.rss()['rss_bytes'] / GiB:.2f} GiB"
    )
    vm.feed()
    return vm


# ================================================================================================ rules
class _Sink(BaseHTTPRequestHandler):
    """vmalert's notifier: an Alertmanager that accepts everything."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _rule_groups() -> list[str]:
    import yaml

    return [
        g["name"] for p in sorted(RULES_DIR.glob("*.yml")) for g in yaml.safe_load(p.read_text())["groups"]
    ]


def rules(work: Path, vm: Central, seconds: float, procs: list[Any]) -> dict[str, Any]:
    """vmalert on VM for ``seconds``, then stopped (the dashboards are measured without its queries)."""
    from fleetmon.procs import free_port, spawn, stop_group, wait_for_http
    from fleetmon.scale import render_vmalert_rules

    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    glob = render_vmalert_rules(sorted(RULES_DIR.glob("*.yml")), work / "vmalert-rules")
    port = free_port()
    before = vm.series()["series_total"]
    proc = spawn(
        [
            "vmalert",
            f"-rule={glob}",
            f"-datasource.url={vm.url}",
            f"-remoteWrite.url={vm.url}",
            f"-remoteRead.url={vm.url}",
            f"-notifier.url=http://127.0.0.1:{sink.server_address[1]}",
            f"-httpListenAddr=127.0.0.1:{port}",
            f"-evaluationInterval={RULE_INTERVAL:g}s",
            "-external.label=monitor=fleetmon",
        ],
        work / "vmalert.log",
    )

    class _Stop:
        def close(self) -> None:
            if proc.poll() is None:
                stop_group(proc)
                sink.shutdown()

    procs.append(_Stop())
    wait_for_http(f"http://127.0.0.1:{port}/health", timeout=60, proc=proc)
    log(f"vmalert: evaluating for {seconds:.0f} s ...")
    time.sleep(seconds)
    text = _get(f"http://127.0.0.1:{port}/metrics", timeout=600).decode()
    groups: dict[str, dict[str, float]] = {}
    for lab, v in _metric(text, "vmalert_iteration_duration_seconds"):
        g = groups.setdefault(lab.get("group", "?"), {})
        g[f"q{lab['quantile']}" if "quantile" in lab else "?"] = v
    for suffix in ("sum", "count"):
        for lab, v in _metric(text, f"vmalert_iteration_duration_seconds_{suffix}"):
            groups.setdefault(lab.get("group", "?"), {})[suffix] = v
    out: dict[str, Any] = {"groups": {}}
    for name in _rule_groups():
        groups.setdefault(name, {})  # no iteration finished yet: at least the whole run
    for name, g in sorted(groups.items()):
        if not g.get("count"):
            out["groups"][name] = {"iterations": 0, "mean_seconds": None, "max_quantile_seconds": None,
                                   "fraction_of_interval": round(seconds / RULE_INTERVAL, 4),
                                   "note": "no iteration finished within the run: fraction is a lower bound"}  # fmt: skip
            continue
        mean = g["sum"] / g["count"]
        top = max([v for k, v in g.items() if k.startswith("q") and v == v] or [mean])
        out["groups"][name] = {
            "iterations": int(g.get("count", 0)),
            "mean_seconds": round(mean, 4),
            "max_quantile_seconds": round(top, 4),
            "fraction_of_interval": round(max(top, mean) / RULE_INTERVAL, 4),
        }
    errors = _metric(text, "vmalert_recording_rules_errors_total") + _metric(
        text, "vmalert_alerting_rules_errors_total"
    )
    out["rule_errors"] = sum(v for _, v in errors)
    with contextlib.suppress(Exception):
        doc = json.loads(_get(f"http://127.0.0.1:{port}/api/v1/alerts"))
        out["alerts"] = len((doc.get("data") or {}).get("alerts") or [])
    out["interval_seconds"] = RULE_INTERVAL
    out["seconds"] = seconds
    procs[-1].close()  # its queries would queue with the dashboards' (VM runs a few queries at a time)
    try:  # VM may be too busy to answer within the timeout: the groups' figures stand without it
        out["recorded_series_added"] = vm.series()["series_total"] - before
    except OSError as e:
        out["recorded_series_added"] = f"unknown ({type(e).__name__}: {e})"
    return out


# =========================================================================================== dashboards
def dashboards(vm: Central, repeats: int, slow: float, budget: float) -> dict[str, Any]:
    """Each query ``repeats`` times; one slower than ``slow`` seconds runs once (its one time stands for p50
    and p95). Once ``budget`` seconds are spent the remaining queries are not run (counted)."""
    from fleetmon.dashboards.build import OUTPUT_DIR
    from fleetmon.dashboards.verify import (
        Context,
        Prometheus,
        load_dashboards,
        parse_duration,
        resolve,
        targets,
    )

    prom = Prometheus(vm.url, timeout=120)
    docs = load_dashboards(OUTPUT_DIR)
    queries: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    skipped = 0
    for uid in DASHBOARDS:
        doc = docs[uid]
        now = time.time()
        range_s = parse_duration(doc.get("time", {}).get("from", "now-6h").removeprefix("now-"))
        ctx = Context(now=now, range_s=range_s)
        resolve(doc, prom, ctx)
        for t in targets(doc):
            if time.perf_counter() - t_start > budget:
                skipped += 1  # over the budget: not run at all (reported)
                continue
            expr = ctx.interpolate(t.expr)
            times, status, series = [], "ok", 0
            for _ in range(repeats):
                t0 = time.perf_counter()
                try:
                    answer = prom.query(expr, ctx, t.instant)
                except Exception as e:  # the client's timeout
                    answer = {"status": "error", "error": f"{type(e).__name__}: {e}"}
                times.append(time.perf_counter() - t0)
                if answer.get("status") != "success":
                    status = f"error: {str(answer.get('error'))[:160]}"
                else:
                    series = len(answer["data"]["result"])
                if times[0] > slow:
                    break
            queries.append(
                {
                    "dashboard": uid,
                    "panel": t.panel,
                    "ref": t.ref,
                    "instant": t.instant,
                    "p50_seconds": round(float(np.percentile(times, 50)), 4),
                    "p95_seconds": round(float(np.percentile(times, 95)), 4),
                    "runs": len(times),
                    "series": series,
                    "status": status if status != "ok" or series else "empty",
                }
            )
    return {
        "queries": queries,
        "repeats": repeats,
        "p95_max": max(q["p95_seconds"] for q in queries),
        "p50_median": statistics.median(q["p50_seconds"] for q in queries),
        "errors": sum(q["status"].startswith("error") for q in queries),
        "not_run_over_budget": skipped,
        "empty": sum(q["status"] == "empty" for q in queries),
    }


# ================================================================================================= main
def exporters(kind: str, n: int, top: int, pfile: Path, work: Path, report: dict[str, Any]) -> list[Any]:
    """Shard count ``n``'s workers of one exporter; returns the (exposition, agent labels) of the largest."""
    port_off = {"mlflow": 1, "outputs": 2}[kind]
    expos = [work / "expo" / f"{kind}-{i}.prom" if n == top else None for i in range(n)]
    shards = [f"{i}/{n}" for i in range(n)]
    if kind == "outputs":  # loads side by side, measurements one at a time
        log(f"{kind} exporter, shards {', '.join(shards)} ...")
        ws = run_workers(kind, shards, pfile, work, expos)
    else:  # a full poll is mostly the MLflow server's work: one shard at a time
        ws = []
        for shard, expo in zip(shards, expos, strict=True):
            log(f"{kind} exporter, shard {shard} ...")
            ws += run_workers(kind, [shard], pfile, work, [expo])
    parts = []
    for i, w in enumerate(ws):
        w["load_average"] = _load()
        report["workers"].append(w)
        wall = w["cycle2"]["wall"] if kind == "outputs" else w["full"]["wall"]
        log(f"  {kind} {w['shard']}: cycle {wall:.2f} s, peak RSS {w['peak_rss_bytes'] / 2**20:.0f} MiB")
        if expos[i] is not None:
            labels = {"job": f"fleetmon-{kind}", "instance": f"127.0.0.1:{9800 + 10 * i + port_off}",
                      "shard": str(i), "monitor": "fleetmon"}  # fmt: skip
            parts.append((expos[i], labels))
    return parts


class _Closer:
    def __init__(self, fn: Callable[[], Any]) -> None:
        self.close = fn


def _fmt_s(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def summarize(report: dict[str, Any]) -> None:
    """The headline keys and the goals, computed from the details."""
    shards = report["shards"]
    n_models = report["models"]
    by: dict[int, list[dict[str, Any]]] = {n: [] for n in shards}
    for w in report["workers"]:
        by[int(w["shard"].split("/")[1])].append(w)
    cyc, mlf, noc, ratio, cpu = [], [], [], [], []
    for n in shards:
        outs = [w for w in by[n] if w["kind"] == "outputs"]
        mls = [w for w in by[n] if w["kind"] == "mlflow"]
        cyc.append(max(w["cycle2"]["wall"] for w in outs))
        mlf.append(max(w["full"]["wall"] for w in mls) if mls else 0.0)
        noc.append(max(w["nochange"]["wall"] for w in outs))
        ratio.append(max(w["nochange"]["wall"] / w["full_recompute"]["wall"] for w in outs))
        total_cpu = sum(w["cycle2"]["cpu"] for w in outs) + sum(w["full"]["cpu"] for w in mls)
        cpu.append(round(total_cpu / (n_models / 1000), 4))
    report.update(
        {
            "cycle_seconds_max": max(max(cyc), max(mlf)),
            "cycle_seconds_max_by_shards": [max(a, b) for a, b in zip(cyc, mlf, strict=True)],
            "outputs_cycle_seconds_max_by_shards": cyc,
            "mlflow_full_poll_seconds_max_by_shards": mlf,
            "nochange_poll_seconds_max": max(noc),
            "nochange_poll_seconds_max_by_shards": noc,
            "nochange_share_of_full_recompute_max_by_shards": [round(r, 4) for r in ratio],
            "cpu_seconds_per_1k_models": cpu,
        }
    )
    if "dashboards" in report:
        report["dashboard_query_p95_seconds_max"] = report["dashboards"]["p95_max"]
    if "rules" in report:
        report["rule_eval_fraction_max"] = max(
            (g["fraction_of_interval"] for g in report["rules"]["groups"].values()), default=None
        )
    if "central_store" in report:
        cs = report["central_store"]
        report["central_store_rss_bytes"] = cs.get("peak_rss_bytes", cs.get("after_backfill_peak_rss_bytes"))
    goals = {}
    for i, n in enumerate(shards):
        goals[f"cycle <= {GOAL_CYCLE_S:g} s ({n} shard{'s' * (n > 1)}: outputs cycle, mlflow full poll)"] = (
            report["cycle_seconds_max_by_shards"][i] <= GOAL_CYCLE_S
        )
        goals[f"no-change poll < 5% of a full one ({n} shard{'s' * (n > 1)})"] = (
            ratio[i] < GOAL_NOCHANGE_SHARE
        )
    if "dashboard_query_p95_seconds_max" in report:
        goals["dashboard p95 < 1 s"] = report["dashboard_query_p95_seconds_max"] < GOAL_DASHBOARD_P95_S
    if report.get("rule_eval_fraction_max") is not None:
        goals["rule eval < 20% of the interval"] = report["rule_eval_fraction_max"] < GOAL_RULE_FRACTION
    if "central_store_rss_bytes" in report:
        goals["central store < 6 GiB RSS"] = report["central_store_rss_bytes"] < GOAL_STORE_RSS
    report["goals"] = goals


def print_table(report: dict[str, Any]) -> None:
    print(f"\n==== scale benchmark: {report['models']:,} models ({report['buildings']:,} buildings), "
          f"load average {report['load_start']} at start, {report['load_end']} at the end ====")  # fmt: skip
    ld = report["load"]
    print(f"load: {ld['history_prediction_rows']:,} history prediction rows ({ld['history_hours']} h, "
          f"{ld['rows_per_hour']:,}/h incl. {ld['challenger_models']:,} challengers' shadow rows) written in "
          f"{ld['history_seconds']} s; MLflow: {report['mlflow_seed']}")  # fmt: skip
    hdr = f"{'exporter':<9}{'shard':>6}{'models':>8}{'cycle s':>9}{'cpu s':>8}  parts (wall s)"
    print("\n" + hdr)
    for w in report["workers"]:
        if w["kind"] == "outputs":
            c = w["cycle2"]
            parts = {**{k: v["wall"] for k, v in c["poll_parts"].items()},
                     **{k: v["wall"] for k, v in c["drift_parts"].items()}}  # fmt: skip
            detail = ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
            print(f"{'outputs':<9}{w['shard']:>6}{w['models']:>8}{c['wall']:>9.2f}{c['cpu']:>8.2f}  {detail}")
        else:
            f = w["full"]
            detail = (f"{f['requests']} requests, waiting for MLflow {f['waiting_for_mlflow']:.2f}, server cpu "
                      f"{f['server_cpu']:.2f}, " + ", ".join(f"{k} {v['wall']:.2f}" for k, v in f["parts"].items()))  # fmt: skip
            print(
                f"{'mlflow':<9}{w['shard']:>6}{w['models']:>8}{f['wall']:>9.2f}{f['cpu']:>8.2f}  full poll: {detail}"
            )
    print(f"\n{'exporter':<9}{'shard':>6}{'no-change s':>12}{'full recomp s':>14}{'share':>7}"
          f"{'scrape ms':>10}{'gzip ms':>9}{'MiB':>7}{'gz MiB':>8}{'series':>10}{'peak RSS MiB':>13}{'load s':>8}")  # fmt: skip
    for w in report["workers"]:
        s = w["scrape"]
        if w["kind"] == "outputs":
            nc, fr = w["nochange"]["wall"], w["full_recompute"]["wall"]
            a, b, share = f"{nc:.4f}", f"{fr:.3f}", f"{nc / fr:.1%}"
        elif "unchanged" not in w:
            a, b, share = "-", f"{w['full']['wall']:.2f}", "-"
        else:
            a, b, share = (
                f"{w['unchanged']['wall']:.3f}",
                f"{w['full']['wall']:.2f}",
                f"{w['unchanged']['wall'] / w['full']['wall']:.1%}",
            )
        load = w.get("initial_load", {}).get("wall", float("nan"))
        print(f"{w['kind']:<9}{w['shard']:>6}{a:>12}{b:>14}{share:>7}{s['plain_seconds'] * 1e3:>10.0f}"
              f"{s['gzip_seconds'] * 1e3:>9.0f}{s['bytes'] / 2**20:>7.1f}{s['gzip_bytes'] / 2**20:>8.1f}"
              f"{s['series']:>10,}{w['peak_rss_bytes'] / 2**20:>13.0f}{load:>8.1f}")  # fmt: skip
    print("  (mlflow rows: no-change = incremental poll with nothing changed, full recomp = full poll)")
    print("\nCPU-seconds per 1,000 models per cycle (outputs cycle + mlflow full poll, all shards): "
          + ", ".join(f"{n} shard{'s' * (n > 1)}: {c}" for n, c in zip(report["shards"], report["cpu_seconds_per_1k_models"], strict=True)))  # fmt: skip
    cs = report.get("central_store")
    if cs:
        print(f"\ncentral store (VictoriaMetrics 1.79): {cs['active_series']:,.0f} active series (hour_metric_ids) "
              f"({cs['series_total']:,.0f} with recorded ones at the end: {report.get('series_total_end', 0):,.0f}); "
              f"{cs['samples_per_scrape']:,} samples per scrape every {cs['scrape_interval_seconds']:g} s "
              f"(needs {cs['needed_samples_per_second']:,}/s); ingest {cs['ingest_samples_per_second'] or 0:,} samples/s "
              f"(first scrape, new series: {cs['first_scrape_seconds']} s); real-time imports "
              f"{report.get('feed_import_seconds_median', 0):.1f} s median, {report.get('feed_import_seconds_max', 0):.1f} s max "
              f"of {report.get('feed_imports', 0)}; RSS peak {cs.get('peak_rss_bytes', cs.get('after_backfill_peak_rss_bytes', 0)) / GiB:.2f} GiB; "
              f"disk ~{cs['disk_bytes_per_day'] / GiB:.1f} GiB/day ({cs['disk_bytes_per_sample']:.2f} B/sample)")  # fmt: skip
    r = report.get("rules")
    if r:
        print(f"\nrules (vmalert, {r['interval_seconds']:g} s interval; {r['rule_errors']:.0f} rule errors, "
              f"{r.get('alerts', '?')} alerts, {r['recorded_series_added']:,.0f} recorded series):")  # fmt: skip
        for g, v in r["groups"].items():
            if not v["iterations"]:
                print(
                    f"  {g:<32}   0 iterations in {r.get('seconds', 0):.0f} s: at least {v['fraction_of_interval']:.0%} of the interval"
                )
                continue
            print(
                f"  {g:<32}{v['iterations']:>4} iterations  mean {v['mean_seconds']:.3f} s  "
                f"max quantile {v['max_quantile_seconds']:.3f} s  {v['fraction_of_interval']:.1%} of the interval"
            )
    d = report.get("dashboards")
    if d:
        print(f"\ndashboard queries ({len(d['queries'])} x {d['repeats']}; {d['errors']} errors, {d['empty']} empty): "
              f"median p50 {d['p50_median'] * 1e3:.0f} ms, max p95 {d['p95_max'] * 1e3:.0f} ms; heaviest:")  # fmt: skip
        for q in sorted(d["queries"], key=lambda q: -q["p95_seconds"])[:6]:
            print(f"  p95 {q['p95_seconds'] * 1e3:7.0f} ms  p50 {q['p50_seconds'] * 1e3:7.0f} ms  "
                  f"{q['dashboard']} / {q['panel']} [{q['ref']}]{' (range)' if not q['instant'] else ''}")  # fmt: skip
    print("\ngoals:")
    for g, ok in report["goals"].items():
        print(f"  {'yes' if ok else 'NO ':<4} {g}")
    print(f"\nrun took {report['run_seconds'] / 60:.1f} min (phases: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in report["phase_seconds"].items()) + ")")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale_bench", description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=40000, help="fleet size (4 models per building)")
    p.add_argument("--shards", type=int, nargs="+", default=[1, 2], help="shard counts, side by side")
    p.add_argument(
        "--hours", type=int, default=192, help="hours of outputs (8 days: drift reference + current)"
    )
    p.add_argument("--challenger-share", type=float, default=0.05, help="models running a challenger")
    p.add_argument("--runs-per-model", type=int, default=4, help="MLflow runs per model")
    p.add_argument("--versions-per-model", type=int, default=2, help="registered versions per model")
    p.add_argument("--scrape-interval", type=float, default=15.0, help="seconds between simulated scrapes")
    p.add_argument("--backfill-scrapes", type=int, default=20, help="scrapes imported before measuring")
    p.add_argument("--rule-seconds", type=float, default=90.0, help="how long vmalert evaluates")
    p.add_argument("--query-repeats", type=int, default=5, help="runs of each dashboard query")
    p.add_argument(
        "--slow-query", type=float, default=5.0, help="a dashboard query slower than this runs once"
    )
    p.add_argument(
        "--dashboard-budget", type=float, default=600.0, help="seconds of dashboard queries, then once each"
    )
    p.add_argument(
        "--no-mlflow-unchanged",
        action="store_true",
        help="the unchanged MLflow poll only for the largest shard count (it pages the whole registry)",
    )
    p.add_argument(
        "--experiment-pattern",
        default="{customer}/{building}",
        help='mlflow.experiment_pattern of the MLflow shards ("": every shard reads every experiment)',
    )
    p.add_argument("--skip-mlflow", action="store_true", help="outputs exporter only")
    p.add_argument("--cache-dir", type=Path, default=ROOT / "var" / "bench")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--json", type=Path, help="write the report here")
    # internal: one exporter of one shard, in a subprocess of its own
    p.add_argument("--worker", choices=["outputs", "mlflow"], help=argparse.SUPPRESS)
    p.add_argument("--shard", help=argparse.SUPPRESS)
    p.add_argument("--params", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--exposition", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args)
    return run(args)


def run(args: argparse.Namespace) -> int:
    from benchmarks.scale_load import fleet_dict, seed_mlflow, write_outputs
    from fleetmon.procs import MLFLOW_ENV, free_port, start_mlflow_server, stop_group

    t_run = time.perf_counter()
    buildings = args.models // 4
    work = args.cache_dir / f"scale-work-{args.models}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "expo").mkdir()
    report: dict[str, Any] = {
        "models": buildings * 4, "buildings": buildings, "shards": args.shards, "load_start": _load(),
        "started_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if v is not None},
        "platform_logs": "none (the platform exporter's series are per app and host, not per model)",
        "workers": [], "phase_seconds": {},
    }  # fmt: skip
    phases = report["phase_seconds"]
    procs: list[Any] = []  # everything started, closed in reverse order whatever happens

    @contextlib.contextmanager
    def phase(name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            phases[name] = round(time.perf_counter() - t0, 1)

    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # cleanup in `finally` on SIGTERM too
    try:
        fleet = fleet_dict(buildings)
        with phase("write outputs"):
            log(f"writing {args.hours} h of outputs for {buildings * 4:,} models ...")
            report["load"] = write_outputs(work, fleet, args.hours, args.challenger_share)
        params: dict[str, Any] = {"work": str(work), "fleet": fleet, "hours": args.hours}
        server = None
        if not args.skip_mlflow:
            with phase("mlflow seed"):
                log("MLflow: seeding (or using the cache) ...")
                cache, counts = seed_mlflow(
                    args.cache_dir, fleet, args.runs_per_model, args.versions_per_model
                )
                report["mlflow_seed"] = counts
                shutil.copytree(cache, work / "mlflow", ignore=shutil.ignore_patterns("complete"))
            port = free_port()
            assert MLFLOW_ENV
            server = start_mlflow_server(port, work / "mlflow", timeout=300)
            procs.append(_Closer(lambda: stop_group(server)))
            params.update(mlflow_url=f"http://127.0.0.1:{port}", mlflow_pid=server.pid)
        else:
            report["mlflow_seed"] = "skipped"
        params.update(
            top=max(args.shards),
            mlflow_unchanged=not args.no_mlflow_unchanged,
            experiment_pattern=args.experiment_pattern,
        )
        pfile = work / "params.json"
        pfile.write_text(json.dumps(params))
        central_parts: list[tuple[Path, dict[str, str]]] = []
        top = max(args.shards)
        with phase("exporters"):
            # The smaller shard counts' MLflow polls go last, after the store: they are needed only for the
            # 1-vs-2 comparison, the store needs the largest count's expositions (a shorter critical path).
            steps = [("outputs", n) for n in args.shards] + [("mlflow", top)] * (server is not None)
            for kind, n in steps:
                central_parts += exporters(kind, n, top, pfile, work, report)
        late = [("mlflow", n) for n in args.shards if n != top] if server is not None else []
        with phase("central store"):
            vm = central_store(work, central_parts, args, report, procs)
        with phase("rules"):
            report["rules"] = rules(work, vm, args.rule_seconds, procs)
        with phase("dashboards"):
            log("dashboards: every panel query ...")
            report["dashboards"] = dashboards(vm, args.query_repeats, args.slow_query, args.dashboard_budget)
        vm.stop_feed()
        feed = vm.imports[args.backfill_scrapes :]
        report["feed_imports"] = len(feed)
        if feed:
            report["feed_import_seconds_median"] = round(statistics.median(x["seconds"] for x in feed), 2)
            report["feed_import_seconds_max"] = round(max(x["seconds"] for x in feed), 2)
            report["feed_kept_up"] = all(x["seconds"] < args.scrape_interval for x in feed)
        report["series_total_end"] = vm.series()["series_total"]
        report["central_store"].update(vm.rss())
        vm.close()  # its CPU back for the MLflow polls below
        with phase("exporters (mlflow, late)"):
            for kind, n in late:
                exporters(kind, n, top, pfile, work, report)
    except (KeyboardInterrupt, SystemExit, Exception) as e:
        report["interrupted"] = f"{type(e).__name__}: {e}"  # the figures so far are still reported
        log(f"interrupted: {report['interrupted']}")
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(Exception):
                proc.close()
    report["load_end"] = _load()
    report["run_seconds"] = round(time.perf_counter() - t_run, 1)
    try:
        summarize(report)
    except Exception as e:  # a partial run: the details are still written
        report["summary_error"] = f"{type(e).__name__}: {e}"
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str))
    try:
        print_table(report)
    except Exception as e:
        print(f"(table incomplete: {type(e).__name__}: {e})")
    if args.json:
        print(f"report: {args.json}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
