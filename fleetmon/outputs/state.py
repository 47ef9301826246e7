"""What has been read, kept in ``state_dir/state.json`` so a restart neither re-counts nor forgets.

``files``: path -> {"mtime", "read_at", "rows", "error"}; a file listed here is never counted again. After a
restart, listed files still within the retention are re-read *silently* (rows go back into the in-memory
window, counters and the quarantine are not touched). Entries of files that no longer exist are dropped.
``sql``: source name -> {"watermark": value, "type": "datetime" | "value"}: the largest ``time_column``
value read so far. Written atomically (temporary file + rename).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


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

    def watermark(self, source: str) -> Any:
        entry = self.sql.get(source)
        if not entry:
            return None
        v = entry.get("watermark")
        if entry.get("type") == "datetime" and isinstance(v, str):
            return dt.datetime.fromisoformat(v)
        return v

    def set_watermark(self, source: str, value: Any) -> None:
        if isinstance(value, dt.datetime):
            self.sql[source] = {"watermark": value.isoformat(), "type": "datetime"}
        else:
            self.sql[source] = {"watermark": value, "type": "value"}
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
