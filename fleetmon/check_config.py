"""``fleetmon check-config [PATH]``: validate a config and summarise the fleet it describes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fleetmon.config import ConfigError, default_config_path, load_config


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="fleetmon check-config")
    p.add_argument("config", nargs="?", default=str(default_config_path()))
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"fleetmon: {e}", file=sys.stderr)
        return 2
    fleet = cfg.fleet
    print(
        f"{cfg.source}: ok: {len(fleet.customers)} customers, {len(fleet.buildings())} buildings, "
        f"{len(fleet.models())} models"
    )
    return 0
