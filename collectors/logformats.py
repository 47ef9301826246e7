"""Container log lines -> per-app aggregates (pure parsing, no I/O; ``collectors/logs.py`` does the tailing).

One physical line is recognised by its shape (``docs/formats.md``, "Container logs"), dispatched on its first
byte so the common case costs one decode and a few attribute tests:

- ``{``  JSON, decoded with msgspec into a typed struct (unknown fields ignored), chosen by the first key
  (smaller structs decode faster): ``_Docker`` for Docker json-file (``{"log"``), ``_Export`` for fleetmon's
  own Azure exports (``{"TimeGenerated"``), else (or when ``_Export`` finds nothing it knows) ``_Rec``, the
  union of the records we read: Docker json-file with its keys in another order, or an Azure Container Apps
  record in any of the shapes:
  the Azure Monitor tables ``ContainerAppConsoleLogs`` / ``ContainerAppSystemLogs``, the Log Analytics
  tables ``ContainerAppConsoleLogs_CL`` / ``ContainerAppSystemLogs_CL`` (type-suffixed columns, also with
  every value a string as ``az monitor log-analytics query`` prints them), diagnostic settings archived to a
  storage account (``PT1H.json``: ``category`` + ``properties``), and ``az containerapp logs show --format
  json`` (console and ``--type system``);
- otherwise text: a Kubernetes CRI record (``<RFC3339> stdout|stderr F|P <msg>``) or a bare line.

Console and system records are told apart by the table they come from (``Type`` / ``category``) and, where
no table name is given, by the columns only system tables have (``Reason``, ``Type_s``, an event type
``Normal``/``Warning`` in ``Type``). JSON that is none of these records is the application's own line.

The application line inside a wrapper is classified by ``collectors/applines.py``.

Every label value that can come from a line is bounded: app names only from the config, methods, reasons,
event types, training kinds and formats from fixed sets, routes and error types capped per app (the rest
``other``). A line that cannot be used returns a rejection reason (``REJECT_REASONS``) for the caller to count
and quarantine; nothing raises.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import msgspec

from collectors.applines import (  # noqa: F401  (re-exported: callers and tests import them from here)
    LineClassifier,
    clf_time,
    error_type,
    iso_time,
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
# System event reasons kept as label values; anything else counts as "other". Sources:
# - fleetmon's own extension records (docs/formats.md): ReplicaCount, MemoryUsage;
# - what `az containerapp logs show --type system` prints in Microsoft's docs (container-apps/troubleshooting.md,
#   scale-app.md): AssigningReplica, PullingImage, ImagePulled, ContainerCreated, StoppingContainer, Completed,
#   KEDAScaleTargetDeactivated;
# - KEDA's documented Kubernetes events (keda-docs content/docs/2.x/reference/events.md), which Container Apps
#   forwards to its system logs (EventSource "KEDA");
# - the Container Apps / Kubernetes reasons the dashboards and alert rules already use.
EVENT_REASONS = frozenset(
    {
        # fleetmon extension records
        "ReplicaCount",
        "MemoryUsage",
        # Container Apps platform (EventSource ContainerAppController)
        "AssigningReplica",
        "AssigningReplicaFailed",
        "ReplicaScheduled",
        "ReplicaUnhealthy",
        "ReplicaHealthy",
        "PullingImage",
        "PulledImage",
        "ImagePulled",
        "ImagePullFailed",
        "ErrImagePull",
        "ImagePullBackOff",
        "ContainerCreated",
        "ContainerStarted",
        "ContainerTerminated",
        "ContainerCrashing",
        "StoppingContainer",
        "ProbeFailed",
        "ContainerAppUpdate",
        "ContainerAppReady",
        "ContainerAppProvisioning",
        "ContainerAppProvisioned",
        "RevisionReady",
        "RevisionUpdate",
        "RevisionProvisioning",
        "RevisionDeactivating",
        "RevisionDeprovisioned",
        "RevisionFailed",
        "BackoffLimitExceeded",
        "JobFailed",
        "JobCompleted",
        "Completed",
        "Error",
        "Failed",
        # Kubernetes kubelet / scheduler reasons
        "Unhealthy",
        "CrashLoopBackOff",
        "OOMKilled",
        "Killing",
        "FailedScheduling",
        "Evicted",
        "FailedMount",
        "FailedCreate",
        "Started",
        "Created",
        "Pulled",
        "Pulling",
        "BackOff",
        "SuccessfulRescale",
        # KEDA (keda-docs reference/events.md)
        "ScaledObjectReady",
        "ScaledJobReady",
        "ScaledObjectCheckFailed",
        "ScaledJobCheckFailed",
        "ScaledObjectDeleted",
        "ScaledJobDeleted",
        "KEDAScalersStarted",
        "KEDAScalersStopped",
        "KEDAScalerFailed",
        "KEDAScaleTargetActivated",
        "KEDAScaleTargetDeactivated",
        "KEDAScaleTargetActivationFailed",
        "KEDAScaleTargetDeactivationFailed",
        "KEDAJobsCreated",
        "TriggerAuthenticationAdded",
        "TriggerAuthenticationDeleted",
        "ClusterTriggerAuthenticationAdded",
        "ClusterTriggerAuthenticationDeleted",
    }
)
# `az containerapp logs show --type system` starts every stream with these notices of its own, naming no app
# (ContainerAppName null): they are counted as lines of the file, not as events of any app.
STREAM_NOTICES = frozenset({"StartingGettingEvents", "ConnectedToEventsServer"})

# The table a record comes from, as `Type` (Log Analytics rows) or `category` (diagnostic settings) names it.
CONSOLE_TABLES = frozenset({"ContainerAppConsoleLogs", "ContainerAppConsoleLogs_CL"})
SYSTEM_TABLES = frozenset({"ContainerAppSystemLogs", "ContainerAppSystemLogs_CL"})
# Stream keys of the Docker and CRI streams (looked up rather than built per line)
_DOCKER_KEYS = {None: "docker:stdout", "stdout": "docker:stdout", "stderr": "docker:stderr"}
_CRI_KEYS = {"stdout": "cri:stdout", "stderr": "cri:stderr"}


class _Docker(msgspec.Struct, gc=False):
    """A Docker json-file record (decoded with this small struct when the line starts with its ``log``).
    Its ``time`` is not read: skipping it costs less than decoding it."""

    log: str
    stream: str | None = None


class _Export(msgspec.Struct, gc=False):
    """fleetmon's own console and system exports (formats 3 and 4), which begin with ``TimeGenerated``: a
    smaller struct than the union. A line that starts so but is another shape (a projected Log Analytics row,
    a job's row) lacks ``ContainerAppName`` or ``Log``/``Reason`` here and is decoded again as ``_Rec``."""

    TimeGenerated: str | None = None
    ContainerAppName: str | None = None
    ContainerGroupName: str | None = None
    Stream: str | None = None
    Log: str | None = None
    Type: str | None = None
    ReplicaName: str | None = None
    Reason: str | None = None
    Replicas: float | str | None = None
    WorkingSetBytes: float | str | None = None
    LimitBytes: float | str | None = None


class _Rec(msgspec.Struct, gc=False):
    """The union of the JSON records we read; msgspec ignores every other field.

    Fields are in the order the Azure tables list them (alphabetically after ``TimeGenerated``; msgspec finds
    in-order keys fastest): these rows are the long ones, and a Docker record normally takes ``_Docker``.
    Numbers of the extension records may arrive as strings (``az monitor log-analytics query`` stringifies
    every value, ``None`` included), so they are decoded as ``float | str`` and converted by ``_num``.
    """

    # Azure Monitor tables, PT1H.json `properties`, az containerapp logs show
    TimeGenerated: str | None = None
    ContainerAppName: str | None = None
    ContainerGroupName: str | None = None  # the replica, in console tables
    # a Container Apps job's records name the job instead (ContainerAppName empty): the Azure Monitor tables'
    # JobName, ContainerJobName in archived (PT1H.json) records and ContainerJobName_s in Log Analytics
    JobName: str | None = None
    Log: str | None = None
    Reason: str | None = None
    ReplicaName: str | None = None
    Stream: str | None = None
    # Log Analytics (_CL) tables: the same columns with type suffixes
    ContainerAppName_s: str | None = None
    ContainerJobName_s: str | None = None
    ContainerGroupName_s: str | None = None
    Stream_s: str | None = None
    Type_s: str | None = None  # the event type Normal/Warning (`Type` holds the table name)
    Reason_s: str | None = None
    Log_s: str | None = None
    Type: str | None = None  # the table's name, or (system tables, az CLI) the event type Normal/Warning
    ContainerJobName: str | None = None
    # fleetmon's extension system records (Reason ReplicaCount / MemoryUsage)
    Replicas: float | str | None = None
    WorkingSetBytes: float | str | None = None
    LimitBytes: float | str | None = None
    # Docker json-file with its keys in another order; `time` is also the diagnostic settings' (PT1H.json)
    # top-level time
    log: str | None = None
    stream: str | None = None
    time: str | None = None
    # Diagnostic settings archived to storage (PT1H.json): the table's columns sit in `properties`
    category: str | None = None
    properties: _Rec | None = None


# The keys that make a JSON object one of our records, or reject it as one (a console table's row without its
# Log): an object with none of them is the application's own line, whatever else it holds (``feed`` then reads
# it as such without decoding it as a ``_Rec`` first).
_RECORD_KEYS = frozenset({"log", "properties", "Type", "Type_s", "Reason", "Reason_s", "Log", "Log_s"})
_BAD = object()  # _num's answer for a value that is present but not a number


def _num(v: float | str | None) -> float | object | None:
    """A numeric field: a number, None when absent (also ``"None"``/``""`` from the az CLI), else ``_BAD``."""
    if v is None or isinstance(v, float):
        return v
    if v in ("", "None"):
        return None
    try:
        x = float(v)
    except ValueError:
        return _BAD
    # float() takes "nan", "inf", "1e999": no count or size, and it would turn the gauges into NaN/+Inf
    return x if math.isfinite(x) else _BAD


def _looks_binary(line: bytes) -> bool:
    if b"\x00" in line:
        return True
    try:
        line.decode()
    except UnicodeDecodeError:
        return True
    return False


# `az containerapp logs show` prints each JSON line after replacing the escapes \u0022 \u001B \u002B \u0027 by
# the characters themselves (azure-cli command_modules/containerapp/custom.py, stream_containerapp_logs), so a
# message with a quote or an ANSI colour is no longer JSON. Its lines start like this:
_AZ_CLI_HEAD = re.compile(rb'\{"TimeStamp":\s*"[^"]*",\s*')
_AZ_CLI_MSG = re.compile(rb'"(?:Msg|Log)":\s*"')
_ESCAPABLE = re.compile(rb'\\.|["\x00-\x1f]')


def _escape_one(m: re.Match[bytes]) -> bytes:
    s = m.group()
    if len(s) == 2:
        return s  # an escape the CLI left alone (\\, \n, \u00e9 ...)
    if s == b'"':
        return b'\\"'
    return b"\\u%04x" % s[0]


def _unmangle_az_cli(line: bytes) -> bytes | None:
    """The JSON line ``az containerapp logs show`` received, from the one it printed (or None)."""
    head = _AZ_CLI_HEAD.match(line)
    if head is None:
        return None
    m = _AZ_CLI_MSG.search(line, head.end())
    if m is None:
        return None
    start = m.end()
    if line[m.start() + 1 : m.start() + 4] == b"Msg":  # system: Msg is followed by Reason, EventSource, Count
        reason = line.rfind(b'"Reason":')
        if reason < 0:
            return None
        end = line.rfind(b'"', start, reason)
    else:  # console: Log is the last field
        end = line.rfind(b'"')
        if line[end + 1 :].strip() != b"}":
            return None
    if end < start:
        return None
    return line[:start] + _ESCAPABLE.sub(_escape_one, line[start:end]) + line[end:]


# -------------------------------------------------------------------------------------------- parser
class LineParser:
    """Feeds physical lines into per-app ``AppStats``; returns None or a rejection reason."""

    def __init__(self, apps: Iterable[str], max_routes: int = 100, max_error_types: int = 50) -> None:
        self.stats: dict[str, AppStats] = {a: AppStats() for a in apps}
        self.classifier = LineClassifier(max_routes=max_routes, max_error_types=max_error_types)
        self._classify = self.classifier.classify
        self._bare = self.classifier.bare
        self._bare_json = self.classifier.bare_json
        self._bare_record = self.classifier.bare_record
        self._decode_object = msgspec.json.Decoder().decode
        self._decode = msgspec.json.Decoder(_Rec, strict=False).decode
        self._decode_docker = msgspec.json.Decoder(_Docker).decode
        self._decode_export = msgspec.json.Decoder(_Export, strict=False).decode

    # The hot path: keep it flat.
    def feed(self, st: AppStats, line: bytes, ps: PartialState) -> str | None:
        if not line:  # a blank line of a plain file (between chained tracebacks, say): ordinary output
            bump(st.lines, "plain")
            return None
        if line[0] == 0x7B:  # '{'
            # The first key says which struct to decode into: the small ones cost less than the union.
            try:
                first = line[2]
                export = first == 0x54 and line[6] == 0x47  # {"TimeGenerated": fleetmon's own exports
                docker = first == 0x6C and line[3] == 0x6F  # {"lo: Docker json-file writes `log` first
            except IndexError:
                first, export, docker = 0, False, False
            # Another first key in lower case ({"level", {"time", {"msg") is most likely an application's own
            # JSON line (Azure's columns are PascalCase): decoded once, as a dict.
            if not docker and 0x61 <= first <= 0x7A:
                try:
                    obj = self._decode_object(line)
                # RecursionError: msgspec gives up at Python's recursion limit (JSON ~1000 deep, a 2 KB line)
                except (msgspec.DecodeError, RecursionError):
                    obj = None  # decoded again below, which says what is wrong with it
                if isinstance(obj, dict) and _RECORD_KEYS.isdisjoint(obj):
                    try:
                        return self._bare_record(st, obj, line.decode())
                    except UnicodeDecodeError:
                        return "binary"
            if first == 0x6C:  # '{"l': Docker json-file writes `log` first ({"level" fails, read below)
                try:
                    d = self._decode_docker(line)
                except msgspec.ValidationError:  # `log` of another type: no Docker record, an app's line?
                    return self._app_json(st, line, ps)
                except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                    return "binary" if _looks_binary(line) else "invalid_json"
                msg, stream = d.log, d.stream
                # a string compare costs less than hashing the new string for the lookup
                key = "docker:stdout" if stream == "stdout" else _DOCKER_KEYS.get(stream) or "docker:" + str(stream)
                if not ps.pending and msg[-1:] == "\n" and msg[-2:-1] != "\r":  # the common case, inlined
                    lines = st.lines
                    lines["docker"] = lines.get("docker", 0) + 1
                    self._classify(st, msg[:-1], ps, key)
                    return None
                return self._wrapped(st, ps, "docker", key, msg, None)
            if export:
                try:
                    x: _Export | None = self._decode_export(line)
                except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                    x = None  # decoded again below, which says what is wrong with it
                if x is not None and x.ContainerAppName and (x.Log is not None or x.Reason is not None):
                    xname, etype, text = x.ContainerAppName, x.Type, x.Log
                    if (
                        text is None
                        or x.Reason is not None
                        or (etype is not None and (etype in EVENT_TYPES or etype in SYSTEM_TABLES))
                    ):
                        return self._event(st, xname, x.Reason, etype, x, x.TimeGenerated)
                    lines = st.lines
                    lines["azure_console"] = lines.get("azure_console", 0) + 1
                    group, stream = x.ContainerGroupName, x.Stream
                    self._classify(
                        self.stats.get(xname, st),
                        text.rstrip("\r\n"),
                        ps,
                        f"azure:{xname}/{group or ''}/{stream or ''}",
                    )
                    return None
            try:
                rec = self._decode(line)
            except msgspec.ValidationError:  # not one of our records (a field of another type): an app's?
                return self._app_json(st, line, ps)
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                fixed = _unmangle_az_cli(line)
                if fixed is None:
                    return "binary" if _looks_binary(line) else "invalid_json"
                try:
                    rec = self._decode(fixed)
                except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
                    return "binary" if _looks_binary(line) else "invalid_json"
            if rec.log is not None:  # a Docker record with its keys in another order
                key = _DOCKER_KEYS.get(rec.stream) or "docker:" + str(rec.stream)
                return self._wrapped(st, ps, "docker", key, rec.log, None)
            # Azure Container Apps: console or system, by the table it names, else by its columns
            src = rec.properties
            if src is None:
                src = rec
                table = rec.Type
            else:  # diagnostic settings: the category is the table's name, the columns are in properties
                table = rec.category
            if table is None:  # no table name: only system records have a Reason, a Type_s, an event type
                console = (
                    src.Reason is None
                    and src.Reason_s is None
                    and src.Type_s is None
                    and (src.Type is None or src.Type not in EVENT_TYPES)
                )
            elif src.Reason is not None or src.Reason_s is not None:
                console = table in CONSOLE_TABLES
            elif table in CONSOLE_TABLES:
                console = True
            elif table in SYSTEM_TABLES:
                console = False
            else:  # a Type that names no table we know: an event type Normal/Warning makes it a system record
                console = src.Type_s is None and (src.Type is None or src.Type not in EVENT_TYPES)
            if not console:
                return self._system(st, rec, src)
            text = src.Log
            if text is not None:
                name = src.ContainerAppName or src.JobName or src.ContainerJobName
                group, stream = src.ContainerGroupName, src.Stream
            else:  # a Log Analytics (_CL) row
                text = src.Log_s
                if text is None:  # a console table's row without its Log, or no Azure record at all
                    return "invalid_record" if table in CONSOLE_TABLES else self._app_json(st, line, ps)
                name = src.ContainerAppName_s or src.ContainerJobName_s
                group, stream = src.ContainerGroupName_s, src.Stream_s
            lines = st.lines
            lines["azure_console"] = lines.get("azure_console", 0) + 1
            # one stream per app, replica and stdout/stderr: multi-line context never mixes replicas
            self._classify(
                self.stats.get(name, st) if name else st,
                text.rstrip("\r\n"),
                ps,
                f"azure:{name or ''}/{group or ''}/{stream or ''}",
            )
            return None
        try:
            s = line.decode()
        except UnicodeDecodeError:
            return "binary"
        if "\x00" in s:
            return "binary"
        if s[-1] == "\r":
            s = s[:-1]
        # CRI: "2026-11-22T10:00:00.123456789Z stdout F message" (timestamp, stream, tag F|P, message)
        if len(s) > 20 and s[4] == "-" and s[10] == "T":
            parts = s.split(" ", 3)
            if len(parts) >= 3:
                stream = parts[1]
                stream_key = "cri:stdout" if stream == "stdout" else _CRI_KEYS.get(stream)  # as for Docker
                tag = parts[2]
                if stream_key is not None and (tag == "F" or tag == "P"):
                    msg = parts[3] if len(parts) == 4 else ""
                    if tag == "F" and not ps.pending:  # the common case, inlined
                        lines = st.lines
                        lines["cri"] = lines.get("cri", 0) + 1
                        self._classify(st, msg, ps, stream_key)
                        return None
                    return self._wrapped(st, ps, "cri", stream_key, msg, tag == "P")
        return self._bare(st, s, ps)

    def _app_json(self, st: AppStats, line: bytes, ps: PartialState) -> str | None:
        """A JSON object that is no wrapper record: the application's own JSON line (applines reads it)."""
        try:
            s = line.decode()
        except UnicodeDecodeError:
            return "binary"
        return self._bare_json(st, s, ps)

    def _wrapped(
        self, st: AppStats, ps: PartialState, fmt: str, key: str, msg: str, partial: bool | None
    ) -> str | None:
        """A Docker or CRI record; partial records are joined per stream up to the first complete one.

        A chain that grows over MAX_LINE is rejected once, when it does; its text is dropped and the rest
        of the chain up to its complete record is skipped (``<key>:skip`` in ``ps.pending``, which the tailer
        persists, so this holds across polls and restarts).
        """
        if partial is None:  # docker: a record whose log does not end in "\n" is continued by the next
            partial = not msg.endswith("\n")
            if not partial:
                msg = msg[:-1]
        lines = st.lines
        lines[fmt] = lines.get(fmt, 0) + 1
        pending = ps.pending
        if partial:
            skip = key + ":skip"
            if skip in pending:
                return None  # inside a chain already rejected as too_long
            acc = pending.get(key, "") + msg
            if len(acc) > MAX_LINE:
                pending.pop(key, None)  # keep memory bounded: the chain's text is dropped
                pending[skip] = ""
                return "too_long"
            pending[key] = acc
            return None
        if pending:
            if pending.pop(key + ":skip", None) is not None:
                return None  # the last record of a chain already rejected as too_long
            prefix = pending.pop(key, None)
            if prefix is not None:
                msg = prefix + msg
                if len(msg) > MAX_LINE:
                    return "too_long"
        if msg[-1:] == "\r":
            msg = msg[:-1]
        self._classify(st, msg, ps, key)
        return None

    def _system(self, file_st: AppStats, rec: _Rec, src: _Rec) -> str | None:
        name = (
            src.ContainerAppName
            or src.ContainerAppName_s
            or src.JobName
            or src.ContainerJobName
            or src.ContainerJobName_s
        )
        reason = src.Reason if src.Reason is not None else src.Reason_s
        etype = src.Type_s if src.Type_s is not None else src.Type
        return self._event(file_st, name, reason, etype, src, src.TimeGenerated or rec.time)

    def _event(
        self,
        file_st: AppStats,
        name: str | None,
        reason: str | None,
        etype: str | None,
        src: _Rec | _Export,
        when: str | None,
    ) -> str | None:
        """One system record of app ``name``: an event, and what the extension records report."""
        if not name:
            if reason in STREAM_NOTICES:
                bump(file_st.lines, "azure_system")
                return None
            return "unknown_app"
        target = self.stats.get(name)
        if target is None:
            return "unknown_app"
        reason = reason or "unknown"
        if reason == "ReplicaCount":
            replicas = _num(src.Replicas)
            if not isinstance(replicas, float) or replicas < 0:
                return "invalid_record"
            target.replicas = replicas
            if target.replicas_max is None or replicas > target.replicas_max:
                target.replicas_max = replicas
        elif reason == "MemoryUsage":
            ws, limit = _num(src.WorkingSetBytes), _num(src.LimitBytes)
            replica = src.ReplicaName
            if not isinstance(ws, float) or ws < 0 or limit is _BAD or not replica:
                return "invalid_record"
            ts = iso_time(when)
            if ts is None:
                return "invalid_record"
            replica = replica[:128]
            lim = limit if isinstance(limit, float) and limit > 0 else 0.0
            if replica in target.memory or len(target.memory) < 1000:
                target.memory[replica] = (ts, ws, lim)
            # forget replicas long gone so the map stays small
            if len(target.memory) > 50:
                newest = max(v[0] for v in target.memory.values())
                target.memory = {
                    r: v for r, v in target.memory.items() if v[0] >= newest - MEMORY_STALE_SECONDS
                }
        lines = file_st.lines
        lines["azure_system"] = lines.get("azure_system", 0) + 1
        key = (reason if reason in EVENT_REASONS else OTHER, etype if etype in EVENT_TYPES else OTHER)
        events = target.events
        events[key] = events.get(key, 0) + 1
        return None
