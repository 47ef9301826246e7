"""The demo fleet: deterministic, valid, and the committed file is what the generator makes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fleetmon.config import FleetConfig, load_config
from simulator.cli import main as demo_main
from simulator.fleet import BUILDING_TYPES, TOWNS, fleet_yaml, generate_fleet

ROOT = Path(__file__).resolve().parent.parent


def test_same_seed_same_fleet_other_seed_other_fleet() -> None:
    a = generate_fleet(7, 4, 20)
    b = generate_fleet(7, 4, 20)
    c = generate_fleet(8, 4, 20)
    assert [x.model_dump() for x in a] == [x.model_dump() for x in b]
    assert [x.model_dump() for x in a] != [x.model_dump() for x in c]


def test_ids_sizes_and_metadata() -> None:
    customers = generate_fleet(42, 4, 22)
    assert [c.id for c in customers] == ["c01", "c02", "c03", "c04"]
    assert [len(c.buildings) for c in customers] == [6, 6, 5, 5]
    assert customers[0].buildings[0].id == "c01-b001"
    assert customers[3].buildings[-1].id == "c04-b005"
    lats = {t.station: t.latitude for t in TOWNS}
    for c in customers:
        assert c.name and c.team.startswith("team-")
        for b in c.buildings:
            assert b.building_type in BUILDING_TYPES
            lo, hi = BUILDING_TYPES[b.building_type][1]
            assert lo - 10 <= b.volume_m3 <= hi + 10
            # near the town of its weather station (Finland)
            assert abs(b.latitude - lats[b.weather_station]) <= 0.04 + 1e-9
            assert 59.5 < b.latitude < 70.1 and 19.0 < b.longitude < 31.6
    # the file form validates as a fleet and gives four models per building
    fleet = FleetConfig.model_validate(yaml.safe_load(fleet_yaml(customers, 42)))
    assert len(fleet.models()) == 22 * 4


def test_large_fleet_for_benchmarks() -> None:
    customers = generate_fleet(1, 10, 1000)
    ids = [b.id for c in customers for b in c.buildings]
    assert len(ids) == len(set(ids)) == 1000
    assert ids[0] == "c01-b001" and ids[-1] == "c10-b100"
    # more than 999 buildings per customer widen the number
    assert generate_fleet(1, 1, 1200)[0].buildings[-1].id == "c01-b1200"


def test_committed_fleet_file_is_the_generated_one(tmp_path: Path) -> None:
    out = tmp_path / "fleet.yml"
    assert (
        demo_main(["fleet", "--config.file", str(ROOT / "config" / "fleetmon.yml"), "--out", str(out)]) == 0
    )
    assert out.read_text() == (ROOT / "config" / "demo-fleet.yml").read_text()
    cfg = load_config(ROOT / "config" / "fleetmon.yml", {})
    assert len(cfg.fleet.buildings()) == cfg.demo.buildings
    assert len(cfg.fleet.customers) == cfg.demo.customers


def test_fleet_command_writes_the_config_include_without_needing_it(tmp_path: Path) -> None:
    (tmp_path / "fleetmon.yml").write_text(
        "fleet: {include: my-fleet.yml}\ndemo: {seed: 3, customers: 2, buildings: 3}\n"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetmon.cli",
            "demo",
            "fleet",
            "--config.file",
            str(tmp_path / "fleetmon.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    cfg = load_config(tmp_path / "fleetmon.yml", {})
    assert [b.id for _, b in cfg.fleet.buildings()] == ["c01-b001", "c01-b002", "c02-b001"]


def test_bad_demo_section_is_refused_with_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "fleetmon.yml"
    p.write_text("demo: {buildings: lots}\n")
    assert demo_main(["fleet", "--config.file", str(p), "--out", str(tmp_path / "f.yml")]) == 2
    err = capsys.readouterr().err
    assert str(p) in err and "demo.buildings" in err
    assert not (tmp_path / "f.yml").exists()
