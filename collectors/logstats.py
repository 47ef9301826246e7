"""What the platform exporter counts per app, and the state it keeps per followed file (no parsing, no I/O).

Shared by ``collectors/logformats.py`` (records and wrappers), ``collectors/applines.py`` (the application
line inside them) and ``collectors/logs.py`` (tailing, persistence, metrics).
"""

from __future__ import annotations

from typing import Any

MAX_LINE = 1 << 20  # longer lines are rejected as too_long (also after joining partial records)

# "access": a bare access line; "plain": a bare text line that is no access line (an app's own log file);
# "json": a bare JSON object that is an application's line (LineClassifier.bare_json), not a wrapper record.
FORMATS = ("docker", "cri", "azure_console", "azure_system", "access", "plain", "json")
# Upper bounds (seconds) of fleetmon_http_request_duration_seconds, +Inf implied: from 5 ms (a cached model
# answer) to 30 s (the usual proxy timeout); the classic Prometheus client defaults plus 30.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REJECT_REASONS = (
    "unknown_format",  # a bare line that is a piece of a wrapper record (bad CRI tag, a JSON fragment)
    "invalid_json",  # starts with '{' but is not JSON
    "invalid_record",  # JSON, but not one of the known records (or a field of the wrong type)
    "binary",  # NUL bytes / invalid UTF-8
    "too_long",  # over MAX_LINE bytes
    "partial_line",  # a line (or partial record chain) never completed before its file went away
    "unknown_app",  # a system record of an app that is not configured
)
TRAINING_KINDS = ("received", "finished", "failed")
OTHER = "other"
# Replicas that have not reported memory for this long (in log time) no longer count.
MEMORY_STALE_SECONDS = 300.0


def bump(d: dict[Any, int], key: Any, n: int = 1) -> None:
    d[key] = d.get(key, 0) + n


class AppStats:
    """Everything counted for one app. Plain dicts so the state file can persist them."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}  # (method, route, status)
        self.last_error: dict[tuple[str, str, str], float] = {}  # unix time of the last 4xx/5xx
        # (method, route) -> requests per LATENCY_BUCKETS bucket (not cumulative; the last one: above the
        # largest bound), and the sum of their durations in seconds
        self.latency: dict[tuple[str, str], list[int]] = {}
        self.latency_sum: dict[tuple[str, str], float] = {}
        self.routes: set[str] = set()
        self.errors: dict[str, int] = {}  # error type -> count
        self.training: dict[str, int] = dict.fromkeys(TRAINING_KINDS, 0)
        self.events: dict[tuple[str, str], int] = {}  # (reason, event_type)
        self.replicas: float | None = None
        self.replicas_max: float | None = None
        self.memory: dict[str, tuple[float, float, float]] = {}  # replica -> (log time, working set, limit)
        self.lines: dict[str, int] = {}  # format -> lines
        self.bytes = 0
        self.rejected: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)
        self.quarantined: dict[str, int] = {}
        self.rotations = 0
        self.truncations = 0
        self.reread_bytes = 0  # read again after a truncation seen only by content (see logs.py)
        self.file_errors = 0

    def to_state(self) -> dict[str, Any]:
        return {
            "requests": [[*k, v] for k, v in self.requests.items()],
            "last_error": [[*k, v] for k, v in self.last_error.items()],
            "latency_buckets": list(LATENCY_BUCKETS),
            "latency": [[*k, v, self.latency_sum.get(k, 0.0)] for k, v in self.latency.items()],
            "routes": sorted(self.routes),
            "errors": self.errors,
            "training": self.training,
            "events": [[*k, v] for k, v in self.events.items()],
            "replicas": self.replicas,
            "replicas_max": self.replicas_max,
            "memory": {r: list(v) for r, v in self.memory.items()},
            "lines": self.lines,
            "bytes": self.bytes,
            "rejected": self.rejected,
            "quarantined": self.quarantined,
            "rotations": self.rotations,
            "truncations": self.truncations,
            "reread_bytes": self.reread_bytes,
            "file_errors": self.file_errors,
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> AppStats:
        s = cls()
        s.requests = {(m, r, st): int(v) for m, r, st, v in d.get("requests", [])}
        s.last_error = {(m, r, st): float(v) for m, r, st, v in d.get("last_error", [])}
        # histograms saved with other bounds cannot be re-bucketed: they start again (a counter reset)
        if [float(b) for b in d.get("latency_buckets", [])] == list(LATENCY_BUCKETS):
            for m, r, counts, total in d.get("latency", []):
                if len(counts) == len(LATENCY_BUCKETS) + 1:
                    s.latency[(m, r)] = [int(c) for c in counts]
                    s.latency_sum[(m, r)] = float(total)
        s.routes = set(d.get("routes", []))
        s.errors = {k: int(v) for k, v in d.get("errors", {}).items()}
        s.training.update({k: int(v) for k, v in d.get("training", {}).items() if k in s.training})
        s.events = {(r, t): int(v) for r, t, v in d.get("events", [])}
        s.replicas, s.replicas_max = d.get("replicas"), d.get("replicas_max")
        s.memory = {r: (float(a), float(b), float(c)) for r, (a, b, c) in d.get("memory", {}).items()}
        s.lines = {k: int(v) for k, v in d.get("lines", {}).items()}
        s.bytes = int(d.get("bytes", 0))
        s.rejected.update({k: int(v) for k, v in d.get("rejected", {}).items() if k in s.rejected})
        s.quarantined = {k: int(v) for k, v in d.get("quarantined", {}).items()}
        s.rotations = int(d.get("rotations", 0))
        s.truncations = int(d.get("truncations", 0))
        s.reread_bytes = int(d.get("reread_bytes", 0))
        s.file_errors = int(d.get("file_errors", 0))
        return s

    def copy(self) -> AppStats:
        """A snapshot for a scrape (values are immutable, so shallow copies suffice, but for latency's lists)."""
        c = AppStats.__new__(AppStats)
        c.__dict__.update(
            {k: (v.copy() if isinstance(v, dict | set) else v) for k, v in self.__dict__.items()}
        )
        c.latency = {k: v.copy() for k, v in self.latency.items()}  # its lists are updated in place
        return c

    def fresh_memory(self) -> list[tuple[float, float, float]]:
        """Memory reports of the replicas still alive (reported within MEMORY_STALE_SECONDS of the newest)."""
        if not self.memory:
            return []
        newest = max(v[0] for v in self.memory.values())
        return [v for v in self.memory.values() if v[0] >= newest - MEMORY_STALE_SECONDS]


class PartialState:
    """Per-file parser state: joined partial records (Docker splits lines > 16 KiB, CRI marks ``P``)."""

    def __init__(self) -> None:
        self.pending: dict[str, str] = {}  # "docker:stdout" / "cri:stderr" -> text so far
        # What the line classifier carries from one line of a stream to the next (a traceback in progress).
        self.context: dict[str, str] = {}
