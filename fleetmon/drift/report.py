"""``fleetmon drift-report``: Evidently's full HTML drift report for one building and model.

Reads the configured outputs afresh (read-only: the exporter's state and quarantine are not touched),
builds the model's drift job exactly as the exporter does (same windows, columns and per-column overrides)
and has Evidently write its report. For the analyst who drills down from a dashboard:

    fleetmon drift-report --building c01-b003 --energy heating --model forecast --out drift.html
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fleetmon.config import ConfigError, default_config_path, load_config


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fleetmon drift-report", description=__doc__.splitlines()[0])
    p.add_argument("--config.file", dest="config_file", default=str(default_config_path()))
    p.add_argument("--customer", help="customer id (needed only if the building id is not unique)")
    p.add_argument("--building", required=True)
    p.add_argument("--energy", required=True)
    p.add_argument("--model", required=True, help="model role, e.g. forecast or anomaly")
    p.add_argument("--out", default=None, help="HTML file (default drift-<building>-<energy>-<model>.html)")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config_file)
    except ConfigError as e:
        print(f"fleetmon drift-report: {e}", file=sys.stderr)
        return 2
    keys = [
        k
        for k in cfg.fleet.models()
        if k.building == args.building
        and k.energy == args.energy
        and k.model == args.model
        and (args.customer is None or k.customer == args.customer)
    ]
    if len(keys) != 1:
        what = "no" if not keys else "more than one (give --customer)"
        print(
            f"fleetmon drift-report: {what} model {args.building}/{args.energy}/{args.model} in the fleet",
            file=sys.stderr,
        )
        return 2
    key = keys[0]

    from fleetmon.drift.evidently_backend import EvidentlyBackend
    from fleetmon.outputs.drift_jobs import ReferenceFiles, build_jobs
    from fleetmon.outputs.pipeline import OutputsPipeline

    pipeline = OutputsPipeline(cfg, readonly=True)
    try:
        pipeline.ingest()
        now = time.time()
        drift = cfg.outputs.drift
        refs = (
            ReferenceFiles(
                drift.reference_path or "",
                list(cfg.outputs.features),
                cfg.outputs.state_dir / "references",
                tracking_uri=cfg.mlflow.tracking_uri,
            )
            if drift.reference == "file"
            else None
        )
        jobs = build_jobs(pipeline.store.snapshot(now), pipeline.fleet, pipeline.features, drift, now, refs)
    finally:
        pipeline.close()
    job = next((j for j in jobs.jobs if j.key == key), None)
    if job is None:
        print(
            f"fleetmon drift-report: no reference data for {key.labels()} (nothing to compare)",
            file=sys.stderr,
        )
        return 1
    out = Path(args.out or f"drift-{key.building}-{key.energy}-{key.model}.html")
    try:
        skipped = EvidentlyBackend().write_html_report(job, out)
    except ValueError as e:
        print(f"fleetmon drift-report: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({len(job.reference)} reference rows, {len(job.current)} current rows)")
    for c in skipped:
        print(f"  column {c.column} left out: not computable ({c.error})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
