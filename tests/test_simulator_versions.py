"""The demo's model versions: fleetmon's champion/challenger verdicts agree with the simulator's ground truth.

The in-process simulator (no MLflow) writes a few days of the default 20-building fleet; its prediction
and actual files go through a real ``OutputsPipeline``; every challenger the ground truth calls better
must outperform its champion (``fleetmon_model_challenger_outperforms`` 1), every worse one must not, and
no challenger is in a quiet building.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleetmon.config import Config, DemoConfig, FleetConfig, ModelKey, OutputsConfig
from fleetmon.outputs.pipeline import OutputsPipeline
from simulator.core import Simulator
from simulator.fleet import generate_fleet
from simulator.incidents import KINDS
from simulator.mlflow_seed import FleetMlflow
from simulator.world import FEATURES, choose_challengers
from tests.test_simulator_outputs import START, read_jsonl

BACKFILL = 120  # simulated hours written at start-up: ~120 matured targets per challenger (min_targets 24)
HOURS = 6


def make_cfg(out: Path, seed: int = 42, **demo: Any) -> Config:
    return Config(
        fleet=FleetConfig(customers=generate_fleet(seed, 4, 20)),
        outputs=OutputsConfig.model_validate(
            {
                "features": list(FEATURES),
                "predictions": [{"glob": str(out / "outputs" / "predictions" / "*.jsonl"), "name": "pred"}],
                "actuals": [{"glob": str(out / "outputs" / "actuals" / "*.jsonl"), "name": "act"}],
                "quarantine_dir": str(out / "quarantine"),
                "state_dir": str(out / "state"),
            }
        ),
        demo=DemoConfig(
            seed=seed,
            buildings=20,
            output_dir=out,
            **{"time_scale": 120, "backfill_hours": BACKFILL, **demo},
        ),
    )


class Run:
    def __init__(self, out: Path, cfg: Config) -> None:
        sim = Simulator(cfg, start=START, mlflow=False)
        sim.fast_forward(HOURS)
        self.sim = sim
        self.plan = FleetMlflow(cfg, sim.world).version_plan(int(START * 1000))
        self.truth = read_jsonl(out / "ground_truth.jsonl")
        self.now = START + HOURS * sim.interval
        pipe = OutputsPipeline(cfg, clock=lambda: self.now)
        pipe.poll()
        self.pipeline = pipe
        self.rejected = sum(pipe.rejected.values())
        assert pipe.versions is not None
        ch = pipe.versions.challengers
        models = pipe.fleet.models
        self.verdicts: dict[ModelKey, dict[str, Any]] = {
            models[int(r["model"])]: r for r in ch.to_dict("records")
        }
        vs = pipe.versions.versions
        self.versions: dict[ModelKey, set[int]] = {}
        self.flag_rate: dict[tuple[ModelKey, int], float] = {}
        for r in vs.to_dict("records"):
            self.versions.setdefault(models[int(r["model"])], set()).add(int(r["version"]))
            self.flag_rate[(models[int(r["model"])], int(r["version"]))] = float(r["flag_rate"])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    out = tmp_path_factory.mktemp("versions")
    r = Run(out, make_cfg(out))
    yield r
    r.sim.close()


def test_verdicts_match_the_ground_truth(run: Run) -> None:
    chall = [g for g in run.truth if g["kind"] == "challenger"]
    cfg = run.pipeline.cfg.versions
    assert len(chall) >= 4, chall
    assert {g["detail"]["better"] for g in chall} == {True, False}
    assert {g["detail"]["detector"] for g in chall} == {True, False}
    assert run.rejected == 0
    report = []
    for g in chall:
        key = ModelKey(**{k: g[k] for k in ("customer", "building", "energy", "model")})
        d = g["detail"]
        # the versions seeding registers for the model (a challenger's model gets two at least)
        assert (d["champion_version"], d["challenger_version"]) == run.plan[key]
        assert d["challenger_version"] == d["champion_version"] + 1
        v = run.verdicts[key]
        assert (int(v["champion"]), int(v["challenger"])) == (d["champion_version"], d["challenger_version"])
        assert v["n"] >= cfg.min_targets
        if d["detector"]:
            # the jumpy challenger flags the same anomalies and many more hours: a lower F1, never better,
            # and McNemar's test sees it (its p-value is the verdict's for detectors)
            # (F1 is undefined on a window without anomalies where the champion flagged nothing; the
            # improvement, a share of the champion's loss 1 - F1, also when the champion is perfect)
            report.append(f"{key} detector n={v['n']} dF1={v['mean_d']:.3f} p={v['pvalue']:.2g}")
            assert v["outperforms"] == 0.0, report[-1]
            assert not v["mean_d"] >= 0 and not v["improvement"] >= 0, report[-1]
            rates = run.flag_rate[(key, d["champion_version"])], run.flag_rate[(key, d["challenger_version"])]
            assert rates[1] > 0.05 and rates[1] > 2 * rates[0], (report[-1], rates)
            assert v["pvalue"] < cfg.alpha, report[-1]
            continue
        report.append(f"{key} better={d['better']} n={v['n']} imp={v['improvement']:.3f} p={v['pvalue']:.2g}")
        assert v["outperforms"] == (1.0 if d["better"] else 0.0), "\n".join(report)
        if not d["better"]:
            assert v["improvement"] < 0, report[-1]
    # only the challengers' models are benchmarked (two versions); nobody else has a second version
    assert set(run.verdicts) == {
        ModelKey(**{k: g[k] for k in ("customer", "building", "energy", "model")}) for g in chall
    }
    for key, vs in run.versions.items():
        assert vs == set(run.plan[key]), key


def test_no_challenger_in_a_quiet_building_and_records_after_the_first_wave(run: Run) -> None:
    quiet = {(b["customer"], b["building"]) for b in run.truth[0]["detail"]["buildings"]}
    assert run.truth[0]["kind"] == "quiet_buildings" and quiet
    chall = [g for g in run.truth if g["kind"] == "challenger"]
    assert not {(g["customer"], g["building"]) for g in chall} & quiet
    # the first wave comes before them: a reader waiting for more than the quiet record sees incidents first
    assert run.truth[1]["kind"] in KINDS
    first = run.truth.index(chall[0])
    assert all(g["kind"] == "challenger" for g in run.truth[first : first + len(chall)])
    # ...and the served rows of every forecaster carry the champion's version
    pred_dir = run.sim.pred_dir
    rows = read_jsonl(sorted(pred_dir.glob("*.jsonl"))[-1])
    keys = {ModelKey(**{k: g[k] for k in ("customer", "building", "energy", "model")}) for g in chall}
    served = [r for r in rows if r["model"] == "forecast" and r["alias"] == "champion"]
    shadow = [r for r in rows if r.get("alias") == "challenger"]

    def key_of(r: dict[str, Any]) -> ModelKey:
        return ModelKey(**{k: r[k] for k in ("customer", "building", "energy", "model")})

    # the registry's champion of each model (as seeding registers them), not one number for all
    assert served and all(r["model_version"] == run.plan[key_of(r)][0] for r in served)
    assert len({r["model_version"] for r in served}) > 1
    assert {key_of(r) for r in shadow} == keys
    assert all(r["model_version"] == run.plan[key_of(r)][1] for r in shadow)


def test_the_choice_is_deterministic_and_share_zero_is_off(tmp_path: Path) -> None:
    fleet = FleetConfig(customers=generate_fleet(42, 4, 20))
    a = choose_challengers(fleet, 42, 0.25, set())
    assert a == choose_challengers(fleet, 42, 0.25, set())
    assert a != choose_challengers(fleet, 7, 0.25, set())
    n_forecasters = sum(fleet.is_forecaster(m.model) for m in fleet.models())
    n_detectors = sum(fleet.is_anomaly_detector(m.model) for m in fleet.models())
    forecasters = {k: c for k, c in a.items() if not c.detector}
    detectors = {k: c for k, c in a.items() if c.detector}
    assert len(forecasters) == round(0.25 * n_forecasters)
    assert all(fleet.is_forecaster(k.model) for k in forecasters)
    assert sum(c.better for c in forecasters.values()) == (len(forecasters) + 1) // 2
    # a detector's challenger is always worse (a jumpy one)
    assert len(detectors) == round(0.25 * n_detectors)
    assert all(fleet.is_anomaly_detector(k.model) and not c.better for k, c in detectors.items())
    assert choose_challengers(fleet, 42, 0.0, set()) == {}
    # no challenger: no shadow rows, no challenger records
    sim = Simulator(make_cfg(tmp_path, challenger_share=0.0, backfill_hours=3), start=START, mlflow=False)
    sim.fast_forward(1)
    assert not [g for g in read_jsonl(tmp_path / "ground_truth.jsonl") if g["kind"] == "challenger"]
    for p in sim.pred_dir.glob("*.jsonl"):
        assert all(r.get("alias") in (None, "champion") for r in read_jsonl(p))


def test_a_better_challenger_has_a_smaller_error_on_the_files(run: Run) -> None:
    """The files themselves (not fleetmon): a better challenger's MAE is below its champion's."""
    act: dict[tuple[str, str, str, str], float] = {}
    for p in (run.sim.out / "outputs" / "actuals").glob("*.jsonl"):
        for r in read_jsonl(p):
            act[(r["customer"], r["building"], r["energy"], r["target_time"])] = r["actual"]
    errs: dict[tuple[ModelKey, str], list[float]] = {}
    for p in run.sim.pred_dir.glob("*.jsonl"):
        for r in read_jsonl(p):
            if "prediction" not in r:
                continue
            a = act.get((r["customer"], r["building"], r["energy"], r["target_time"]))
            if a is None:
                continue
            key = ModelKey(**{k: r[k] for k in ("customer", "building", "energy", "model")})
            errs.setdefault((key, r["alias"]), []).append(abs(r["prediction"] - a))
    for key, ch in run.sim.world.challengers.items():
        if ch.detector:
            continue
        champ, chal = np.mean(errs[(key, "champion")]), np.mean(errs[(key, "challenger")])
        assert (chal < champ) == ch.better, (key, champ, chal)
