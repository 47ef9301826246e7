"""What has been read, kept in ``state_dir/state.json`` so a restart neither re-counts nor forgets.

``files``: path -> {"mtime", "read_at", "rows", "error"}; a file listed here is never counted again. After a
restart, listed files still within the retention are re-read *silently* (rows go back into the in-memory
window, counters and the quarantine are not touched). Entries of files that no longer exist are dropped.
``sql``: source name -> {"type", "watermark", "since", "seen"} (a ``SqlMark``): the largest ``time_column``
value read, the lower bound of the next read (watermark minus the overlap), and the fingerprints of the rows
read with ``time_column > since`` with how many of each were read. ``type`` says how the two values are
written in JSON (``datetime``/``date``: ISO 8601, ``decimal``: text, ``value``: as is). An entry without
``seen`` (written before the overlap existed) means: every row up to the watermark was read.
Written atomically (temporary file + rename).
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


class ReadState:
    def __init__(self, directory: Path, load: bool = True) -> None:
        self.path = directory / "state.json"
        self.files: dict[str, dict[str, Any]] = {}
        self.sql: dict[str, dict[str, Any]] = {}
        self.dirty = False
        if load:
            self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            # A damaged state file must not stop the exporter: start afresh (files are counted again).
            log.error("ignoring unreadable outputs state %s: %s", self.path, e)
            return
        self.files = dict(data.get("files") or {})
        self.sql = dict(data.get("sql") or {})

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

    def save(self) -> None:
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"files": self.files, "sql": self.sql}, default=str))
        os.replace(tmp, self.path)
        self.dirty = False
