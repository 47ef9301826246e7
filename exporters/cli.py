"""``fleetmon exporter <name> [flags]``: run one of the exporters (mlflow, outputs, platform)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

EXPORTERS = {
    "mlflow": "exporters.mlflow",
    "outputs": "exporters.outputs",
    "platform": "exporters.platform",
}


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in EXPORTERS:
        print(f"usage: fleetmon exporter {{{','.join(EXPORTERS)}}} [--help]", file=sys.stderr)
        return 2
    return int(importlib.import_module(EXPORTERS[argv[0]]).main(list(argv[1:])) or 0)
