"""``fleetmon exporter mlflow``: MLflow runs, durations, quality metrics and registry per fleet model.

Serves on ``mlflow.listen`` (default :9701) and polls MLflow every ``mlflow.poll_interval_seconds``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import collectors.mlflow  # noqa: F401  (registers the collector)
from exporters.common import exporter_main

COLLECTORS = ["mlflow"]


def main(argv: Sequence[str] | None = None) -> int:
    return exporter_main(
        "mlflow",
        COLLECTORS,
        listen_of=lambda cfg: cfg.mlflow.listen,
        intervals_of=lambda cfg: {"mlflow": cfg.mlflow.poll_interval_seconds},
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
