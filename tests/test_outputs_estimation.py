"""The model-outputs exporter estimates each forecaster's error before its actuals arrive (Direct Loss
Estimation, fleetmon.outputs.estimation) and, once they have arrived, reports how good the estimates were
against the naive one (the model's reference MAE)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from collectors.outputs import OutputsCollector
from fleetmon.config import Config
from fleetmon.exporter import Exporter
from fleetmon.outputs.pipeline import OutputsPipeline

H = 3600.0
J_PER_KWH = 3.6e6
FLEET = {"customers": [{"id": "c1", "buildings": [{"id": "b1"}]}]}
NOW = 1_800_000_000.0
HOURS = 8 * 24
PENDING = 10  # the newest hours' actuals arrive late


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")


def world(seed: int = 3) -> dict[str, dict[str, np.ndarray]]:
    """Per forecaster: hourly targets, features, predictions and actuals. The error grows with the
    temperature, and the pending hours are warm: their errors are larger than the week's."""
    rng = np.random.default_rng(seed)
    target = NOW - H * np.arange(HOURS, 0, -1) + H / 2
    out = {}
    for energy in ("electricity", "heating"):
        temp = rng.normal(0, 1, HOURS)
        temp[-PENDING:] += 2.0
        occ = rng.uniform(0, 1, HOURS)
        pred = 50 + 5 * occ
        actual = pred + rng.normal(0, 1, HOURS) * (1 + 1.5 * np.abs(temp))
        out[energy] = {"target": target, "temp": temp, "occ": occ, "pred": pred, "actual": actual}
    return out


def write(tmp: Path, w: dict[str, dict[str, np.ndarray]], hours: range) -> None:
    """Every prediction; the actuals of ``hours`` in a file of their own (a late delivery)."""
    for d in ("pred", "act"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    with open(tmp / "pred" / "p.jsonl", "w") as f:
        for energy, v in w.items():
            for i in range(HOURS):
                rec: dict[str, Any] = {
                    "customer": "c1",
                    "building": "b1",
                    "energy": energy,
                    "model": "forecast",
                    "made_at": iso(v["target"][i] - H),
                    "target_time": iso(v["target"][i]),
                    "prediction": float(v["pred"][i]),
                    "features": {"temp": float(v["temp"][i]), "occ": float(v["occ"][i])},
                }
                f.write(json.dumps(rec) + "\n")
    with open(tmp / "act" / f"a-{hours.start}.jsonl", "w") as f:
        for energy, v in w.items():
            for i in hours:
                act = {"customer": "c1", "building": "b1", "energy": energy}
                act |= {"target_time": iso(v["target"][i]), "actual": float(v["actual"][i])}
                f.write(json.dumps(act) + "\n")


def config(tmp: Path, **outputs: Any) -> Config:
    """The outputs exporter on the files ``write`` wrote, with ``outputs`` settings on top."""
    return Config.model_validate(
        {
            "fleet": FLEET,
            "outputs": {
                "predictions": [{"glob": str(tmp / "pred" / "*.jsonl")}],
                "actuals": [{"glob": str(tmp / "act" / "*.jsonl")}],
                "features": ["temp", "occ"],
                "quarantine_dir": str(tmp / "q"),
                "state_dir": str(tmp / "state"),
                **outputs,
            },
        }
    )


def values(exp: Exporter, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for fam in text_string_to_metric_families(exp.exposition().decode()):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = float(s.value)
    return out


def test_pending_errors_are_estimated_and_the_estimates_checked_once_the_actuals_arrive(
    tmp_path: Path,
) -> None:
    w = world()
    write(tmp_path, w, range(HOURS - PENDING))
    clock = [NOW]
    cfg = config(
        tmp_path,
        windows={"24h": 24 * H, "7d": 7 * 24 * H},
        retention_seconds=9 * 24 * H,
        refresh_seconds=0,
        drift={"enabled": False},
        estimation={"settle_seconds": 120},
    )
    pipeline = OutputsPipeline(cfg, clock=lambda: clock[0])
    exp = Exporter("outputs", {"outputs": OutputsCollector(cfg, pipeline)})
    try:
        assert exp.poll_once("outputs")
        est = values(exp, "fleetmon_model_estimated_mae_joules")
        real = values(exp, "fleetmon_model_mae_joules")
        for energy, v in w.items():
            key = (("building", "b1"), ("customer", "c1"), ("energy", energy), ("model", "forecast"))
            day = slice(HOURS - 24, HOURS)
            truth = float(np.abs(v["pred"][day] - v["actual"][day]).mean())
            got = est[(*key, ("window", "24h"))] / J_PER_KWH
            so_far = real[(*key, ("window", "24h"))] / J_PER_KWH  # the 14 hours whose actuals are in
            # the estimate sees the warm pending hours coming: closer to the day's true MAE than the
            # realised MAE of the hours known so far
            assert abs(got - truth) < abs(so_far - truth), (energy, got, so_far, truth)
            assert got > so_far
        assert values(exp, "fleetmon_outputs_estimation_models_fitted") == {(): 2.0}
        res = subprocess.run(
            ["promtool", "check", "metrics"], input=exp.exposition(), capture_output=True, timeout=30
        )
        assert res.returncode == 0, res.stderr.decode()

        # the late actuals arrive; settle_seconds after the first poll, the day's estimate is checked
        # against the day's realised MAE: closer than the MAE of the hours known then, and than the naive
        # guess (the week's MAE)
        write(tmp_path, w, range(HOURS - PENDING, HOURS))
        clock[0] = NOW + 60
        assert exp.poll_once("outputs")
        assert values(exp, "fleetmon_outputs_estimation_windows_checked_total") == {
            (("energy", "electricity"),): 0.0,
            (("energy", "heating"),): 0.0,
        }
        clock[0] = NOW + 130
        assert exp.poll_once("outputs")
        checked = values(exp, "fleetmon_outputs_estimation_windows_checked_total")
        assert checked == {(("energy", "electricity"),): 1.0, (("energy", "heating"),): 1.0}
        ratio = values(exp, "fleetmon_outputs_estimation_error_ratio")
        for energy in w:
            dle, known, naive = (
                ratio[(("energy", energy), ("estimator", e))] for e in ("dle", "known", "naive")
            )
            assert dle < known and dle < naive, (energy, dle, known, naive)
        # nothing pending any more: the estimate is the realised MAE
        est = values(exp, "fleetmon_model_estimated_mae_joules")
        real = values(exp, "fleetmon_model_mae_joules")
        for k, v in real.items():
            assert est[k] == pytest.approx(v, rel=1e-9), k
    finally:
        exp.stop()


def test_estimation_can_be_turned_off(tmp_path: Path) -> None:
    write(tmp_path, world(), range(HOURS - PENDING))
    cfg = config(tmp_path, estimation={"enabled": False})
    pipeline = OutputsPipeline(cfg, clock=lambda: NOW)
    exp = Exporter("outputs", {"outputs": OutputsCollector(cfg, pipeline)})
    try:
        assert exp.poll_once("outputs")
        assert b"fleetmon_model_estimated_mae_joules" not in exp.exposition()
        assert values(exp, "fleetmon_model_mae_joules")
    finally:
        exp.stop()


def test_a_failing_estimation_costs_only_the_estimate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception in the estimation is counted and logged; the poll and its quality series go on."""
    from fleetmon.outputs.estimation import FleetEstimator

    def broken(*_: Any) -> None:
        raise np.linalg.LinAlgError("singular matrix")

    monkeypatch.setattr(FleetEstimator, "update", broken)
    write(tmp_path, world(), range(HOURS - PENDING))
    cfg = config(tmp_path)
    exp = Exporter("outputs", {"outputs": OutputsCollector(cfg, OutputsPipeline(cfg, clock=lambda: NOW))})
    try:
        assert exp.poll_once("outputs")
        assert values(exp, "fleetmon_outputs_estimation_errors_total") == {(): 1.0}
        assert values(exp, "fleetmon_model_mae_joules")
    finally:
        exp.stop()
