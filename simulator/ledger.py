"""What the simulator wrote, counted when it writes it: ``<demo.output_dir>/written.json``.

The simulator prunes old output files and rotates its logs, so what it wrote cannot be counted afterwards
from the disk. The ledger keeps running totals instead, updated right after each write:

    {"version": 1,
     "outputs": {"predictions": {"files": 193, "rows": 15440}, "actuals": {"files": 190, "rows": 7560}},
     "logs": {"gateway": {"lines": 4210, "bytes": 1532000, "rotations": 0}, ...}}

``outputs``: files and rows (one JSON line each) written by kind; ``logs``: per app of the simulator's
log files (``simulator.logs.Platform``: ``gateway``, ``api``, ..., ``system``), the lines (``\\n``-ended
records) and bytes appended, and how often the simulator itself rotated the file (renamed it to
``<name>.1``). The file is small (totals only), rewritten atomically (temporary name + rename) once per
simulator step, and read back at start-up, so a restarted simulator keeps counting. What it can promise:
totals of what was written, never more; a simulator killed between a write and the next ``flush()``
leaves up to one step uncounted. The content depends only on what was written (no wall-clock time), so
a seeded run writes the same ledger every time. ``benchmarks/soak.py`` compares it with what the exporters
counted.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("fleetmon.demo")

VERSION = 1
FILE_NAME = "written.json"


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.outputs: dict[str, dict[str, int]] = {}
        self.logs: dict[str, dict[str, int]] = {}
        self._dirty = False
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            # Not the product: a damaged ledger is kept aside and counting starts again, loudly.
            log.error("cannot read the write ledger %s (%s); counting from zero", self.path, e)
            os.replace(self.path, self.path.with_name(self.path.name + ".corrupt"))
            return
        if data.get("version") == VERSION:
            self.outputs = {k: {n: int(v) for n, v in d.items()} for k, d in data.get("outputs", {}).items()}
            self.logs = {k: {n: int(v) for n, v in d.items()} for k, d in data.get("logs", {}).items()}

    def output_file(self, kind: str, rows: int) -> None:
        """One output file of ``kind`` (predictions, actuals) with ``rows`` records was written."""
        d = self.outputs.setdefault(kind, {"files": 0, "rows": 0})
        d["files"] += 1
        d["rows"] += rows
        self._dirty = True

    def log_write(self, app: str, lines: int, nbytes: int, rotated: bool = False) -> None:
        """``lines`` lines (``nbytes`` bytes) appended to ``app``'s log file, after rotating it if ``rotated``."""
        d = self.logs.setdefault(app, {"lines": 0, "bytes": 0, "rotations": 0})
        d["lines"] += lines
        d["bytes"] += nbytes
        d["rotations"] += int(rotated)
        self._dirty = True

    def totals(self) -> dict[str, Any]:
        return {"version": VERSION, "outputs": self.outputs, "logs": self.logs}

    def flush(self) -> None:
        """Write the totals if anything was counted since the last flush."""
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.totals(), sort_keys=True) + "\n")
        os.replace(tmp, self.path)
        self._dirty = False


def read(output_dir: Path) -> dict[str, Any]:
    """The ledger of a demo output directory (empty totals if there is none yet)."""
    path = output_dir / FILE_NAME
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return {"version": VERSION, "outputs": {}, "logs": {}}
    return data
