"""What has been read, kept in ``state_dir/state.json`` so a restart neither re-counts nor forgets.

``files``: path -> {"mtime", "read_at", "rows", "error"}; a file listed here is never counted again. After a
restart, listed files still within the retention are re-read *silently* (rows go back into the in-memory
window, counters and the quarantine are not touched). Entries of files that no longer exist are dropped.
``sql``: source name -> {"type", "watermark", "since", "seen"} (a ``SqlMark``): the largest ``time_column``
value read, the lower bound of the next read (watermark minus the overlap), and the fingerprints of the rows
read with ``time_column > since`` with how many of each were read. ``type`` says how the two values are
written in JSON (``datetime``/``date``: ISO 8601, ``decimal``: text, ``value``: as is). An entry without
``seen`` (written before the overlap existed) means: every row up to the watermark was read.
``counters``: the pipeline's counters (``OutputsPipeline.counters()``), saved with the marks they go with, so
they continue across a restart instead of starting at 0; with them each model's serving version (the
``model_version`` of its newest served row and that row's made_at), which outlives the rows' retention.

Written after every poll that changed anything, atomically (temporary file, fsync, rename), so a killed
exporter leaves the previous complete file. The generation it replaces is kept as ``state.prev.json``. A
state file that cannot be parsed (damaged on disk, edited by hand) is moved aside as
``state.json.corrupt-<UTC time>`` for inspection, counted (``errors["corrupt"]``), and the previous
generation is used instead: its files, marks and counters are one consistent snapshot from one poll earlier,
so the files and rows read since are read and counted again, and the counters end where they were. Only when
both are damaged does the exporter start afresh (every file counted again, counters from 0).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class SqlMark:
    """Where the reads of one SQL source stand."""

    watermark: Any  # the largest time_column value read so far
    since: Any  # the next read asks for time_column > since (the watermark minus the overlap)
    # Fingerprint -> rows read with that fingerprint, of the rows with time_column > since. None: a state
    # written before the overlap existed (every row up to the watermark was read, none is known by key).
    seen: Counter[str] | None


def _encode(v: Any) -> tuple[str, Any]:
    if isinstance(v, dt.datetime):
        return "datetime", v.isoformat()
    if isinstance(v, dt.date):
        return "date", v.isoformat()
    if isinstance(v, Decimal):
        return "decimal", str(v)
    return "value", v


def _decode(kind: str | None, v: Any) -> Any:
    if not isinstance(v, str):
        return v
    if kind == "datetime":
        return dt.datetime.fromisoformat(v)
    if kind == "date":
        return dt.date.fromisoformat(v)
    if kind == "decimal":
        return Decimal(v)
    return v


# Why the state could not be used or kept (label ``reason`` of fleetmon_outputs_state_errors_total).
STATE_ERROR_REASONS = ("corrupt", "unreadable", "save")


class ReadState:
    def __init__(self, directory: Path, load: bool = True) -> None:
        self.path = directory / "state.json"
        self.prev_path = directory / "state.prev.json"
        self.files: dict[str, dict[str, Any]] = {}
        self.sql: dict[str, dict[str, Any]] = {}
        self.counters: dict[str, Any] = {}
        self.errors: Counter[str] = Counter(dict.fromkeys(STATE_ERROR_REASONS, 0))
        self.dirty = False
        if load:
            self._load()

    def _load(self) -> None:
        try:
            self._parse(self.path.read_bytes())
            return
        except FileNotFoundError:
            return  # never written, or deleted by an operator to start afresh: not an error
        except OSError as e:
            # Unreadable (permissions, I/O error): start afresh; saving will likely fail and say so too.
            self.errors["unreadable"] += 1
            log.error(
                "cannot read outputs state %s: %s; starting afresh (files are counted again)", self.path, e
            )
            return
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            self.errors["corrupt"] += 1
            aside = self._set_aside()
            log.error(
                "outputs state %s is damaged (%s), moved to %s", self.path, e, aside or "(cannot move it)"
            )
        try:
            self._parse(self.prev_path.read_bytes())
            log.error(
                "outputs state: using the previous generation %s instead; what was read since is read and "
                "counted again",
                self.prev_path,
            )
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            self.files, self.sql, self.counters = {}, {}, {}
            log.error(
                "outputs state: no usable previous generation %s (%s); starting afresh: every file is "
                "counted again and the counters start at 0",
                self.prev_path,
                e,
            )
        self.dirty = True  # write a good file in place of the damaged one on the next save

    def _parse(self, raw: bytes) -> None:
        """Take the state from the file's bytes, or raise ValueError/TypeError/KeyError if it is not one."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"not a JSON object but {type(data).__name__}")
        files, sql, counters = data.get("files") or {}, data.get("sql") or {}, data.get("counters") or {}
        for what, v in (("files", files), ("sql", sql), ("counters", counters)):
            if not isinstance(v, dict):
                raise ValueError(f"{what} is not an object")
        for entry in files.values():
            float(entry["mtime"])  # every entry must say when its file was read (raises if not)
        self.files, self.sql, self.counters = dict(files), dict(sql), dict(counters)

    def _set_aside(self) -> Path | None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            os.replace(self.path, aside)
            return aside
        except OSError:
            return None

    def mark_file(self, path: str, mtime: float, rows: int, error: str | None = None) -> None:
        self.files[path] = {
            "mtime": mtime,
            "read_at": dt.datetime.now(dt.UTC).timestamp(),
            "rows": rows,
            "error": error,
        }
        self.dirty = True

    def sql_mark(self, source: str) -> SqlMark | None:
        """The source's mark, or None when it was never read (or its entry cannot be used: logged)."""
        entry = self.sql.get(source)
        if not entry or entry.get("watermark") is None:
            return None
        kind = entry.get("type")
        try:
            watermark = _decode(kind, entry["watermark"])
            since = _decode(kind, entry.get("since", entry["watermark"]))
            seen = entry.get("seen")
            return SqlMark(
                watermark,
                since,
                None if seen is None else Counter({str(k): int(n) for k, n in dict(seen).items()}),
            )
        except (TypeError, ValueError, ArithmeticError) as e:
            # As with an unreadable state file: read the source afresh (its rows are counted again).
            log.error("ignoring unusable outputs state of SQL source %s in %s: %s", source, self.path, e)
            return None

    def set_sql_mark(self, source: str, mark: SqlMark) -> None:
        kind, watermark = _encode(mark.watermark)
        _, since = _encode(mark.since)
        entry: dict[str, Any] = {"type": kind, "watermark": watermark, "since": since}
        if mark.seen is not None:
            entry["seen"] = dict(mark.seen)
        self.sql[source] = entry
        self.dirty = True

    def forget_missing(self, existing: set[str]) -> None:
        gone = [p for p in self.files if p not in existing and not os.path.exists(p)]
        for p in gone:
            del self.files[p]
        self.dirty |= bool(gone)

    def set_counters(self, counters: dict[str, Any]) -> None:
        if counters != self.counters:
            self.counters = counters
            self.dirty = True

    def save(self) -> None:
        """Write the state if it changed; raises OSError (counted in ``errors["save"]``) if it cannot."""
        if not self.dirty:
            return
        try:
            self._write()
        except OSError:
            self.errors["save"] += 1
            raise
        self.dirty = False

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        body = json.dumps({"files": self.files, "sql": self.sql, "counters": self.counters}, default=str)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())  # the rename must not reach the disk before the data
        # Keep the generation being replaced (a hard link: state.json is never missing in between).
        prev_tmp = self.prev_path.with_suffix(".json.tmp")
        try:
            prev_tmp.unlink(missing_ok=True)
            os.link(self.path, prev_tmp)
            os.replace(prev_tmp, self.prev_path)
        except FileNotFoundError:
            pass  # the first save: nothing to keep
        os.replace(tmp, self.path)
