"""``fleetmon exporter outputs``: model quality, freshness, data quality and drift per model (port 9702).

Collectors: ``outputs`` (polled every ``outputs.poll_interval_seconds``) and ``drift`` (every
``outputs.drift.interval_seconds``; ``--no-collector.drift`` switches it off). Flags as every exporter
(``exporters.common``).

This is ``exporters.common.exporter_main`` with one difference: the exporter is a
``PrerenderingExporter``, which serves the collectors' series rendered once per poll instead of encoding
them on every scrape (``fleetmon.outputs.exposition``; 100,000+ series at 1,000 buildings).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import collectors.outputs  # noqa: F401  (registers the collectors)
from exporters.common import parse_args
from fleetmon.config import Config, ConfigError, load_config
from fleetmon.exporter import build_collectors, run_forever
from fleetmon.outputs.exposition import PrerenderingExporter

NAME = "outputs"
COLLECTORS = ("outputs", "drift")


def intervals(cfg: Config) -> dict[str, float]:
    return {"outputs": cfg.outputs.poll_interval_seconds, "drift": cfg.outputs.drift.interval_seconds}


def main(argv: Sequence[str] | None = None) -> int:
    args, enabled = parse_args(NAME, COLLECTORS, argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = load_config(args.config_file)
    except ConfigError as e:
        print(f"fleetmon: refusing to start: {e}", file=sys.stderr)
        return 2
    host, port = cfg.outputs.listen.host, cfg.outputs.listen.port
    if args.listen:
        h, _, p = args.listen.rpartition(":")
        host, port = h or "0.0.0.0", int(p)
    if not cfg.outputs.drift.enabled:
        enabled.setdefault("drift", False)
    exporter = PrerenderingExporter(NAME, build_collectors(COLLECTORS, cfg, enabled))
    run_forever(exporter, host, port, intervals(cfg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
