"""``fleetmon exporter platform``: container logs, host, process groups and GPUs on one port (9703).

Collectors (``--collector.NAME`` / ``--no-collector.NAME``): ``logs`` (tailed in the background every
``platform.logs.poll_interval_seconds``), ``host`` and ``processes`` (read at scrape time, like
node_exporter), ``gpu`` (NVML, polled every ``platform.gpu_poll_interval_seconds``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import collectors.gpu
import collectors.host
import collectors.logs
import collectors.processes  # noqa: F401  (importing registers the collectors)
from exporters.common import exporter_main
from fleetmon.config import Config

COLLECTOR_NAMES = ("logs", "host", "processes", "gpu")


def intervals(cfg: Config) -> dict[str, float]:
    return {
        "logs": cfg.platform.logs.poll_interval_seconds,
        "gpu": cfg.platform.gpu_poll_interval_seconds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    return exporter_main("platform", COLLECTOR_NAMES, lambda c: c.platform.listen, intervals, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
