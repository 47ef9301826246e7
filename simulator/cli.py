"""``fleetmon demo fleet|run``: generate the demo fleet file; run the demo fleet simulator."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fleetmon.config import (
    ConfigError,
    DemoConfig,
    _apply_env,
    _format_error,
    _read_yaml,
    default_config_path,
    load_config,
)
from simulator.fleet import generate_fleet, write_fleet

log = logging.getLogger("fleetmon.demo")


def _demo_section(path: Path) -> tuple[DemoConfig, dict[str, Any]]:
    """The ``demo:`` section alone: `demo fleet` must work before the fleet file it writes exists."""
    raw = _apply_env(_read_yaml(path), os.environ)
    try:
        demo = DemoConfig.model_validate(raw.get("demo") or {})
    except ValidationError as e:
        raise ConfigError(_format_error(path, e).replace(f"{path}: ", f"{path}: demo.")) from e
    return demo, raw


def cmd_fleet(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="fleetmon demo fleet",
        description="Write the deterministic demo fleet (customers and buildings) from the demo: section.",
    )
    p.add_argument("--config.file", dest="config_file", default=str(default_config_path()))
    p.add_argument("--out", default=None, help="fleet file to write (default: the config's fleet.include)")
    p.add_argument("--seed", type=int, default=None, help="override demo.seed")
    p.add_argument("--customers", type=int, default=None, help="override demo.customers")
    p.add_argument("--buildings", type=int, default=None, help="override demo.buildings")
    args = p.parse_args(argv)
    path = Path(args.config_file)
    try:
        demo, raw = _demo_section(path)
    except ConfigError as e:
        print(f"fleetmon: {e}", file=sys.stderr)
        return 2
    seed = demo.seed if args.seed is None else args.seed
    n_c = demo.customers if args.customers is None else args.customers
    n_b = demo.buildings if args.buildings is None else args.buildings
    if args.out:
        out = Path(args.out)
    else:
        fleet = raw.get("fleet")
        include = fleet.get("include") if isinstance(fleet, dict) else None
        inc = Path(str(include or "demo-fleet.yml"))
        out = inc if inc.is_absolute() else path.resolve().parent / inc
    try:
        customers = generate_fleet(seed, n_c, n_b)
    except ValueError as e:
        print(f"fleetmon: {e}", file=sys.stderr)
        return 2
    write_fleet(out, customers, seed)
    print(f"{out}: {len(customers)} customers, {n_b} buildings (seed {seed})")
    return 0


def _parse_time(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def cmd_run(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="fleetmon demo run",
        description="Run the demo fleet simulator: MLflow runs and models, model outputs, container logs, "
        "incidents and their ground truth; live, also the training API (demo.training_api_port) and, with "
        "demo.pushgateway_url, training outcomes pushed to the Pushgateway. SIGTERM/SIGINT stop it cleanly.",
    )
    p.add_argument("--config.file", dest="config_file", default=str(default_config_path()))
    p.add_argument(
        "--until-sim-hours",
        type=int,
        default=None,
        help="fast-forward: simulate N hours ending now without sleeping, then exit (for tests)",
    )
    p.add_argument(
        "--start",
        default=None,
        help="RFC 3339 start-up time (default: now; with --until-sim-hours "
        "default: now minus N simulated hours)",
    )
    p.add_argument("--no-mlflow", action="store_true", help="do not seed or train in MLflow")
    p.add_argument("--out-dir", default=None, help="override demo.output_dir")
    p.add_argument("--tick", type=float, default=1.0, help="wall seconds between steps (default 1)")
    p.add_argument("--log.level", dest="log_level", default="info")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = load_config(args.config_file)
    except ConfigError as e:
        print(f"fleetmon: refusing to start: {e}", file=sys.stderr)
        return 2
    if not cfg.fleet.customers:
        demo = cfg.demo
        cfg.fleet.customers = generate_fleet(demo.seed, demo.customers, demo.buildings)
        log.info("the config names no customers: using the generated demo fleet (seed %d)", demo.seed)
    if args.out_dir:
        cfg.demo.output_dir = Path(args.out_dir).resolve()

    # Imported here: `demo fleet` must stay light.
    from simulator.core import Simulator

    use_mlflow = cfg.mlflow.enabled and not args.no_mlflow
    # MLflow's client: no run URLs on stdout, the config's timeout and retries, its credentials.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(cfg.mlflow.timeout_seconds)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(cfg.mlflow.max_retries))
    for env, value in (
        ("MLFLOW_TRACKING_TOKEN", cfg.mlflow.token),
        ("MLFLOW_TRACKING_USERNAME", cfg.mlflow.username),
        ("MLFLOW_TRACKING_PASSWORD", cfg.mlflow.password),
    ):
        if value:
            os.environ.setdefault(env, value)
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    if args.until_sim_hours is not None:
        interval = 3600.0 / cfg.demo.time_scale
        start = (
            _parse_time(args.start)
            if args.start
            else (datetime.now(UTC).timestamp() - args.until_sim_hours * interval)
        )
        sim = Simulator(cfg, start=start, mlflow=use_mlflow)
        try:
            sim.fast_forward(args.until_sim_hours, stop=stop)
        finally:
            # let the MLflow worker seed and record the jobs of the fast-forwarded hours
            sim.close(drain_seconds=0 if stop.is_set() else 300)
        return 0

    start = _parse_time(args.start) if args.start else datetime.now(UTC).timestamp()
    sim = Simulator(cfg, start=start, mlflow=use_mlflow)
    try:
        # Live only: retraining requests (POST /train) become jobs at the next step. A port in use is
        # logged and the simulator runs on without it.
        sim.serve_training_api()
        sim.run_forever(stop, tick=args.tick)
    finally:
        sim.close()
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = (
        "usage: fleetmon demo <command> [args]\n\n"
        "commands:\n"
        "  fleet   write the deterministic demo fleet file (config/demo-fleet.yml)\n"
        "  run     run the demo fleet simulator\n"
    )
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage, end="")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "fleet":
        return cmd_fleet(rest)
    if cmd == "run":
        return cmd_run(rest)
    print(f"fleetmon demo: unknown command {cmd!r}\n{usage}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())
