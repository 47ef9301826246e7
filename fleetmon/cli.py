"""``fleetmon <command> ...``: one entry point; each command's module owns its own arguments."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# command -> (module with main(argv) -> int, one-line help). Modules load lazily: `fleetmon stack status`
# must not pay for importing evidently.
COMMANDS: dict[str, tuple[str, str]] = {
    "check-config": ("fleetmon.check_config", "validate a config file and print the fleet it describes"),
    "exporter": ("exporters.cli", "run an exporter: mlflow, outputs or platform"),
    "demo": ("simulator.cli", "the demo fleet: generate its fleet file, run the simulator"),
    "stack": ("fleetmon.stack", "start, stop and inspect the native stack (up, down, status)"),
    "webhook": ("fleetmon.webhook", "the Alertmanager webhook receiver that keeps and shows notifications"),
    "push": ("fleetmon.push", "push a batch job's duration and outcome to the Pushgateway"),
    "score": ("fleetmon.scoring", "score challenger versions from MLflow on the served rows' features"),
    "evaluations": ("fleetmon.evaluations", "log each benchmarked version's production figures back to MLflow"),
    "dashboards": ("fleetmon.dashboards.build", "regenerate grafana/dashboards/*.json"),
    "drift-report": (
        "fleetmon.drift.report",
        "write the Evidently HTML drift report for one building and model",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage: fleetmon <command> [args]\n\ncommands:")
        for name, (_, help_) in sorted(COMMANDS.items()):
            print(f"  {name:<18} {help_}")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"fleetmon: unknown command {cmd!r} (see 'fleetmon --help')", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[cmd][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
