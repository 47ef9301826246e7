"""``fleetmon exporter outputs``: model quality, freshness, data quality and drift per model (port 9702).

Collectors: ``outputs`` (polled every ``outputs.poll_interval_seconds``) and ``drift`` (every
``outputs.drift.interval_seconds``; ``--no-collector.drift`` switches it off).
"""

from __future__ import annotations

from collections.abc import Sequence

import collectors.outputs  # noqa: F401  (registers the collectors)
from exporters.common import exporter_main

COLLECTORS = ("outputs", "drift")


def main(argv: Sequence[str] | None = None) -> int:
    return exporter_main(
        "outputs",
        COLLECTORS,
        lambda cfg: cfg.outputs.listen,
        lambda cfg: {
            "outputs": cfg.outputs.poll_interval_seconds,
            "drift": cfg.outputs.drift.interval_seconds,
        },
        argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())
