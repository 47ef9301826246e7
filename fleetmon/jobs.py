"""What the periodic jobs (``fleetmon score``, ``fleetmon evaluations``) share: their flags, and loading a
config that must turn them on."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from fleetmon.config import Config, ConfigError, default_config_path, load_config


def start(
    prog: str, description: str, argv: Sequence[str] | None, section: str
) -> tuple[argparse.Namespace, Config | None]:
    """Parse the job's flags (``--config.file``, ``--once``, ``--no-push``, ``--log.level``), set up logging
    and load the config; None (after saying why on stderr) when it is invalid or ``<section>.enabled`` is
    false."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config.file", dest="config_file", default=str(default_config_path()))
    p.add_argument("--once", action="store_true", help="one cycle, then exit (cron)")
    p.add_argument("--no-push", action="store_true", help="do not push the cycle to the Pushgateway")
    p.add_argument("--log.level", dest="log_level", default="info")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = load_config(args.config_file)
    except ConfigError as e:
        print(f"fleetmon: refusing to start: {e}", file=sys.stderr)
        return args, None
    if not getattr(cfg, section).enabled:
        print(f"{prog}: {section}.enabled is false in {cfg.source}: nothing to do", file=sys.stderr)
        return args, None
    return args, cfg
