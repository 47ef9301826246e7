"""Container logs of the demo platform, in the wrappers and layout of ``docs/formats.md``.

``var/demo/logs/<app>/...``: ``gateway`` (nginx combined-format access lines with ``$request_time``
appended), ``api`` and ``model-serving`` (its JSON request log, with ``duration_ms``) in Docker json-file
records; ``training-api`` and ``training-processor`` in Kubernetes CRI records (long lines
split into ``P`` partial records); ``mlflow`` as Azure ContainerAppConsoleLogs records; the platform's
system events (replica counts, memory, probes, jobs, scalers) as Azure ContainerAppSystemLogs records in
``system/containerapps.jsonl``. A file passing ``max_bytes`` is rotated by renaming it to ``<name>.1``.

``Platform.emit(t0, t1, ...)`` writes the background traffic for the wall interval ``(t0, t1]``: every line
carries a timestamp in that interval, never later than ``t1``. Incidents change it: an ``http_5xx_burst``
turns a share of gateway answers into 5xx (and the api logs the errors behind them), ``replica_unhealthy``
makes an app's replicas report ``ReplicaUnhealthy`` and ``BackoffLimitExceeded``, ``latency_spike`` makes
the gateway's or model-serving's answers ``factor`` times slower.

Request durations are lognormal per route (``GATEWAY_LATENCY``, ``SERVING_LATENCY``: median and spread,
with a rare slow outlier), sized like a real deployment: the gateway answers health probes and cached
static files in a millisecond or two, proxied API calls in tens of milliseconds; model serving scores in
10-30 ms; a gateway 504 is its upstream timeout (10 s).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetmon.config import ModelKey
from simulator.incidents import Incident
from simulator.ledger import Ledger

APPS = ("api", "gateway", "mlflow", "model-serving", "training-api", "training-processor")
DEFAULT_MAX_BYTES = 4_000_000
CRI_MAX_LINE = 300  # CRI splits longer lines into partial records (real runtimes at 16 KiB)


# ------------------------------------------------------------------------------------------ times
def ts_nano(t: float) -> str:
    """``2026-11-22T10:00:00.123456789Z`` (Docker / CRI)."""
    sec = math.floor(t)
    ns = round((t - sec) * 1e9)
    if ns >= 1_000_000_000:
        sec, ns = sec + 1, ns - 1_000_000_000
    return datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ns:09d}Z"


def ts_milli(t: float) -> str:
    """``2026-11-22T10:00:00.123Z`` (Azure TimeGenerated)."""
    dt = datetime.fromtimestamp(t, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def ts_app(t: float) -> str:
    """``2026-11-22 10:00:00,123`` (Python logging)."""
    dt = datetime.fromtimestamp(t, UTC)
    return dt.strftime("%Y-%m-%d %H:%M:%S,") + f"{dt.microsecond // 1000:03d}"


def ts_clf(t: float) -> str:
    """``22/Nov/2026:10:00:00 +0000`` (common log format)."""
    return datetime.fromtimestamp(t, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")


def app_line(t: float, level: str, module: str, msg: str) -> str:
    return f"{ts_app(t)} {level} [{module}] {msg}"


# ---------------------------------------------------------------------------------------- writers
class LogFile:
    """One log file, appended to; rotated to ``<name>.1`` when it passes ``max_bytes``."""

    def __init__(
        self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES, ledger: Ledger | None = None, app: str = ""
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.rotations = 0
        self.ledger = ledger  # counts what is written (simulator.ledger), under ``app``
        self.app = app
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, records: Iterable[str]) -> None:
        data = "".join(r + "\n" for r in records)
        if not data:
            return
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        rotated = bool(size and size + len(data) > self.max_bytes)
        if rotated:
            self.path.replace(self.path.with_name(self.path.name + ".1"))
            self.rotations += 1
        with self.path.open("a", encoding="utf-8") as f:
            f.write(data)
        if self.ledger is not None:
            self.ledger.log_write(self.app, data.count("\n"), len(data.encode("utf-8")), rotated)


def docker_record(t: float, line: str, stream: str = "stdout") -> str:
    return json.dumps({"log": line + "\n", "stream": stream, "time": ts_nano(t)})


def cri_records(t: float, line: str, stream: str = "stdout") -> list[str]:
    stamp = ts_nano(t)
    chunks = [line[i : i + CRI_MAX_LINE] for i in range(0, len(line), CRI_MAX_LINE)] or [""]
    return [f"{stamp} {stream} {'F' if i == len(chunks) - 1 else 'P'} {c}" for i, c in enumerate(chunks)]


@dataclass(frozen=True)
class AppInfo:
    revision: str
    replicas: int
    memory_limit: int


APP_INFO = {
    "api": AppInfo("api--r12", 3, 1 << 30),
    "gateway": AppInfo("gateway--r4", 2, 512 << 20),
    "mlflow": AppInfo("mlflow--r2", 1, 2 << 30),
    "model-serving": AppInfo("model-serving--r3", 3, 4 << 30),
    "training-api": AppInfo("training-api--r7", 1, 512 << 20),
    "training-processor": AppInfo("training-processor--r9", 2, 8 << 30),
}

ROUTES_GET = (
    ("/api/v1/buildings/{building}/forecast", 0.30),
    ("/api/v1/buildings/{building}/anomalies", 0.15),
    ("/api/v1/customers/{customer}/buildings", 0.10),
    ("/api/v1/models/{model}/versions/{version}", 0.08),
    ("/api/v1/jobs/{job}", 0.07),
    ("/static/app.{hash}.js", 0.08),
    ("/dashboard", 0.05),
    ("/health", 0.12),
    ("/favicon.ico", 0.02),
    ("/wp-login.php", 0.03),
)
USER_AGENTS = (
    "python-requests/2.32.3",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "kube-probe/1.30",
    "Grafana/11.6.0",
)


# Request duration of a route: lognormal (median seconds, sigma of the log), `work`: whether it does real
# work upstream (slowed down by a latency_spike) or is answered by the front itself (probes, cached files).
@dataclass(frozen=True)
class Latency:
    median: float
    sigma: float
    work: bool = True


GATEWAY_LATENCY = {
    "/api/v1/buildings/{building}/forecast": Latency(0.060, 0.5),
    "/api/v1/buildings/{building}/anomalies": Latency(0.045, 0.5),
    "/api/v1/customers/{customer}/buildings": Latency(0.025, 0.45),
    "/api/v1/models/{model}/versions/{version}": Latency(0.020, 0.45),
    "/api/v1/jobs/{job}": Latency(0.015, 0.4),
    "/api/v1/buildings/{building}/predictions": Latency(0.090, 0.6),  # POST
    "/login": Latency(0.030, 0.4),
    "/static/app.{hash}.js": Latency(0.002, 0.5, work=False),
    "/dashboard": Latency(0.003, 0.5, work=False),
    "/health": Latency(0.001, 0.3, work=False),
    "/favicon.ico": Latency(0.001, 0.3, work=False),
    "/wp-login.php": Latency(0.001, 0.3, work=False),
}
# A gateway answer other than a 2xx/3xx/404 of the route: how long nginx took to give it.
GATEWAY_ERROR_LATENCY = {
    500: Latency(0.080, 0.5),  # the api failed after doing work
    502: Latency(0.003, 0.5),  # connection reset by the upstream
    503: Latency(0.001, 0.3),  # no live upstream
}
GATEWAY_UPSTREAM_TIMEOUT = 10.0  # proxy_read_timeout: a 504 takes this long
SERVING_LATENCY = {
    "forecast": Latency(0.025, 0.55),  # POST .../{model}:predict of a forecaster
    "anomaly": Latency(0.012, 0.5),  # ... of an anomaly detector
    "metadata": Latency(0.002, 0.4),  # GET /v1/models/{building}/{energy}/{model}
    "health": Latency(0.0005, 0.3, work=False),
}
OUTLIER_SHARE = 0.003  # a GC pause, a cold cache: 5-20x slower
ERRORS_BACKGROUND = (
    ("api", "api.routes", "ValueError: invalid literal for int() with base 10: 'latest'"),
    ("api", "api.db", "sqlalchemy.exc.OperationalError: (psycopg2.OperationalError) could not connect"),
    (
        "api",
        "api.clients",
        "requests.exceptions.Timeout: HTTPSConnectionPool(host='weather.internal') read timed out",
    ),
    ("model-serving", "serving.loader", "KeyError: 'feature_importances'"),
    ("model-serving", "serving.batch", "error_code=MODEL_NOT_LOADED model version is still loading"),
    ("mlflow", "mlflow.store.db", "sqlalchemy.exc.IntegrityError: UNIQUE constraint failed: tags.key"),
)
BACKGROUND_WARNINGS = (
    (
        "ScaledObjectCheckFailed",
        "model-serving",
        "ScaledObject check failed: no triggers defined for metric 'queue'",
    ),
    (
        "KEDAScalerFailed",
        "training-processor",
        "KEDA scaler failed: error reading queue length: context deadline exceeded",
    ),
    (
        "FailedMount",
        "mlflow",
        'MountVolume.SetUp failed for volume "artifacts": mount failed: exit status 32',
    ),
    ("AssigningReplicaFailed", "api", "Assigning replica failed: insufficient cpu in the environment"),
    ("Error", "training-api", "Container 'training-api' exited with code 137 (OOMKilled)"),
)


class Platform:
    """Writes the apps' logs; holds one seeded random stream so a run is reproducible step by step."""

    def __init__(
        self,
        log_dir: Path,
        models: list[ModelKey],
        seed: int,
        max_bytes: int = DEFAULT_MAX_BYTES,
        gateway_rate: float = 4.0,
        ledger: Ledger | None = None,
    ) -> None:
        self.dir = log_dir
        self.models = models
        self.rng = random.Random(f"{seed}:platform")
        self.gateway_rate = gateway_rate
        names = {
            "api": "api/api.log",
            "gateway": "gateway/gateway.log",
            "model-serving": "model-serving/model-serving.log",
            "training-api": "training-api/training-api.log",
            "training-processor": "training-processor/training-processor.log",
            "mlflow": "mlflow/mlflow.jsonl",
            "system": "system/containerapps.jsonl",
        }
        self.files = {app: LogFile(log_dir / rel, max_bytes, ledger, app) for app, rel in names.items()}
        self._replica_suffix = {
            app: [f"{info.revision}-{self._hex(4)}-{self._alnum(5)}" for _ in range(info.replicas)]
            for app, info in APP_INFO.items()
        }
        self._next_status = 0.0  # next ReplicaCount / MemoryUsage round
        self.buffers: dict[str, list[tuple[float, str]]] = {}

    # ------------------------------------------------------------------------- helpers
    def _hex(self, n: int) -> str:
        return "".join(self.rng.choice("0123456789abcdef") for _ in range(n))

    def _alnum(self, n: int) -> str:
        return "".join(self.rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(n))

    def _times(self, t0: float, t1: float, rate: float) -> list[float]:
        """Poisson arrivals in (t0, t1]."""
        out: list[float] = []
        t = t0
        while rate > 0:
            t += self.rng.expovariate(rate)
            if t > t1:
                break
            out.append(t)
        return out

    def _add(self, app: str, t: float, record: str | list[str]) -> None:
        buf = self.buffers.setdefault(app, [])
        for r in record if isinstance(record, list) else [record]:
            buf.append((t, r))

    def app_log(self, app: str, t: float, level: str, module: str, msg: str, stream: str = "stdout") -> None:
        """One application line, in the wrapper this app's files use."""
        line = app_line(t, level, module, msg)
        if app in ("training-api", "training-processor"):
            self._add(app, t, cri_records(t, line, "stderr" if level in ("ERROR", "CRITICAL") else stream))
        elif app == "mlflow":
            info = APP_INFO["mlflow"]
            self._add(
                app,
                t,
                json.dumps(
                    {
                        "TimeGenerated": ts_milli(t),
                        "ContainerAppName": "mlflow",
                        "RevisionName": info.revision,
                        "ContainerGroupName": self._replica_suffix["mlflow"][0],
                        "ContainerName": "mlflow",
                        "Stream": stream,
                        "Log": line,
                    }
                ),
            )
        else:
            self._add(app, t, docker_record(t, line, stream))

    def system_event(
        self, app: str, t: float, reason: str, log: str, type_: str = "Warning", **extra: Any
    ) -> None:
        info = APP_INFO[app]
        rec: dict[str, Any] = {
            "TimeGenerated": ts_milli(t),
            "ContainerAppName": app,
            "RevisionName": info.revision,
            "ReplicaName": extra.pop("replica", None) or self.rng.choice(self._replica_suffix[app]),
            "Type": type_,
            "Reason": reason,
            "Log": log,
            "Count": 1,
        }
        rec.update(extra)
        self._add("system", t, json.dumps(rec))

    def flush(self) -> None:
        """Write buffered records, in time order per file."""
        for app, buf in self.buffers.items():
            if buf:
                buf.sort(key=lambda x: x[0])
                self.files[app].write(r for _, r in buf)
        self.buffers = {}

    # ------------------------------------------------------------------------- traffic
    def emit(self, t0: float, t1: float, incidents: Iterable[Incident] = ()) -> None:
        """Background traffic for the wall interval (t0, t1], shaped by the incidents under way."""
        incs = list(incidents)
        bursts = [i for i in incs if i.kind == "http_5xx_burst"]
        unhealthy = [i for i in incs if i.kind == "replica_unhealthy" and i.app in APP_INFO]
        slow = [i for i in incs if i.kind == "latency_spike"]
        self._gateway(t0, t1, bursts, [i for i in slow if i.app == "gateway"])
        self._serving(t0, t1, [i for i in slow if i.app == "model-serving"])
        self._mlflow(t0, t1)
        self._queue(t0, t1)
        self._background_errors(t0, t1)
        self._status(t0, t1, unhealthy)
        for inc in unhealthy:
            lo, hi = max(t0, inc.start), min(t1, inc.end)
            if lo < hi:
                self._unhealthy(lo, hi, str(inc.app))
        self._warnings(t0, t1)

    def _route(self) -> tuple[str, str, str]:
        """(method, path, route template) of a gateway request."""
        rng = self.rng
        r = rng.random()
        if r < 0.12:
            m = rng.choice(self.models)
            return (
                "POST",
                f"/api/v1/buildings/{m.building}/predictions",
                "/api/v1/buildings/{building}/predictions",
            )
        if r < 0.15:
            return "POST", "/login", "/login"
        paths, weights = zip(*ROUTES_GET, strict=True)
        tpl = rng.choices(paths, weights)[0]
        m = rng.choice(self.models)
        path = tpl.format(
            building=m.building,
            customer=m.customer,
            model=f"{m.customer}.{m.building}.{m.energy}.{m.model}",
            version=rng.randint(1, 9),
            job=f"{self._hex(8)}-{self._hex(4)}-4{self._hex(3)}-a{self._hex(3)}-{self._hex(12)}",
            hash=self._hex(8),
        )
        if rng.random() < 0.2 and path.startswith("/api/"):
            path += f"?from={rng.randint(1, 48)}h&limit={rng.choice([24, 48, 168])}"
        return "GET", path, tpl

    def _duration(self, lat: Latency, factor: float = 1.0) -> float:
        """Seconds: lognormal around the route's median, a rare slow outlier, `factor` for real work."""
        rng = self.rng
        d = lat.median * math.exp(rng.gauss(0.0, lat.sigma))
        if rng.random() < OUTLIER_SHARE:
            d *= rng.uniform(5.0, 20.0)
        return d * factor if lat.work else d

    @staticmethod
    def _factor(t: float, spikes: list[Incident]) -> float:
        return next((float(i.detail.get("factor", 5.0)) for i in spikes if i.active(t)), 1.0)

    def _status_for(self, method: str, path: str, burst_5xx: float | None) -> int:
        rng = self.rng
        p5 = burst_5xx if burst_5xx is not None else 0.004
        if path != "/health" and rng.random() < p5:
            return rng.choices([500, 502, 503, 504], [0.35, 0.35, 0.25, 0.05])[0]
        if path in ("/favicon.ico", "/wp-login.php"):
            return 404
        if path == "/login":
            return 302
        if path.startswith("/static/") or path == "/dashboard":
            return 304 if rng.random() < 0.7 else 200
        if path.startswith("/api/v1/jobs/") and rng.random() < 0.3:
            return 404
        if method == "POST":
            return 201 if rng.random() < 0.5 else 200
        return 200 if rng.random() > 0.01 else 404

    def _gateway(self, t0: float, t1: float, bursts: list[Incident], spikes: list[Incident]) -> None:
        rng = self.rng
        for t in self._times(t0, t1, self.gateway_rate):
            method, path, tpl = self._route()
            share = next((float(b.detail.get("share_5xx", 0.4)) for b in bursts if b.active(t)), None)
            status = self._status_for(method, path, share)
            size = {304: 0, 302: rng.randint(0, 200), 404: 153}.get(status) or (
                rng.randint(90, 300) if status >= 500 else rng.randint(300, 24000)
            )
            if status == 504:
                took = GATEWAY_UPSTREAM_TIMEOUT + rng.uniform(0.0005, 0.02)
            elif status in GATEWAY_ERROR_LATENCY:
                took = self._duration(GATEWAY_ERROR_LATENCY[status], self._factor(t, spikes))
            else:
                took = min(
                    self._duration(GATEWAY_LATENCY[tpl], self._factor(t, spikes)), GATEWAY_UPSTREAM_TIMEOUT
                )
            ip = f"10.0.{rng.randint(0, 3)}.{rng.randint(2, 250)}"
            ua = "kube-probe/1.30" if path == "/health" else rng.choice(USER_AGENTS)
            ref = "-" if rng.random() < 0.7 else "https://fleet.example.com/dashboard"
            # nginx: log_format combined ... plus $request_time (seconds, millisecond resolution)
            line = (
                f'{ip} - - [{ts_clf(t)}] "{method} {path} HTTP/1.1" {status} {size} "{ref}" "{ua}" '
                f"{max(took, 0.0005):.3f}"
            )
            # the line is written when the answer is done, stamped with the request's start (as nginx does)
            self._add("gateway", t, docker_record(t, line))
            if path.startswith("/api/"):
                ms = max(1, round(took * 1000) - rng.randint(0, 2))  # the api's own view: a bit less
                if status >= 500:
                    self._api_error(t, method, path, status)
                elif rng.random() < 0.3:
                    self.app_log(
                        "api", t, "INFO", "api.access", f"{method} {path.split('?')[0]} {status} {ms}ms"
                    )

    def _api_error(self, t: float, method: str, path: str, status: int) -> None:
        rng = self.rng
        exc = {
            500: "sqlalchemy.exc.OperationalError: (psycopg2.OperationalError) server closed the connection unexpectedly",
            502: "ConnectionResetError: [Errno 104] Connection reset by peer",
            503: "error_code=UPSTREAM_UNAVAILABLE model-serving returned 503",
            504: "requests.exceptions.Timeout: HTTPConnectionPool(host='model-serving', port=8080): Read timed out.",
        }[status]
        self.app_log(
            "api", t, "ERROR", "api.routes", f"Unhandled error on {method} {path.split('?')[0]}: {exc}"
        )
        if status == 500 and rng.random() < 0.5:
            for tb in (
                "Traceback (most recent call last):",
                '  File "/app/api/routes.py", line 212, in get_forecast',
                "    rows = session.execute(query).all()",
                exc.split(":")[0] + ": server closed the connection unexpectedly",
            ):
                self.app_log_raw("api", t, tb, "stderr")

    def app_log_raw(self, app: str, t: float, line: str, stream: str = "stdout") -> None:
        """A continuation line (traceback) without the logging prefix: ordinary output."""
        self._add(app, t, docker_record(t, line, stream))

    def _serving(self, t0: float, t1: float, spikes: list[Incident]) -> None:
        """Model serving's JSON request log (one record per request, ``duration_ms``): predictions of the
        fleet's models, their metadata, health probes."""
        rng = self.rng
        for t in self._times(t0, t1, 1.2):
            m = rng.choice(self.models)
            r = rng.random()
            base = f"/v1/models/{m.building}/{m.energy}/{m.model}"
            if r < 0.1:
                method, path, lat, status = "GET", "/health", SERVING_LATENCY["health"], 200
            elif r < 0.15:
                method, path, lat, status = "GET", base, SERVING_LATENCY["metadata"], 200
            else:
                kind = "forecast" if m.model == "forecast" else "anomaly"
                method, path, lat = "POST", base + ":predict", SERVING_LATENCY[kind]
                x = rng.random()
                status = 400 if x < 0.003 else 503 if x < 0.005 else 200
            took = self._duration(lat, self._factor(t, spikes))
            if status == 400:
                took = self._duration(SERVING_LATENCY["metadata"])  # rejected before scoring
            elif status == 503:
                took = self._duration(SERVING_LATENCY["health"])  # the model is still loading
            rec = {
                "time": ts_milli(t),
                "level": "info" if status < 500 else "error",
                "logger": "serving.access",
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": round(max(took * 1000, 0.1), 1),
            }
            self._add("model-serving", t, docker_record(t, json.dumps(rec, separators=(",", ":"))))

    def _mlflow(self, t0: float, t1: float) -> None:
        rng = self.rng
        for t in self._times(t0, t1, 0.4):
            path = rng.choice(
                [
                    "POST /api/2.0/mlflow/runs/search",
                    "GET /api/2.0/mlflow/experiments/get-by-name",
                    "POST /api/2.0/mlflow/registered-models/search",
                    "GET /api/2.0/mlflow/model-versions/search",
                    "POST /api/2.0/mlflow/runs/log-batch",
                ]
            )
            self.app_log_azure_plain(
                "mlflow",
                t,
                f'INFO:     10.0.4.{rng.randint(2, 60)}:{rng.randint(30000, 60000)} - "{path} HTTP/1.1" 200 OK',
            )

    def app_log_azure_plain(self, app: str, t: float, line: str) -> None:
        info = APP_INFO[app]
        self._add(
            app,
            t,
            json.dumps(
                {
                    "TimeGenerated": ts_milli(t),
                    "ContainerAppName": app,
                    "RevisionName": info.revision,
                    "ContainerGroupName": self._replica_suffix[app][0],
                    "ContainerName": app,
                    "Stream": "stdout",
                    "Log": line,
                }
            ),
        )

    def _queue(self, t0: float, t1: float) -> None:
        rng = self.rng
        for t in self._times(t0, t1, 0.1):
            self.app_log(
                "training-api",
                t,
                "INFO",
                "training_api.queue",
                f"queue depth={rng.randint(0, 6)} consumers=2",
            )
        for t in self._times(t0, t1, 0.05):
            # a long debug line: the CRI runtime splits it into partial records
            payload = json.dumps(
                {"features": [f"feature_{i:02d}" for i in range(40)], "rows": rng.randint(1000, 9000)}
            )
            self.app_log("training-processor", t, "DEBUG", "trainer.data", f"dataset summary {payload}")

    def _background_errors(self, t0: float, t1: float) -> None:
        rng = self.rng
        for t in self._times(t0, t1, 1 / 90):
            app, module, msg = rng.choice(ERRORS_BACKGROUND)
            self.app_log(app, t, "ERROR", module, msg)

    def _status(self, t0: float, t1: float, incidents: list[Incident]) -> None:
        """Every 30 s: replica counts per app, memory per replica."""
        rng = self.rng
        if self._next_status == 0.0:
            self._next_status = (int(t0) // 30 + 1) * 30.0
        while self._next_status <= t1:
            t = self._next_status
            unhealthy = {i.app for i in incidents if i.active(t)}
            for app, info in APP_INFO.items():
                n = info.replicas + (
                    rng.choice([0, 0, 1, 2]) if app in ("model-serving", "training-processor") else 0
                )
                if app in unhealthy:
                    n = max(0, n - 1)
                self.system_event(app, t, "ReplicaCount", f"Replica count is {n}", "Normal", Replicas=n)
                for rep in self._replica_suffix[app]:
                    used = int(info.memory_limit * rng.uniform(0.35, 0.7))
                    self.system_event(
                        app,
                        t,
                        "MemoryUsage",
                        "Memory usage sample",
                        "Normal",
                        replica=rep,
                        WorkingSetBytes=used,
                        LimitBytes=info.memory_limit,
                    )
            self._next_status += 30.0

    def _unhealthy(self, t0: float, t1: float, app: str) -> None:
        rng = self.rng
        for t in self._times(t0, t1, 1 / 8):
            self.system_event(
                app,
                t,
                "ReplicaUnhealthy",
                "Readiness probe failed: HTTP probe failed with statuscode: 503",
            )
            if rng.random() < 0.3:
                self.app_log(
                    app,
                    t,
                    "ERROR",
                    "app.health",
                    "health check failed: ConnectionRefusedError: [Errno 111] Connection refused",
                )
        for t in self._times(t0, t1, 1 / 40):
            self.system_event(app, t, "BackoffLimitExceeded", "Job has reached the specified backoff limit")

    def _warnings(self, t0: float, t1: float) -> None:
        rng = self.rng
        for t in self._times(t0, t1, 1 / 600):
            reason, app, msg = rng.choice(BACKGROUND_WARNINGS)
            self.system_event(app, t, reason, msg)

    # ------------------------------------------------------------------------- training
    def training_received(self, t: float, key: ModelKey, job_id: str, trigger: str) -> None:
        self.app_log(
            "training-api",
            t,
            "INFO",
            "training_api.consumer",
            f"Received message job_id={job_id} customer={key.customer} building={key.building} "
            f"energy={key.energy} model={key.model} trigger={trigger}",
        )

    def training_finished(self, t: float, key: ModelKey, job_id: str, duration: float, mae: float) -> None:
        self.app_log(
            "training-processor",
            t,
            "INFO",
            "trainer.worker",
            f"Training job finished job_id={job_id} customer={key.customer} building={key.building} "
            f"energy={key.energy} model={key.model} duration_s={duration:.1f} mae={mae:.3f}",
        )
        self.system_event(
            "training-processor", t, "Completed", f"Job training-{job_id[:8]} completed", "Normal"
        )

    def training_failed(self, t: float, key: ModelKey, job_id: str, exception: str) -> None:
        msg = {
            "ValueError": "ValueError: Input X contains NaN.",
            "MemoryError": "MemoryError: Unable to allocate 3.2 GiB for an array with shape (420000000,)",
            "KeyError": "KeyError: 'outdoor_temperature'",
        }.get(exception, f"{exception}: training crashed")
        self.app_log(
            "training-processor", t, "ERROR", "trainer.worker", f"Training crashed job_id={job_id}: {msg}"
        )
        self.app_log(
            "training-processor",
            t,
            "WARNING",
            "trainer.worker",
            f"Failed to process message job_id={job_id} customer={key.customer} building={key.building} "
            f"energy={key.energy} model={key.model} reason={exception}",
        )
        self.system_event(
            "training-processor",
            t,
            "Error",
            f"Job training-{job_id[:8]} failed: container exited with code 1",
        )
