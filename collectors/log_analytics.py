"""Azure Log Analytics -> the platform exporter's log metrics, with no export: the Container Apps tables are
queried in the workspace and every row is counted by the same parser as a log file's lines.

Configured under ``platform.logs.log_analytics`` (docs/configuration.md) and run from the ``logs`` collector's
background poll, at most every ``query_interval_seconds``:

- **Queries.** ``LogsQueryClient.query_workspace`` (azure-monitor-query) with an azure-identity credential
  (managed identity, a service principal from the environment, or ``DefaultAzureCredential``), one table at a
  time (console, then system), each query ``TimeGenerated >= lo and TimeGenerated < hi``, oldest first, at most
  ``max_rows_per_query`` rows. The SDK's own retries are off: throttling and errors are handled here, without
  blocking the poll (the file tailer shares it).
- **Incremental, with an overlap.** Per table, a watermark: the ``hi`` of the last complete read. The next read
  starts ``overlap_seconds`` before it, because Log Analytics ingests late (a row may become queryable minutes
  after its TimeGenerated). Rows seen before are recognised by a digest (``_ItemId`` when the table has it,
  else the row's content) kept for the rows of the overlap window, and dropped as duplicates. A row that
  becomes queryable within ``overlap_seconds`` of its TimeGenerated is always counted, once; a later one is
  never read (the ``..._max_ingestion_delay_seconds`` gauge shows how close the workspace comes to the limit).
- **Paging.** A full page continues from its last TimeGenerated (rows at that instant are read again and
  dropped as duplicates); a page that is one instant throughout is read whole. At most
  ``max_queries_per_poll`` queries per table and poll: a long backlog continues at the next poll.
- **Throttling and failures.** HTTP 429: no query before its ``Retry-After`` has passed. Any other failure
  (5xx, timeout, authentication, ...) is counted by reason, ``..._up`` is 0, and the next attempt waits the
  query interval, doubled per consecutive failure up to 8 times. Each cause is logged once, not per poll.
- **Partial results** (``LogsQueryPartialResult``: HTTP 200 with ``error.code == "PartialError"``): the rows
  returned are counted (duplicates later are dropped), the query is repeated for half as many rows.
- **Checkpoint.** Watermarks, the overlap digests and the row counters go atomically to ``checkpoint_file``
  after every poll, *before* the tailer's state file (which holds the per-app counters); the checkpoint notes
  what it read that the state file may not hold yet. After a crash between the two writes the rows of that
  poll are read again (the state file predates them), so a restart neither recounts nor skips. A corrupt
  checkpoint is kept as ``.corrupt`` and reading restarts at the present (nothing is counted twice; the gap
  is logged and counted).
- **Rows -> records.** Each row becomes a dict of column -> value (datetimes as ISO 8601), encoded as one
  compact JSON line and fed to the tailer's ``LineParser`` for the app named in ``ContainerAppName`` /
  ``ContainerAppName_s`` (a job's rows: ``JobName`` / ``ContainerJobName_s``), which must be a configured
  app; other rows are rejected as ``unknown_app``.
  Rejected rows are counted by reason and sampled to the tailer's quarantine.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
from azure.core.exceptions import (
    ClientAuthenticationError,
    DecodeError,
    HttpResponseError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from collectors.logstats import MAX_LINE, REJECT_REASONS, PartialState
from fleetmon.config import LogAnalyticsConfig

if TYPE_CHECKING:
    from collectors.logs import LogTailer

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
US = 1_000_000  # times are kept as integer microseconds (TimeGenerated as the SDK returns it)
# Columns the query adds to each row; taken out before the row is fed to the parser.
INGESTED = "fleetmon_ingestion_time"
ITEM_ID = "fleetmon_item_id"
# Where a row names its app: a container app, or a Container Apps job (whose rows leave ContainerAppName empty).
APP_COLUMNS = ("ContainerAppName", "ContainerAppName_s", "JobName", "ContainerJobName_s", "JobName_s")
ERROR_REASONS = (
    "auth",  # no token (credential unavailable or refused), HTTP 401
    "forbidden",  # HTTP 403: the identity lacks a role on the workspace (Log Analytics Reader)
    "not_found",  # HTTP 404: no such workspace
    "table_not_found",  # HTTP 400, the table does not exist in the workspace (wrong logs_destination?)
    "bad_request",  # any other HTTP 400
    "server_error",  # HTTP 5xx
    "timeout",
    "connection",  # refused, reset, DNS, TLS
    "invalid_response",  # not the API's JSON
    "other",
)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
MAX_BACKOFF_FACTOR = 8
MAX_RETRY_AFTER = 3600.0  # a Retry-After beyond an hour is taken as an hour


def _iso(us: int) -> str:
    return (
        dt.datetime.fromtimestamp(us // US, dt.UTC)
        .replace(microsecond=us % US)
        .strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    )


def _to_us(v: Any) -> int | None:
    """A TimeGenerated value (a datetime from the SDK, or text it could not parse) as epoch microseconds."""
    if isinstance(v, str):
        try:
            v = dt.datetime.fromisoformat(v)
        except ValueError:
            return None
    if not isinstance(v, dt.datetime):
        return None
    if v.tzinfo is None:
        v = v.replace(tzinfo=dt.UTC)
    d = v - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (d.days * 86400 + d.seconds) * US + d.microseconds


def _plain(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        us = _to_us(v)
        return _iso(us) if us is not None else v.isoformat()
    return v


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (a number, or an HTTP date), bounded."""
    if not value:
        return None
    try:
        delay = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        delay = (when - dt.datetime.now(dt.UTC)).total_seconds()
    return min(max(delay, 0.0), MAX_RETRY_AFTER) if math.isfinite(delay) else None


class _QueryFailed(Exception):
    def __init__(
        self, reason: str, message: str, status: int | None = None, retry_after: float | None = None
    ):
        super().__init__(message)
        self.reason, self.message, self.status, self.retry_after = reason, message, status, retry_after


def _classify(e: BaseException) -> _QueryFailed:
    """A failed query -> a bounded reason (and Retry-After for throttling)."""
    msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    if isinstance(e, ServiceRequestTimeoutError | ServiceResponseTimeoutError):
        return _QueryFailed("timeout", msg)
    if isinstance(e, HttpResponseError):
        status = e.status_code
        text = str(e)
        if status == 429:
            headers = getattr(e.response, "headers", None) or {}
            return _QueryFailed("throttled", msg, 429, _retry_after(headers.get("Retry-After")))
        if status == 401:
            return _QueryFailed("auth", msg, status)
        if status == 403:
            return _QueryFailed("forbidden", msg, status)
        if status == 404:
            return _QueryFailed("not_found", msg, status)
        if status == 400:
            table = "Failed to resolve table" in text or "SEM0100" in text
            return _QueryFailed("table_not_found" if table else "bad_request", msg, status)
        if status is not None and status >= 500:
            return _QueryFailed("server_error", msg, status)
        if status is None:
            # the query client re-raises a credential's error as a bare HttpResponseError: look at the cause
            cause: BaseException | None = e
            while cause is not None:
                if isinstance(cause, ClientAuthenticationError):
                    return _QueryFailed("auth", msg)
                cause = cause.__cause__ or cause.__context__
            if isinstance(e, DecodeError):
                return _QueryFailed("invalid_response", msg)
        return _QueryFailed("other", msg, status)
    if isinstance(e, ServiceRequestError | ServiceResponseError):
        return _QueryFailed("connection", msg)
    if isinstance(e, ValueError | KeyError | TypeError | IndexError):
        return _QueryFailed("invalid_response", msg)
    return _QueryFailed("other", msg)


@dataclass
class _TableState:
    """What is persisted per table (rolled back together with the per-app counters after a crash)."""

    watermark: int | None = None  # hi of the last complete read (µs); None: never read
    resume: int | None = None  # a read cut short by max_queries_per_poll continues here
    floor: int | None = None  # never read below (set when a corrupt checkpoint left what was counted unknown)
    rows_read: int = 0
    duplicates: int = 0
    late: int = 0  # new rows older than the watermark: found thanks to the overlap
    other_shard: int = 0  # rows of apps another shard owns (sharded by app): left to that shard
    rejected: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "watermark": self.watermark,
            "resume": self.resume,
            "floor": self.floor,
            "rows_read": self.rows_read,
            "duplicates": self.duplicates,
            "late": self.late,
            "other_shard": self.other_shard,
            "rejected": dict(self.rejected),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _TableState:
        def opt(v: Any) -> int | None:
            return None if v is None else int(v)

        return cls(
            watermark=opt(d.get("watermark")),
            resume=opt(d.get("resume")),
            floor=opt(d.get("floor")),
            rows_read=int(d.get("rows_read", 0)),
            duplicates=int(d.get("duplicates", 0)),
            late=int(d.get("late", 0)),
            other_shard=int(d.get("other_shard", 0)),
            rejected={str(k): int(v) for k, v in dict(d.get("rejected", {})).items()},
        )


@dataclass
class _Row:
    tg: int | None  # TimeGenerated, µs
    record: dict[str, Any]
    ingested: int | None
    item_id: str


class LogAnalyticsSource:
    """Reads the configured workspace's Container Apps tables into the tailer's per-app aggregates."""

    def __init__(
        self, cfg: LogAnalyticsConfig, tailer: LogTailer, clock: Callable[[], float] = time.time
    ) -> None:
        assert cfg.workspace_id, "a workspace id is required"
        self.cfg = cfg
        self.workspace_id: str = cfg.workspace_id
        self.tailer = tailer
        self.clock = clock  # wall time in seconds; tests move it
        self.tables = list(cfg.tables().values())
        self.state = {t: _TableState() for t in self.tables}
        self.seen: dict[str, dict[str, int]] = {t: {} for t in self.tables}  # digest -> TimeGenerated (µs)
        # table -> app -> what the line classifier carries from row to row (a traceback in progress)
        self.partials: dict[str, dict[str, PartialState]] = {t: {} for t in self.tables}
        self.page_rows = dict.fromkeys(self.tables, cfg.max_rows_per_query)
        # What a crash could lose: the state before the first poll whose rows the tailer's state file may
        # not hold yet, and the digests added since (see _commit).
        self._unsaved: dict[str, Any] | None = None
        # health of this process (not persisted)
        self.up: float | None = None
        self.last_success: float | None = None
        self.throttled = 0
        self.partial_results = dict.fromkeys(self.tables, 0)
        self.errors = dict.fromkeys(ERROR_REASONS, 0)
        self.checkpoint_errors = {"corrupt": 0, "write": 0, "stats_write": 0}
        self.max_delay: dict[str, float] = {}
        self.durations = {t: [0] * (len(DURATION_BUCKETS) + 1) for t in self.tables}
        self.duration_sum = dict.fromkeys(self.tables, 0.0)
        self._lock = threading.Lock()  # what collect() reads
        self._next_at = 0.0
        self._failures = 0
        self._cause: tuple[str, int | None] | None = None
        self._partial_noted: set[str] = set()  # tables whose partial results are logged (once per streak)
        self._client: Any = None
        self._credential: Any = None
        self._load_checkpoint()

    # ---------------------------------------------------------------------------------- client
    def _make_client(self) -> Any:
        # imported here: only an exporter that reads a workspace pays for the Azure SDK's import
        from azure.identity import DefaultAzureCredential, EnvironmentCredential, ManagedIdentityCredential
        from azure.monitor.query import LogsQueryClient

        cfg = self.cfg
        timeouts: dict[str, Any] = {
            "connection_timeout": min(cfg.timeout_seconds, 30.0),
            "read_timeout": cfg.timeout_seconds + 2,
        }
        discovery: dict[str, Any] = (
            {"disable_instance_discovery": True} if cfg.disable_instance_discovery else {}
        )
        if cfg.credential == "managed_identity":
            self._credential = ManagedIdentityCredential(client_id=cfg.client_id, **timeouts)
        elif cfg.credential == "environment":
            self._credential = EnvironmentCredential(**discovery, **timeouts)
        else:
            self._credential = DefaultAzureCredential(
                managed_identity_client_id=cfg.client_id, **discovery, **timeouts
            )
        # retry_total=0: a 429 or 5xx comes back here, to be waited for without blocking the poll
        return LogsQueryClient(self._credential, endpoint=cfg.endpoint, retry_total=0, **timeouts)

    def close(self) -> None:
        self._write_checkpoint()
        for c in (self._client, self._credential):
            close = getattr(c, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # closing a transport must not fail a shutdown
                    pass
        self._client = self._credential = None

    # ---------------------------------------------------------------------------------- polling
    def poll(self) -> None:
        """One read of every table when due (never raises: failures are counted and logged)."""
        now = self.clock()
        if now < self._next_at:
            return
        prev = {t: _TableState.from_dict(s.to_dict()) for t, s in self.state.items()}
        added: dict[str, list[str]] = {t: [] for t in self.tables}  # digests of the rows fed
        failure: _QueryFailed | None = None
        hi = int(now * US)
        for table in self.tables:
            try:
                self._read_table(table, hi, added[table])
            except _QueryFailed as e:
                failure = e
                break  # one failure (throttling above all) is not improved by asking the next table
        self.tailer.quarantine.flush()
        self._commit(prev, added, any(added.values()))  # also what was fed before a failure
        if failure is None:
            self._succeeded(now)
        else:
            self._failed(failure, now)

    def _read_table(self, table: str, hi: int, added: list[str]) -> None:
        """Read table up to hi (µs) from its watermark minus the overlap; the digests fed go to ``added``."""
        st = self.state[table]
        overlap = int(self.cfg.overlap_seconds * US)
        if st.resume is not None:
            lo = st.resume
        else:
            lo = (hi if st.watermark is None else st.watermark) - overlap  # first read: the last overlap
        if st.floor is not None:
            lo = max(lo, st.floor)
        if lo >= hi:  # nothing to read yet (overlap_seconds 0 on a first read, a floor in the future)
            if st.watermark is None and st.resume is None:
                with self._lock:
                    st.watermark = hi
            return
        if self._unsaved is None:  # (a pending rollback may need the older digests)
            # Digests no later read can meet: below this read, and below the overlap of a read that ends at hi
            # (a backlog read from `resume` is followed by one from its end minus the overlap).
            bound = min(lo, hi - overlap)
            seen = self.seen[table]
            for k in [k for k, tg in seen.items() if tg < bound]:
                del seen[k]
        delays: list[float] = []
        cursor = lo
        for _ in range(self.cfg.max_queries_per_poll):
            limit = self.page_rows[table]
            rows, partial = self._query(table, cursor, hi, limit)
            self._ingest(table, rows, st.watermark, added, delays)
            if partial:
                with self._lock:
                    self.partial_results[table] += 1
                if limit == 1:
                    break
                self.page_rows[table] = max(1, limit // 2)  # often the result size limit: ask for less
                continue
            self.page_rows[table] = min(self.cfg.max_rows_per_query, limit * 2)
            if len(rows) < limit:  # the window is read to hi
                with self._lock:
                    st.watermark = hi if st.watermark is None else max(st.watermark, hi)
                    st.resume = None
                self._note_delays(table, delays)
                return
            times = [r.tg for r in rows if r.tg is not None]
            if not times:
                raise _QueryFailed("invalid_response", f"a full page of {table} without TimeGenerated")
            first, last = min(times), max(times)
            if last <= first:  # one instant fills a page: read that instant whole, then go past it
                rows, partial = self._query(table, last, last + 1, None)
                self._ingest(table, rows, st.watermark, added, delays)
                if partial:
                    with self._lock:
                        self.partial_results[table] += 1
                    break
                cursor = last + 1
            else:
                cursor = last  # rows at `last` not on this page come with the next; the others are duplicates
        with self._lock:
            st.resume = cursor  # the budget is spent: the next poll continues here
        self._note_delays(table, delays)

    def _note_delays(self, table: str, delays: list[float]) -> None:
        if delays:
            with self._lock:
                self.max_delay[table] = max(delays)

    def _query(self, table: str, lo: int, hi: int, limit: int | None) -> tuple[list[_Row], bool]:
        """One query of [lo, hi); returns its rows and whether the result was partial. Raises _QueryFailed."""
        kql = (
            f"{table}\n"
            f"| where TimeGenerated >= datetime({_iso(lo)}) and TimeGenerated < datetime({_iso(hi)})\n"
            f'| extend {INGESTED} = ingestion_time(), {ITEM_ID} = column_ifexists("_ItemId", "")\n'
            + (f"| top {limit} by TimeGenerated asc" if limit is not None else "| sort by TimeGenerated asc")
        )
        # the timespan is the API's own filter on TimeGenerated: a second wider, the where clause is exact
        span = (
            dt.datetime.fromtimestamp(lo // US - 1, dt.UTC),
            dt.datetime.fromtimestamp(hi // US + 2, dt.UTC),
        )
        if self._client is None:
            try:
                self._client = self._make_client()
            except Exception as e:  # a credential that cannot even be built (bad settings)
                raise _QueryFailed("auth", f"cannot create the credential: {type(e).__name__}: {e}") from e
        from azure.monitor.query import LogsQueryPartialResult

        start = time.perf_counter()
        try:
            res = self._client.query_workspace(
                self.workspace_id, kql, timespan=span, server_timeout=math.ceil(self.cfg.timeout_seconds)
            )
            partial = isinstance(res, LogsQueryPartialResult)
            tables = (res.partial_data if partial else res.tables) or []
            rows = self._rows(tables[0]) if tables else []
        except _QueryFailed:
            raise
        except Exception as e:
            f = _classify(e)
            if f.reason == "other":
                log.debug("Log Analytics query of %s failed", table, exc_info=True)
            raise f from e
        finally:
            self._observe(table, time.perf_counter() - start)
        if not partial:
            self._partial_noted.discard(table)
        elif table not in self._partial_noted:
            self._partial_noted.add(table)
            err = getattr(res, "partial_error", None)
            log.warning(
                "Log Analytics returned a partial result for %s (%s): %d rows kept, asking for fewer",
                table,
                getattr(err, "message", None) or getattr(err, "code", "PartialError"),
                len(rows),
            )
        return rows, partial

    @staticmethod
    def _rows(table: Any) -> list[_Row]:
        cols = list(table.columns)
        out = []
        for r in table.rows:
            record: dict[str, Any] = {}
            ingested, item = None, ""
            for c, v in zip(cols, r, strict=False):
                if c == INGESTED:
                    ingested = _to_us(v)
                elif c == ITEM_ID:
                    item = v if isinstance(v, str) else ""
                else:
                    record[c] = _plain(v)
            out.append(_Row(_to_us(record.get("TimeGenerated")), record, ingested, item))
        return out

    def _observe(self, table: str, seconds: float) -> None:
        with self._lock:
            b = self.durations[table]
            i = next((i for i, ub in enumerate(DURATION_BUCKETS) if seconds <= ub), len(DURATION_BUCKETS))
            b[i] += 1
            self.duration_sum[table] += seconds

    # ---------------------------------------------------------------------------------- rows
    def _ingest(
        self, table: str, rows: list[_Row], watermark: int | None, added: list[str], delays: list[float]
    ) -> None:
        """Feed the rows not seen before (their digests go to ``added``)."""
        if not rows:
            return
        st, seen = self.state[table], self.seen[table]
        encode = msgspec.json.encode
        with self.tailer.lock, self._lock:
            for row in rows:
                st.rows_read += 1
                line = encode(row.record, enc_hook=str)
                key = hashlib.blake2b(
                    b"i:" + row.item_id.encode() if row.item_id else line, digest_size=8
                ).hexdigest()
                if key in seen:
                    st.duplicates += 1
                    continue
                seen[key] = row.tg if row.tg is not None else 0
                added.append(key)
                if watermark is not None and row.tg is not None and row.tg < watermark:
                    st.late += 1
                if row.ingested is not None and row.tg is not None:
                    delays.append((row.ingested - row.tg) / US)
                reason, app = self._feed(table, row, line)
                if reason == "other_shard":
                    st.other_shard += 1
                elif reason is not None:
                    self._reject(table, app, reason, line)
            # the end of what the workspace holds so far: errors whose trace may be complete count now
            settle, stats = self.tailer.parser.classifier.settle, self.tailer.parser.stats
            for name, ps in self.partials[table].items():
                settle(stats[name], ps)

    def _feed(self, table: str, row: _Row, line: bytes) -> tuple[str | None, str | None]:
        """Feed one row to the parser for its app; returns (rejection reason or None, the app if configured)."""
        rec = row.record
        name = next((rec[c] for c in APP_COLUMNS if rec.get(c)), None)
        stats = self.tailer.parser.stats
        if not self.tailer.shard.owns_name(name):
            return "other_shard", None  # another shard counts it (or rejects it as unknown_app)
        if not isinstance(name, str) or name not in stats:
            return "unknown_app", None
        if len(line) > MAX_LINE:
            return "too_long", name
        ps = self.partials[table].setdefault(name, PartialState())
        return self.tailer.parser.feed(stats[name], line, ps), name

    def _reject(self, table: str, app: str | None, reason: str, line: bytes) -> None:
        # Called under the tailer's lock. Rows of a configured app count in its logs metrics too.
        st = self.state[table]
        st.rejected[reason] = st.rejected.get(reason, 0) + 1
        # The sample counts as quarantined once the quarantine has written it (Quarantine.flush).
        self.tailer.quarantine.offer(app or "", reason, f"log-analytics:{table}", 0, line)
        if app is not None:
            s = self.tailer.parser.stats[app]
            s.rejected[reason] = s.rejected.get(reason, 0) + 1

    # ---------------------------------------------------------------------------------- outcome
    def _succeeded(self, now: float) -> None:
        with self._lock:
            self.up, self.last_success = 1.0, now
        self._failures = 0
        self._next_at = now + self.cfg.query_interval_seconds
        if self._cause is not None:
            log.info("Log Analytics workspace %s answers again", self.workspace_id)
            self._cause = None

    def _failed(self, f: _QueryFailed, now: float) -> None:
        with self._lock:
            self.up = 0.0
            if f.reason == "throttled":
                self.throttled += 1
            else:
                self.errors[f.reason] = self.errors.get(f.reason, 0) + 1
        self._failures += 1
        interval = self.cfg.query_interval_seconds
        if f.reason == "throttled":
            delay = max(interval, f.retry_after or 0.0)  # never sooner than the API asked
        else:
            delay = interval * min(2 ** (self._failures - 1), MAX_BACKOFF_FACTOR)
        self._next_at = now + delay
        cause = (f.reason, f.status)
        if cause != self._cause:  # once per cause, not once per poll
            hint = (
                " (the identity needs the Log Analytics Reader role on the workspace)"
                if f.reason in ("forbidden",)
                else ""
            )
            level = logging.WARNING if f.reason == "throttled" else logging.ERROR
            log.log(
                level,
                "Log Analytics workspace %s: query failed (%s%s): %s%s; next attempt in %.0f s",
                self.workspace_id,
                f.reason,
                f", HTTP {f.status}" if f.status else "",
                f.message,
                hint,
                delay,
            )
            self._cause = cause

    # ---------------------------------------------------------------------------------- checkpoint
    def _commit(self, prev: dict[str, _TableState], added: dict[str, list[str]], fed: bool) -> None:
        """Persist this poll: the checkpoint first, then the tailer's state file (the per-app counters)."""
        if fed and self._unsaved is None:
            self._unsaved = {"prev": {t: s.to_dict() for t, s in prev.items()}, "added": {}}
        if self._unsaved is not None:
            for t, keys in added.items():
                self._unsaved["added"].setdefault(t, []).extend(keys)
        if not self._write_checkpoint() or self._unsaved is None:
            return
        try:
            self.tailer.save_state()
        except OSError as e:
            with self._lock:
                self.checkpoint_errors["stats_write"] += 1
            log.error("cannot write the log counters to %s: %s", self.tailer.cfg.state_file, e)
            return
        self._unsaved = None

    def _write_checkpoint(self) -> bool:
        with self._lock:
            data = {
                "version": CHECKPOINT_VERSION,
                "workspace_id": self.workspace_id,
                "written_at": time.time(),  # compared with the tailer's saved_at: always the real clock
                "tables": {t: s.to_dict() for t, s in self.state.items()},
                "seen": self.seen,
                "partial": {
                    t: {a: {"pending": p.pending, "context": p.context} for a, p in apps.items()}
                    for t, apps in self.partials.items()
                },
                "unsaved": self._unsaved,
            }
            body = msgspec.json.encode(data)
        path = self.cfg.checkpoint_file
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as e:
            with self._lock:
                self.checkpoint_errors["write"] += 1
            log.error("cannot write the Log Analytics checkpoint %s: %s", path, e)
            return False
        return True

    def _load_checkpoint(self) -> None:
        path = self.cfg.checkpoint_file
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return  # first start: each table's first read covers the last overlap_seconds
        except OSError as e:
            self._corrupt(f"cannot read it: {e}")
            return
        try:
            data = msgspec.json.decode(raw)
            if not isinstance(data, dict) or data.get("version") != CHECKPOINT_VERSION:
                raise ValueError("not a checkpoint of this version")
            if data.get("workspace_id") != self.workspace_id:
                log.warning(
                    "Log Analytics checkpoint %s is for workspace %s, not %s: reading afresh",
                    path,
                    data.get("workspace_id"),
                    self.workspace_id,
                )
                return
            state = {t: _TableState.from_dict(d) for t, d in dict(data["tables"]).items() if t in self.state}
            seen = {
                t: {str(k): int(v) for k, v in dict(d).items()}
                for t, d in dict(data.get("seen", {})).items()
                if t in self.seen
            }
            partials = {
                t: {str(a): _partial(p) for a, p in dict(apps).items() if a in self.tailer.parser.stats}
                for t, apps in dict(data.get("partial", {})).items()
                if t in self.partials
            }
            unsaved = data.get("unsaved")
            written_at = float(data["written_at"])
            if unsaved is not None:
                prev = {
                    t: _TableState.from_dict(d) for t, d in dict(unsaved["prev"]).items() if t in self.state
                }
                added = {t: [str(k) for k in keys] for t, keys in dict(unsaved["added"]).items()}
        except (msgspec.DecodeError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
            self._corrupt(str(e) or type(e).__name__)  # RecursionError: JSON nested too deep
            return
        self.state.update(state)
        self.seen.update(seen)
        self.partials.update(partials)
        if unsaved is not None:
            saved_at = self._counters_saved_at()
            if saved_at is None or saved_at < written_at:
                # The counters on disk predate the last rows read (a crash between the two writes): forget
                # those rows, they are read again.
                log.warning(
                    "the log counters in %s predate the last Log Analytics rows read; reading those again",
                    self.tailer.cfg.state_file,
                )
                self.state.update(prev)
                for t, keys in added.items():
                    for k in keys:
                        self.seen.get(t, {}).pop(k, None)

    def _counters_saved_at(self) -> float | None:
        """When the tailer last wrote its state file (None: never, or unreadable)."""
        try:
            v = msgspec.json.decode(self.tailer.cfg.state_file.read_bytes()).get("saved_at")
        except (OSError, msgspec.DecodeError, AttributeError, RecursionError):
            return None
        return float(v) if isinstance(v, int | float) else None

    def _corrupt(self, why: str) -> None:
        path = self.cfg.checkpoint_file
        try:
            os.replace(path, path.with_name(path.name + ".corrupt"))
        except OSError:
            pass
        self.checkpoint_errors["corrupt"] += 1
        # What was read before is unknown: start at the present, so nothing is counted twice.
        now = int(self.clock() * US)
        for st in self.state.values():
            st.watermark = st.floor = now
        log.error(
            "Log Analytics checkpoint %s is unusable (%s; kept as %s.corrupt): reading starts now, rows since"
            " the last good checkpoint are not counted",
            path,
            why,
            path.name,
        )

    # ---------------------------------------------------------------------------------- metrics
    def collect(self) -> Iterator[Metric]:
        p = "fleetmon_log_analytics"
        up = GaugeMetricFamily(
            f"{p}_up", "Whether the last query round of the Log Analytics workspace succeeded."
        )
        last = GaugeMetricFamily(
            f"{p}_last_success_timestamp_seconds", "Unix time of the last successful query round."
        )
        wm = GaugeMetricFamily(
            f"{p}_watermark_timestamp_seconds",
            "TimeGenerated up to which the table has been read (the next read starts overlap_seconds before).",
            labels=["table"],
        )
        read = CounterMetricFamily(f"{p}_rows_read", "Rows returned by the workspace.", labels=["table"])
        dup = CounterMetricFamily(
            f"{p}_duplicate_rows", "Rows read again (overlap, paging) and dropped.", labels=["table"]
        )
        other = CounterMetricFamily(
            f"{p}_rows_other_shard",
            "Rows of apps another shard owns (sharded by app), left to it (0 unless sharded).",
            labels=["table"],
        )
        late = CounterMetricFamily(
            f"{p}_late_rows",
            "New rows older than the watermark when read: ingested late, found thanks to the overlap.",
            labels=["table"],
        )
        rej = CounterMetricFamily(
            f"{p}_rows_rejected", "Rows that could not be counted, by reason.", labels=["table", "reason"]
        )
        thr = CounterMetricFamily(f"{p}_throttled_responses", "HTTP 429 answers (Retry-After honoured).")
        part = CounterMetricFamily(
            f"{p}_partial_results", "Queries answered with a partial result (PartialError).", labels=["table"]
        )
        err = CounterMetricFamily(f"{p}_query_errors", "Failed queries, by reason.", labels=["reason"])
        delay = GaugeMetricFamily(
            f"{p}_max_ingestion_delay_seconds",
            "Largest ingestion_time() - TimeGenerated among the new rows of the last read (compare with"
            " overlap_seconds: later rows are never read).",
            labels=["table"],
        )
        ckpt = CounterMetricFamily(
            f"{p}_checkpoint_errors",
            "Checkpoint problems: corrupt at start (reading restarted at the present), write failures.",
            labels=["kind"],
        )
        dur = HistogramMetricFamily(
            f"{p}_query_duration_seconds", "Duration of one query, by table.", labels=["table"]
        )
        with self._lock:
            if self.up is not None:
                up.add_metric([], self.up)
            if self.last_success is not None:
                last.add_metric([], self.last_success)
            for t, st in self.state.items():
                mark = st.resume if st.resume is not None else st.watermark
                if mark is not None:
                    wm.add_metric([t], mark / US)
                read.add_metric([t], st.rows_read)
                dup.add_metric([t], st.duplicates)
                late.add_metric([t], st.late)
                other.add_metric([t], st.other_shard)
                for reason in dict.fromkeys([*REJECT_REASONS, *st.rejected]):
                    rej.add_metric([t, reason], st.rejected.get(reason, 0))
                part.add_metric([t], self.partial_results[t])
                if t in self.max_delay:
                    delay.add_metric([t], self.max_delay[t])
                acc, buckets = 0, []
                for ub, n in zip([*DURATION_BUCKETS, math.inf], self.durations[t], strict=True):
                    acc += n
                    buckets.append(("+Inf" if ub == math.inf else repr(ub), acc))
                dur.add_metric([t], buckets, self.duration_sum[t])
            thr.add_metric([], self.throttled)
            for reason, n in self.errors.items():
                err.add_metric([reason], n)
            for kind, n in self.checkpoint_errors.items():
                ckpt.add_metric([kind], n)
        yield from (up, last, wm, read, dup, late, other, rej, thr, part, err, delay, ckpt, dur)


def _partial(d: Any) -> PartialState:
    ps = PartialState()
    ps.pending = {str(k): str(v) for k, v in dict(d.get("pending", {})).items()}
    ps.context = {str(k): str(v) for k, v in dict(d.get("context", {})).items()}
    return ps
