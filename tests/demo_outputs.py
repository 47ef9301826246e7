"""The demo fleet's outputs as the model-outputs exporter sees them, for tests that need realistic series:
the shipped config's outputs settings (windows at the demo's time scale) and one frozen-clock exposition."""

from __future__ import annotations

from pathlib import Path

from collectors.outputs import DriftCollector, OutputsCollector, pipeline_for
from fleetmon.config import Config, DemoConfig, FleetConfig, OutputsConfig
from fleetmon.exporter import Exporter
from fleetmon.sharding import Shard
from simulator.fleet import generate_fleet
from simulator.world import FEATURES


def demo_config(out: Path, state: Path, shard: Shard | None = None) -> Config:
    """The demo fleet (80 models) reading the simulator's files under ``out``; state under ``state``."""
    return Config(
        fleet=FleetConfig(customers=generate_fleet(42, 4, 20)),
        shard=shard or Shard(),
        outputs=OutputsConfig.model_validate(
            {
                "predictions": [{"glob": str(out / "outputs" / "predictions" / "*.jsonl")}],
                "actuals": [{"glob": str(out / "outputs" / "actuals" / "*.jsonl")}],
                "features": list(FEATURES),
                "quarantine_dir": str(state / "quarantine"),
                "state_dir": str(state / "state"),
                # the shipped config's windows: the demo's time scale (120) makes a simulated day 720 s
                "windows": {"24h": 720, "7d": 5040},
                "retention_seconds": 6000,
                "drift": {
                    "reference_window_seconds": 5040,
                    "current_window_seconds": 720,
                    "exclude": ["hour_of_day", "day_of_week"],
                },
            }
        ),
        demo=DemoConfig(seed=42, customers=4, buildings=20, output_dir=out, time_scale=120),
    )


def exposition(out: Path, state: Path, now: float, shard: Shard | None = None) -> bytes:
    """One outputs poll and one drift run at the frozen clock ``now``, as ``/metrics`` serves them."""
    cfg = demo_config(out, state, shard)
    pipeline = pipeline_for(cfg)
    pipeline.clock = lambda: now
    outputs, drift = OutputsCollector(cfg, pipeline), DriftCollector(cfg, pipeline)
    outputs.poll()
    drift.poll()
    return Exporter("outputs", {"outputs": outputs, "drift": drift}, cfg.shard).exposition()
