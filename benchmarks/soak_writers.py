"""The soak's own writers, each with its own ground truth (``benchmarks/soak.py``, docs/soak.md).

Each runs in a thread and holds its ``lock`` while it writes and counts one batch, so ``pause()`` (taking
the lock) leaves every count exactly equal to what is on disk or committed, and ``resume()`` lets it go on.

- ``SqlWriter``: prediction rows into a PostgreSQL table, a small transaction every second; counts the
  committed rows (the table's ``count(*)`` is the truth at the end: a commit whose answer was lost in a
  server restart may or may not have happened).
- ``BadRowsWriter``: prediction files (JSON lines, written whole then renamed) of rows that must be
  rejected, one of each reason in ``BAD_ROWS``: input for the quarantine.
- ``LogWriter``: an app's log file under load (Docker json-file records of access lines, and lines that
  must be rejected: ``invalid_json``, ``binary``); it rotates (renames) and truncates (copytruncate) its
  own file on request, so the lines in the file at that moment are known exactly.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from simulator.logs import docker_record, ts_clf

log = logging.getLogger("soak")

FEATURES = {
    "outdoor_temperature": 4.5,
    "solar_radiation": 120.0,
    "hour_of_day": 13,
    "day_of_week": 2,
    "occupancy": 0.6,
    "humidity": 0.7,
}


def rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")


class _Writer(threading.Thread):
    def __init__(self, name: str, every: float) -> None:
        super().__init__(name=name, daemon=True)
        self.every = every
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.errors = 0
        self.last_error = ""

    def run(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                try:
                    self.batch()
                except Exception as e:  # keep writing; a fault (a server down) is expected here
                    self.errors += 1
                    self.last_error = f"{type(e).__name__}: {e}"
            self.stopping.wait(self.every)

    def batch(self) -> None:
        raise NotImplementedError

    def pause(self) -> None:
        self.lock.acquire()

    def resume(self) -> None:
        self.lock.release()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)


# ---------------------------------------------------------------------------------------------- SQL
SQL_SCHEMA = """
CREATE TABLE soak_predictions (
    id bigserial PRIMARY KEY,
    customer text NOT NULL, building text NOT NULL, energy text NOT NULL, model text NOT NULL,
    made_at timestamptz NOT NULL DEFAULT now(),
    target_time timestamptz NOT NULL,
    prediction double precision,
    features jsonb
);
CREATE INDEX ON soak_predictions (made_at);
"""


class SqlWriter(_Writer):
    """``rows`` prediction rows per second, each with its own target time far in the future (so they never
    mature into the demo's quality windows and never collide with the simulator's rows)."""

    def __init__(self, server: Any, db: str, model: dict[str, str], rows: int, base_time: float) -> None:
        super().__init__("soak-sql", 1.0)
        self.server, self.db, self.model, self.rows = server, db, model, rows
        self.base_time = base_time
        self.seq = 0
        self.committed = 0
        self.conn: Any = None

    def batch(self) -> None:
        if self.rows <= 0:
            return
        if self.conn is None or self.conn.closed:
            self.conn = self.server.connect(self.db, autocommit=False)
        params = []
        for _ in range(self.rows):
            target = dt.datetime.fromtimestamp(self.base_time + 60 * self.seq, dt.UTC)
            params.append((*self.model.values(), target, float(self.seq % 1000), json.dumps(FEATURES)))
            self.seq += 1
        try:
            with self.conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO soak_predictions (customer, building, energy, model, target_time, prediction,"
                    " features) VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)",
                    params,
                )
            self.conn.commit()
        except Exception:
            try:
                self.conn.close()
            finally:
                self.conn = None
            raise
        self.committed += len(params)

    def table_count(self) -> int:
        with self.server.connect(self.db) as conn:
            row = conn.execute("SELECT count(*) FROM soak_predictions").fetchone()
        return int(row[0])

    def stop(self) -> None:
        super().stop()
        if self.conn is not None:
            self.conn.close()


# ------------------------------------------------------------------------------------- bad outputs
# One row per reason; each row has exactly one fault, so its reason is the one named (records.py checks
# in the order malformed, missing_field, unknown_fleet_key, wrong_type, missing_value, ...).
BAD_ROWS = ("malformed", "missing_field", "unknown_fleet_key", "wrong_type", "missing_value")


class BadRowsWriter(_Writer):
    def __init__(self, directory: Path, model: dict[str, str], every: float) -> None:
        super().__init__("soak-bad-rows", every)
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.files = 0
        self.rows = 0
        self.by_reason: Counter[str] = Counter()

    def batch(self) -> None:
        now = time.time()
        good = {
            **self.model,
            "made_at": rfc3339(now - 60),
            "target_time": rfc3339(now + 3600),
            "prediction": 10.0,
            "features": FEATURES,
        }
        rows: list[str] = []
        for reason in BAD_ROWS:
            rec: dict[str, Any] = json.loads(json.dumps(good))
            if reason == "malformed":
                rows.append(f"not json: soak bad row {self.files}")
                continue
            if reason == "missing_field":
                del rec["customer"]
            elif reason == "unknown_fleet_key":
                rec["building"] = "no-such-building"
            elif reason == "wrong_type":
                rec["made_at"] = "yesterday"
            elif reason == "missing_value":
                rec["prediction"] = None
            rows.append(json.dumps(rec))
        path = self.dir / f"bad-{self.files:05d}.jsonl"
        tmp = self.dir / f".bad-{self.files:05d}.tmp"
        tmp.write_text("".join(r + "\n" for r in rows))
        os.replace(tmp, path)
        self.files += 1
        self.rows += len(rows)
        self.by_reason.update(BAD_ROWS)


# --------------------------------------------------------------------------------------------- logs
# Lines that must be rejected, by the reason the platform exporter gives (collectors/logstats.py).
BAD_LINES = {
    "invalid_json": b'{"log":"soak line cut short',
    "binary": b"soak binary line \x00\x01\x02",
}


class LogWriter(_Writer):
    """``rate`` lines per second in batches every 0.1 s, about 2 % of them bad."""

    def __init__(self, path: Path, rate: float, seed: int) -> None:
        super().__init__("soak-logs", 0.1)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rate = rate
        self.rng = random.Random(seed)
        self.seq = 0
        self.lines = 0  # every line written, into whichever file
        self.nbytes = 0
        self.bad: Counter[str] = Counter()
        self.in_file = 0  # lines in the live file (since its creation or last truncation)
        self.rotations = 0
        self.truncations = 0
        self.truncated_lines = 0  # lines in the file when it was truncated (what the fault may take)
        self._last = time.monotonic()

    def _lines(self, n: int) -> list[bytes]:
        out = []
        now = time.time()
        for _ in range(n):
            self.seq += 1
            r = self.rng.random()
            if r < 0.01:
                out.append(BAD_LINES["invalid_json"])
                self.bad["invalid_json"] += 1
            elif r < 0.02:
                out.append(BAD_LINES["binary"])
                self.bad["binary"] += 1
            else:
                status = 200 if r < 0.9 else 304  # no 5xx: the soak must not page ApiHighErrorRatio
                line = (
                    f'10.1.0.{self.seq % 250} - - [{ts_clf(now)}] "GET /soak/items/{self.seq} HTTP/1.1" '
                    f'{status} 512 "-" "soak/1.0" 0.0{self.seq % 90 + 10}'
                )
                out.append(docker_record(now, line).encode())
        return out

    def _write(self, lines: list[bytes]) -> None:
        data = b"".join(x + b"\n" for x in lines)
        with open(self.path, "ab") as f:
            f.write(data)
        self.lines += len(lines)
        self.in_file += len(lines)
        self.nbytes += len(data)

    def batch(self) -> None:
        # Lines owed for the time since the last batch (a paused writer does not catch up afterwards).
        now = time.monotonic()
        n = int(self.rate * min(now - self._last, 1.0))
        if n:
            self._last += n / self.rate
            self._write(self._lines(n))
        if now - self._last > 1.0:
            self._last = now

    # Called with the writer paused (the caller holds the lock).
    def rotate(self) -> Path:
        """Rename the live file away (``<name>.rot-<n>``, which no glob matches); the next write makes a new one."""
        self.rotations += 1
        dest = self.path.with_name(f"{self.path.name}.rot-{self.rotations}")
        os.replace(self.path, dest)
        self.in_file = 0
        return dest

    def truncate(self, burst: int) -> tuple[Path, int]:
        """copytruncate right after writing ``burst`` more lines (load the reader has not seen yet): copy the
        file, truncate it to 0. Returns the copy and how many lines were in the file when truncated."""
        self._write(self._lines(burst))
        self.truncations += 1
        dest = self.path.with_name(f"{self.path.name}.trunc-{self.truncations}")
        shutil.copyfile(self.path, dest)
        os.truncate(self.path, 0)
        n = self.in_file
        self.in_file = 0
        return dest, n
