"""Container log lines -> per-app aggregates (pure parsing, no I/O; ``collectors/logs.py`` does the tailing).

One physical line is recognised by its shape (``docs/formats.md``, "Container logs"), dispatched on its first
byte so the common case costs one decode and a few substring tests:

- ``{``  JSON: Docker json-file (``log``), Azure ContainerAppConsoleLogs (``Log``) or ContainerAppSystemLogs
  (``Reason``/``Type``), decoded with msgspec into one typed struct (unknown fields ignored);
- otherwise text: a Kubernetes CRI record (``<RFC3339> stdout|stderr F|P <msg>``) or a bare line.

The application line inside a wrapper is classified by ``collectors/applines.py``.

Every label value that can come from a line is bounded: app names only from the config, methods, reasons,
event types, training kinds and formats from fixed sets, routes and error types capped per app (the rest
``other``). A line that cannot be used returns a rejection reason (``REJECT_REASONS``) for the caller to count
and quarantine; nothing raises.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import msgspec

from collectors.applines import (  # noqa: F401  (re-exported: callers and tests import them from here)
    LineClassifier,
    clf_time,
    error_type,
    normalize_route,
)
from collectors.logstats import (  # noqa: F401
    FORMATS,
    MAX_LINE,
    MEMORY_STALE_SECONDS,
    OTHER,
    REJECT_REASONS,
    TRAINING_KINDS,
    AppStats,
    PartialState,
    bump,
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


def _looks_binary(line: bytes) -> bool:
    if b"\x00" in line:
        return True
    try:
        line.decode()
    except UnicodeDecodeError:
        return True
    return False


# -------------------------------------------------------------------------------------------- parser
class LineParser:
    """Feeds physical lines into per-app ``AppStats``; returns None or a rejection reason."""

    def __init__(self, apps: Iterable[str], max_routes: int = 100, max_error_types: int = 50) -> None:
        self.stats: dict[str, AppStats] = {a: AppStats() for a in apps}
        self.classifier = LineClassifier(max_routes=max_routes, max_error_types=max_error_types)
        self._classify = self.classifier.classify
        self._bare = self.classifier.bare
        self._decode = msgspec.json.Decoder(_Rec, strict=False).decode

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
                    self._classify(st, msg[:-1], ps, "docker:" + (rec.stream or "stdout"))
                    return None
                return self._wrapped(st, ps, "docker", "docker:" + (rec.stream or "stdout"), msg, None)
            if rec.Reason is not None or rec.Type is not None:
                return self._system(st, rec)
            if rec.Log is not None:
                name = rec.ContainerAppName
                target = self.stats.get(name, st) if name else st
                bump(st.lines, "azure_console")
                self._classify(target, rec.Log.rstrip("\r\n"), ps, "azure:" + (name or ""))
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
        return self._bare(st, s, ps)

    def _wrapped(
        self, st: AppStats, ps: PartialState, fmt: str, key: str, msg: str, partial: bool | None
    ) -> str | None:
        if partial is None:  # docker: a record whose log does not end in "\n" is continued by the next
            partial = not msg.endswith("\n")
            if not partial:
                msg = msg[:-1]
        if msg.endswith("\r"):
            msg = msg[:-1]
        bump(st.lines, fmt)
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
        self._classify(st, msg, ps, key)
        return None

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
        bump(file_st.lines, "azure_system")
        etype = rec.Type if rec.Type in EVENT_TYPES else OTHER
        bump(target.events, (reason if reason in EVENT_REASONS else OTHER, etype))
        return None
