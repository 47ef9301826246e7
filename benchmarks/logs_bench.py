"""Log parsing throughput, memory and scrape time of the platform exporter, against a naive baseline.

    .venv/bin/python -m benchmarks.logs_bench --size-mb 64          # quick
    .venv/bin/python -m benchmarks.logs_bench --size-mb 1024        # the issue's 1 GiB

Generates a log mixing every format (Docker json-file, CRI with partial records, Azure console and system
records, plain combined access lines, and the real platforms' and servers' shapes of ``REAL_FORMATS``) of
about ``--size-mb``, plus one file per format, then measures in one run, side by side on the same files:

- lines/s per format and overall, for fleetmon's tailer (``LogTailer``: chunked reads, msgspec, first-byte
  dispatch) and for a naive baseline (``readline`` + ``json.loads`` + the same regexes per line);
- peak memory (RSS high-water mark of a fresh child process) parsing the mixed file at full size and at a
  quarter of it: flat memory means the two are about equal;
- collect() time of the logs collector with the route cap reached on every app.

Figures are ratios measured in the same run; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FORMATS = ("docker", "cri", "azure_console", "azure_system", "access")
# Shapes of real platforms and servers (docs/formats.md), each a mix of its own:
# - azure_la: Log Analytics `_CL` rows (suffixed columns), console and system, some with every value a string;
# - azure_monitor: Azure Monitor resource-specific rows with all their columns (`Type` = the table);
# - servers: nginx with $request_time, gunicorn with %(L)s, uvicorn coloured, JSON request logs (in Docker);
# - apps: JSON and logfmt lines with lower-case levels, Python tracebacks, Spring Boot lines (in Docker).
REAL_FORMATS = ("azure_la", "azure_monitor", "servers", "apps")
APPS = ["gateway", "api", "model-serving", "training-api", "training-processor", "mlflow", "system"]
PATHS = (
    "/api/v1/buildings/c{c:02d}-b{b:03d}/forecast",
    "/api/v1/customers/c{c:02d}/buildings",
    "/api/v1/models/c{c:02d}.c{c:02d}-b{b:03d}.heating.forecast/versions/{v}",
    "/api/v1/jobs/{uuid}",
    "/health",
)


def _ts(i: int) -> str:
    return f"2026-11-22T10:{(i // 60) % 60:02d}:{i % 60:02d}.{i % 1000:03d}456789Z"


def _app_line(rng: random.Random, i: int) -> str:
    r = rng.random()
    if r < 0.5:
        c, b = rng.randint(1, 4), rng.randint(1, 200)
        path = rng.choice(PATHS).format(c=c, b=b, v=rng.randint(1, 9), uuid=f"{rng.getrandbits(128):032x}")
        if "{uuid}" not in path and "jobs" in path:
            pass
        status = rng.choice((200, 200, 200, 201, 304, 404, 500, 503))
        return (
            f"10.0.{rng.randint(0, 3)}.{rng.randint(2, 250)} - - [22/Nov/2026:10:00:{i % 60:02d} +0000] "
            f'"GET {path} HTTP/1.1" {status} {rng.randint(100, 9000)} "-" "python-requests/2.32.3"'
        )
    if r < 0.6:
        return f"2026-11-22 10:00:00,123 ERROR [api.routes] lookup failed: KeyError: 'c01-b{rng.randint(1, 99):03d}'"
    if r < 0.65:
        return (
            f"2026-11-22 10:00:00,123 INFO [trainer.worker] Received message job_id={rng.getrandbits(32):08x}"
        )
    return (
        f"2026-11-22 10:00:00,123 INFO [serving.predict] scored model=c01.c01-b{rng.randint(1, 99):03d}.heating"
        f".forecast version={rng.randint(1, 6)} rows=24 latency_ms={rng.randint(8, 140)}"
    )


def _clf(i: int) -> str:
    return f"22/Nov/2026:10:{(i // 60) % 60:02d}:{i % 60:02d} +0000"


def _path(rng: random.Random) -> str:
    c, b = rng.randint(1, 4), rng.randint(1, 200)
    return rng.choice(PATHS).format(c=c, b=b, v=rng.randint(1, 9), uuid=f"{rng.getrandbits(128):032x}")


def _server_line(rng: random.Random, i: int) -> str:
    status = rng.choice((200, 200, 200, 201, 304, 404, 500, 503))
    ip = f"10.0.{rng.randint(0, 3)}.{rng.randint(2, 250)}"
    r = rng.random()
    if r < 0.35:  # nginx: combined with $request_time appended
        return (
            f'{ip} - - [{_clf(i)}] "GET {_path(rng)} HTTP/1.1" {status} {rng.randint(100, 9000)} "-" '
            f'"python-requests/2.32.3" {rng.lognormvariate(-3, 1):.3f}'
        )
    if r < 0.55:  # gunicorn: its default format with %(L)s appended
        return (
            f'{ip} - - [{_clf(i)}] "POST {_path(rng)} HTTP/1.1" {status} {rng.randint(100, 9000)} "-" '
            f'"python-httpx/0.27.0" {rng.lognormvariate(-3, 1):.6f}'
        )
    if r < 0.75:  # uvicorn with a TTY: coloured level and status
        return (
            f'\x1b[32mINFO\x1b[0m:     {ip}:{rng.randint(30000, 60000)} - "\x1b[1mGET {_path(rng)} HTTP/1.1\x1b[0m" '
            f"\x1b[32m{status} OK\x1b[0m"
        )
    return json.dumps(  # a model server's JSON request log
        {
            "time": _ts(i)[:23] + "Z",
            "level": "info",
            "logger": "serving.access",
            "method": "POST",
            "path": _path(rng),
            "status": status,
            "duration_ms": round(rng.lognormvariate(3, 0.6), 1),
        }
    )


_TRACEBACK = (
    "Traceback (most recent call last):",
    '  File "/app/serving/predict.py", line 88, in score',
    "    frame = features.loc[key]",
    '  File "/usr/local/lib/python3.11/site-packages/pandas/core/indexing.py", line 1191, in __getitem__',
    "    return self._getitem_axis(maybe_callable, axis=axis)",
    "KeyError: 'c01-b003'",
)


def _app_records(rng: random.Random, i: int) -> list[str]:
    """Application lines (one or several: a traceback) as frameworks write them."""
    r = rng.random()
    if r < 0.4:
        level = rng.choice(("info", "info", "info", "warning", "error"))
        return [
            json.dumps(
                {
                    "time": _ts(i)[:23] + "Z",
                    "level": level,
                    "logger": "api.routes",
                    "message": f"lookup building=c01-b{rng.randint(1, 99):03d}",
                }
            )
        ]
    if r < 0.7:
        level = rng.choice(("info", "info", "debug", "warn", "error"))
        return [
            f'time={_ts(i)[:23]}Z level={level} msg="scored model" rows=24 latency_ms={rng.randint(8, 140)}'
        ]
    if r < 0.85:
        return [
            f"{_ts(i)[:23]}Z  INFO 1 --- [nio-8080-exec-{rng.randint(1, 9)}] o.s.web.servlet.DispatcherServlet"
            "        : Completed initialization in 1 ms"
        ]
    return [f"{_ts(i)[:10]} 10:00:00,123 ERROR [serving.predict] scoring failed", *_TRACEBACK]


def make_line(fmt: str, rng: random.Random, i: int) -> str:
    if fmt == "azure_la":
        app = rng.choice(APPS[:-1])
        if rng.random() < 0.7:
            rec: dict[str, object] = {
                "TenantId": "6b1e3a52-7c0d-4f7e-9c1e-3d2b8a9f0e11",
                "SourceSystem": "RestAPI",
                "TimeGenerated": _ts(i)[:23] + "Z",
                "ContainerAppName_s": app,
                "EnvironmentName_s": "energyhub-prod",
                "RevisionName_s": f"{app}--r1",
                "ContainerName_s": app,
                "ContainerGroupName_s": f"{app}--r1-5d9c7",
                "ContainerGroupId_g": "d9b2c1f0-1111-4a5b-9c8d-0e1f2a3b4c5d",
                "ContainerId_s": f"{rng.getrandbits(128):032x}",
                "ContainerImage_s": f"energyhub.azurecr.io/{app}:1.4.2",
                "Stream_s": "stdout",
                "Log_s": _app_line(rng, i),
                "Type": "ContainerAppConsoleLogs_CL",
                "_ResourceId": "",
            }
        else:
            reason = rng.choice(("ReplicaUnhealthy", "ContainerStarted", "ImagePulled", "KEDAScalersStarted"))
            rec = {
                "TenantId": "6b1e3a52-7c0d-4f7e-9c1e-3d2b8a9f0e11",
                "SourceSystem": "RestAPI",
                "TimeGenerated": _ts(i)[:23] + "Z",
                "ContainerAppName_s": app,
                "EnvironmentName_s": "energyhub-prod",
                "RevisionName_s": f"{app}--r3",
                "ReplicaName_s": f"{app}--r3-7f9d-{rng.randint(0, 4)}",
                "Type_s": "Warning" if reason == "ReplicaUnhealthy" else "Normal",
                "Reason_s": reason,
                "Log_s": "Readiness probe failed: HTTP probe failed with statuscode: 503",
                "EventSource_s": "ContainerAppController",
                "Count_d": 1,
                "Type": "ContainerAppSystemLogs_CL",
                "_ResourceId": "",
            }
        if rng.random() < 0.3:  # as `az monitor log-analytics query` returns them: every value a string
            rec = {k: str(v) for k, v in rec.items()}
        return json.dumps(rec)
    if fmt == "azure_monitor":
        app = rng.choice(APPS[:-1])
        rid = f"/subscriptions/0b8c/resourcegroups/energyhub/providers/microsoft.app/containerapps/{app}"
        return json.dumps(
            {
                "TenantId": "6b1e3a52-7c0d-4f7e-9c1e-3d2b8a9f0e11",
                "TimeGenerated": _ts(i)[:23] + "Z",
                "ContainerAppName": app,
                "ContainerGroupId": "d9b2c1f0-1111-4a5b-9c8d-0e1f2a3b4c5d",
                "ContainerGroupName": f"{app}--r1-5d9c7",
                "ContainerId": f"{rng.getrandbits(128):032x}",
                "ContainerImage": f"energyhub.azurecr.io/{app}:1.4.2",
                "ContainerName": app,
                "EnvironmentName": "energyhub-prod",
                "JobName": "",
                "Log": _app_line(rng, i),
                "RevisionName": f"{app}--r1",
                "Stream": "stdout",
                "SourceSystem": "Azure",
                "Type": "ContainerAppConsoleLogs",
                "_ResourceId": rid,
            }
        )
    if fmt == "servers":
        return json.dumps({"log": _server_line(rng, i) + "\n", "stream": "stdout", "time": _ts(i)})
    if fmt == "apps":
        stream = "stderr" if rng.random() < 0.5 else "stdout"
        return "\n".join(
            json.dumps({"log": line + "\n", "stream": stream, "time": _ts(i)})
            for line in _app_records(rng, i)
        )
    if fmt == "docker":
        return json.dumps({"log": _app_line(rng, i) + "\n", "stream": "stdout", "time": _ts(i)})
    if fmt == "cri":
        line = _app_line(rng, i)
        if rng.random() < 0.1:  # a split line: P then F
            return f"{_ts(i)} stdout P {line[:40]}\n{_ts(i)} stdout F {line[40:]}"
        return f"{_ts(i)} stdout F {line}"
    if fmt == "azure_console":
        app = rng.choice(APPS[:-1])
        return json.dumps(
            {
                "TimeGenerated": _ts(i)[:23] + "Z",
                "ContainerAppName": app,
                "RevisionName": f"{app}--r1",
                "ContainerGroupName": f"{app}--r1-5d9c7",
                "ContainerName": app,
                "Stream": "stdout",
                "Log": _app_line(rng, i),
            }
        )
    if fmt == "azure_system":
        app = rng.choice(APPS[:-1])
        reason = rng.choice(("ReplicaCount", "MemoryUsage", "ReplicaUnhealthy", "ContainerStarted"))
        rec = {
            "TimeGenerated": _ts(i)[:23] + "Z",
            "ContainerAppName": app,
            "RevisionName": f"{app}--r3",
            "ReplicaName": f"{app}--r3-7f9d-{rng.randint(0, 4)}",
            "Type": "Warning" if reason == "ReplicaUnhealthy" else "Normal",
            "Reason": reason,
            "Log": "Readiness probe failed: HTTP probe failed with statuscode: 503",
            "Count": 1,
        }
        if reason == "ReplicaCount":
            rec["Replicas"] = rng.randint(1, 5)
        if reason == "MemoryUsage":
            rec |= {"WorkingSetBytes": rng.randint(100, 900) << 20, "LimitBytes": 1 << 30}
        return json.dumps(rec)
    return _app_line(rng, i) if False else _access_line(rng, i)


def _access_line(rng: random.Random, i: int) -> str:
    line = _app_line(rng, i)
    while not line.startswith("10."):
        line = _app_line(rng, i)
    return line


def generate(path: Path, size: int, formats: tuple[str, ...], seed: int = 1) -> int:
    """Write about ``size`` bytes of lines of the given formats (round-robin blocks); returns lines."""
    rng = random.Random(seed)
    # A pool of generated lines reused in shuffled blocks: generating 1 GiB line by line in Python would
    # take longer than parsing it.
    pool = {f: [make_line(f, rng, i) for i in range(4000)] for f in formats}
    lines = 0
    written = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < size:
            f = formats[lines % len(formats)] if len(formats) > 1 else formats[0]
            block = rng.sample(pool[f], 500)
            text = "\n".join(block) + "\n"
            out.write(text)
            written += len(text.encode())
            lines += text.count("\n")
    return lines


# ------------------------------------------------------------------------------------- parsers
ACCESS_RE = re.compile(
    r'(\S+) \S+ \S+ \[([^\]]+)\] "(?:([A-Za-z]+) (\S+)(?: [^"]*)?|[^"]*)" (\d{3}) (?:\d+|-)'
)
CRI_RE = re.compile(r"(\S+) (stdout|stderr) ([FP]) ?(.*)")
ERR_RE = re.compile(r"\b(ERROR|CRITICAL)\b.*?\b([A-Za-z_][\w.]*(?:Error|Exception))\b")


def naive_parse(path: Path) -> int:
    """The baseline: readline, json.loads, a regex per line, dict counters."""
    counts: dict[tuple[str, ...], int] = {}
    n = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            n += 1
            line = line.rstrip("\n")
            msg = None
            if line.startswith("{"):
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if "log" in rec:
                    msg = rec["log"]
                elif "Reason" in rec or "Reason_s" in rec:
                    reason = rec.get("Reason", rec.get("Reason_s"))
                    k = ("event", rec.get("ContainerAppName", rec.get("ContainerAppName_s", "")), reason)
                    counts[k] = counts.get(k, 0) + 1
                    continue
                else:
                    msg = rec.get("Log", rec.get("Log_s"))
            else:
                m = CRI_RE.match(line)
                msg = m.group(4) if m else line
            if msg is None:
                continue
            a = ACCESS_RE.match(msg)
            if a:
                k = ("req", a.group(3) or "", a.group(4) or "", a.group(5))
                counts[k] = counts.get(k, 0) + 1
                continue
            e = ERR_RE.search(msg)
            if e:
                k = ("err", e.group(2))
                counts[k] = counts.get(k, 0) + 1
    return n


def fleetmon_parse(path: Path, work: Path, max_routes: int = 100) -> int:
    from collectors.logs import LogTailer
    from fleetmon.config import LogsConfig

    d = work / f"run-{path.stem}-{time.monotonic_ns()}"
    d.mkdir()
    cfg = LogsConfig(
        apps={a: ([str(path)] if a == "gateway" else []) for a in APPS},
        max_routes=max_routes,
        state_file=d / "state.json",
        quarantine_file=d / "q.jsonl",
    )
    t = LogTailer(cfg)
    try:
        t.poll()
        rejected = sum(sum(s.rejected.values()) for s in t.stats.values())
        lines = sum(sum(s.lines.values()) for s in t.stats.values()) + rejected
        if rejected:
            print(f"  note: {rejected} rejected lines in {path.name}", file=sys.stderr)
        return lines
    finally:
        t.close()


def timed(fn, *args):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    cpu0 = time.process_time()
    n = fn(*args)
    return n, time.perf_counter() - start, time.process_time() - cpu0


def peak_rss_child(path: Path, work: Path) -> float:
    """Peak RSS (MiB) of a fresh interpreter that parses ``path`` with fleetmon."""
    code = (
        "import sys,resource; from pathlib import Path; from benchmarks.logs_bench import fleetmon_parse;"
        "fleetmon_parse(Path(sys.argv[1]), Path(sys.argv[2]));"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), str(work)], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip().splitlines()[-1]) / 1024.0


def _word(i: int) -> str:
    """A distinct digit-free path segment per i (digits would be replaced by {id})."""
    out = ""
    while True:
        out += chr(97 + i % 26)
        i //= 26
        if not i:
            return out


def scrape_time(work: Path, max_routes: int) -> tuple[float, int]:
    """collect() time of the logs collector with every app at the route cap."""
    from collectors.logs import LogsCollector
    from fleetmon.config import Config, LogsConfig, PlatformConfig

    d = work / "scrape"
    d.mkdir(exist_ok=True)
    rng = random.Random(3)
    for app in APPS:
        with open(d / f"{app}.log", "w") as f:
            for i in range(max_routes * 6):
                status = rng.choice((200, 404, 500, 503))
                method = rng.choice(("GET", "POST"))
                f.write(
                    f'10.0.0.1 - - [22/Nov/2026:10:00:00 +0000] "{method} /{_word(i)}/things HTTP/1.1" {status} 1\n'
                )
    cfg = Config(
        platform=PlatformConfig(
            logs=LogsConfig(
                apps={a: [str(d / f"{a}.log")] for a in APPS},
                max_routes=max_routes,
                state_file=d / "state.json",
                quarantine_file=d / "q.jsonl",
            )
        )
    )
    coll = LogsCollector(cfg)
    try:
        coll.poll()
        series = sum(len(m.samples) for m in coll.collect())
        n = 20
        start = time.perf_counter()
        for _ in range(n):
            for m in coll.collect():
                _ = m.samples
        return (time.perf_counter() - start) / n, series
    finally:
        coll.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.logs_bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--size-mb", type=float, default=64, help="size of the mixed log (1024 = the issue's 1 GiB)"
    )
    p.add_argument(
        "--per-format-mb", type=float, default=None, help="size of each single-format file (default size/8)"
    )
    p.add_argument("--max-routes", type=int, default=100)
    p.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        size = int(args.size_mb * 2**20)
        per = int((args.per_format_mb or args.size_mb / 8) * 2**20)
        print(f"# fleetmon logs benchmark: mixed {size / 2**20:.0f} MiB, {per / 2**20:.0f} MiB per format")
        print(
            f"{'input':<15}{'lines':>12}{'fleetmon l/s':>15}{'naive l/s':>13}{'ratio':>8}{'fleetmon MiB/s':>16}"
        )
        every = FORMATS + REAL_FORMATS
        # "mixed" is every shape; "mixed_classic" the first five only (the figures of earlier runs)
        rows = [(f, (f,), per) for f in every] + [("mixed_classic", FORMATS, size), ("mixed", every, size)]
        import collectors.logs  # noqa: F401  (import cost is not parse cost)

        for name, fmts, sz in rows:
            path = work / f"{name}.log"
            generate(path, sz, fmts)
            n1, _wall1, cpu1 = timed(fleetmon_parse, path, work)
            n0, _wall0, cpu0 = timed(naive_parse, path)
            mib = path.stat().st_size / 2**20
            # lines per CPU second = lines/s per core (the tailer is single-threaded)
            r1, r0 = n1 / cpu1, n0 / cpu0
            print(f"{name:<15}{n1:>12,}{r1:>15,.0f}{r0:>13,.0f}{r1 / r0:>7.2f}x{mib / cpu1:>16.1f}")
            if name != "mixed":
                path.unlink()
        if not args.no_memory:
            mixed = work / "mixed.log"
            quarter = work / "quarter.log"
            generate(quarter, size // 4, every)
            m_full = peak_rss_child(mixed, work)
            m_quarter = peak_rss_child(quarter, work)
            print(
                f"peak RSS: {m_quarter:.0f} MiB at {size / 4 / 2**20:.0f} MiB of log, {m_full:.0f} MiB at "
                f"{size / 2**20:.0f} MiB (ratio {m_full / m_quarter:.2f}; 1.00 = flat)"
            )
        t, series = scrape_time(work, args.max_routes)
        print(
            f"scrape: collect() with the route cap ({args.max_routes}) reached on {len(APPS)} apps: "
            f"{t * 1000:.1f} ms for {series:,} series"
        )
        print(f"self peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
