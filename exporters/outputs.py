"""``fleetmon exporter outputs``: model quality, freshness, data quality and drift per model (port 9702).

Collectors: ``outputs`` (polled every ``outputs.poll_interval_seconds``) and ``drift`` (every
``outputs.drift.interval_seconds``; ``--no-collector.drift`` or ``outputs.drift.enabled: false`` switch it
off). Both serve their series pre-rendered once per poll (100,000+ series at 1,000 buildings).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import collectors.outputs  # noqa: F401  (registers the collectors)
from exporters.common import exporter_main
from fleetmon.config import Config

COLLECTORS = ("outputs", "drift")


def intervals(cfg: Config) -> dict[str, float]:
    return {"outputs": cfg.outputs.poll_interval_seconds, "drift": cfg.outputs.drift.interval_seconds}


def main(argv: Sequence[str] | None = None) -> int:
    return exporter_main("outputs", COLLECTORS, lambda cfg: cfg.outputs.listen, intervals, argv)


if __name__ == "__main__":
    sys.exit(main())
