"""Container log files -> per-app request, error, training, system-event, replica and memory metrics.

Tailing, in the background ``poll()`` (the scrape only reads counters from memory):

- Files are found by the globs of ``platform.logs.apps`` and followed by (device, inode), with the file
  kept open, so a rotated file (renamed away, or deleted) is still read to its end through the open
  descriptor; it is closed once a poll finds nothing more in it.
- Truncation (copytruncate, ``> app.log``) is detected by the size dropping below the read position, by the
  first bytes (the head fingerprint) changing, or by the bytes just before the read position (the tail
  fingerprint) changing: an app that restarts with the same banner and writes past the old position before
  the next poll keeps size and head but not what preceded the old position (timestamps, request lines).
  Reading restarts at 0 and ``fleetmon_logs_truncations_total`` counts it. When the size did not drop, the
  file may also have been rewritten in place (no reader can tell): the bytes before the old position read
  again are counted in ``fleetmon_logs_reread_bytes_total``, so a double count is never silent. A file
  rewritten byte for byte identically up to the old position cannot be told from one that only grew.
- Reads are bounded chunks (``MAX_LINE`` + 1 bytes) split on newlines; an incomplete last line waits for
  the next poll; a line without a newline within ``MAX_LINE`` bytes is rejected as ``too_long`` and
  skipped up to its end without ever being held in memory.
- Positions (device, inode, fingerprint, offset, pending partial records) and every aggregate are written
  together, atomically, to ``logs.state_file``: after a restart the counters continue where they were and
  reading resumes at the saved positions, so nothing is counted twice or skipped. A file renamed while the
  exporter was down is found again by inode in its directory and read to its end. The generation a save
  replaces is kept (``<name>.prev.json``). A damaged state file is moved aside (``<name>.corrupt-<UTC
  time>``) and counted (``fleetmon_logs_state_errors_total{reason="corrupt"}``); the previous generation is
  used instead. Without one the positions are unknown: the files there are taken up at their end (not read
  again from 0, which would count every line twice) and the counters restart at 0 (see ``_load_state``).
- Rejected lines are counted by reason and a rate-limited sample is appended to ``logs.quarantine_file``;
  a sample counts as quarantined once it is written (a failed write is counted in
  ``fleetmon_logs_quarantine_write_errors_total``; the samples that did not fit are dropped).
- A JSON array document (what ``az monitor log-analytics query -o json`` writes: ``[`` alone on a line,
  indented objects, ``]`` alone at the start of a line; or a compact array on one line) is read whole once
  its closing line is there, up to ``DOC_MAX`` bytes, and each element is fed to the parser as one record.
  A larger document is rejected as ``too_long`` once and skipped to its closing line.
"""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import io
import json
import logging
import os
import re
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from collectors.log_analytics import LogAnalyticsSource
from collectors.logformats import (
    MAX_LINE,
    REJECT_REASONS,
    TRAINING_KINDS,
    AppStats,
    LineParser,
    PartialState,
)
from collectors.logstats import LATENCY_BUCKETS
from fleetmon.config import Config, LogsConfig
from fleetmon.exporter import register
from fleetmon.sharding import Shard

log = logging.getLogger(__name__)

CHUNK = MAX_LINE + 1  # a full line of MAX_LINE bytes plus its newline fits in one read
FP_LEN = 256  # bytes of a file's head that identify it (with device and inode)
PASS_BYTES = 16 << 20  # per file and pass: files are served in turn, state saved between passes
STATE_VERSION = 1
# Why the positions file could not be used or kept (label ``reason`` of fleetmon_logs_state_errors_total).
STATE_ERROR_REASONS = ("corrupt", "unreadable", "save")
# What a damaged positions file raises while it is parsed (RecursionError: JSON nested too deep).
_DAMAGED = (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError)
DOC_MAX = 128 << 20  # a JSON array document is decoded whole: bigger ones are rejected as too_long
DOC_BATCH = 5000  # elements of a document fed per hold of the lock (a scrape waits at most for one batch)
_DOC_END = re.compile(rb"\n\][ \t\r]*(?:\n|\Z)")  # "]" at the start of a line closes the top-level array


def _document_start(line: bytes) -> bool:
    """A line that opens a JSON array document: ``[`` alone, or ``[{`` / ``[]`` (not ``[2026-11-22 ...]``)."""
    s = line.strip()
    return s == b"[" or s.startswith((b"[{", b"[ {", b"[]"))


def _document_end(data: bytes) -> int:
    """The length of the document that starts ``data`` (up to its closing line's newline), or -1 if not there."""
    nl = data.find(b"\n")
    first = (data if nl < 0 else data[:nl]).strip()
    if first != b"[" and first.endswith(b"]"):  # a compact array on one line
        return -1 if nl < 0 else nl + 1
    m = _DOC_END.search(data, 0 if nl < 0 else nl)
    return -1 if m is None else m.end()


def _fingerprint(head: bytes) -> str:
    return hashlib.blake2b(head, digest_size=12).hexdigest()


def _file_state(f: dict[str, Any]) -> dict[str, Any]:
    """A saved file entry, checked: a damaged one raises (one of _DAMAGED) when the state file is read."""
    return {
        "app": str(f["app"]),
        "path": str(f["path"]),
        "dev": int(f["dev"]),
        "ino": int(f["ino"]),
        "offset": int(f["offset"]),
        "fp": str(f.get("fp", "")),
        "fp_len": int(f.get("fp_len", 0)),
        "tail_fp": str(f.get("tail_fp", "")),
        "tail_len": int(f.get("tail_len", 0)),
        "skipping": bool(f.get("skipping", False)),
        "skipping_doc": bool(f.get("skipping_doc", False)),
        "pending": {str(k): str(v) for k, v in dict(f.get("pending") or {}).items()},
        "context": {str(k): str(v) for k, v in dict(f.get("context") or {}).items()},
    }


class Quarantine:
    """Samples of rejected lines as JSON lines, rate-limited per (app, reason) and capped in size.

    A sample counts as quarantined only once it is in the file: ``flush`` hands what it wrote to
    ``on_written``. A failed write (disk full, ...) never raises: it is counted in ``write_errors``, the
    samples that did not fit are dropped (their lines stay counted as rejected), and the next flush tries
    again with new samples.
    """

    def __init__(
        self,
        path: Path,
        per_minute: float = 10.0,
        burst: float = 10.0,
        max_bytes: int = 16 << 20,
        sample_bytes: int = 1024,
        on_written: Callable[[Counter[tuple[str, str]]], None] | None = None,
    ) -> None:
        self.path = path
        self.rate = per_minute / 60.0
        self.burst = burst
        self.max_bytes = max_bytes
        self.sample_bytes = sample_bytes
        self.on_written = on_written
        self.write_errors = 0  # failed flushes (fleetmon_logs_quarantine_write_errors_total)
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # -> (tokens, last time)
        self._pending: list[tuple[str, str, str]] = []  # (app, reason, JSON line)

    def offer(self, app: str, reason: str, file: str, offset: int, line: bytes) -> bool:
        """Queue a sample for the next flush if the (app, reason) budget allows.

        Returns False: nothing is in the file yet, so the caller must not count it (``flush`` counts what it
        wrote through ``on_written``). The bool stays for callers that counted on True before.
        """
        now = time.monotonic()
        tokens, last = self._buckets.get((app, reason), (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[(app, reason)] = (tokens, now)
            return False
        self._buckets[(app, reason)] = (tokens - 1.0, now)
        rec = {
            "time": time.time(),
            "reason": reason,
            "app": app,
            "file": file,
            "offset": offset,
            "length": len(line),
            "line": line[: self.sample_bytes].decode("utf-8", "backslashreplace"),
        }
        self._pending.append((app, reason, json.dumps(rec, ensure_ascii=False)))
        return False

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        """Append the queued samples; never raises. Must not be called under the tailer's lock."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        body = "".join(text + "\n" for _, _, text in pending).encode("utf-8")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size > self.max_bytes:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))  # keep one old file
            done, err = self._append(body)
        except OSError as e:
            done, err = 0, e
        n = body.count(b"\n", 0, done)  # the samples now whole in the file, in order
        if err is not None:
            self.write_errors += 1
            log.error(
                "cannot write %d of %d samples to the log quarantine %s: %s; they are dropped (their lines"
                " stay counted as rejected)",
                len(pending) - n,
                len(pending),
                self.path,
                err,
            )
        if n and self.on_written is not None:
            self.on_written(Counter((app, reason) for app, reason, _ in pending[:n]))

    def _append(self, body: bytes) -> tuple[int, OSError | None]:
        """Append ``body``; returns the bytes of whole samples in the file and the error that stopped it.

        A short write (disk full) leaves a partial sample: it is cut off again, so the file holds only
        whole samples and exactly those counted."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            start = os.fstat(fd).st_size
            done = 0
            try:
                while done < len(body):
                    done += os.write(fd, body[done:])
            except OSError as e:
                keep = body.rfind(b"\n", 0, done) + 1
                try:
                    os.ftruncate(fd, start + keep)  # shrinking needs no space
                except OSError as e2:
                    log.error("cannot cut a partly written sample off %s: %s", self.path, e2)
                return keep, e
            return done, None
        finally:
            os.close(fd)


class _File:
    """One followed file (by device and inode)."""

    def __init__(self, app: str, path: str, dev: int, ino: int, fd: int) -> None:
        self.app, self.path, self.dev, self.ino, self.fd = app, path, dev, ino, fd
        self.offset = 0
        self.fp = ""  # head fingerprint: the first fp_len bytes
        self.fp_len = 0
        self.tail_fp = ""  # tail fingerprint: the tail_len bytes that end at offset
        self.tail_len = 0
        self.skipping = False  # inside a too-long line: skip to its newline
        self.skipping_doc = False  # inside a too-long JSON array document: skip to its closing line
        self.partial = PartialState()
        self.rotated = False  # no longer found by any glob: read to the end, then close

    @property
    def key(self) -> tuple[int, int]:
        return (self.dev, self.ino)

    def to_state(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "path": self.path,
            "dev": self.dev,
            "ino": self.ino,
            "offset": self.offset,
            "fp": self.fp,
            "fp_len": self.fp_len,
            "tail_fp": self.tail_fp,
            "tail_len": self.tail_len,
            "skipping": self.skipping,
            "skipping_doc": self.skipping_doc,
            "pending": self.partial.pending,
            "context": self.partial.context,
        }


class LogTailer:
    """Follows the configured apps' files and feeds their lines to a ``LineParser``. Thread-safe reads."""

    def __init__(self, cfg: LogsConfig, shard: Shard | None = None) -> None:
        self.cfg = cfg
        # Sharded by app: this tailer follows only the apps its shard owns (fleetmon/sharding.py).
        self.shard = shard or Shard()
        self.apps = {app: globs for app, globs in cfg.apps.items() if self.shard.owns_name(app)}
        self.parser = LineParser(self.apps, max_routes=cfg.max_routes)
        self.quarantine = Quarantine(cfg.quarantine_file, on_written=self._count_quarantined)
        self.lock = threading.Lock()  # guards parser.stats against a concurrent scrape
        self.files: dict[tuple[int, int], _File] = {}
        self._saved_files: dict[tuple[int, int], dict[str, Any]] = {}
        self._dirty = False
        # Positions lost (no usable state file): files already there on the first poll start at their end.
        self._at_end = False
        self.state_errors: dict[str, int] = dict.fromkeys(STATE_ERROR_REASONS, 0)
        self._load_state()

    @property
    def stats(self) -> dict[str, AppStats]:
        return self.parser.stats

    @property
    def _prev_path(self) -> Path:
        """The generation the last save replaced: logs-positions.json -> logs-positions.prev.json."""
        p = self.cfg.state_file
        return p.with_name(f"{p.stem}.prev{p.suffix}")

    def _count_quarantined(self, written: Counter[tuple[str, str]]) -> None:
        with self.lock:
            for (app, reason), n in written.items():
                st = self.stats.get(app)  # "" or an unknown app: a Log Analytics row of no configured app
                if st is not None:
                    st.quarantined[reason] = st.quarantined.get(reason, 0) + n
        self._dirty = True

    # ---------------------------------------------------------------------------------- state
    def _load_state(self) -> None:
        """Counters and positions from the state file; if it is damaged, from the previous generation.

        Both are one consistent snapshot (counters and the positions they were counted up to), so with the
        previous generation the lines read since are read again and counted once onto its counters. With
        neither, the positions are unknown: rather than read every file again from its start (counting
        every line twice), the files there now are taken up from their end and the counters start at 0 (a
        counter reset, which rate() and increase() handle); lines written while the exporter was down are
        not counted. Each case is counted in ``state_errors`` and logged.
        """
        path = self.cfg.state_file
        try:
            raw: bytes | None = path.read_bytes()
        except FileNotFoundError:
            return  # the first start (or deleted to start afresh): every file is new, read from its start
        except OSError as e:
            self.state_errors["unreadable"] += 1
            log.error("cannot read log positions %s: %s", path, e)
            raw = None
        if raw is not None:
            try:
                self._use_state(raw)
                return
            except _DAMAGED as e:
                self.state_errors["corrupt"] += 1
                stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
                aside = path.with_name(f"{path.name}.corrupt-{stamp}")
                try:
                    os.replace(path, aside)  # kept for an operator to inspect
                    moved = str(aside)
                except OSError as e2:
                    moved = f"nowhere ({e2})"
                log.error("log positions %s are damaged (%s), moved to %s", path, e, moved)
        self._dirty = True  # write a good file in place of the bad one on the next save
        prev = self._prev_path
        try:
            self._use_state(prev.read_bytes())
        except (OSError, *_DAMAGED) as e:
            self._at_end = True
            log.error(
                "no usable previous generation of the log positions (%s: %s): positions unknown, so the log"
                " files there now are read from their end (lines before are not counted again, lines written"
                " while the exporter was down are not counted) and the log counters start again at 0",
                prev,
                e,
            )
            return
        log.error(
            "log positions: using the previous generation %s; the lines read since it was written are read"
            " and counted again onto its counters (each once)",
            prev,
        )

    def _use_state(self, raw: bytes) -> None:
        """Take counters and positions from the file's bytes, or raise (one of ``_DAMAGED``) changing nothing."""
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError(f"not a positions file of version {STATE_VERSION}")
        stats = {app: AppStats.from_state(d) for app, d in dict(data["apps"]).items() if app in self.stats}
        files: dict[tuple[int, int], dict[str, Any]] = {}
        for entry in list(data["files"]):
            f = _file_state(entry)  # checked now: the first poll must not trip over it
            if f["offset"] < 0:
                raise ValueError(f"negative offset of {f['path']}")
            if f["app"] in self.stats:
                files[(f["dev"], f["ino"])] = f
        qerrors = int(data.get("quarantine_write_errors", 0))
        self.parser.stats.update(stats)
        self._saved_files = files
        self.quarantine.write_errors = qerrors

    def save_state(self) -> None:
        """Write counters and positions atomically (temporary file, fsync, rename: a kill leaves the last
        complete file) and keep the generation replaced; raises OSError, counted as ``save``."""
        with self.lock:
            files = [f.to_state() for f in self.files.values()]
            # files not opened yet (e.g. vanished while we were down) are kept until found or given up
            keys = set(self.files)
            files += [f for k, f in self._saved_files.items() if k not in keys]
            data = {
                "version": STATE_VERSION,
                "saved_at": time.time(),
                "files": files,
                "apps": {a: s.to_state() for a, s in self.parser.stats.items()},
                "quarantine_write_errors": self.quarantine.write_errors,
            }
            self._dirty = False
        path = self.cfg.state_file
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(data, fh, separators=(",", ":"))
                fh.flush()
                os.fsync(fh.fileno())  # the rename must not reach the disk before the data
            # Keep the generation being replaced (a hard link: the state file is never missing in between).
            prev, prev_tmp = self._prev_path, self._prev_path.with_name(self._prev_path.name + ".tmp")
            try:
                prev_tmp.unlink(missing_ok=True)
                os.link(path, prev_tmp)
                os.replace(prev_tmp, prev)
            except FileNotFoundError:
                pass  # the first save: nothing to keep
            os.replace(tmp, path)
        except OSError:
            self.state_errors["save"] += 1
            self._dirty = True  # try again on the next poll
            tmp.unlink(missing_ok=True)  # a partial file must not hold the space of a full disk
            raise
        try:  # the renames survive a power loss too (best effort: not every file system allows it)
            dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass

    # ---------------------------------------------------------------------------------- files
    def _discover(self) -> dict[tuple[int, int], tuple[str, str]]:
        found: dict[tuple[int, int], tuple[str, str]] = {}
        for app, globs in self.apps.items():
            for g in globs:
                for p in sorted(glob.glob(g, recursive=True)):
                    try:
                        st = os.stat(p)
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        found.setdefault((st.st_dev, st.st_ino), (app, p))  # first app wins
        return found

    def _open(self, app: str, path: str, key: tuple[int, int], at_end: bool = False) -> _File | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            log.warning("cannot open log file %s of app %s: %s", path, app, e)
            self.stats[app].file_errors += 1
            return None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != key:  # replaced between stat and open: next poll sees it
            os.close(fd)
            return None
        f = _File(app, path, st.st_dev, st.st_ino, fd)
        saved = self._saved_files.pop(key, None)
        if saved is not None and saved.get("app") == app:
            f.offset = int(saved["offset"])
            f.fp, f.fp_len = saved.get("fp", ""), int(saved.get("fp_len", 0))
            f.tail_fp, f.tail_len = saved.get("tail_fp", ""), int(saved.get("tail_len", 0))
            if self._changed(f, st.st_size) is None:
                f.skipping = bool(saved.get("skipping", False))
                f.skipping_doc = bool(saved.get("skipping_doc", False))
                f.partial.pending = dict(saved.get("pending", {}))
                f.partial.context = dict(saved.get("context", {}))
            else:  # same inode, other content: the file was replaced or truncated while we were down
                self._restart(f, st.st_size)
        elif at_end and st.st_size:
            # Positions lost (see _load_state): take the file up at its end, as `tail -F` does, so the lines
            # before are not counted a second time. Inside an unfinished last line: skip the rest of it.
            f.offset = st.st_size
            try:
                f.skipping = os.pread(fd, 1, st.st_size - 1) != b"\n"
            except OSError:
                pass
            self._fingerprint_read(f)
            self._dirty = True
            log.warning("log positions unknown: %s taken up at its end, %d bytes not read", path, st.st_size)
        return f

    def _recover_renamed(self) -> None:
        """Files known from the state but not found by the globs: look for them by inode (renamed)."""
        for key, saved in list(self._saved_files.items()):
            self._saved_files.pop(key)
            d = os.path.dirname(saved["path"]) or "."
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for e in entries:
                try:
                    if e.inode() == key[1] and e.is_file() and e.stat().st_dev == key[0]:
                        self._saved_files[key] = saved
                        f = self._open(saved["app"], e.path, key)
                        if f is not None:
                            f.rotated = True
                            self.files[key] = f
                        break
                except OSError:
                    continue

    def _close(self, f: _File) -> None:
        # Whatever never completed will not: an unterminated last line, an unfinished partial chain.
        st = self.stats[f.app]
        tail_len = 0
        try:
            tail_len = os.fstat(f.fd).st_size - f.offset
        except OSError:
            pass
        if tail_len > 0 and not f.skipping:
            tail = os.pread(f.fd, min(tail_len, 4096), f.offset)
            self._reject(st, f, "partial_line", f.offset, tail)
        for k, text in f.partial.pending.items():
            if not k.endswith(":skip"):
                self._reject(st, f, "partial_line", f.offset, text.encode()[:4096])
        self.parser.classifier.flush(st, f.partial)
        os.close(f.fd)
        del self.files[f.key]

    def close(self) -> None:
        if self._dirty or self.quarantine.pending:
            self._save()  # samples still queued count once written: save the counters with them
        for f in list(self.files.values()):
            os.close(f.fd)
        self.files.clear()

    def _save(self) -> None:
        """Flush the quarantine (its samples count once written), then save counters and positions.

        A failed save (disk full) is counted (``state_errors["save"]``) and logged, not raised: reading goes
        on from memory and the next poll saves again; a crash before that reads the lines since the last
        good save again, onto the counters saved with it (each line counted once).
        """
        self.quarantine.flush()
        try:
            self.save_state()
        except OSError as e:
            log.error("cannot save the log positions and counters to %s: %s", self.cfg.state_file, e)

    # ---------------------------------------------------------------------------------- reading
    def poll(self) -> None:
        first = not self.files and bool(self._saved_files)
        at_end, self._at_end = self._at_end, False  # only the files there when the positions were lost
        found = self._discover()
        for key, (app, path) in found.items():
            f = self.files.get(key)
            if f is None:
                f = self._open(app, path, key, at_end)
                if f is None:
                    continue
                self.files[key] = f
            else:
                if f.rotated:
                    f.rotated = False
                f.path = path
        for key, f in self.files.items():
            if key not in found and not f.rotated:
                f.rotated = True
                self.stats[f.app].rotations += 1
                self._dirty = True
        if first:
            self._recover_renamed()
        # Serve files in turn, a bounded pass each, until all are read to their end.
        read_any: dict[tuple[int, int], int] = {}
        while True:
            progress = False
            for f in list(self.files.values()):
                n = self._read(f, PASS_BYTES)
                if n:  # at the end of what was written: errors whose trace may be complete count now
                    with self.lock:
                        self.parser.classifier.settle(self.stats[f.app], f.partial)
                read_any[f.key] = read_any.get(f.key, 0) + n
                progress = progress or n >= PASS_BYTES
            if self._dirty:
                self._save()
            if not progress:
                break
        for f in list(self.files.values()):
            if f.rotated and read_any.get(f.key, 0) == 0:
                with self.lock:
                    self._close(f)
                self._dirty = True
        if self._dirty:
            self._save()

    def _changed(self, f: _File, size: int) -> str | None:
        """Why f's content is no longer what was read up to f.offset (None: it only grew, as far as we can see)."""
        if size < f.offset:
            return "size"
        try:
            head = os.pread(f.fd, f.fp_len, 0) if f.fp_len else b""
            tail = os.pread(f.fd, f.tail_len, f.offset - f.tail_len) if f.tail_len else b""
        except OSError:
            return None
        if len(head) != f.fp_len or (f.fp_len and _fingerprint(head) != f.fp):
            return "head"
        if len(tail) != f.tail_len or (f.tail_len and _fingerprint(tail) != f.tail_fp):
            return "tail"
        return None

    def _restart(self, f: _File, size: int) -> None:
        """Read f again from its start (it was truncated or rewritten); count what may be read twice."""
        st = self.stats[f.app]
        with self.lock:
            st.truncations += 1
            if size >= f.offset:  # not shrunk: perhaps rewritten in place rather than truncated
                st.reread_bytes += f.offset
            f.offset, f.fp, f.fp_len, f.tail_fp, f.tail_len, f.skipping = 0, "", 0, "", 0, False
            f.skipping_doc = False
            f.partial.pending.clear()
            f.partial.context.clear()
        self._dirty = True

    def _check_truncated(self, f: _File) -> None:
        try:
            size = os.fstat(f.fd).st_size
        except OSError:
            return
        why = self._changed(f, size)
        if why is not None:
            log.info("log file %s was truncated or rewritten (%s changed); reading it again", f.path, why)
            self._restart(f, size)

    def _read(self, f: _File, budget: int) -> int:
        """Read and parse from f.offset up to ``budget`` bytes of complete lines; returns bytes consumed."""
        if f.offset or f.fp_len:
            self._check_truncated(f)
        start = f.offset
        consumed = self._read_lines(f, budget)
        if f.offset != start:
            self._fingerprint_read(f)
        return consumed

    def _fingerprint_read(self, f: _File) -> None:
        """Fingerprint what was read: the head (until it is FP_LEN long) and the bytes ending at the offset."""
        n = min(FP_LEN, f.offset)
        try:
            if f.fp_len < FP_LEN and f.offset > f.fp_len:
                head = os.pread(f.fd, n, 0)
                f.fp, f.fp_len = _fingerprint(head), len(head)
            tail = os.pread(f.fd, n, f.offset - n)
        except OSError:
            return
        f.tail_fp, f.tail_len = _fingerprint(tail), len(tail)

    def _read_lines(self, f: _File, budget: int) -> int:
        consumed = 0
        st = self.stats[f.app]
        while consumed < budget:
            try:
                data = os.pread(f.fd, CHUNK, f.offset)
            except OSError as e:
                log.warning("cannot read log file %s: %s", f.path, e)
                st.file_errors += 1
                break
            if not data:
                break
            if f.skipping_doc:  # the rest of a too-long document
                m = _DOC_END.search(data)
                # keep a few bytes back: the closing line may straddle two reads
                n = m.end() if m is not None else max(0, len(data) - 8) if len(data) == CHUNK else 0
                if n == 0:
                    break
                with self.lock:
                    f.offset += n
                    st.bytes += n
                    f.skipping_doc = m is None
                consumed += n
                self._dirty = True
                continue
            if f.skipping:  # the rest of a too-long line
                i = data.find(b"\n")
                n = len(data) if i < 0 else i + 1
                with self.lock:
                    f.offset += n
                    st.bytes += n
                    f.skipping = i < 0
                consumed += n
                self._dirty = True
                continue
            last_nl = data.rfind(b"\n")
            if last_nl < 0:
                if len(data) < CHUNK:
                    break  # an incomplete last line: wait for the writer to finish it
                with self.lock:  # no newline within MAX_LINE bytes: too long, skip to its end
                    self._reject(st, f, "too_long", f.offset, data[:4096])
                    f.offset += len(data)
                    st.bytes += len(data)
                    f.skipping = True
                consumed += len(data)
                self._dirty = True
                continue
            n = last_nl + 1
            with self.lock:
                upto = self._parse(st, f, data[:n], f.offset)
                if upto is not None:  # a JSON array document starts after `upto` bytes of lines
                    n = upto
                f.offset += n
                st.bytes += n
            consumed += n
            self._dirty = True
            if upto is not None:
                n = self._read_document(f, st)
                if n == 0:
                    break  # not complete yet: wait for its writer
                consumed += n
        return consumed

    def _parse(self, st: AppStats, f: _File, block: bytes, offset: int) -> int | None:
        """Feed the block's lines (each ends with a newline); stops at a line that opens a JSON array document
        and returns its position."""
        feed = self.parser.feed
        partial = f.partial
        start = offset
        # BytesIO finds the newlines with memchr: several times faster than bytes.split on long lines
        for line in io.BytesIO(block):
            # "[" opens a document (a first-byte test per line costs less than searching the block for "\n[")
            if line[0] == 0x5B and _document_start(line):
                return offset - start
            line = line[:-1]
            reason = feed(st, line, partial)
            if reason is not None:
                self._reject(st, f, reason, offset, line)
            offset += len(line) + 1
        return None

    def _read_document(self, f: _File, st: AppStats) -> int:
        """The JSON array document at f.offset, element by element; returns bytes consumed (0: incomplete)."""
        try:
            data = os.pread(f.fd, DOC_MAX + 1, f.offset)
        except OSError as e:
            log.warning("cannot read log file %s: %s", f.path, e)
            st.file_errors += 1
            return 0
        end = _document_end(data)
        if end < 0:
            if len(data) <= DOC_MAX:
                return 0
            with self.lock:
                self._reject(st, f, "too_long", f.offset, data[:4096])
                f.skipping_doc = True
                f.offset += 1  # past the "[": the skip looks for the closing line from here
                st.bytes += 1
            self._dirty = True
            return 1
        offset = f.offset
        try:
            rows = msgspec.json.decode(data[:end])
        except (msgspec.DecodeError, RecursionError):  # too deep: msgspec stops at the recursion limit
            rows = None
        with self.lock:
            if not isinstance(rows, list):
                self._reject(st, f, "invalid_json" if rows is None else "invalid_record", offset, data[:4096])
                rows = []
        encode, feed = msgspec.json.encode, self.parser.feed
        for i in range(0, len(rows), DOC_BATCH):
            with self.lock:
                for row in rows[i : i + DOC_BATCH]:
                    line = encode(row) if isinstance(row, dict) else b""
                    reason = feed(st, line, f.partial) if line else "invalid_record"
                    if reason is not None:
                        self._reject(st, f, reason, offset, line or encode(row)[:4096])
        with self.lock:
            f.offset += end
            st.bytes += end
        self._dirty = True
        return end

    def _reject(self, st: AppStats, f: _File, reason: str, offset: int, line: bytes) -> None:
        st.rejected[reason] = st.rejected.get(reason, 0) + 1
        # counted in st.quarantined once written (Quarantine.flush -> _count_quarantined)
        self.quarantine.offer(f.app, reason, f.path, offset, line)

    def unread_bytes(self) -> dict[str, int]:
        out = dict.fromkeys(self.stats, 0)
        for f in list(self.files.values()):
            try:
                out[f.app] += max(0, os.fstat(f.fd).st_size - f.offset)
            except OSError:
                pass
        return out


# ---------------------------------------------------------------------------------------- collector
@register(
    "logs",
    help="Container log files and Azure Log Analytics: requests, errors, training and system events per app.",
)
class LogsCollector:
    """Container log files -> per-app metrics (tailed in the background, served from memory)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg.platform.logs
        self.enabled = self.cfg.enabled and bool(self.cfg.apps)
        self.tailer = LogTailer(self.cfg, cfg.shard)
        # Azure Log Analytics rows go through the same parser and counters as the files' lines.
        la = self.cfg.log_analytics
        self.log_analytics = (
            LogAnalyticsSource(la, self.tailer) if self.enabled and la.workspace_id and la.tables() else None
        )

    def poll(self) -> None:
        if self.enabled:
            self.tailer.poll()
            if self.log_analytics is not None:
                self.log_analytics.poll()  # queries only when due; never raises

    def close(self) -> None:
        if self.log_analytics is not None:
            self.log_analytics.close()
        self.tailer.close()

    def collect(self) -> Iterator[Metric]:
        if not self.enabled:
            return
        t = self.tailer
        unread = t.unread_bytes()
        with t.lock:
            snap = {app: s.copy() for app, s in t.stats.items()}
            nfiles = dict.fromkeys(snap, 0)
            for f in t.files.values():
                nfiles[f.app] += 1
            state_errors, quarantine_errors = dict(t.state_errors), t.quarantine.write_errors
        yield from families(snap, nfiles, unread)
        errors = CounterMetricFamily(
            "fleetmon_logs_state_errors",
            "Problems with logs.state_file by reason: corrupt (damaged: moved aside, the previous generation"
            " used, or with none the files taken up at their end), unreadable (the same, but left in place),"
            " save (could not be written; tried again at the next poll).",
            labels=["reason"],
        )
        for reason in STATE_ERROR_REASONS:
            errors.add_metric([reason], state_errors[reason])
        yield errors
        yield CounterMetricFamily(
            "fleetmon_logs_quarantine_write_errors",
            "Failed writes to logs.quarantine_file (their samples are dropped and not counted in"
            " fleetmon_logs_quarantined_lines_total; the lines stay counted as rejected).",
            value=quarantine_errors,
        )
        if self.log_analytics is not None:
            yield from self.log_analytics.collect()


def families(snap: dict[str, AppStats], nfiles: dict[str, int], unread: dict[str, int]) -> Iterator[Metric]:
    """The metric families of a snapshot of every app's aggregates."""
    req = CounterMetricFamily(
        "fleetmon_http_requests",
        "HTTP requests seen in access logs, by route template (ids replaced; over the cap: other).",
        labels=["app", "method", "route", "status"],
    )
    last_err = GaugeMetricFamily(
        "fleetmon_http_last_error_timestamp_seconds",
        "Log time of the last 4xx/5xx response per route and status.",
        labels=["app", "method", "route", "status"],
    )
    latency = HistogramMetricFamily(
        "fleetmon_http_request_duration_seconds",
        "Request durations read from access and request logs that carry one, by route template (same cap"
        " as fleetmon_http_requests); see docs/formats.md for the fields read.",
        labels=["app", "method", "route"],
    )
    les = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]
    routes = GaugeMetricFamily(
        "fleetmon_http_routes",
        "Distinct route templates tracked (at logs.max_routes the rest count as other).",
        labels=["app"],
    )
    errors = CounterMetricFamily(
        "fleetmon_app_errors",
        "ERROR/CRITICAL log lines by error type (error_code or exception class; capped, rest other).",
        labels=["app", "error_type"],
    )
    training = CounterMetricFamily(
        "fleetmon_training_events",
        "Training event messages by kind (received, finished, failed).",
        labels=["app", "kind"],
    )
    events = CounterMetricFamily(
        "fleetmon_platform_events",
        "Platform system events (Azure Container Apps system logs) by reason and event type.",
        labels=["app", "reason", "event_type"],
    )
    replicas = GaugeMetricFamily(
        "fleetmon_app_replicas", "Replica count last reported by the platform.", labels=["app"]
    )
    replicas_max = GaugeMetricFamily(
        "fleetmon_app_replicas_max", "Highest replica count reported by the platform.", labels=["app"]
    )
    mem_ws = GaugeMetricFamily(
        "fleetmon_app_memory_working_set_bytes",
        "Memory working set summed over the app's live replicas (as reported by the platform).",
        labels=["app"],
    )
    mem_limit = GaugeMetricFamily(
        "fleetmon_app_memory_limit_bytes",
        "Memory limit summed over the app's live replicas.",
        labels=["app"],
    )
    mem_ratio = GaugeMetricFamily(
        "fleetmon_app_memory_utilization_max_ratio",
        "Highest working set / limit among the app's live replicas (1 = at its limit).",
        labels=["app"],
    )
    lines = CounterMetricFamily(
        "fleetmon_logs_lines", "Log lines parsed, by format.", labels=["app", "format"]
    )
    nbytes = CounterMetricFamily("fleetmon_logs_read_bytes", "Bytes of log files read.", labels=["app"])
    rejected = CounterMetricFamily(
        "fleetmon_logs_rejected_lines",
        "Log lines that could not be used, by reason.",
        labels=["app", "reason"],
    )
    quarantined = CounterMetricFamily(
        "fleetmon_logs_quarantined_lines",
        "Rejected lines sampled to the quarantine file (rate-limited).",
        labels=["app", "reason"],
    )
    files = GaugeMetricFamily("fleetmon_logs_files", "Log files currently followed.", labels=["app"])
    rotations = CounterMetricFamily(
        "fleetmon_logs_rotations", "Followed files rotated away (renamed or deleted).", labels=["app"]
    )
    truncations = CounterMetricFamily(
        "fleetmon_logs_truncations", "Followed files truncated or replaced in place.", labels=["app"]
    )
    reread = CounterMetricFamily(
        "fleetmon_logs_reread_bytes",
        "Bytes read again from the start of a file whose content changed before the read position though"
        " its size did not drop (truncated and refilled, or rewritten in place: then counted twice).",
        labels=["app"],
    )
    file_errors = CounterMetricFamily(
        "fleetmon_logs_file_errors", "Errors opening or reading log files.", labels=["app"]
    )
    lag = GaugeMetricFamily(
        "fleetmon_logs_unread_bytes", "Bytes written to followed files but not read yet.", labels=["app"]
    )
    for app, s in snap.items():
        for (m, r, code), v in s.requests.items():
            req.add_metric([app, m, r, code], v)
        for (m, r, code), ts in s.last_error.items():
            last_err.add_metric([app, m, r, code], ts)
        for (m, r), counts in s.latency.items():
            cumulative, acc = [], 0
            for le, c in zip(les, counts, strict=True):
                acc += c
                cumulative.append((le, acc))
            latency.add_metric([app, m, r], cumulative, s.latency_sum.get((m, r), 0.0))
        routes.add_metric([app], len(s.routes))
        for et, v in s.errors.items():
            errors.add_metric([app, et], v)
        for kind in TRAINING_KINDS:
            training.add_metric([app, kind], s.training.get(kind, 0))
        for (reason, etype), v in s.events.items():
            events.add_metric([app, reason, etype], v)
        if s.replicas is not None:
            replicas.add_metric([app], s.replicas)
        if s.replicas_max is not None:
            replicas_max.add_metric([app], s.replicas_max)
        mem = s.fresh_memory()
        if mem:
            mem_ws.add_metric([app], sum(v[1] for v in mem))
            limits = [v for v in mem if v[2] > 0]
            if limits:
                mem_limit.add_metric([app], sum(v[2] for v in limits))
                mem_ratio.add_metric([app], max(v[1] / v[2] for v in limits))
        for fmt, v in s.lines.items():
            lines.add_metric([app, fmt], v)
        nbytes.add_metric([app], s.bytes)
        for reason in REJECT_REASONS:
            rejected.add_metric([app, reason], s.rejected.get(reason, 0))
            quarantined.add_metric([app, reason], s.quarantined.get(reason, 0))
        files.add_metric([app], nfiles.get(app, 0))
        rotations.add_metric([app], s.rotations)
        truncations.add_metric([app], s.truncations)
        reread.add_metric([app], s.reread_bytes)
        file_errors.add_metric([app], s.file_errors)
        lag.add_metric([app], unread.get(app, 0))
    yield from (req, last_err, latency, routes, errors, training, events, replicas, replicas_max)
    yield from (mem_ws, mem_limit, mem_ratio, lines, nbytes, rejected, quarantined)
    yield from (files, rotations, truncations, reread, file_errors, lag)
