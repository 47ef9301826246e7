"""The small exporter framework every fleetmon exporter is built on (node_exporter's collector.go, in Python).

- A *collector* (one module per source under ``collectors/``) reads one part of the world. Expensive work
  happens in ``poll()``, run in the background on its own schedule; ``collect()`` only turns the cached
  result into metric families and must be fast. Collectors register themselves with ``@register``.
- The ``Exporter`` owns a private ``CollectorRegistry`` (never the global one), wraps every collector so one
  failing source never takes the others down, and emits per collector
  ``fleetmon_scrape_collector_success`` / ``fleetmon_scrape_collector_duration_seconds`` on every scrape and
  ``fleetmon_poll_success`` / ``fleetmon_poll_duration_seconds`` /
  ``fleetmon_poll_last_success_timestamp_seconds`` for the background work.
- A collector with many series may also offer ``prerendered()``: its series encoded (and gzipped) once per
  poll (``render_families``). ``/metrics`` is the registry's output followed by those bytes, so a scrape of
  100,000+ cached series is a copy, not a re-encoding. Families never repeat across the parts, so the
  concatenation is a valid text exposition; gzip members concatenate into a valid gzip stream (RFC 1952).
- ``serve()`` runs the HTTP server: ``/metrics``, a landing page at ``/`` and ``/-/healthy``; given a
  ``fleetmon.webconfig.WebServing`` (``--web.config.file``) it serves TLS and/or basic auth on every path.
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol
from wsgiref.simple_server import make_server

from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fleetmon.config import Config
from fleetmon.sharding import Shard
from fleetmon.webconfig import WebServing, WebThreadingWSGIServer

log = logging.getLogger(__name__)

# The fleet spine: every per-model series carries exactly these labels, named once here.
FLEET_LABELS = ("customer", "building", "energy", "model")


class Collector(Protocol):
    """What a source module provides. ``poll`` may be absent for collectors that read at scrape time."""

    name: ClassVar[str]

    def collect(self) -> Iterable[Metric]: ...


@dataclass
class CollectorSpec:
    name: str
    factory: Callable[[Config], Any]
    default_enabled: bool
    help: str


COLLECTORS: dict[str, CollectorSpec] = {}

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Rendered:
    """Series encoded once: the text exposition and its gzip member."""

    body: bytes
    gzipped: bytes
    series: int


class _Fixed:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def render_families(families: list[Metric], compresslevel: int = 6) -> Rendered:
    """Encode metric families once (for a collector's ``prerendered()``)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Fixed(families))
    body = generate_latest(reg)
    return Rendered(
        body, gzip.compress(body, compresslevel=compresslevel, mtime=0), sum(len(f.samples) for f in families)
    )


def register(name: str, *, default_enabled: bool = True, help: str = "") -> Callable[[Any], Any]:
    """Class decorator: make a collector known by name (``--collector.<name>`` switches it)."""

    def deco(factory: Any) -> Any:
        COLLECTORS[name] = CollectorSpec(
            name, factory, default_enabled, help or (factory.__doc__ or "").strip()
        )
        factory.name = name
        return factory

    return deco


class _PollState:
    def __init__(self) -> None:
        self.success: float | None = None  # None = never ran
        self.duration = 0.0
        self.last_success_ts: float | None = None
        self.last_error: str | None = None


class _HealthCollector:
    """Wraps all collectors: runs each one's collect() guarded and reports success and duration."""

    def __init__(self, exporter: Exporter) -> None:
        self._exp = exporter

    def collect(self) -> Iterator[Metric]:
        success = GaugeMetricFamily(
            "fleetmon_scrape_collector_success",
            "Whether a collector succeeded on this scrape.",
            labels=["collector"],
        )
        duration = GaugeMetricFamily(
            "fleetmon_scrape_collector_duration_seconds",
            "How long a collector took on this scrape.",
            labels=["collector"],
        )
        for name, coll in self._exp.collectors.items():
            start = time.perf_counter()
            ok = 1.0
            try:
                # Materialise inside the guard so an error mid-way drops this collector's output only.
                families = list(coll.collect())
            except Exception:
                log.exception("collector %s failed during scrape", name)
                families, ok = [], 0.0
            yield from families
            success.add_metric([name], ok)
            duration.add_metric([name], time.perf_counter() - start)
        yield success
        yield duration
        shard = GaugeMetricFamily(
            "fleetmon_exporter_shard_info",
            "Which shard of the fleet this exporter is (index of count; 0 of 1: the whole fleet).",
            labels=["index", "count"],
        )
        shard.add_metric([str(self._exp.shard.index), str(self._exp.shard.count)], 1.0)
        yield shard
        yield from self._poll_metrics()

    def _poll_metrics(self) -> Iterator[Metric]:
        states = self._exp.poll_states
        if not states:
            return
        ok = GaugeMetricFamily(
            "fleetmon_poll_success",
            "Whether the collector's last background poll succeeded.",
            labels=["collector"],
        )
        dur = GaugeMetricFamily(
            "fleetmon_poll_duration_seconds",
            "Duration of the collector's last background poll.",
            labels=["collector"],
        )
        last = GaugeMetricFamily(
            "fleetmon_poll_last_success_timestamp_seconds",
            "Unix time of the collector's last successful background poll.",
            labels=["collector"],
        )
        for name, st in states.items():
            if st.success is not None:
                ok.add_metric([name], st.success)
                dur.add_metric([name], st.duration)
            if st.last_success_ts is not None:
                last.add_metric([name], st.last_success_ts)
        yield ok
        yield dur
        yield last


class Exporter:
    """A set of collectors served on one port, with their polls scheduled in the background."""

    def __init__(self, name: str, collectors: dict[str, Any], shard: Shard | None = None) -> None:
        self.name = name
        self.collectors = collectors
        self.shard = shard or Shard()
        self.poll_states: dict[str, _PollState] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_HealthCollector(self))
        self._scheduler: BackgroundScheduler | None = None
        self._locks: dict[str, threading.Lock] = {}

    # ----------------------------------------------------------------------------------- polling
    def poll_once(self, name: str) -> bool:
        """Run one collector's poll, recording its health. Never raises."""
        coll = self.collectors[name]
        st = self.poll_states.setdefault(name, _PollState())
        lock = self._locks.setdefault(name, threading.Lock())
        if not lock.acquire(blocking=False):
            return False  # previous poll still running: skip rather than pile up
        start = time.perf_counter()
        try:
            coll.poll()
            st.success, st.last_success_ts, st.last_error = 1.0, time.time(), None
            return True
        except Exception as e:
            msg = f"{type(e).__name__}: {e}"
            if msg != st.last_error:  # log a cause once, not once per poll
                log.error("collector %s: poll failed: %s", name, msg, exc_info=True)
            st.success, st.last_error = 0.0, msg
            return False
        finally:
            st.duration = time.perf_counter() - start
            lock.release()

    def start_polling(self, intervals: dict[str, float]) -> None:
        """Poll each collector that has ``poll()`` once now (in the background) and then every interval."""
        self._scheduler = BackgroundScheduler(daemon=True)
        for name, coll in self.collectors.items():
            if not hasattr(coll, "poll"):
                continue
            self.poll_states.setdefault(name, _PollState())
            self._scheduler.add_job(
                self.poll_once,
                "interval",
                args=[name],
                seconds=intervals.get(name, 15.0),
                next_run_time=_now_dt(),
                max_instances=1,
                coalesce=True,
                # APScheduler skips a run that starts more than misfire_grace_time (default 1 s) late. On a
                # busy machine (a long drift run holding the GIL) every run of a poll could be skipped and
                # the cached series go stale; a late poll is still worth running.
                misfire_grace_time=None,
                id=name,
            )
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        for coll in self.collectors.values():
            close = getattr(coll, "close", None)
            if close is not None:
                close()

    # ------------------------------------------------------------------------------------ serving
    def prerendered_parts(self) -> list[Any]:
        """The ``prerendered()`` output (body + gzipped) of every collector that offers it."""
        parts = []
        for coll in self.collectors.values():
            fn = getattr(coll, "prerendered", None)
            part = fn() if fn is not None else None
            if part is not None:
                parts.append(part)
        return parts

    def exposition(self, gzipped: bool = False) -> bytes:
        """The whole ``/metrics`` body: the registry's live output, then each collector's pre-rendered bytes."""
        live = generate_latest(self.registry)
        parts = self.prerendered_parts()
        if not gzipped:
            return live + b"".join(p.body for p in parts)
        return gzip.compress(live, compresslevel=6, mtime=0) + b"".join(p.gzipped for p in parts)

    @property
    def scraped(self) -> ScrapeView:
        """What a scrape returns, parsed (registry output and pre-rendered parts alike); for tests and tools."""
        return ScrapeView(self)

    def wsgi_app(self) -> Callable[..., Iterable[bytes]]:
        landing = _landing_page(self.name, self.collectors).encode()

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "/")
            if path == "/metrics":
                gz = "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "").lower()
                body = self.exposition(gzipped=gz)
                headers = [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))]
                if gz:
                    headers.append(("Content-Encoding", "gzip"))
                start_response("200 OK", headers)
                return [body]
            if path == "/":
                start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
                return [landing]
            if path in ("/-/healthy", "/-/ready"):
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"OK\n"]
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]

        return app

    def serve(self, host: str, port: int, web: WebServing | None = None) -> tuple[Any, threading.Thread]:
        """Start the HTTP server in a daemon thread; returns (server, thread). Port 0 picks a free port.

        With ``web`` (one per server), TLS and basic auth apply to every path and its metrics join /metrics.
        """
        if web is None:
            app = self.wsgi_app()
            httpd = make_server(host, port, app, ThreadingWSGIServer, handler_class=_SilentHandler)
        else:
            app = web.wsgi(self.wsgi_app())
            httpd = make_server(host, port, app, WebThreadingWSGIServer, handler_class=_SilentHandler)
            httpd.web = web  # before serving: the TLS handshake happens in finish_request
            self.registry.register(web)
        thread = threading.Thread(target=httpd.serve_forever, name=f"{self.name}-http", daemon=True)
        thread.start()
        return httpd, thread


class ScrapeView:
    """A live, parsed view of an exporter's ``/metrics``: each call scrapes afresh."""

    def __init__(self, exporter: Exporter) -> None:
        self._exp = exporter

    def collect(self) -> list[Metric]:
        return list(text_string_to_metric_families(self._exp.exposition().decode()))

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        labels = labels or {}
        for family in self.collect():
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return None


def _now_dt() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.UTC)


def _landing_page(name: str, collectors: dict[str, Any]) -> str:
    items = "".join(f"<li>{n}</li>" for n in collectors)
    return (
        f"<html><head><title>fleetmon {name} exporter</title></head><body>"
        f"<h1>fleetmon {name} exporter</h1><p><a href='/metrics'>Metrics</a></p>"
        f"<p>Enabled collectors:</p><ul>{items}</ul></body></html>"
    )


def build_collectors(
    names: Iterable[str], cfg: Config, enabled: dict[str, bool] | None = None
) -> dict[str, Any]:
    """Instantiate the named collectors that are switched on (flags override defaults)."""
    enabled = enabled or {}
    out: dict[str, Any] = {}
    for name in names:
        spec = COLLECTORS[name]
        if enabled.get(name, spec.default_enabled):
            out[name] = spec.factory(cfg)
    return out


def run_forever(
    exporter: Exporter, host: str, port: int, intervals: dict[str, float], web: WebServing | None = None
) -> None:
    """Serve and poll until SIGTERM/SIGINT; used by every exporter's main()."""
    import signal

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    httpd, _ = exporter.serve(host, port, web)
    scheme = web.scheme if web is not None else "http"
    log.info("fleetmon %s exporter listening on %s://%s:%d/metrics", exporter.name, scheme, host, port)
    exporter.start_polling(intervals)
    stop.wait()
    httpd.shutdown()
    exporter.stop()
