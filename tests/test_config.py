"""The config file is validated at start-up and refused with file, key and expectation named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fleetmon.config import ConfigError, load_config

FLEET = {
    "customers": [
        {
            "id": "c1",
            "buildings": [
                {
                    "id": "b1",
                    "building_type": "school",
                    "volume_m3": 1200,
                    "latitude": 60.17,
                    "longitude": 24.94,
                },
                {"id": "b2", "energy_types": ["electricity"]},
            ],
        }
    ]
}


def write(tmp_path: Path, data: object, name: str = "fleetmon.yml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_fleet_models_follow_configured_energy_types_and_roles(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, {"fleet": {**FLEET, "model_roles": ["forecast", "anomaly", "baseline"]}}), {}
    )
    keys = [(m.building, m.energy, m.model) for m in cfg.fleet.models()]
    assert len(keys) == 3 * 2 + 3 * 1
    assert ("b1", "heating", "baseline") in keys
    assert ("b2", "heating", "forecast") not in keys


def test_include_file_adds_customers_and_relative_paths_resolve(tmp_path: Path) -> None:
    write(tmp_path, FLEET, "fleet.yml")
    p = write(
        tmp_path, {"fleet": {"include": "fleet.yml"}, "outputs": {"predictions": [{"glob": "out/*.jsonl"}]}}
    )
    cfg = load_config(p, {})
    assert [c.id for c in cfg.fleet.customers] == ["c1"]
    assert cfg.outputs.predictions[0].glob == str(tmp_path / "out/*.jsonl")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"fleet": {"customers": [{"id": "c1", "buildings": [{"id": "b1", "latitude": "north"}]}]}},
            "fleet.customers.0.buildings.0.latitude: Input should be a valid number",
        ),
        ({"mlflow": {"tracking_url": "x"}}, "mlflow.tracking_url: unknown key"),
        ({"fleet": {"customers": [{"id": "c 1"}]}}, "fleet.customers.0.id: String should match pattern"),
        ({"fleet": {"customers": [{"id": "c1"}, {"id": "c1"}]}}, "duplicate customer id 'c1'"),
        ({"mlflow": {"registered_model_pattern": "{customer}-{building}"}}, "must contain {energy}"),
        (["not", "a", "mapping"], "(top level): expected a mapping"),
    ],
)
def test_bad_config_is_refused_naming_file_and_key(tmp_path: Path, data: object, expected: str) -> None:
    p = write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_config(p, {})
    assert str(p) in str(e.value)
    assert expected in str(e.value)


def test_bad_include_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "fleet.yml").write_text("customers:\n  - id: c1\n    buildings: [{id: b1, volume_m3: -3}]\n")
    with pytest.raises(ConfigError, match=r"fleet\.yml: fleet\.customers\.0\.buildings\.0\.volume_m3"):
        load_config(write(tmp_path, {"fleet": {"include": "fleet.yml"}}), {})


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yml", {})
    (tmp_path / "bad.yml").write_text("fleet: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yml: not valid YAML"):
        load_config(tmp_path / "bad.yml", {})


def test_environment_overrides_secrets_and_urls(tmp_path: Path) -> None:
    p = write(tmp_path, {"mlflow": {"tracking_uri": "http://from-file:5000"}})
    cfg = load_config(
        p,
        {
            "FLEETMON__MLFLOW__TIMEOUT_SECONDS": "3.5",
            "MLFLOW_TRACKING_URI": "http://env:5000",
            "MLFLOW_TRACKING_TOKEN": "s3cret",
        },
    )
    assert cfg.mlflow.tracking_uri == "http://env:5000"
    assert cfg.mlflow.timeout_seconds == 3.5
    assert cfg.mlflow.token == "s3cret"
    with pytest.raises(ConfigError, match=r"mlflow\.timeout_seconds"):
        load_config(p, {"FLEETMON__MLFLOW__TIMEOUT_SECONDS": "soon"})
