"""Exposition rendered once per cycle, served as bytes on every scrape.

At fleet scale the outputs exporter serves well over 100,000 series (quality per model and window, drift
per model and column). Encoding them on every scrape with ``prometheus_client`` costs about a second per
scrape for 4,000 models; rendering them once per poll (and gzipping once) makes a scrape a copy.

``PrerenderingExporter`` is the framework's ``Exporter`` whose ``/metrics`` appends, after the registry's
own output (health and anything collected live), the ``prerendered()`` bytes of every collector that has
that method. Families never repeat across the parts, so the concatenation is a valid text exposition;
with ``Accept-Encoding: gzip`` the parts are gzip members, and concatenated members are a valid gzip
stream (RFC 1952), which Prometheus reads.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest

from fleetmon.exporter import Exporter

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Rendered:
    body: bytes
    gzipped: bytes
    series: int


class _Fixed:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def render_families(families: list[Metric], compresslevel: int = 6) -> Rendered:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Fixed(families))
    body = generate_latest(reg)
    return Rendered(
        body, gzip.compress(body, compresslevel=compresslevel, mtime=0), sum(len(f.samples) for f in families)
    )


class PrerenderingExporter(Exporter):
    def prerendered_parts(self) -> list[Any]:
        parts = []
        for c in self.collectors.values():
            fn = getattr(c, "prerendered", None)
            part = fn() if fn is not None else None
            if part is not None:
                parts.append(part)
        return parts

    def exposition(self, gzipped: bool = False) -> bytes:
        """The whole ``/metrics`` body: registry output, then each collector's pre-rendered bytes."""
        live = generate_latest(self.registry)
        parts = self.prerendered_parts()
        if not gzipped:
            return live + b"".join(p.body for p in parts)
        return gzip.compress(live, compresslevel=6, mtime=0) + b"".join(p.gzipped for p in parts)

    def wsgi_app(self) -> Callable[..., Iterable[bytes]]:
        base = super().wsgi_app()

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO", "/") != "/metrics":
                return base(environ, start_response)
            gz = "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "").lower()
            body = self.exposition(gzipped=gz)
            headers = [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))]
            if gz:
                headers.append(("Content-Encoding", "gzip"))
            start_response("200 OK", headers)
            return [body]

        return app
