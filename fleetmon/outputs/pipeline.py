"""One ingest cycle: read new files and SQL rows, validate, keep, reject, count; then compute quality.

Sources never stop the exporter: a file or query that fails is logged with its source, counted in
``source_errors`` and marks the source down for that cycle; the other sources and the served metrics go on.
A file is read once, when it first appears (files are written whole: temporary name + rename); a file
that cannot be read is remembered with its error and not retried.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from fleetmon.config import Config, FileSource, SqlSource
from fleetmon.outputs.quality import Quality, compute
from fleetmon.outputs.quarantine import Quarantine
from fleetmon.outputs.records import READERS, Batch, FleetIndex, Kind, table_batch, validate
from fleetmon.outputs.state import ReadState
from fleetmon.outputs.store import OutputStore

log = logging.getLogger(__name__)

# Rejection counter key: reason, kind, customer, building, energy, model ("" where not a valid fleet key).
RejectKey = tuple[str, str, str, str, str, str]


class _FilesFailed(Exception):
    """Some files of a source could not be read (each counted already)."""


class OutputsPipeline:
    def __init__(self, cfg: Config, clock: Callable[[], float] = time.time, readonly: bool = False) -> None:
        """``readonly``: read every file afresh and touch neither the state nor the quarantine (for
        one-off commands such as ``fleetmon drift-report`` next to a running exporter)."""
        self.cfg = cfg.outputs
        self.readonly = readonly
        self.clock = clock
        self.fleet = FleetIndex(cfg.fleet)
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
        self._engines: dict[str, Any] = {}
        self._rebuilt = False
        self.quality: Quality | None = None

    # ------------------------------------------------------------------------------------- ingest
    def ingest(self) -> None:
        now = self.clock()
        first = not self._rebuilt
        for name, kind, src in self.sources:
            try:
                if isinstance(src, FileSource):
                    self._read_files(name, kind, src, now, first)
                else:
                    self._read_sql(name, kind, src, now, first)
                self.source_up[name] = 1.0
            except _FilesFailed as e:  # each file already counted
                self.source_up[name] = 0.0
                log.error("outputs source %s: %s", name, e)
            except Exception as e:
                self.source_up[name] = 0.0
                self.source_errors[name] += 1
                log.error("outputs source %s failed: %s: %s", name, type(e).__name__, e)
        self._rebuilt = True
        if self.readonly:
            return
        try:
            self.state.save()
        except OSError as e:
            log.error("cannot save outputs state to %s: %s", self.state.path, e)

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

    def _engine(self, name: str, url: str) -> Any:
        eng = self._engines.get(name)
        if eng is None:
            import sqlalchemy

            eng = self._engines[name] = sqlalchemy.create_engine(url)
        return eng

    def _read_sql(self, name: str, kind: Kind, src: SqlSource, now: float, first: bool) -> None:
        import sqlalchemy

        wm = self.state.watermark(name)
        col = src.time_column
        with self._engine(name, src.url).connect() as conn:
            if first or wm is None:
                # First read (or after a restart): the whole query; rows up to the stored watermark were
                # counted before the restart and only rebuild the window.
                result = conn.execute(sqlalchemy.text(src.query))
            else:
                q = f"SELECT * FROM ({src.query}) AS fleetmon_src WHERE fleetmon_src.{col} > :since"
                result = conn.execute(sqlalchemy.text(q), {"since": wm})
            columns = list(result.keys())
            rows = [tuple(r) for r in result]
        df = pd.DataFrame.from_records(rows, columns=columns)
        if col not in df.columns:
            raise KeyError(f"query result has no time column {col!r} (columns: {', '.join(columns)})")
        times = df[col].tolist()
        old = [False] * len(times)
        if wm is not None:
            for i, t in enumerate(times):
                try:
                    old[i] = t is not None and t <= wm
                except TypeError:
                    old[i] = False
        newest = [t for t in times if t is not None]
        if newest:
            try:
                top = max(newest)
                if wm is None or top > wm:
                    self.state.set_watermark(name, top)
            except TypeError as e:
                raise TypeError(f"time column {col!r} mixes types: {e}") from e
        old_mask = pd.Series(old, dtype=bool).to_numpy()
        origin = f"sql:{name}"
        if old_mask.any():
            self._ingest(table_batch(df[old_mask], kind, name, origin, self.features), now, False)
        if (~old_mask).any():
            self._ingest(table_batch(df[~old_mask], kind, name, origin, self.features), now, True)

    def _ingest(self, batch: Batch, now: float, count: bool) -> None:
        v = validate(batch, self.fleet, self.features, now, self.cfg.max_future_skew_seconds)
        dups = self.store.add(v, batch, count=count)
        if not count:
            return
        self.rows_read[batch.source] += len(batch.frame) + len(batch.rejected)
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
        self.quality = compute(
            snap, self.fleet, dict(self.cfg.windows), self.features, list(self.cfg.score_quantiles), now
        )
        return self.quality

    def poll(self) -> None:
        self.ingest()
        self.refresh_quality()

    def close(self) -> None:
        for eng in self._engines.values():
            eng.dispose()
        self._engines.clear()
