"""The newcomer's documents stay true: every config key is documented, the README's commands exist."""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

from fleetmon.cli import COMMANDS
from fleetmon.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent


def config_keys(model: type[BaseModel] = Config, prefix: str = "") -> Iterator[str]:
    """Every key of the config as a dotted path: ``fleet.customers[].buildings[].latitude``."""
    for name, f in model.model_fields.items():
        if f.exclude:
            continue
        path = f"{prefix}{name}"
        ann, args = f.annotation, typing.get_args(f.annotation)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from config_keys(ann, path + ".")
            continue
        yield path
        origin = typing.get_origin(ann)
        if origin is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            yield from config_keys(args[0], path + "[].")
        if origin is dict and len(args) == 2 and isinstance(args[1], type) and issubclass(args[1], BaseModel):
            yield from config_keys(args[1], path + ".<name>.")


def test_every_config_key_is_in_the_configuration_reference() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    keys = list(config_keys())
    assert len(keys) > 80
    missing = [k for k in keys if f"`{k}`" not in doc]
    assert not missing, f"docs/configuration.md does not document: {missing}"


def test_the_shipped_config_only_uses_documented_keys() -> None:
    load_config(ROOT / "config" / "fleetmon.yml", environ={})  # valid as shipped


def test_readme_names_the_commands_ports_and_links_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    for cmd in ("make up", "make down", "make status", "make test", "docker compose up"):
        assert cmd in readme
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    for target in re.findall(r"`make ([a-z][\w-]*)", readme):
        assert target in targets, f"README mentions `make {target}`, the Makefile has no such target"
    for sub in re.findall(r"`fleetmon ([a-z][\w-]*)", readme):
        assert sub in COMMANDS, f"README mentions `fleetmon {sub}`"
    for port in (9090, 9093, 9091, 5000, 3000, 9701, 9702, 9703, 9704):
        assert str(port) in readme
    for link in re.findall(r"\]\(((?!https?:)[^)#]+)", readme):
        assert (ROOT / link).exists(), f"README links to missing {link}"
    assert "MLFLOW_TRACKING_URI" in readme


def test_stack_help_runs() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "fleetmon.cli", "stack", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert res.returncode == 0 and "--state-dir" in res.stdout
