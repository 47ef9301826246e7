"""One ingest cycle: read new files and SQL rows, validate, keep, reject, count; then compute quality.

Sources never stop the exporter: a file or query that fails is logged with its source, counted in
``source_errors`` and marks the source down for that cycle; the other sources and the served metrics go on.
A file is read once, when it first appears (files are written whole: temporary name + rename); a file
that cannot be read is remembered with its error and not retried.

SQL sources (``outputs.sql[]``) are read incrementally on ``time_column``, with an overlap:

- **The skipped-row race.** ``WHERE time_column > <largest value read>`` misses a row whose transaction
  took its time value before, but committed after, a newer row was read (``DEFAULT now()`` is the
  transaction's start; a batch job stamps ``made_at`` before it inserts). So every read asks for
  ``time_column > since``, ``since`` = the largest value read minus ``overlap_seconds``, and the rows of
  the overlap read before are recognised by a fingerprint (a hash of ``key_columns``, default of all the
  row's columns) and skipped: as many rows of a fingerprint as were read before, so identical rows count
  once each. The fingerprints kept are those of the last read's rows above the next ``since``, so the set
  is pruned as the watermark passes. A row that commits within ``overlap_seconds`` of its time value is
  counted exactly once; a later one is missed (``late_rows`` shows how close the rows come).
- **Restarts.** Watermark, ``since`` and the fingerprints are saved in the state file after every poll.
  The first successful read of a source after a start runs the whole query to rebuild the window: rows up
  to the saved ``since``, and the saved fingerprints above it, go back into the window without being
  counted; the rest are new and counted.
- **Failures.** A read is all or nothing: nothing is counted and the mark does not move unless the query
  returned and its result is usable. A failure is counted by reason (``sql_errors``): ``connect``,
  ``connection_lost`` (the session ended during the query: server restart, ``pg_terminate_backend``),
  ``timeout`` (``statement_timeout_seconds``), ``query`` (the database refused it), ``result`` (no time
  column, mixed types, ...). Connections are checked before use (``pool_pre_ping``), so a server restarted
  between polls costs nothing. Error messages are the driver's, with the URL's password replaced by ``***``.
- **Timeouts.** PostgreSQL: ``SET LOCAL statement_timeout`` (the server cancels the query) and libpq's
  ``connect_timeout``; SQLite: a progress handler interrupts the query. Sources are read one after the
  other, so a slow query delays the others by at most its timeout and never stops them.
"""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import json
import logging
import math
import os
import re
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fleetmon.config import Config, FileSource, SqlSource
from fleetmon.outputs.estimation import FleetEstimator
from fleetmon.outputs.quality import Quality, compute, join_actuals
from fleetmon.outputs.quarantine import Quarantine
from fleetmon.outputs.records import (
    READERS,
    Batch,
    FleetIndex,
    Kind,
    RowOwner,
    parse_time,
    table_batch,
    validate,
)
from fleetmon.outputs.state import ReadState, SqlMark
from fleetmon.outputs.store import OutputStore
from fleetmon.outputs.versions import Versions
from fleetmon.outputs.versions import compute as compute_versions

log = logging.getLogger(__name__)

# Rejection counter key: reason, kind, customer, building, energy, model ("" where not a valid fleet key).
RejectKey = tuple[str, str, str, str, str, str]


# Why a read of a SQL source failed (label ``reason`` of fleetmon_outputs_sql_read_errors_total).
SQL_ERROR_REASONS = ("connect", "connection_lost", "timeout", "query", "result")


class _FilesFailed(Exception):
    """Some files of a source could not be read (each counted already)."""


class _SqlFailed(Exception):
    """A failed read of a SQL source: the reason it counts under and a message without the URL's password."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class OutputsPipeline:
    def __init__(self, cfg: Config, clock: Callable[[], float] = time.time, readonly: bool = False) -> None:
        """``readonly``: read every file afresh and touch neither the state nor the quarantine (for
        one-off commands such as ``fleetmon drift-report`` next to a running exporter)."""
        self.cfg = cfg.outputs
        self.readonly = readonly
        self.clock = clock
        self.fleet = FleetIndex(cfg.fleet, cfg.shard)
        self.owner = RowOwner(cfg.shard)
        self.features = list(self.cfg.features)
        self.store = OutputStore(self.fleet, self.features, self.cfg.retention_seconds)
        self.state = ReadState(self.cfg.state_dir, load=not readonly)
        self.quarantine = Quarantine(self.cfg.quarantine_dir)
        self.rejected: Counter[RejectKey] = Counter()
        self.sources: list[tuple[str, Kind, FileSource | SqlSource]] = [
            *((s.name or "", "predictions", s) for s in self.cfg.predictions),
            *((s.name or "", "actuals", s) for s in self.cfg.actuals),
            *((s.name or "", s.kind, s) for s in self.cfg.sql),
        ]
        names = [n for n, _, _ in self.sources]
        self.source_up: dict[str, float] = dict.fromkeys(names, 1.0)
        self.source_errors: Counter[str] = Counter(dict.fromkeys(names, 0))
        self.files_read: Counter[str] = Counter(dict.fromkeys(names, 0))
        self.rows_read: Counter[str] = Counter(dict.fromkeys(names, 0))
        # Rows of buildings other shards own: left out before validation (0 when not sharded).
        self.rows_other_shard: Counter[str] = Counter(dict.fromkeys(names, 0))
        self.sql_errors: Counter[tuple[str, str]] = Counter(
            {(s.name or "", r): 0 for s in self.cfg.sql for r in SQL_ERROR_REASONS}
        )
        self.late_rows: Counter[str] = Counter({s.name or "": 0 for s in self.cfg.sql})
        self._engines: dict[str, Any] = {}
        # SQL sources read successfully since the start (until then a read is the whole query: a rebuild).
        self._sql_synced: set[str] = set()
        self._rebuilt = False
        # Goes up whenever a poll reads anything (rows, rejections, other shards' rows) or a source's health
        # changes: a poll that leaves it unchanged changed nothing the quality depends on.
        self.generation = 0
        self.quality: Quality | None = None
        self.versions: Versions | None = None  # None: outputs.versions.enabled is false
        est = self.cfg.estimation
        # The forecasters' error before their actuals arrive, per quality window (None: disabled).
        self.estimation: FleetEstimator | None = (
            FleetEstimator(
                self.fleet,
                self.features,
                dict(self.cfg.windows),
                est.reference_seconds or max(self.cfg.windows.values(), default=7 * 86400.0),
                est.refit_seconds,
                est.settle_seconds,
            )
            if est.enabled
            else None
        )
        self.estimation_errors = 0
        if not readonly:
            self._restore_counters(self.state.counters)

    # ------------------------------------------------------------------------------------- ingest
    def ingest(self) -> None:
        now = self.clock()
        first = not self._rebuilt
        health = self._health()
        for name, kind, src in self.sources:
            try:
                if isinstance(src, FileSource):
                    self._read_files(name, kind, src, now, first)
                else:
                    self._read_sql(name, kind, src, now)
                self.source_up[name] = 1.0
            except _FilesFailed as e:  # each file already counted
                self.source_up[name] = 0.0
                log.error("outputs source %s: %s", name, e)
            except _SqlFailed as e:
                self.source_up[name] = 0.0
                self.source_errors[name] += 1
                self.sql_errors[(name, e.reason)] += 1
                log.error("outputs source %s: %s", name, e)
            except Exception as e:
                self.source_up[name] = 0.0
                self.source_errors[name] += 1
                log.error("outputs source %s failed: %s: %s", name, type(e).__name__, e)
        self._rebuilt = True
        if self._health() != health:
            self.generation += 1
        if self.readonly:
            return
        self.state.set_counters(self.counters())
        try:
            self.state.save()
        except OSError as e:
            log.error("cannot save outputs state to %s: %s", self.state.path, e)

    def _health(self) -> tuple[Any, ...]:
        """The sources' health and error counts: a change is news even when no row was read."""
        return (
            tuple(self.source_up.values()),
            tuple(self.source_errors.values()),
            tuple(self.files_read.values()),
            self.quarantine.write_errors,
            tuple(self.state.errors.values()),
        )

    # ---------------------------------------------------------------------------- counters
    def counters(self) -> dict[str, Any]:
        """Every counter this pipeline exports, as JSON for the state file (non-zero entries only), and each
        model's serving version (``[*labels, version, made_at]``: it outlives the rows' retention)."""
        fleet = self.fleet
        store = self.store
        return {
            "predictions": [
                [*fleet.model_labels[i], int(n)] for i, n in enumerate(self.store.predictions_total) if n
            ],
            "shadow_predictions": [
                [*fleet.model_labels[i], int(n)] for i, n in enumerate(self.store.shadow_total) if n
            ],
            "actuals": [[*fleet.be[i], int(n)] for i, n in enumerate(self.store.actuals_total) if n],
            "rejected": [[*k, n] for k, n in sorted(self.rejected.items()) if n],
            "sql_errors": [[*k, n] for k, n in sorted(self.sql_errors.items()) if n],
            **{
                name: {k: n for k, n in sorted(c.items()) if n}
                for name, c in (
                    ("source_errors", self.source_errors),
                    ("files_read", self.files_read),
                    ("rows_read", self.rows_read),
                    ("rows_other_shard", self.rows_other_shard),
                    ("late_rows", self.late_rows),
                )
            },
            "quarantine_write_errors": self.quarantine.write_errors,
            "serving_versions": [
                [*fleet.model_labels[i], int(store.serving_version[i]), float(store.serving_made_at[i])]
                for i in np.flatnonzero(store.serving_version > 0)
            ],
        }

    def _restore_counters(self, saved: dict[str, Any]) -> None:
        """Continue the counters of the previous run (from the state file). Entries of models, buildings or
        sources no longer configured are dropped: their series are no longer exported."""
        if not saved:
            return
        dropped = 0
        try:
            for *key, n in saved.get("predictions", ()):
                i = self.fleet.model_ids.get(tuple(key))
                if i is None:
                    dropped += 1
                else:
                    self.store.predictions_total[i] = n
            for *key, n in saved.get("shadow_predictions", ()):
                i = self.fleet.model_ids.get(tuple(key))
                if i is None:
                    dropped += 1
                else:
                    self.store.shadow_total[i] = n
            for *key, n in saved.get("actuals", ()):
                i = self.fleet.be_ids.get(tuple(key))
                if i is None:
                    dropped += 1
                else:
                    self.store.actuals_total[i] = n
            for *key, n in saved.get("rejected", ()):
                self.rejected[tuple(str(k) for k in key)] = int(n)  # type: ignore[index]
            for *key, n in saved.get("sql_errors", ()):
                if tuple(key) in self.sql_errors:
                    self.sql_errors[tuple(key)] = int(n)
            for name, c in (
                ("source_errors", self.source_errors),
                ("files_read", self.files_read),
                ("rows_read", self.rows_read),
                ("rows_other_shard", self.rows_other_shard),
                ("late_rows", self.late_rows),
            ):
                for k, n in dict(saved.get(name) or {}).items():
                    if k in c:
                        c[k] = int(n)
            self.quarantine.write_errors = int(saved.get("quarantine_write_errors") or 0)
            serving = []
            for *key, version, made_at in saved.get("serving_versions", ()):
                i = self.fleet.model_ids.get(tuple(key))
                if i is None:
                    dropped += 1
                elif int(version) > 0:
                    serving.append((i, int(version), float(made_at)))
            if serving:
                m, v, t = (np.array(x) for x in zip(*serving, strict=True))
                self.store.set_serving(m.astype(np.int64), v.astype(np.int64), t.astype(np.float64))
        except (TypeError, ValueError) as e:
            # Counters that cannot be read are a damaged state file too; marks and files stay usable.
            self.state.errors["corrupt"] += 1
            log.error("outputs state %s: unusable counters (%s); they start at 0", self.state.path, e)
            return
        if dropped:
            log.info("outputs state: %d saved counters of models no longer in the fleet dropped", dropped)

    def _read_files(self, name: str, kind: Kind, src: FileSource, now: float, first: bool) -> None:
        found = glob.glob(src.glob, recursive=True)
        horizon = now - self.cfg.retention_seconds
        if first:
            self.state.forget_missing(set(found))
            # After a restart: put files already read and still within the retention back into the window.
            for path in sorted(
                (p for p in found if p in self.state.files), key=lambda p: self.state.files[p]["mtime"]
            ):
                entry = self.state.files[path]
                if entry.get("error") is None and entry["mtime"] >= horizon:
                    try:
                        self._ingest(READERS[src.format](Path(path), kind, name, self.features), now, False)
                    except Exception as e:
                        log.warning("outputs source %s: cannot re-read %s after restart: %s", name, path, e)
        new = []
        for path in found:
            if path in self.state.files:
                continue
            try:
                new.append((os.stat(path).st_mtime, path))
            except FileNotFoundError:
                continue  # gone between glob and stat: nothing to read
        failed: list[str] = []
        for mtime, path in sorted(new):
            try:
                batch = READERS[src.format](Path(path), kind, name, self.features)
            except Exception as e:
                self.state.mark_file(path, mtime, 0, f"{type(e).__name__}: {e}")
                self.source_errors[name] += 1
                failed.append(f"{path}: {type(e).__name__}: {e}")
                continue
            self.state.mark_file(path, mtime, len(batch.frame) + len(batch.rejected))
            self.files_read[name] += 1
            self._ingest(batch, now, True)
        if failed:
            # Counted per file above; raising marks the source down for this cycle.
            raise _FilesFailed(f"{len(failed)} file(s) could not be read, first {failed[0]}")

    # ---------------------------------------------------------------------------------------- SQL
    def _engine(self, name: str, src: SqlSource) -> Any:
        eng = self._engines.get(name)
        if eng is None:
            import sqlalchemy

            url = sqlalchemy.engine.make_url(src.url)
            connect_args: dict[str, Any] = {}
            if url.get_backend_name() == "postgresql" and url.get_driver_name() in ("psycopg", "psycopg2"):
                # libpq's own options, unless the URL sets them: give up connecting in time (2 s at least,
                # libpq's minimum) and name the session for pg_stat_activity.
                if "connect_timeout" not in url.query:
                    connect_args["connect_timeout"] = max(2, math.ceil(src.statement_timeout_seconds))
                if "application_name" not in url.query:
                    connect_args["application_name"] = f"fleetmon-outputs {name}"[:63]
            # pool_pre_ping: a pooled connection that died between polls (server restart) is replaced
            # before the query instead of failing it.
            eng = sqlalchemy.create_engine(url, pool_pre_ping=True, connect_args=connect_args)
            if url.get_backend_name() == "postgresql" and url.get_driver_name() == "psycopg":
                sqlalchemy.event.listen(eng, "connect", _register_lenient_time_loaders)
            self._engines[name] = eng
        return eng

    def _query(self, name: str, src: SqlSource, since: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run the source's query (all of it when ``since`` is None): its columns and rows."""
        import sqlalchemy

        secrets = _url_secrets(src.url)
        try:
            eng = self._engine(name, src)
            conn = eng.connect()
        except Exception as e:
            raise _SqlFailed(
                "connect", _redact(f"cannot connect to {safe_url(src.url)}: {_describe(e)}", secrets)
            ) from None
        timeout = src.statement_timeout_seconds
        timed_out = False
        sqlite: Any = None

        def interrupt() -> bool:
            nonlocal timed_out
            timed_out = time.monotonic() > deadline
            return timed_out

        query = src.query.strip().rstrip(";")
        try:
            with conn:
                deadline = time.monotonic() + timeout
                try:
                    if eng.dialect.name == "postgresql":
                        # For this transaction only: the connection goes back to the pool without it.
                        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, round(timeout * 1000))}")
                    elif eng.dialect.name == "sqlite":
                        sqlite = conn.connection.driver_connection
                        sqlite.set_progress_handler(interrupt, 1000)
                    if since is None:
                        result = conn.execute(sqlalchemy.text(query))
                    else:
                        col = src.time_column
                        q = f"SELECT * FROM ({query}) AS fleetmon_src WHERE fleetmon_src.{col} > :since"
                        result = conn.execute(sqlalchemy.text(q), {"since": since})
                    columns = [str(c) for c in result.keys()]
                    rows = [tuple(r) for r in result]
                finally:
                    if sqlite is not None:  # before the connection goes back to the pool
                        try:
                            sqlite.set_progress_handler(None, 0)
                        except Exception:  # a closed connection has no handler left to clear
                            pass
        except Exception as e:
            reason = _failure_reason(e, timed_out)
            what = {
                "timeout": f"query cancelled after statement_timeout_seconds={timeout:g}",
                "connection_lost": "connection lost during the query",
                "query": "query failed",
            }[reason]
            raise _SqlFailed(reason, _redact(f"{what}: {_describe(e)}", secrets)) from None
        return columns, rows

    def _read_sql(self, name: str, kind: Kind, src: SqlSource, now: float) -> None:
        mark = self.state.sql_mark(name)
        full = mark is None or name not in self._sql_synced
        columns, rows = self._query(name, src, None if full or mark is None else mark.since)
        try:
            horizon = now + self.cfg.max_future_skew_seconds
            count, rebuild, new_mark, late = _sort_rows(
                src, mark, full, columns, rows, self.state.path, horizon
            )
        except (KeyError, TypeError, ValueError, ArithmeticError) as e:
            raise _SqlFailed("result", f"unusable query result: {e}") from None
        origin = f"sql:{name}"
        if rebuild:
            df = pd.DataFrame.from_records([rows[i] for i in rebuild], columns=columns)
            self._ingest(table_batch(df, kind, name, origin, self.features), now, False)
        if count:
            df = pd.DataFrame.from_records([rows[i] for i in count], columns=columns)
            self._ingest(table_batch(df, kind, name, origin, self.features), now, True)
        self.late_rows[name] += late
        if new_mark is not None:
            self.state.set_sql_mark(name, new_mark)
        self._sql_synced.add(name)

    def _ingest(self, batch: Batch, now: float, count: bool) -> None:
        batch, other_shard = self.owner.own_rows(batch)
        v = validate(
            batch, self.fleet, self.features, now, self.cfg.max_future_skew_seconds, self.cfg.versions.aliases
        )
        dups = self.store.add(v, batch, count=count)
        if not count:
            return
        self.rows_read[batch.source] += len(batch.frame) + len(batch.rejected)
        self.rows_other_shard[batch.source] += other_shard
        if len(batch.frame) or batch.rejected or other_shard:
            self.generation += 1
        rejected = [*v.rejected, *dups]
        for r in rejected:
            lab = r.labels
            self.rejected[
                (
                    r.reason,
                    r.kind,
                    lab.get("customer", ""),
                    lab.get("building", ""),
                    lab.get("energy", ""),
                    lab.get("model", ""),
                )
            ] += 1
        if not self.readonly:
            self.quarantine.write(rejected)

    # ------------------------------------------------------------------------------------ quality
    def refresh_quality(self) -> Quality:
        now = self.clock()
        snap = self.store.snapshot(now)
        actual = join_actuals(snap)
        self.quality = compute(
            snap,
            self.fleet,
            dict(self.cfg.windows),
            self.features,
            list(self.cfg.score_quantiles),
            now,
            actual=actual,
        )
        if self.estimation is not None:
            try:
                self.estimation.update(snap, actual, now)
            except Exception as e:  # the quality above stands; the last estimates are kept
                self.estimation_errors += 1
                log.warning("error estimation failed: %s: %s", type(e).__name__, e)
        if self.cfg.versions.enabled:
            self.versions = compute_versions(snap, self.fleet, self.cfg.versions, now)
        return self.quality

    def poll(self) -> None:
        self.ingest()
        self.refresh_quality()

    def close(self) -> None:
        for eng in self._engines.values():
            eng.dispose()
        self._engines.clear()


# ------------------------------------------------------------------------------------- SQL helpers
def _register_lenient_time_loaders(dbapi_conn: Any, _record: Any) -> None:
    """Load PostgreSQL times Python cannot hold ('infinity', '-infinity', years past 9999) as their text.

    psycopg raises DataError for them, which would fail every read of the source because of one row; as
    text, the row is rejected by validation with a reason like any other bad time."""
    import psycopg
    from psycopg.types import datetime as pgdt

    def lenient(base: type) -> type:
        class Lenient(base):
            def load(self, data: Any) -> Any:
                try:
                    return super().load(data)
                except psycopg.DataError:
                    return bytes(data).decode("utf-8", "replace")

        return Lenient

    for pg_type, loader in (
        ("timestamptz", pgdt.TimestamptzLoader),
        ("timestamp", pgdt.TimestampLoader),
        ("date", pgdt.DateLoader),
    ):
        dbapi_conn.adapters.register_loader(pg_type, lenient(loader))


def _sort_rows(
    src: SqlSource,
    mark: SqlMark | None,
    full: bool,
    columns: list[str],
    rows: list[tuple[Any, ...]],
    state_path: Path,
    horizon: float = math.inf,
) -> tuple[list[int], list[int], SqlMark | None, int]:
    """Which rows to count (new), which to put back into the window uncounted (read before a restart), the
    next mark and how many of the new rows are late (not newer than the watermark they were read after).
    Rows of an incremental read that were read before are in neither list. A time later than ``horizon``
    (now + max_future_skew_seconds: such rows are rejected) never becomes the watermark: one bad row must
    not hide every row written after it; it stays above the next lower bound and is known by its print."""
    col = src.time_column
    if col not in columns:
        raise KeyError(f"no time column {col!r} (columns: {', '.join(columns)})")
    missing = [c for c in src.key_columns if c not in columns]
    if missing:
        raise KeyError(f"no key column(s) {', '.join(missing)} (columns: {', '.join(columns)})")
    ti = columns.index(col)
    key = [columns.index(c) for c in src.key_columns] if src.key_columns else list(range(len(columns)))
    times = [r[ti] for r in rows]
    prints = [_fingerprint(columns, r, key) for r in rows]
    seen = Counter(mark.seen or ()) if mark is not None else Counter()
    count: list[int] = []
    rebuild: list[int] = []
    late = 0
    for i, (t, fp) in enumerate(zip(times, prints, strict=True)):
        if mark is not None:
            try:
                if full and t is None:
                    # Never read by an incremental read (NULL > x is not true): read by the first read only.
                    rebuild.append(i)
                    continue
                if full and t <= (mark.watermark if mark.seen is None else mark.since):
                    rebuild.append(i)  # counted before the restart
                    continue
                if seen[fp] > 0:
                    seen[fp] -= 1  # the overlap: read before
                    if full:
                        rebuild.append(i)
                    continue
                late += t <= mark.watermark
            except TypeError as e:
                raise TypeError(
                    f"time column {col!r} value {t!r} cannot be compared with the watermark "
                    f"{mark.watermark!r} saved in {state_path} (did the column's type change? remove the "
                    f"source's entry under 'sql' to read it afresh): {e}"
                ) from None
        count.append(i)
    present = [t for t in times if t is not None and not parse_time(t) > horizon]
    try:
        top = max(present) if present else None
        watermark = mark.watermark if mark is not None else None
        if top is not None and (watermark is None or top > watermark):
            watermark = top
    except TypeError as e:
        raise TypeError(f"time column {col!r} mixes types: {e}") from None
    if watermark is None:
        return count, rebuild, None, late
    since = _since(watermark, src.overlap_seconds)
    # The rows above the next lower bound, read now or before: what the next read must not count again.
    keep = Counter(fp for t, fp in zip(times, prints, strict=True) if t is not None and t > since)
    return count, rebuild, SqlMark(watermark, since, keep), late


def _fingerprint(columns: list[str], row: tuple[Any, ...], key: list[int]) -> str:
    """A stable hash of the row's key values (the same across restarts, drivers' time zones, processes)."""
    text = json.dumps([[columns[i], row[i]] for i in key], default=_canonical, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _canonical(v: Any) -> Any:
    if isinstance(v, dt.datetime) and v.tzinfo is not None:
        return v.astimezone(dt.UTC).isoformat()  # the session's TimeZone must not change the hash
    if isinstance(v, dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v).hex()
    return f"{type(v).__name__}:{v}"  # Decimal, UUID, timedelta, ...


def _since(watermark: Any, overlap: float) -> Any:
    """The watermark minus the overlap, in the watermark's own type (seconds; whole days for dates)."""
    if overlap == 0:
        return watermark
    if isinstance(watermark, dt.datetime):
        return watermark - dt.timedelta(seconds=overlap)
    if isinstance(watermark, dt.date):
        return watermark - dt.timedelta(days=math.ceil(overlap / 86400))
    if isinstance(watermark, Decimal):
        return watermark - Decimal(str(overlap))
    if isinstance(watermark, int | float) and not isinstance(watermark, bool):
        return watermark - (int(overlap) if float(overlap).is_integer() else overlap)
    if isinstance(watermark, str):
        try:
            t = dt.datetime.fromisoformat(watermark)
        except ValueError:
            raise ValueError(
                f"time column value {watermark!r} is text but not an ISO 8601 time: with overlap_seconds > 0 "
                "the time column must hold times or numbers"
            ) from None
        # Written like the watermark (the database compares text as text), in whole seconds and one second
        # further back, so that it sorts below any fraction of a second in the window.
        sep = watermark[10] if len(watermark) > 10 and watermark[10] in "T t" else "T"
        out = (t - dt.timedelta(seconds=overlap + 1)).replace(microsecond=0).isoformat(sep=sep)
        if watermark.endswith("Z") and out.endswith("+00:00"):
            out = out[:-6] + "Z"
        return out
    raise ValueError(
        f"time column values of type {type(watermark).__name__} cannot go back by overlap_seconds "
        "(times, dates, numbers or ISO 8601 text can)"
    )


def _failure_reason(e: Exception, timed_out: bool) -> str:
    """timeout, connection_lost or query, from SQLAlchemy's wrapper and the driver's SQLSTATE."""
    from sqlalchemy import exc

    orig = getattr(e, "orig", None)
    state = str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")
    if timed_out or state == "57014":  # query_canceled: statement_timeout
        return "timeout"
    # 08xxx connection exceptions; 57P01..03: admin/crash shutdown, cannot connect now
    if (isinstance(e, exc.DBAPIError) and e.connection_invalidated) or state.startswith(("08", "57P")):
        return "connection_lost"
    return "query"


def _describe(e: BaseException) -> str:
    """The driver's message (SQLAlchemy's wrapper repeats the SQL and adds a link), on one line."""
    orig = getattr(e, "orig", None)
    inner = orig if isinstance(orig, BaseException) else e
    text = " ".join(str(inner).split()) or "(no message)"
    return f"{type(inner).__name__}: {text}"


def safe_url(url: str) -> str:
    """A SQLAlchemy URL without its password (also one given as a ``?password=`` connect argument)."""
    try:
        from sqlalchemy.engine import make_url

        u = make_url(url)
        if "password" in u.query:
            u = u.update_query_dict({"password": "***"})
        return u.render_as_string(hide_password=True)
    except Exception:
        return "<unparsable url>"


def _url_secrets(url: str) -> list[str]:
    """The URL's password as it may appear in a message: as given, percent-decoded, percent-encoded."""
    found: set[str] = set()
    m = re.search(r"://[^/?#@]*?:([^/?#@]*)@", url)
    if m:
        found.add(m.group(1))
    try:
        from sqlalchemy.engine import make_url

        u = make_url(url)
        found.update(str(p) for p in (u.password, u.query.get("password")) if isinstance(p, str))
    except Exception:
        pass
    found |= {urllib.parse.unquote(p) for p in found} | {urllib.parse.quote(p, safe="") for p in found}
    return sorted((p for p in found if p), key=len, reverse=True)


def _redact(text: str, secrets: list[str]) -> str:
    for s in secrets:
        text = text.replace(s, "***")
    return text
