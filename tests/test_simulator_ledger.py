"""The simulator's write ledger (``simulator/ledger.py``) counts exactly what the simulator writes.

Ground truth here is the disk: every prediction and actual row in the output files, every line and byte
of every log file (the live file and its ``.1``), after a fast-forwarded run without MLflow.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from fleetmon.config import Config, DemoConfig, FleetConfig, OutputsConfig
from simulator import ledger
from simulator.core import Simulator
from simulator.fleet import generate_fleet
from simulator.logs import LogFile
from simulator.world import FEATURES

START = datetime(2026, 1, 15, 9, 0, 0, tzinfo=UTC).timestamp()


def make_cfg(out: Path) -> Config:
    return Config(
        fleet=FleetConfig(customers=generate_fleet(42, 1, 3)),
        outputs=OutputsConfig(features=list(FEATURES)),
        demo=DemoConfig(seed=42, customers=1, buildings=3, output_dir=out, time_scale=120, backfill_hours=6),
    )


def rows_on_disk(d: Path) -> tuple[int, int]:
    files = sorted(d.glob("*.jsonl"))
    return len(files), sum(len(p.read_text().splitlines()) for p in files)


def logs_on_disk(logs: Path) -> dict[str, tuple[int, int]]:
    """Lines and bytes per app directory, live file and rotated ``.1`` together."""
    out: dict[str, tuple[int, int]] = {}
    for p in logs.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            lines, nbytes = out.get(p.parent.name, (0, 0))
            out[p.parent.name] = (lines + data.count(b"\n"), nbytes + len(data))
    return out


def test_the_ledger_counts_every_row_line_and_byte_written(tmp_path: Path) -> None:
    sim = Simulator(make_cfg(tmp_path), start=START, mlflow=False, log_max_bytes=700_000)
    sim.fast_forward(40)  # 20 wall minutes at time scale 120
    totals = ledger.read(tmp_path)
    assert totals["outputs"]["predictions"] == dict(
        zip(("files", "rows"), rows_on_disk(tmp_path / "outputs" / "predictions"), strict=True)
    )
    assert totals["outputs"]["actuals"] == dict(
        zip(("files", "rows"), rows_on_disk(tmp_path / "outputs" / "actuals"), strict=True)
    )
    disk = logs_on_disk(tmp_path / "logs")
    rotated = {app: f.rotations for app, f in sim.platform.files.items()}
    assert rotated["gateway"] == 1  # the small limit rotates the busiest file once, so .1 still holds it all
    for app, f in sim.platform.files.items():
        assert f.rotations <= 1, app  # a second rotation would overwrite .1: the disk would hold less
        counted = totals["logs"][app]
        assert (counted["lines"], counted["bytes"]) == disk[f.path.parent.name], app
        assert counted["rotations"] == rotated[app], app
    assert sum(d["lines"] for d in totals["logs"].values()) > 1000


def test_a_restarted_simulator_keeps_counting_and_skips_what_is_on_disk(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    sim = Simulator(cfg, START, mlflow=False)
    sim.fast_forward(4)
    first = ledger.read(tmp_path)
    sim2 = Simulator(cfg, START + 4 * sim.interval + 1, mlflow=False)  # rewrites none of the files
    sim2.fast_forward(3)
    after = ledger.read(tmp_path)
    assert after["outputs"]["predictions"]["rows"] == rows_on_disk(tmp_path / "outputs" / "predictions")[1]
    assert after["outputs"]["predictions"]["files"] == first["outputs"]["predictions"]["files"] + 3
    disk = logs_on_disk(tmp_path / "logs")
    for app, f in sim2.platform.files.items():
        assert after["logs"][app]["lines"] == disk[f.path.parent.name][0], app


def test_a_damaged_ledger_is_kept_aside_and_counting_starts_again(tmp_path: Path) -> None:
    (tmp_path / ledger.FILE_NAME).write_text("{not json")
    led = ledger.Ledger(tmp_path / ledger.FILE_NAME)
    assert (tmp_path / (ledger.FILE_NAME + ".corrupt")).read_text() == "{not json"
    lf = LogFile(tmp_path / "x.log", max_bytes=1000, ledger=led, app="x")
    lf.write(["a" * 99] * 8)
    lf.write(["b" * 99] * 3)  # rotates first
    led.output_file("predictions", 5)
    led.flush()
    data = json.loads((tmp_path / ledger.FILE_NAME).read_text())
    assert data["logs"] == {"x": {"lines": 11, "bytes": 1100, "rotations": 1}}
    assert data["outputs"] == {"predictions": {"files": 1, "rows": 5}}
