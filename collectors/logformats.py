"""Container log lines -> per-app aggregates (pure parsing, no I/O; ``collectors/logs.py`` does the tailing).

One physical line is recognised by its shape (``docs/formats.md``, "Container logs"), dispatched on its first
byte so the common case costs one decode and a few substring tests:

- ``{``  JSON: Docker json-file (``log``), Azure ContainerAppConsoleLogs (``Log``) or ContainerAppSystemLogs
  (``Reason``/``Type``), decoded with msgspec into one typed struct (unknown fields ignored);
- otherwise text: a Kubernetes CRI record (``<RFC3339> stdout|stderr F|P <msg>``) or a bare access line in
  the common/combined log format.

The application line inside a wrapper is then classified: access line -> request (method, route template,
status); ``Received message`` / ``Training job finished`` / ``Failed to process`` -> training event; a line
whose level is ``ERROR``/``CRITICAL`` -> an error typed by ``error_code=NAME`` or the exception class in it.
Training events and errors are not exclusive (a failed message logged at ERROR counts as both).

Every label value that can come from a line is bounded: app names only from the config, methods, reasons,
event types, training kinds and formats from fixed sets, routes and error types capped per app (the rest
``other``). A line that cannot be used returns a rejection reason (``REJECT_REASONS``) for the caller to count
and quarantine; nothing raises.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
import time
from collections.abc import Iterable
from typing import Any

import msgspec

MAX_LINE = 1 << 20  # longer lines are rejected as too_long (also after joining partial records)

FORMATS = ("docker", "cri", "azure_console", "azure_system", "access")
REJECT_REASONS = (
    "unknown_format",  # text that is neither CRI nor an access line
    "invalid_json",  # starts with '{' but is not JSON
    "invalid_record",  # JSON, but not one of the known records (or a field of the wrong type)
    "binary",  # NUL bytes / invalid UTF-8
    "too_long",  # over MAX_LINE bytes
    "partial_line",  # a line (or partial record chain) never completed before its file went away
    "unknown_app",  # a system record of an app that is not configured
    "empty_line",
)
TRAINING_KINDS = ("received", "finished", "failed")
TRAINING_PHRASES = (
    ("Received message", "received"),
    ("Training job finished", "finished"),
    ("Failed to process", "failed"),
)
EVENT_TYPES = ("Normal", "Warning")
# System event reasons kept as label values (Azure Container Apps / Kubernetes); anything else is "other".
EVENT_REASONS = frozenset(
    {
        "ReplicaCount",
        "MemoryUsage",
        "ReplicaUnhealthy",
        "ReplicaHealthy",
        "BackoffLimitExceeded",
        "ContainerCrashing",
        "ContainerTerminated",
        "ContainerCreated",
        "ContainerStarted",
        "ContainerAppUpdate",
        "ContainerAppReady",
        "RevisionReady",
        "RevisionUpdate",
        "RevisionProvisioning",
        "RevisionDeactivating",
        "RevisionFailed",
        "AssigningReplica",
        "PullingImage",
        "PulledImage",
        "ImagePullFailed",
        "ErrImagePull",
        "ImagePullBackOff",
        "ProbeFailed",
        "Unhealthy",
        "CrashLoopBackOff",
        "OOMKilled",
        "Killing",
        "FailedScheduling",
        "KEDAScalerFailed",
        "ScaledObjectCheckFailed",
        "KEDAScaleTargetActivated",
        "KEDAScaleTargetDeactivated",
        "SuccessfulRescale",
        "JobFailed",
        "JobCompleted",
        "Evicted",
        "Completed",
        "Error",
        "Failed",
        "FailedMount",
        "FailedCreate",
        "AssigningReplicaFailed",
        "ReplicaScheduled",
        "Started",
        "Created",
        "Pulled",
        "Pulling",
        "BackOff",
        "ContainerAppProvisioning",
        "ContainerAppProvisioned",
        "RevisionDeprovisioned",
    }
)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
OTHER = "other"
MAX_ROUTE_LEN = 200
MAX_ERROR_TYPE_LEN = 100
# Replicas that have not reported memory for this long (in log time) no longer count.
MEMORY_STALE_SECONDS = 300.0

# Combined / common log format. The request line may be "-" (nginx, on a bad request).
ACCESS_RE = re.compile(
    r'(\S+) \S+ \S+ \[([^\]]+)\] "(?:([A-Za-z]+) (\S+)(?: [^"]*)?|[^"]*)" (\d{3}) (?:\d+|-)'
)
# Uvicorn's access lines (``INFO:     10.0.4.7:51234 - "GET /x HTTP/1.1" 200 OK``): no timestamp of their own.
UVICORN_RE = re.compile(r'(?:INFO|WARNING|ERROR):\s+\S+:\d+ - "([A-Za-z]+) (\S+) [^"]*" (\d{3})')
LEVEL_RE = re.compile(r"\b(?:ERROR|CRITICAL)\b")
ERROR_CODE_RE = re.compile(r"\berror_code=([A-Za-z0-9_.:\-]{1,64})")
# An exception class: a (dotted) CamelCase name ending like Python's exception classes, or any dotted
# module path ending in a CamelCase name (requests.exceptions.Timeout).
EXC_RE = re.compile(
    r"(?<![\w.])((?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt|Timeout|Failure|Fault))\b"
    r"|(?<![\w.])((?:[a-z_]\w*\.)+[A-Z]\w*)\b"
)
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HASH_RE = re.compile(r"(?=[a-f]*\d)(?=\d*[a-f])[0-9a-f]{7,}|(?=[A-F]*\d)(?=\d*[A-F])[0-9A-F]{7,}")
_NUM_RE = re.compile(r"\d+(?:[.,]\d+)?")
_VERSION_RE = re.compile(r"[vV]\d+(?:\.\d+)*")
_DIGIT_RE = re.compile(r"\d")
_MONTHS = {m: i for i, m in enumerate(calendar.month_abbr) if m}


class _Rec(msgspec.Struct):
    """The union of the JSON records we read; msgspec ignores every other field."""

    log: str | None = None  # docker json-file
    stream: str | None = None
    time: str | None = None
    TimeGenerated: str | None = None  # Azure Container Apps
    ContainerAppName: str | None = None
    ReplicaName: str | None = None
    Log: str | None = None
    Type: str | None = None
    Reason: str | None = None
    Replicas: float | None = None
    WorkingSetBytes: float | None = None
    LimitBytes: float | None = None


# ------------------------------------------------------------------------------------------- helpers
def normalize_route(path: str) -> str:
    """A route template: query dropped, ids / uuids / hashes / numbers replaced (``/runs/{id}``)."""
    if "://" in path:  # absolute-form request target (proxies)
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    path = path.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        return OTHER  # "*", garbage
    segs = path.split("/")
    for i, s in enumerate(segs):
        if not s or (not _DIGIT_RE.search(s) and len(s) <= 40):
            continue  # plain words stay
        if _UUID_RE.fullmatch(s):
            segs[i] = "{uuid}"
        elif _NUM_RE.fullmatch(s):
            segs[i] = "{num}"
        elif _VERSION_RE.fullmatch(s):
            continue  # /v1/, /v2.1/
        elif _HASH_RE.fullmatch(s):
            segs[i] = "{hash}"
        else:
            segs[i] = "{id}"  # anything else with a digit (c01-b003, run-17, 2026-11-22) or very long
    route = "/".join(segs)
    return route if len(route) <= MAX_ROUTE_LEN else route[:MAX_ROUTE_LEN] + "..."


def clf_time(s: str) -> float | None:
    """``22/Nov/2026:10:00:00 +0000`` -> unix time (hand-parsed: strptime is slow and locale-bound)."""
    try:
        day, mon, year = int(s[0:2]), _MONTHS[s[3:6]], int(s[7:11])
        hh, mm, ss = int(s[12:14]), int(s[15:17]), int(s[18:20])
        ts = calendar.timegm((year, mon, day, hh, mm, ss, 0, 0, 0))
        tz = s[21:26]
        if tz:
            sign = -1 if tz[0] == "-" else 1
            ts -= sign * (int(tz[1:3]) * 3600 + int(tz[3:5]) * 60)
        return float(ts)
    except (KeyError, ValueError, IndexError):
        return None


def iso_time(s: str | None) -> float | None:
    if not s:
        return None
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def error_type(msg: str, level_end: int) -> str:
    """The error's type: ``error_code=NAME`` if present, else the exception class, else ``unknown``."""
    rest = msg[level_end:]
    m = ERROR_CODE_RE.search(rest)
    if m:
        return m.group(1)
    rest = rest.lstrip()
    if rest.startswith("["):  # skip the "[module]" of "ERROR [module] ..."
        rest = rest.partition("]")[2]
    m = EXC_RE.search(rest)
    if m:
        name = m.group(1) or m.group(2)
        return name[:MAX_ERROR_TYPE_LEN]
    return "unknown"


def _looks_binary(line: bytes) -> bool:
    if b"\x00" in line:
        return True
    try:
        line.decode()
    except UnicodeDecodeError:
        return True
    return False


def _bump(d: dict[Any, int], key: Any, n: int = 1) -> None:
    d[key] = d.get(key, 0) + n


# ---------------------------------------------------------------------------------------- aggregates
class AppStats:
    """Everything counted for one app. Plain dicts so the state file can persist them."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}  # (method, route, status)
        self.last_error: dict[tuple[str, str, str], float] = {}  # unix time of the last 4xx/5xx
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
        self.file_errors = 0

    def to_state(self) -> dict[str, Any]:
        return {
            "requests": [[*k, v] for k, v in self.requests.items()],
            "last_error": [[*k, v] for k, v in self.last_error.items()],
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
            "file_errors": self.file_errors,
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> AppStats:
        s = cls()
        s.requests = {(m, r, st): int(v) for m, r, st, v in d.get("requests", [])}
        s.last_error = {(m, r, st): float(v) for m, r, st, v in d.get("last_error", [])}
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
        s.file_errors = int(d.get("file_errors", 0))
        return s

    def copy(self) -> AppStats:
        """A snapshot for a scrape (values are immutable, so shallow copies of the containers suffice)."""
        c = AppStats.__new__(AppStats)
        c.__dict__.update(
            {k: (v.copy() if isinstance(v, dict | set) else v) for k, v in self.__dict__.items()}
        )
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


# -------------------------------------------------------------------------------------------- parser
class LineParser:
    """Feeds physical lines into per-app ``AppStats``; returns None or a rejection reason."""

    def __init__(self, apps: Iterable[str], max_routes: int = 100, max_error_types: int = 50) -> None:
        self.stats: dict[str, AppStats] = {a: AppStats() for a in apps}
        self.max_routes = max_routes
        self.max_error_types = max_error_types
        self._decode = msgspec.json.Decoder(_Rec, strict=False).decode
        self._route_cache: dict[str, str] = {}
        self._clf_cache: dict[str, float | None] = {}

    # The hot path: keep it flat.
    def feed(self, st: AppStats, line: bytes, ps: PartialState) -> str | None:
        if not line:
            return "empty_line"
        if line[0] == 0x7B:  # '{'
            try:
                rec = self._decode(line)
            except msgspec.ValidationError:
                return "invalid_record"
            except (msgspec.DecodeError, UnicodeDecodeError):
                return "binary" if _looks_binary(line) else "invalid_json"
            msg = rec.log
            if msg is not None:
                if not ps.pending and msg[-1:] == "\n" and msg[-2:-1] != "\r":  # the common case, inlined
                    lines = st.lines
                    lines["docker"] = lines.get("docker", 0) + 1
                    self._classify(st, msg[:-1])
                    return None
                return self._wrapped(st, ps, "docker", "docker:" + (rec.stream or "stdout"), msg, None)
            if rec.Reason is not None or rec.Type is not None:
                return self._system(st, rec)
            if rec.Log is not None:
                name = rec.ContainerAppName
                target = self.stats.get(name, st) if name else st
                _bump(st.lines, "azure_console")
                self._classify(target, rec.Log.rstrip("\r\n"))
                return None
            return "invalid_record"
        try:
            s = line.decode()
        except UnicodeDecodeError:
            return "binary"
        if "\x00" in s:
            return "binary"
        if s[-1] == "\r":
            s = s[:-1]
        # CRI: "2026-11-22T10:00:00.123456789Z stdout F message"
        if len(s) > 20 and s[4] == "-" and s[10] == "T":
            parts = s.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("stdout", "stderr") and parts[2] in ("F", "P"):
                msg = parts[3] if len(parts) == 4 else ""
                return self._wrapped(st, ps, "cri", "cri:" + parts[1], msg, parts[2] == "P")
        m = ACCESS_RE.match(s)
        if m is not None:
            _bump(st.lines, "access")
            self._request(st, m)
            return None
        return "unknown_format"

    def _wrapped(
        self, st: AppStats, ps: PartialState, fmt: str, key: str, msg: str, partial: bool | None
    ) -> str | None:
        if partial is None:  # docker: a record whose log does not end in "\n" is continued by the next
            partial = not msg.endswith("\n")
            if not partial:
                msg = msg[:-1]
        if msg.endswith("\r"):
            msg = msg[:-1]
        _bump(st.lines, fmt)
        pending = ps.pending
        if partial:
            acc = pending.get(key, "") + msg
            if len(acc) > MAX_LINE:
                del pending[key]  # keep memory bounded; the rest of the chain is dropped with it
                pending[key + ":skip"] = ""
                return "too_long"
            pending[key] = acc
            return None
        if pending:
            if pending.pop(key + ":skip", None) is not None:
                return None  # the tail of a chain already rejected as too_long
            prefix = pending.pop(key, None)
            if prefix is not None:
                msg = prefix + msg
                if len(msg) > MAX_LINE:
                    return "too_long"
        self._classify(st, msg)
        return None

    def _classify(self, st: AppStats, msg: str) -> None:
        if '] "' in msg:
            m = ACCESS_RE.match(msg)
            if m is not None:
                self._request(st, m)
                return
        elif ' - "' in msg:
            u = UVICORN_RE.match(msg)
            if u is not None:
                self._count_request(st, u.group(1), u.group(2), u.group(3), None)
                return
        if "ERROR" in msg or "CRITICAL" in msg:
            lm = LEVEL_RE.search(msg, 0, 160)
            if lm is not None:
                self._error(st, error_type(msg, lm.end()))
        if "Received message" in msg or "Training job finished" in msg or "Failed to process" in msg:
            for phrase, kind in TRAINING_PHRASES:
                if phrase in msg:
                    st.training[kind] += 1
                    break

    def _request(self, st: AppStats, m: re.Match[str]) -> None:
        _, clf, method, path, status = m.groups()
        self._count_request(st, method, path, status, clf)

    def _count_request(
        self, st: AppStats, method: str | None, path: str | None, status: str, clf: str | None
    ) -> None:
        if method is None or path is None:
            method, route = "OTHER", OTHER
        else:
            method = method.upper()
            if method not in HTTP_METHODS:
                method = "OTHER"
            cached = self._route_cache.get(path)
            if cached is None:
                cached = normalize_route(path)
                if len(self._route_cache) >= 50_000:
                    self._route_cache.clear()
                self._route_cache[path] = cached
            route = cached
            if route not in st.routes:
                if len(st.routes) >= self.max_routes:
                    route = OTHER
                else:
                    st.routes.add(route)
        key = (method, route, status)
        st.requests[key] = st.requests.get(key, 0) + 1
        if status[0] in "45":
            # the line's own time; lines without one (uvicorn) take the time they were read
            if clf is None:
                ts: float | None = time.time()
            else:
                cache = self._clf_cache  # lines close in time share their second
                if clf in cache:
                    ts = cache[clf]
                else:
                    if len(cache) >= 4096:
                        cache.clear()
                    ts = cache[clf] = clf_time(clf)
            if ts is not None and ts > st.last_error.get(key, 0.0):
                st.last_error[key] = ts

    def _error(self, st: AppStats, etype: str) -> None:
        if etype not in st.errors and len(st.errors) >= self.max_error_types:
            etype = OTHER
        _bump(st.errors, etype)

    def _system(self, file_st: AppStats, rec: _Rec) -> str | None:
        target = self.stats.get(rec.ContainerAppName or "")
        if target is None:
            return "unknown_app"
        reason = rec.Reason or "unknown"
        if reason == "ReplicaCount":
            if rec.Replicas is None or rec.Replicas < 0:
                return "invalid_record"
            target.replicas = rec.Replicas
            if target.replicas_max is None or rec.Replicas > target.replicas_max:
                target.replicas_max = rec.Replicas
        elif reason == "MemoryUsage":
            ws, limit = rec.WorkingSetBytes, rec.LimitBytes
            if ws is None or ws < 0 or not rec.ReplicaName:
                return "invalid_record"
            ts = iso_time(rec.TimeGenerated)
            if ts is None:
                return "invalid_record"
            replica = rec.ReplicaName[:128]
            if replica in target.memory or len(target.memory) < 1000:
                target.memory[replica] = (ts, ws, limit if limit is not None and limit > 0 else 0.0)
            # forget replicas long gone so the map stays small
            if len(target.memory) > 50:
                newest = max(v[0] for v in target.memory.values())
                target.memory = {
                    r: v for r, v in target.memory.items() if v[0] >= newest - MEMORY_STALE_SECONDS
                }
        _bump(file_st.lines, "azure_system")
        etype = rec.Type if rec.Type in EVENT_TYPES else OTHER
        _bump(target.events, (reason if reason in EVENT_REASONS else OTHER, etype))
        return None
