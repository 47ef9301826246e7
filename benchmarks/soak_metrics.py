"""What the soak counts: quantities summed from the exporters' own counters, observed two ways, and the
arithmetic that sums them across restarts (used by ``benchmarks/soak.py``; see docs/soak.md).

- **Direct**: the soak scrapes an exporter's ``/metrics`` itself at checkpoints, right before it kills or
  stops one, and at the end. That is what the exporter itself counted.
- **Prometheus**: the raw samples of the same series in Prometheus' TSDB (``series[range]`` at the end;
  every series of one scrape has the same timestamp, so summing by timestamp gives one value per scrape).
  That is what monitoring saw.

Summing across restarts:

- Both exporters persist their counters with their read state (the outputs exporter in ``state.json``,
  the platform exporter with its read positions): they must continue across a restart. The total is
  computed like ``increase()`` without extrapolation (a decrease counts as a reset:
  everything after it is added again), and every decrease is reported, since it is exactly what breaks
  ``rate()`` and ``increase()`` for everyone.
"""

from __future__ import annotations

import bisect
import json
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# Exporters whose counters survive a restart (kept in their state file).
PERSISTENT = {"platform": True, "outputs": True, "mlflow": False}
JOBS = {"outputs": "fleetmon-outputs", "platform": "fleetmon-platform", "mlflow": "fleetmon-mlflow"}


@dataclass(frozen=True)
class Quantity:
    """A sum over the samples named ``names`` whose labels include ``labels``, from one exporter."""

    key: str
    exporter: str
    names: tuple[str, ...]
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def persistent(self) -> bool:
        return PERSISTENT[self.exporter]

    def selector(self) -> str:
        """The PromQL series selector of the quantity (before summing)."""
        names = "|".join(self.names)
        matchers = [f'__name__=~"{names}"', f'job="{JOBS[self.exporter]}"']
        matchers += [f'{k}="{v}"' for k, v in self.labels]
        return "{" + ",".join(matchers) + "}"

    def matches(self, name: str, labels: dict[str, str]) -> bool:
        return name in self.names and all(labels.get(k) == v for k, v in self.labels)


def q(key: str, exporter: str, *names: str, **labels: str) -> Quantity:
    return Quantity(key, exporter, names, tuple(sorted(labels.items())))


# ------------------------------------------------------------------------------------------- HTTP
def get(url: str, timeout: float = 15.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body: bytes = r.read()
        return body


def get_json(base: str, path: str, timeout: float = 15.0, **params: str) -> Any:
    url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
    return json.loads(get(url, timeout))


def post(url: str, timeout: float = 30.0) -> None:
    req = urllib.request.Request(url, method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        r.read()


# ------------------------------------------------------------------------------------ direct scrape
def parse(text: str, names: set[str]) -> list[tuple[str, dict[str, str], float]]:
    """The samples named in ``names`` (lines filtered first: an outputs exposition is megabytes)."""
    keep = [
        line
        for line in text.splitlines()
        if line and line[0] != "#" and line.split("{", 1)[0].split(" ", 1)[0] in names
    ]
    out = []
    for fam in text_string_to_metric_families("\n".join(keep) + "\n"):
        for s in fam.samples:
            out.append((s.name, dict(s.labels), float(s.value)))
    return out


def values(samples: list[tuple[str, dict[str, str], float]], quantities: list[Quantity]) -> dict[str, float]:
    out = dict.fromkeys((qt.key for qt in quantities), 0.0)
    for qt in quantities:
        for name, labels, v in samples:
            if qt.matches(name, labels):
                out[qt.key] += v
    return out


@dataclass
class Scrape:
    t: float  # when the request was sent
    values: dict[str, float]  # quantity key -> value
    samples: list[tuple[str, dict[str, str], float]]  # the samples of the ``extra`` names asked for
    text: str  # the whole exposition


def scrape(url: str, quantities: list[Quantity], extra: frozenset[str] = frozenset()) -> Scrape:
    """One direct scrape of an exporter's /metrics."""
    t = time.time()
    text = get(url).decode("utf-8", "replace")
    names = {n for qt in quantities for n in qt.names} | set(extra)
    samples = parse(text, names)
    return Scrape(t, values(samples, quantities), [s for s in samples if s[0] in extra], text)


# ---------------------------------------------------------------------------------------- Prometheus
def raw_sequence(prom: str, qt: Quantity, start: float, end: float) -> list[tuple[float, float]]:
    """The quantity at every scrape Prometheus stored between start and end: raw samples summed by
    timestamp (one scrape's series share it)."""
    rng = max(1, int(end - start) + 1)
    data = get_json(prom, "/api/v1/query", timeout=60, query=f"{qt.selector()}[{rng}s]", time=f"{end:.3f}")
    by_t: dict[float, float] = defaultdict(float)
    for series in data["data"]["result"]:
        for t, v in series["values"]:
            by_t[float(t)] += float(v)
    return sorted(by_t.items())


# -------------------------------------------------------------------------------------- arithmetic
@dataclass
class Drop:
    t: float
    before: float
    after: float


def cumulative(
    obs: list[tuple[float, float]], starts: list[float], persistent: bool, upto: float | None = None
) -> tuple[float, list[Drop]]:
    """What was counted up to ``upto`` from time-ordered observations (see the module docstring).

    ``starts``: the times incarnations after the first started (known restarts). Returns the total and
    every decrease (within an incarnation for in-memory counters; anywhere for persisted ones)."""
    seq = [(t, v) for t, v in sorted(obs) if upto is None or t <= upto]
    drops: list[Drop] = []
    if persistent:
        total, prev = 0.0, 0.0
        for t, v in seq:
            if v < prev:
                drops.append(Drop(t, prev, v))
                total += v  # like increase(): after a reset the new value counts whole
            else:
                total += v - prev
            prev = v
        return total, drops
    best: dict[int, float] = {}
    last: dict[int, float] = {}
    for t, v in seq:
        inc = bisect.bisect_right(starts, t)
        if inc in last and v < last[inc]:
            drops.append(Drop(t, last[inc], v))
        last[inc] = v
        best[inc] = max(best.get(inc, 0.0), v)
    return sum(best.values()), drops
