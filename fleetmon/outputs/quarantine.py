"""Rejected rows, kept with their reason in JSON lines files (one per UTC day) under ``quarantine_dir``.

Each line: ``{"quarantined_at", "reason", "detail", "kind", "source", "file", "line", "record"}`` plus the
fleet labels when the row's keys are valid. ``line`` is the 1-based line of a JSON lines file, or the 0-based
data row of a CSV / Parquet file or SQL result. Writing never raises: a failure is counted and logged.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from fleetmon.outputs.records import Rejection

log = logging.getLogger(__name__)


class Quarantine:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.write_errors = 0
        self.written = 0

    def path_for(self, when: dt.datetime) -> Path:
        return self.directory / f"rejected-{when:%Y-%m-%d}.jsonl"

    def write(self, rejections: Iterable[Rejection]) -> None:
        now = dt.datetime.now(dt.UTC)
        stamp = now.isoformat().replace("+00:00", "Z")
        lines = []
        for r in rejections:
            rec = {
                "quarantined_at": stamp,
                "reason": r.reason,
                "detail": r.detail,
                "kind": r.kind,
                "source": r.source,
                "file": r.origin,
                "line": r.loc,
                **r.labels,
                "record": r.record,
            }
            try:
                lines.append(json.dumps(rec, default=str, allow_nan=False) + "\n")
            except ValueError:  # a value JSON cannot hold: keep the record as text rather than lose it
                rec["record"] = repr(r.record)
                lines.append(json.dumps(rec, default=str) + "\n")
        if not lines:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(self.path_for(now), "a", encoding="utf-8") as f:
                f.writelines(lines)
            self.written += len(lines)
        except (OSError, ValueError) as e:
            self.write_errors += 1
            log.error("cannot write %d rejected rows to quarantine %s: %s", len(lines), self.directory, e)
