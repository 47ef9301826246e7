"""Flags shared by every fleetmon exporter, in node_exporter's style.

--config.file PATH            the fleetmon YAML config (env FLEETMON_CONFIG)
--web.listen-address H:P      overrides the exporter's ``listen`` from the config
--web.config.file PATH        exporter-toolkit web config: TLS, basic auth, headers (env
                              FLEETMON_WEB_CONFIG_FILE, else the exporter's ``listen.web_config_file``;
                              ``""`` switches it off); see fleetmon.webconfig
--shard i/N                   run as shard i of N (overrides the config's ``shard``; fleetmon/sharding.py)
--collector.NAME / --no-collector.NAME   switch a collector on or off
--log.level LEVEL
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from fleetmon.config import Config, ConfigError, ListenConfig, default_config_path, load_config
from fleetmon.exporter import COLLECTORS, Exporter, build_collectors, run_forever
from fleetmon.sharding import Shard
from fleetmon.webconfig import WebServing, resolve


def parse_args(
    name: str, collector_names: Sequence[str], argv: Sequence[str] | None
) -> tuple[argparse.Namespace, dict[str, bool]]:
    p = argparse.ArgumentParser(prog=f"fleetmon exporter {name}", description=f"fleetmon {name} exporter")
    p.add_argument("--config.file", dest="config_file", default=str(default_config_path()))
    p.add_argument(
        "--web.listen-address", dest="listen", default=None, help="host:port (default from config)"
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config_file",
        default=os.environ.get("FLEETMON_WEB_CONFIG_FILE"),
        help="web config file (TLS, basic auth) in exporter-toolkit's format; default from config",
    )
    p.add_argument("--log.level", dest="log_level", default="info")
    p.add_argument(
        "--shard", dest="shard", default=None, help="i/N: export only the buildings shard i of N owns"
    )
    for c in collector_names:
        spec = COLLECTORS[c]
        g = p.add_mutually_exclusive_group()
        g.add_argument(
            f"--collector.{c}",
            dest=f"c_{c}",
            action="store_true",
            default=None,
            help=f"enable the {c} collector (default {'on' if spec.default_enabled else 'off'})",
        )
        g.add_argument(f"--no-collector.{c}", dest=f"c_{c}", action="store_false")
    args = p.parse_args(argv)
    enabled = {c: v for c in collector_names if (v := getattr(args, f"c_{c}")) is not None}
    return args, enabled


def exporter_main(
    name: str,
    collector_names: Sequence[str],
    listen_of: Callable[[Config], ListenConfig],
    intervals_of: Callable[[Config], dict[str, float]],
    argv: Sequence[str] | None = None,
) -> int:
    args, enabled = parse_args(name, collector_names, argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # APScheduler logs every job run at INFO; our own poll health is in the metrics and logged on change.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # azure-core logs every request and response (URL with the tenant or workspace, headers) at INFO, four
    # records per Log Analytics query: kept for --log.level=debug.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
    try:
        cfg = load_config(args.config_file)
        if args.shard is not None:
            try:
                cfg = cfg.model_copy(update={"shard": Shard.parse(args.shard)})
            except ValueError as e:
                raise ConfigError(f"--shard: {e}") from None
        listen = listen_of(cfg)
        web_file = resolve(args.web_config_file, listen.web_config_file)
        web = WebServing(web_file) if web_file is not None else None
    except ConfigError as e:  # WebConfigError too: it names the web config file and key
        print(f"fleetmon: refusing to start: {e}", file=sys.stderr)
        return 2
    host, port = listen.host, listen.port
    if args.listen:
        h, _, p = args.listen.rpartition(":")
        host, port = h or "0.0.0.0", int(p)
    exporter = Exporter(name, build_collectors(collector_names, cfg, enabled), cfg.shard)
    run_forever(exporter, host, port, intervals_of(cfg), web)
    return 0
