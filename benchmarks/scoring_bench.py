"""Scoring benchmark: ``fleetmon score`` on a large fleet in a real `mlflow server`, beside `mlflow.models.evaluate`.

    .venv/bin/python -m benchmarks.scoring_bench                          # 4,000 forecasters, 8,000 versions
    .venv/bin/python -m benchmarks.scoring_bench --models 400             # quicker
    .venv/bin/python -m benchmarks.scoring_bench --json var/bench/scoring.json

The fleet: ``--models`` forecasters, two per building (electricity and heating ``forecast``; each building
also has two anomaly detectors, which ``fleetmon score`` does not score), so 4,000 forecasters are 2,000
buildings. Each forecaster is a registered model ``{customer}.{building}.{energy}.forecast`` (with the fleet
tags) with a champion (version 1, alias ``champion``) and a challenger (version 2, alias ``challenger``), each
a real scikit-learn ``Ridge`` fitted on that model's own history (different data and alpha per version),
saved with ``mlflow.sklearn.save_model`` into the artifact store. ``--candidates 2`` adds a version 3 without
an alias (scored as ``candidate``), so the Scorer scores two versions per model. Served rows: 7 days of
hourly champion predictions (``model_version`` 1, five features) and the actuals, one JSON-lines file per
hour in the documented format (docs/formats.md). The Scorer never scores the version that serves the rows:
of the 8,000 versions of 4,000 models it scores the 4,000 challengers, and the champions' figures come from
their served rows; costs per version are per *scored* version (per benchmarked version is half of that).

The MLflow database and the model artifacts are made once per size and cached under
``var/bench/scoring-<N>/``: the schema by MLflow's own SQLAlchemy store, registered models, versions, tags
and aliases by bulk inserts through MLflow's table definitions (creating 8,000 versions with
``mlflow.sklearn.log_model`` over REST takes far longer). Each version's ``source`` and
``storage_location`` name its own model directory, so ``mlflow.pyfunc.load_model("models:/<name>/<v>")``
asks the server for the download URI and loads that version's artifact, as the Scorer's workers do. Every
run works on a copy of the database.

Measured, side by side in one run:

1. the full re-benchmark: a fresh ``Scorer`` (``workers=2``, the default ``cache_size``, 4,096) runs ``cycle()``
   until a cycle has nothing left to score: wall and CPU time, versions scored per second, rows, load-cache
   hit rate, peak RSS of the process tree (this process and the worker processes; the MLflow server is
   reported apart), failures, where the parent's time went;
2. the hourly update: one more hour of served rows (one new target per model), ``cycle()`` again on the
   same Scorer; then the same with a Scorer whose ``cache_size`` holds every version (``--large-cache``);
3. the per-version metrics the outputs exporter computes from the shadow rows
   (``fleetmon.outputs.versions.compute`` over the served, shadow and actual rows, read as the exporter
   reads them), timed apart and added to fleetmon's cost;
4. ``mlflow.models.evaluate`` (default evaluator, ``model_type="regressor"``, inside a run) of a sample of the
   same challenger versions on the same 7 days of features and actuals: its cost per version against
   fleetmon's (full re-benchmark + metrics, per scored version), and its MAE against fleetmon's.

Every scored row is checked against the prediction of the version it names (computed when the version was
fitted), which proves the workers loaded each version's own artifact; the MLflow server's access log gives
the registry requests of each cycle (one ``get-download-uri`` per load). A sample of versions is also loaded
here with ``models:/`` URIs, and one load through the ``models:/`` URI is timed against one from the
download URI resolved beforehand. The 1-minute load average after each measurement is printed and kept:
the benchmark alone keeps 2-3 processes busy on 2 cores, so a higher figure means other work slowed it
(CPU seconds are less sensitive to that than wall time).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import logging
import os
import platform
import re
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

from fleetmon.config import Config, ModelKey, ScoringConfig
from fleetmon.procs import MLFLOW_ENV, free_port, start_mlflow_server, stop_group
from fleetmon.scoring import CycleResult, Scorer

# the Scorer's default load cache per worker (scoring.cache_size)
DEFAULT_CACHE = ScoringConfig().cache_size

ROOT = Path(__file__).resolve().parent.parent
H = 3600.0
NOW = 1_800_000_000.0  # the clock of the full re-benchmark (an hour boundary); fixed: the cache stays valid
WINDOW = 168  # 7 days of hourly targets, NOW - 167 h .. NOW
TRAIN = 336  # two weeks of history before the window, to fit the versions on
EXTRA = 2  # hours appended by the hourly updates
FEATURES = ["outdoor_temperature", "solar_radiation", "hour_of_day", "day_of_week", "occupancy"]
INT_FEATURES = ("hour_of_day", "day_of_week")
ENERGIES = ("electricity", "heating")
ROLES = ("forecast", "anomaly")
BUILDINGS_PER_CUSTOMER = 50
MiB = 2**20


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


# ------------------------------------------------------------------------------------------- the fleet
def fleet_config(n: int, url: str, work: Path, state: str, cache_size: int) -> Config:
    """``n`` forecasters: ceil(n / 2) buildings of 4 models (2 forecasters); an odd n: the last building has
    heating only."""
    buildings = (n + 1) // 2
    customers = []
    for ci in range((buildings + BUILDINGS_PER_CUSTOMER - 1) // BUILDINGS_PER_CUSTOMER):
        cid = f"c{ci + 1:03d}"
        bs = []
        for bi in range(min(BUILDINGS_PER_CUSTOMER, buildings - ci * BUILDINGS_PER_CUSTOMER)):
            b: dict[str, Any] = {"id": f"{cid}-b{bi + 1:03d}"}
            if n % 2 and ci * BUILDINGS_PER_CUSTOMER + bi == buildings - 1:
                b["energy_types"] = ["heating"]
            bs.append(b)
        customers.append({"id": cid, "buildings": bs})
    return Config.model_validate(
        {
            "fleet": {"energy_types": list(ENERGIES), "model_roles": list(ROLES), "customers": customers},
            "mlflow": {
                "tracking_uri": url,
                "timeout_seconds": 60,
                "quarantine_file": str(work / "quarantine" / "mlflow.jsonl"),
            },
            "outputs": {
                "predictions": [
                    {"glob": str(work / "pred" / "*.jsonl"), "name": "pred"},
                    {"glob": str(work / "scored" / "*.jsonl"), "name": "scored"},
                ],
                "actuals": [{"glob": str(work / "act" / "*.jsonl"), "name": "act"}],
                "features": FEATURES,
                "windows": {"24h": 24 * H, "7d": 7 * 24 * H},
                "retention_seconds": 8 * 24 * H,
                "quarantine_dir": str(work / "quarantine"),
                "state_dir": str(work / "outputs-state"),
                "versions": {"min_targets": 24},
            },
            "scoring": {
                "enabled": True,
                "output_dir": str(work / "scored"),
                "state_dir": str(work / state),
                "window_seconds": 7 * 24 * H,
                "workers": 2,
                "cache_size": cache_size,
            },
        }
    )


def forecasters(cfg: Config) -> list[tuple[ModelKey, str]]:
    pattern = cfg.mlflow.registered_model_pattern
    return [(k, pattern.format(**k.labels())) for k in cfg.fleet.models() if cfg.fleet.is_forecaster(k.model)]


def make_data(n: int, seed: int = 42) -> dict[str, np.ndarray]:
    """Hourly features and consumption of ``n`` buildings' meters, TRAIN + WINDOW + EXTRA hours each."""
    rng = np.random.default_rng(seed)
    total = TRAIN + WINDOW + EXTRA
    t = NOW + (np.arange(total) - (TRAIN + WINDOW - 1)) * H  # index TRAIN + WINDOW - 1 is NOW
    hour = (t // H) % 24
    dow = (t // 86400 + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    climate = rng.normal(8, 4, (n, 1))
    drift = np.repeat(np.cumsum(rng.normal(0, 1.2, (n, total // 24 + 1)), axis=1), 24, axis=1)[:, :total]
    temp = climate + drift + rng.uniform(3, 8, (n, 1)) * np.sin(2 * np.pi * (hour - 9) / 24)
    temp += rng.normal(0, 1.0, (n, total))
    solar = np.clip(800 * np.sin(np.pi * (hour - 6) / 12), 0, None) * rng.uniform(0.2, 1.0, (n, total))
    occ = np.where((dow < 5) & (hour >= 8) & (hour < 18), 0.85, 0.1) + rng.normal(0, 0.05, (n, total))
    occ = np.clip(occ, 0, 1)
    x = np.stack([temp, solar, np.broadcast_to(hour, (n, total)), np.broadcast_to(dow, (n, total)), occ], -1)
    base = rng.uniform(40, 200, (n, 1))
    y = (
        base
        + rng.uniform(1, 6, (n, 1)) * np.clip(18 - temp, 0, None)
        - rng.uniform(0.005, 0.03, (n, 1)) * solar
        + rng.uniform(10, 60, (n, 1)) * occ
        + rng.normal(0, 1, (n, total)) * 0.05 * base
    )
    return {"x": x, "y": y, "t": t}


def frame(x: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame(x, columns=FEATURES)
    return df.astype(dict.fromkeys(INT_FEATURES, "int64"))


# ------------------------------------------------------------------------------------------ populate
def populate(cache: Path, cfg: Config, candidates: int) -> dict[str, Any]:
    """Fit and save every version, fill a fresh MLflow sqlite database; keep the window's data and each
    version's predictions on it (``data.npz``) for the served rows and the checks."""
    import mlflow
    import mlflow.sklearn
    import sklearn
    import sqlalchemy as sa
    from mlflow.models import infer_signature
    from mlflow.store.model_registry.dbmodels.models import (
        SqlModelVersion,
        SqlModelVersionTag,
        SqlRegisteredModel,
        SqlRegisteredModelAlias,
        SqlRegisteredModelTag,
    )
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from sklearn.linear_model import Ridge

    models = forecasters(cfg)
    n = len(models)
    db = cache / "mlflow.db"
    uri = f"sqlite:///{db}"
    artifacts = cache / "artifacts"
    store = SqlAlchemyStore(uri, str(artifacts))  # creates and migrates the schema
    data = make_data(n)
    x, y = data["x"], data["y"]
    win = slice(TRAIN, TRAIN + WINDOW + EXTRA)
    # version -> (alpha, training hours): different data and regularisation per version
    recipes = {1: (1.0, slice(0, TRAIN // 2)), 2: (0.1, slice(0, TRAIN)), 3: (10.0, slice(TRAIN // 2, TRAIN))}
    versions = [1, 2, 3][: 1 + candidates]
    preds = {v: np.empty((n, WINDOW + EXTRA)) for v in versions}
    sig = infer_signature(frame(x[0, win]), np.zeros(WINDOW + EXTRA))
    reqs = [f"mlflow=={mlflow.__version__}", f"scikit-learn=={sklearn.__version__}"]
    now_ms = int(time.time() * 1000)
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in ("rm", "rmtags", "mv", "mvtags", "alias")}
    t0 = time.perf_counter()
    for i, (key, name) in enumerate(models):
        rows["rm"].append(
            {"name": name, "creation_time": now_ms - 30 * 86_400_000, "last_updated_time": now_ms}
        )
        for tag, value in key.labels().items():
            rows["rmtags"].append({"name": name, "key": tag, "value": value})
        for v in versions:
            alpha, hours = recipes[v]
            model = Ridge(alpha=alpha).fit(frame(x[i, hours]), y[i, hours])
            preds[v][i] = model.predict(frame(x[i, win]))
            path = artifacts / "registry" / name / f"v{v}"
            mlflow.sklearn.save_model(model, str(path), signature=sig, pip_requirements=reqs)
            rows["mv"].append(
                {
                    "name": name, "version": v, "creation_time": now_ms - (4 - v) * 86_400_000,
                    "last_updated_time": now_ms, "current_stage": "None", "source": path.as_uri(),
                    "storage_location": path.as_uri(), "run_id": None, "status": "READY", "user_id": "bench",
                }
            )  # fmt: skip
            rows["mvtags"].append({"name": name, "version": v, "key": "flavor", "value": "sklearn"})
        rows["alias"].append({"name": name, "alias": "champion", "version": 1})
        rows["alias"].append({"name": name, "alias": "challenger", "version": 2})
        if (i + 1) % 500 == 0:
            el = time.perf_counter() - t0
            print(
                f"  fitted and saved {i + 1:,}/{n:,} models ({el:.0f} s, ~{el / (i + 1) * (n - i - 1):.0f} s left)"
            )
    fit_save = time.perf_counter() - t0
    engine = sa.create_engine(uri)
    tables = {
        "rm": SqlRegisteredModel, "rmtags": SqlRegisteredModelTag, "mv": SqlModelVersion,
        "mvtags": SqlModelVersionTag, "alias": SqlRegisteredModelAlias,
    }  # fmt: skip
    with engine.begin() as conn:
        for k, table in tables.items():
            conn.execute(sa.insert(table.__table__), rows[k])  # type: ignore[attr-defined]
    engine.dispose()
    store.engine.dispose()
    arrays: dict[str, Any] = {"x": x[:, win], "y": y[:, win], "t": data["t"][win]}
    arrays.update({f"pred_v{v}": p for v, p in preds.items()})
    np.savez(cache / "data.npz", **arrays)
    return {
        "registered_models": n,
        "versions": len(rows["mv"]),
        "fit_and_save_seconds": round(fit_save, 1),
        "save_ms_per_version": round(fit_save / len(rows["mv"]) * 1000, 1),
    }


# -------------------------------------------------------------------------------------- served rows
def write_hour(work: Path, models: list[tuple[ModelKey, str]], data: Any, j: int) -> None:
    """The champion's served rows (with features) and the actuals of window hour ``j``, one file each."""
    t = float(data["t"][j])
    made, target = iso(t - H), iso(t)
    x, y, champ = data["x"][:, j], data["y"][:, j], data["pred_v1"][:, j]
    pred_lines, act_lines = [], []
    for i, (k, _) in enumerate(models):
        f = x[i]
        pred_lines.append(
            f'{{"customer":"{k.customer}","building":"{k.building}","energy":"{k.energy}","model":"{k.model}",'
            f'"made_at":"{made}","target_time":"{target}","prediction":{float(champ[i])!r},'
            f'"model_version":1,"alias":"champion","features":{{"outdoor_temperature":{float(f[0])!r},'
            f'"solar_radiation":{float(f[1])!r},"hour_of_day":{int(f[2])},"day_of_week":{int(f[3])},'
            f'"occupancy":{float(f[4])!r}}}}}\n'
        )
        act_lines.append(
            f'{{"customer":"{k.customer}","building":"{k.building}","energy":"{k.energy}",'
            f'"target_time":"{target}","actual":{float(y[i])!r}}}\n'
        )
    for sub, lines in (("pred", pred_lines), ("act", act_lines)):
        path = work / sub / f"h{j:03d}.jsonl"
        tmp = path.with_name("." + path.name + ".tmp")
        tmp.write_text("".join(lines), encoding="utf-8")
        tmp.replace(path)  # written whole, as the format asks


# ------------------------------------------------------------------------------------------ measuring
class TreeSampler(threading.Thread):
    """Peak RSS of this process, of the Scorer's worker processes (and anything they start), and of the MLflow
    server's process group, sampled every ``interval`` seconds."""

    def __init__(self, scorer: Scorer, server_pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.scorer, self.server_pid, self.interval = scorer, server_pid, interval
        self.stop_event = threading.Event()
        self.peak_total = self.peak_parent = self.peak_workers = self.peak_server = 0
        self.me = psutil.Process()
        self.parent_at_start = self.me.memory_info().rss

    @staticmethod
    def _tree_rss(pid: int) -> int:
        try:
            p = psutil.Process(pid)
            procs = [p, *p.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for q in procs:
            try:
                total += q.memory_info().rss
            except psutil.Error:
                pass
        return total

    def sample(self) -> None:
        parent = self.me.memory_info().rss
        workers = sum(self._tree_rss(w.proc.pid) for w in self.scorer.workers if w.proc is not None)
        self.peak_parent = max(self.peak_parent, parent)
        self.peak_workers = max(self.peak_workers, workers)
        self.peak_total = max(self.peak_total, parent + workers)
        self.peak_server = max(self.peak_server, self._tree_rss(self.server_pid))

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeSampler:
        self.sample()
        self.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop_event.set()
        self.join()
        self.sample()


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            c = psutil.Process(pid).cpu_times()
            total += c.user + c.system + c.children_user + c.children_system
        except psutil.Error:
            pass
    return total


def instrument(scorer: Scorer) -> dict[str, float]:
    """Seconds spent in the Scorer's phases (wrappers on this instance; fleetmon/scoring.py unchanged):
    reading the served files, reading the registry, waiting for the workers (per thread, summed), writing
    the shadow file, saving the state."""
    spent: dict[str, float] = {}
    lock = threading.Lock()

    def wrap(obj: Any, attr: str, label: str) -> None:
        fn: Callable[..., Any] = getattr(obj, attr)

        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                with lock:
                    spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0

        setattr(obj, attr, timed)

    wrap(scorer, "read_inputs", "read_inputs")
    wrap(scorer, "candidates", "registry")
    wrap(scorer, "_write", "write_shadow_file")
    wrap(scorer, "_save_state", "save_state")
    for w in scorer.workers:
        wrap(w, "call", "worker_calls")
    return spent


class ServerRequests:
    """Requests the MLflow server answered, by endpoint, from its access log (uvicorn's lines in
    ``mlflow-server.log``): what the Scorer and its workers asked of the registry."""

    LINE = re.compile(r'"(?:GET|POST) /api/2\.0/mlflow/([^?" ]+)')

    def __init__(self, pid: int, log: Path) -> None:
        self.pid, self.log = pid, log
        self.offset = log.stat().st_size if log.exists() else 0

    def since_last(self) -> dict[str, int]:
        time.sleep(0.5)  # the last lines of a cycle
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            text = f.read().decode("utf-8", "replace")
        self.offset += len(text.encode("utf-8", "replace"))
        counts: dict[str, int] = {}
        for m in self.LINE.finditer(text):
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
        return dict(sorted(counts.items()))


def measured_cycle(scorer: Scorer, server: ServerRequests, phases: dict[str, float]) -> dict[str, Any]:
    phases.clear()
    server.since_last()
    pids = [w.proc.pid for w in scorer.workers if w.proc is not None]
    cpu0 = cpu_seconds([os.getpid(), *pids])
    with TreeSampler(scorer, server.pid) as mem:
        t0 = time.perf_counter()
        res = scorer.cycle()
        wall = time.perf_counter() - t0
    pids = [w.proc.pid for w in scorer.workers if w.proc is not None]
    cpu = cpu_seconds([os.getpid(), *pids]) - cpu0
    fig = result_figures(res, wall, cpu, mem, phases)
    fig["mlflow_requests"] = server.since_last()
    # the machine's load: this benchmark alone keeps about 2-3 processes busy; more is someone else's work
    fig["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    return fig


def result_figures(
    res: CycleResult, wall: float, cpu: float, mem: TreeSampler, phases: dict[str, float]
) -> dict[str, Any]:
    if res.registry_error:
        raise SystemExit(f"the cycle could not read the registry: {res.registry_error}")
    scored_versions = res.calls - sum(res.failures.values())
    return {
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "candidate_versions": res.versions,
        "calls": res.calls,
        "versions_scored": scored_versions,
        "versions_per_second": round(scored_versions / wall, 1) if wall else None,
        "rows_scored": res.rows_scored,
        "cache_hits": res.cache_hits,
        "loads": res.calls - res.cache_hits,
        "cache_hit_rate": round(res.cache_hits / res.calls, 4) if res.calls else None,
        "failures": {k: v for k, v in res.failures.items() if v},
        "failures_total": sum(res.failures.values()),
        "peak_rss_mib": {
            "total": round(mem.peak_total / MiB),
            "parent": round(mem.peak_parent / MiB),
            "workers": round(mem.peak_workers / MiB),
            "mlflow_server": round(mem.peak_server / MiB),
            "parent_at_start": round(mem.parent_at_start / MiB),
        },
        "phases_seconds": {k: round(v, 2) for k, v in phases.items()},
    }


def run_until_done(scorer: Scorer, server: ServerRequests, phases: dict[str, float]) -> dict[str, Any]:
    """Cycles until one has nothing left to score; the figures are the sums of the cycles that scored."""
    cycles: list[dict[str, Any]] = []
    while True:
        fig = measured_cycle(scorer, server, phases)
        if fig["calls"] == 0:
            break
        cycles.append(fig)
        if len(cycles) >= 5:
            break
    if not cycles:
        raise SystemExit("the first cycle scored nothing")
    if len(cycles) == 1:
        out = dict(cycles[0])
    else:
        out = dict(cycles[-1])
        for k in (
            "wall_seconds",
            "cpu_seconds",
            "calls",
            "versions_scored",
            "rows_scored",
            "cache_hits",
            "loads",
        ):
            out[k] = round(sum(c[k] for c in cycles), 2)
        out["versions_per_second"] = round(out["versions_scored"] / out["wall_seconds"], 1)
        out["cache_hit_rate"] = round(out["cache_hits"] / out["calls"], 4)
        out["failures_total"] = sum(c["failures_total"] for c in cycles)
        for k in ("total", "parent", "workers", "mlflow_server"):
            out["peak_rss_mib"][k] = max(c["peak_rss_mib"][k] for c in cycles)
        requests: dict[str, int] = {}
        for c in cycles:
            for ep, count in c["mlflow_requests"].items():
                requests[ep] = requests.get(ep, 0) + count
        out["mlflow_requests"] = requests
    out["cycles"] = len(cycles)
    out["idle_cycle_seconds"] = fig["wall_seconds"] if fig["calls"] == 0 else None
    return out


# ------------------------------------------------------------------------------------------- checks
def read_outputs(
    cfg: Config, work: Path, hours: int, shadow_files: list[Path], now: float
) -> tuple[Any, float, float]:
    """The served and actual files of the first ``hours`` hours and the given shadow files, read as the
    outputs exporter reads them (records reader, validation, store), then a snapshot: (snapshot, seconds for
    all, seconds for the shadow files)."""
    from fleetmon.outputs.records import FleetIndex, read_jsonl, validate
    from fleetmon.outputs.store import OutputStore

    o = cfg.outputs
    fleet = FleetIndex(cfg.fleet)
    store = OutputStore(fleet, list(o.features), o.retention_seconds)
    served = [(work / "pred" / f"h{j:03d}.jsonl", "predictions", "pred") for j in range(hours)]
    acts = [(work / "act" / f"h{j:03d}.jsonl", "actuals", "act") for j in range(hours)]
    shadow = [(p, "predictions", "scored") for p in shadow_files]
    t_all = time.perf_counter()
    t_shadow = 0.0
    for path, kind, src in [*served, *acts, *shadow]:
        t0 = time.perf_counter()
        batch = read_jsonl(path, kind, src, o.features)  # type: ignore[arg-type]
        v = validate(batch, fleet, o.features, now, o.max_future_skew_seconds, o.versions.aliases)
        if v.rejected:
            raise SystemExit(f"{path}: {len(v.rejected)} rows rejected, e.g. {v.rejected[0]}")
        store.add(v, batch)
        if src == "scored":
            t_shadow += time.perf_counter() - t0
    snap = store.snapshot(now)
    return snap, time.perf_counter() - t_all, t_shadow


def check_scores(
    snap: Any, cfg: Config, models: list[tuple[ModelKey, str]], data: Any, hours: int, candidates: int
) -> dict[str, Any]:
    """Every version scored every target once, with exactly the prediction of that version's own model."""
    from fleetmon.outputs.records import FleetIndex

    fleet = FleetIndex(cfg.fleet)
    pos = np.full(len(fleet.models), -1)
    for i, (k, _) in enumerate(models):
        pos[fleet.model_ids[(k.customer, k.building, k.energy, k.model)]] = i
    sh = snap.shadow
    idx = pos[sh["model"].to_numpy()]
    j = np.round((sh["target"].to_numpy() - data["t"][0]) / H).astype(int)
    version = sh["version"].to_numpy()
    expect = np.full(len(sh), np.nan)
    for v in range(2, 2 + candidates):
        sel = version == v
        expect[sel] = data[f"pred_v{v}"][idx[sel], j[sel]]
    got = sh["prediction"].to_numpy()
    err = np.abs(got - expect)
    bad = ~(err <= 1e-6 + 1e-9 * np.abs(expect))  # the shadow rows are rounded to 6 decimals
    per_version = sh.groupby(["model", "version"]).size()
    # the champion's predictions differ from the challenger's: a row equal to both proves nothing
    champ = data["pred_v1"][idx, j]
    distinct = float(np.mean(np.abs(champ - expect) > 1e-3))
    out = {
        "shadow_rows": len(sh),
        "versions_with_rows": len(per_version),
        "rows_per_version": sorted(set(per_version.tolist())),
        "rows_not_matching_their_version": int(bad.sum()),
        "max_abs_error": float(np.nanmax(err)) if len(err) else None,
        "share_of_rows_where_champion_differs": round(distinct, 4),
    }
    want_versions = len(models) * candidates
    if out["versions_with_rows"] != want_versions or out["rows_per_version"] != [hours] or bad.any():
        raise SystemExit(f"the shadow rows are not what the registered versions predict: {out}")
    return out


def check_update(files: list[Path], models: list[tuple[ModelKey, str]], data: Any, j: int) -> dict[str, Any]:
    """The hourly update wrote one row per version, for hour ``j``, with that version's prediction."""
    pos = {(k.customer, k.building, k.energy): i for i, (k, _) in enumerate(models)}
    rows = [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines()]
    seen: set[tuple[int, int]] = set()
    bad = 0
    for r in rows:
        i = pos[(r["customer"], r["building"], r["energy"])]
        v = int(r["model_version"])
        bad += r["target_time"] != iso(float(data["t"][j]))
        bad += abs(r["prediction"] - data[f"pred_v{v}"][i, j]) > 1e-6 + 1e-9 * abs(r["prediction"])
        seen.add((i, v))
    out = {"rows": len(rows), "versions": len(seen), "rows_not_matching_their_version": int(bad)}
    if bad or len(seen) != len(rows):
        raise SystemExit(f"the hourly update's rows are not what the registered versions predict: {out}")
    return out


def load_paths(url: str, models: list[tuple[ModelKey, str]], n: int) -> dict[str, Any]:
    """What one load costs, in this process, one after the other: ``models:/<name>/<v>`` (what the workers
    load: the registry is asked for the download URI, and MLflow asks for the registered model too) against
    the download URI resolved beforehand (no registry request)."""
    import mlflow
    import mlflow.pyfunc
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(url)
    client = MlflowClient(url)
    picks = np.linspace(0, len(models) - 1, n).astype(int)
    names = [models[i][1] for i in picks]
    where = {name: client.get_model_version_download_uri(name, "2") for name in names}
    for name in names[:3]:  # warm-up
        mlflow.pyfunc.load_model(f"models:/{name}/2")
    t0 = time.perf_counter()
    for name in names:
        mlflow.pyfunc.load_model(f"models:/{name}/2")
    t1 = time.perf_counter()
    for name in names:
        mlflow.pyfunc.load_model(where[name])
    t2 = time.perf_counter()
    return {
        "loads": n,
        "models_uri_ms": round((t1 - t0) / n * 1000, 1),
        "resolved_download_uri_ms": round((t2 - t1) / n * 1000, 1),
    }


def sample_load(url: str, models: list[tuple[ModelKey, str]], data: Any, n: int) -> dict[str, Any]:
    """``mlflow.pyfunc.load_model("models:/<name>/<version>")`` against the server, in this process, for a
    sample: the download URI the registry gives, and the predictions against the stored ones."""
    import mlflow
    import mlflow.pyfunc
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(url)
    client = MlflowClient(url)
    picks = np.linspace(0, len(models) - 1, n).astype(int)
    checked, times = [], []
    for i in picks:
        name = models[i][1]
        for v in (1, 2):
            where = client.get_model_version_download_uri(name, str(v))
            t0 = time.perf_counter()
            model = mlflow.pyfunc.load_model(f"models:/{name}/{v}")
            times.append(time.perf_counter() - t0)
            got = np.asarray(model.predict(frame(data["x"][i, :WINDOW])), dtype=float)
            ok = bool(np.allclose(got, data[f"pred_v{v}"][i, :WINDOW], rtol=1e-9, atol=1e-9))
            checked.append({"uri": f"models:/{name}/{v}", "download_uri": where, "predictions_match": ok})
            if not ok:
                raise SystemExit(f"models:/{name}/{v} does not predict what version {v} was fitted to")
    return {
        "checked": len(checked),
        "all_match": all(c["predictions_match"] for c in checked),
        "load_model_ms_median": round(statistics.median(times) * 1000, 1),
        "example": checked[-1],
    }


# ----------------------------------------------------------------------------------- mlflow.evaluate
def evaluate_sample(
    url: str, models: list[tuple[ModelKey, str]], data: Any, n: int, fleet_mae: dict[str, float]
) -> dict[str, Any]:
    """``mlflow.models.evaluate`` of ``n`` challenger versions on the full re-benchmark's rows (one warm-up
    call first, not counted: imports)."""
    import warnings

    import mlflow

    warnings.filterwarnings("ignore")
    for name in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    mlflow.set_tracking_uri(url)
    mlflow.set_experiment("scoring-bench-evaluate")
    picks = np.linspace(0, len(models) - 1, n + 1).astype(int)
    evaluate_s, with_run_s, cpu_s, mae_diff = [], [], [], []
    metrics: dict[str, Any] = {}
    for k, i in enumerate(picks):
        name = models[i][1]
        df = frame(data["x"][i, :WINDOW])
        df["actual"] = data["y"][i, :WINDOW]
        c0 = time.process_time()
        t0 = time.perf_counter()
        with mlflow.start_run(run_name=f"evaluate-{name}-v2"):
            t1 = time.perf_counter()
            r = mlflow.models.evaluate(
                model=f"models:/{name}/2",
                data=df,
                targets="actual",
                model_type="regressor",
                evaluators=["default"],
            )
            t2 = time.perf_counter()
        t3 = time.perf_counter()
        c1 = time.process_time()
        if k == 0:
            metrics = dict(r.metrics)
            continue  # warm-up
        evaluate_s.append(t2 - t1)
        with_run_s.append(t3 - t0)
        cpu_s.append(c1 - c0)
        mae = r.metrics.get("mean_absolute_error")
        if mae is not None and name in fleet_mae:
            mae_diff.append(abs(mae - fleet_mae[name]) / max(abs(mae), 1e-12))
    return {
        "sample": n,
        "evaluate_seconds_mean": round(statistics.fmean(evaluate_s), 4),
        "evaluate_seconds_median": round(statistics.median(evaluate_s), 4),
        "with_run_seconds_mean": round(statistics.fmean(with_run_s), 4),
        "process_cpu_seconds_mean": round(statistics.fmean(cpu_s), 4),
        "metrics_logged": sorted(metrics),
        "max_relative_mae_difference_vs_fleetmon": max(mae_diff) if mae_diff else None,
    }


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scoring_bench", description=__doc__.split("\n")[0])
    p.add_argument("--models", type=int, default=4000, help="forecasters (2 per building); default 4000")
    p.add_argument(
        "--candidates",
        type=int,
        default=1,
        choices=(1, 2),
        help="versions the Scorer scores per model: 1 = the challenger (default); 2 = also a version 3",
    )
    p.add_argument("--evaluate-sample", type=int, default=20, help="versions run through mlflow.evaluate")
    p.add_argument(
        "--large-cache",
        type=int,
        default=-1,
        help="cache_size of the second Scorer (-1: every version; 0: skip that measurement)",
    )
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--cache-dir", type=Path, default=ROOT / "var" / "bench")
    p.add_argument("--rebuild", action="store_true", help="populate again even if cached")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # progress shows when the output goes to a file
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    n, k = args.models, args.candidates
    out: dict[str, Any] = {
        "models": n,
        "candidates_per_model": k,
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_affinity": len(os.sched_getaffinity(0)),
            "memory_mib": round(psutil.virtual_memory().total / MiB),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        },
    }

    cache = args.cache_dir / (f"scoring-{n}" if k == 1 else f"scoring-{n}-{k}c")
    work = args.cache_dir / "scoring-work"
    cfg0 = fleet_config(n, "http://unused", work, "state", 8)
    models = forecasters(cfg0)
    assert len(models) == n, (len(models), n)
    if args.rebuild and cache.exists():
        shutil.rmtree(cache)
    if not (cache / "complete").exists():
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        print(f"populating {cache} ({n:,} registered models, {n * (1 + k):,} versions) ...")
        t0 = time.perf_counter()
        counts = populate(cache, cfg0, k)
        counts["populate_seconds"] = round(time.perf_counter() - t0, 1)
        (cache / "complete").write_text(json.dumps(counts) + "\n")
        print(f"populated: {counts}")
    else:
        counts = json.loads((cache / "complete").read_text())
        print(f"using the cached registry {cache} ({counts})")
    out["registry"] = counts
    data = dict(np.load(cache / "data.npz"))

    shutil.rmtree(work, ignore_errors=True)
    for sub in ("pred", "act", "scored"):
        (work / sub).mkdir(parents=True)
    shutil.copy(cache / "mlflow.db", work / "mlflow.db")
    t0 = time.perf_counter()
    for j in range(WINDOW):
        write_hour(work, models, data, j)
    print(f"wrote {WINDOW} hourly files of {n:,} served rows and actuals in {time.perf_counter() - t0:.1f} s")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    assert MLFLOW_ENV  # the server runs without MLflow's job runner, as in the stack
    server = start_mlflow_server(port, work, timeout=180)
    requests = ServerRequests(server.pid, work / "mlflow-server.log")
    scorer: Scorer | None = None
    try:
        out["parent_imported_mlflow_before_scoring"] = "mlflow" in sys.modules
        # ---- 1. the full re-benchmark, default cache_size
        cfg = fleet_config(n, url, work, "state", cache_size=DEFAULT_CACHE)
        clock = [NOW]
        scorer = Scorer(cfg, clock=lambda: clock[0])
        phases = instrument(scorer)
        out["parent_rss_before_mib"] = round(psutil.Process().memory_info().rss / MiB)
        print(
            f"\nfull re-benchmark: {n:,} models, {n * k:,} versions to score, cache_size {DEFAULT_CACHE:,} ..."
        )
        full = run_until_done(scorer, requests, phases)
        full["cache_size"] = DEFAULT_CACHE
        out["full"] = full
        print_cycle("full re-benchmark", full)
        shadow_full = sorted((work / "scored").glob("scored-*.jsonl"))

        # ---- 2. the hourly update on the same Scorer
        write_hour(work, models, data, WINDOW)
        clock[0] = NOW + H
        inc = measured_cycle(scorer, requests, phases)
        inc["cache_size"] = DEFAULT_CACHE
        out["incremental"] = inc
        print_cycle(f"hourly update (cache_size {DEFAULT_CACHE:,})", inc)
        scorer.close()
        scorer = None
        gc.collect()
        shadow_inc = sorted(set((work / "scored").glob("scored-*.jsonl")) - set(shadow_full))
        (work / "scored-first").mkdir()
        for f in (work / "scored").glob("scored-*.jsonl"):
            f.rename(work / "scored-first" / f.name)
        shadow_full = [work / "scored-first" / f.name for f in shadow_full]
        shadow_inc = [work / "scored-first" / f.name for f in shadow_inc]
        out["checks_incremental"] = check_update(shadow_inc, models, data, WINDOW)

        # ---- 2b. a Scorer whose workers keep every version loaded
        if args.large_cache:
            size = n * k if args.large_cache < 0 else args.large_cache
            cfg_l = fleet_config(n, url, work, "state-large", cache_size=size)
            clock[0] = NOW + H
            scorer = Scorer(cfg_l, clock=lambda: clock[0])
            phases = instrument(scorer)
            print(f"\nsecond Scorer, cache_size {size:,}: full cycle (fills the caches) ...")
            full_l = run_until_done(scorer, requests, phases)
            full_l["cache_size"] = size
            print_cycle(f"full re-benchmark (cache_size {size:,})", full_l)
            write_hour(work, models, data, WINDOW + 1)
            clock[0] = NOW + 2 * H
            inc_l = measured_cycle(scorer, requests, phases)
            inc_l["cache_size"] = size
            print_cycle(f"hourly update (cache_size {size:,})", inc_l)
            out["large_cache"] = {"full": full_l, "incremental": inc_l}
            scorer.close()
            scorer = None
            gc.collect()
            new = sorted((work / "scored").glob("scored-*.jsonl"))
            out["large_cache"]["checks_incremental"] = check_update(new[-1:], models, data, WINDOW + 1)

        # ---- the exporter's per-version metrics over the full re-benchmark's rows (the first Scorer's)
        snap, read_s, shadow_s = read_outputs(cfg, work, WINDOW, shadow_full, NOW)
        from fleetmon.outputs.records import FleetIndex
        from fleetmon.outputs.versions import compute

        fleet_index = FleetIndex(cfg.fleet)
        t0 = time.perf_counter()
        vs = compute(snap, fleet_index, cfg.outputs.versions, NOW)
        compute_s = time.perf_counter() - t0
        versions_frame = vs.versions
        out["checks_full"] = check_scores(snap, cfg, models, data, WINDOW, k)
        benchmarked = len(versions_frame)
        out["metrics"] = {
            "compute_seconds": round(compute_s, 3),
            "read_all_files_seconds": round(read_s, 2),
            "read_shadow_files_seconds": round(shadow_s, 2),
            "versions_with_figures": benchmarked,
            "champion_challenger_pairs": len(vs.challengers),
            "paired_targets": sorted(set(versions_frame["paired"].tolist())),
        }
        if benchmarked != n * (1 + k):
            raise SystemExit(f"versions.compute gave figures for {benchmarked} versions, not {n * (1 + k)}")
        id_of = {m: i for i, m in enumerate(fleet_index.models)}
        mae_v2 = versions_frame.reset_index()
        mae_v2 = mae_v2[mae_v2["version"] == 2].set_index("model")["mae"]
        fleet_mae = {name: float(mae_v2.loc[id_of[key]]) for key, name in models}
        del snap
        print(
            f"metrics (fleetmon.outputs.versions.compute) for {benchmarked:,} versions: {compute_s:.2f} s; "
            f"reading the shadow rows as the exporter does: {shadow_s:.1f} s"
        )

        # ---- models really come from MLflow: a sample loaded here, as the workers do
        out["sample_load"] = sample_load(url, models, data, 5)
        print(
            f"\nloaded {out['sample_load']['checked']} versions with mlflow.pyfunc.load_model('models:/...') "
            f"from the server: predictions match the fitted versions; median load "
            f"{out['sample_load']['load_model_ms_median']} ms"
        )
        out["load_paths"] = load_paths(url, models, min(100, n))
        print(
            f"one load, in this process: models:/ URI {out['load_paths']['models_uri_ms']} ms, "
            f"the resolved download URI {out['load_paths']['resolved_download_uri_ms']} ms"
        )

        # ---- 3. mlflow.models.evaluate side by side
        if args.evaluate_sample:
            print(f"mlflow.models.evaluate of {args.evaluate_sample} challenger versions ...")
            ev = evaluate_sample(url, models, data, args.evaluate_sample, fleet_mae)
            ev["load_average_1m_after"] = round(os.getloadavg()[0], 2)
            out["mlflow_evaluate"] = ev
            scored = full["versions_scored"]
            per_version = (full["wall_seconds"] + compute_s) / scored
            per_version_read = (full["wall_seconds"] + compute_s + shadow_s) / scored
            cpu_per_version = (full["cpu_seconds"] + compute_s) / scored
            out["cost_per_version"] = {
                "fleetmon_seconds": round(per_version, 5),
                "fleetmon_seconds_with_reading_shadow_rows": round(per_version_read, 5),
                "fleetmon_cpu_seconds": round(cpu_per_version, 5),
                "fleetmon_seconds_per_benchmarked_version": round(
                    (full["wall_seconds"] + compute_s) / benchmarked, 5
                ),
                "mlflow_evaluate_seconds": ev["evaluate_seconds_mean"],
                "mlflow_evaluate_cpu_seconds": ev["process_cpu_seconds_mean"],
                "ratio": round(ev["evaluate_seconds_mean"] / per_version, 1),
                "ratio_with_reading_shadow_rows": round(ev["evaluate_seconds_mean"] / per_version_read, 1),
                "ratio_cpu": round(ev["process_cpu_seconds_mean"] / cpu_per_version, 1),
            }
        out["aim"] = {
            "full_within_600s": full["wall_seconds"] <= 600,
            "hourly_within_30s": inc["wall_seconds"] <= 30,
            "hourly_large_cache_within_30s": (
                out["large_cache"]["incremental"]["wall_seconds"] <= 30 if "large_cache" in out else None
            ),
            "10x_cheaper_than_mlflow_evaluate": (
                out["cost_per_version"]["ratio"] >= 10 if "cost_per_version" in out else None
            ),
        }
    finally:
        if scorer is not None:
            scorer.close()
        stop_group(server)
    import mlflow

    out["mlflow_version"] = mlflow.__version__
    print_summary(out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"\nfigures written to {args.json}")
    return 0


def print_cycle(label: str, f: dict[str, Any]) -> None:
    rss = f["peak_rss_mib"]
    hit = f["cache_hit_rate"]
    print(
        f"  {label}: {f['wall_seconds']:.1f} s wall, {f['cpu_seconds']:.1f} s CPU"
        + (f" in {f['cycles']} cycle(s)" if "cycles" in f else "")
        + f"; {f['versions_scored']:,} versions ({f['versions_per_second']:,} /s), {f['rows_scored']:,} rows; "
        f"cache hits {f['cache_hits']:,}/{f['calls']:,} ({0 if hit is None else hit:.1%}); "
        f"failures {f['failures_total']}; peak RSS {rss['total']:,} MiB "
        f"(parent {rss['parent']:,}, {rss['parent_at_start']:,} at the start; workers {rss['workers']:,}; "
        f"MLflow server {rss['mlflow_server']:,}); load average after {f['load_average_1m_after']}"
    )
    print("    time in the parent: " + ", ".join(f"{k} {v:.1f} s" for k, v in f["phases_seconds"].items()))
    print("    MLflow requests: " + ", ".join(f"{k} {v:,}" for k, v in f["mlflow_requests"].items()))


def print_summary(out: dict[str, Any]) -> None:
    print("\n================ summary")
    m = out["machine"]
    print(
        f"{out['models']:,} forecasters, {out['registry']['versions']:,} registered versions, "
        f"{out['models'] * out['candidates_per_model']:,} scored per full re-benchmark; "
        f"{m['cpu_count']} CPUs, MLflow {out['mlflow_version']}"
    )
    rows = [
        (f"full re-benchmark (cache_size {out['full']['cache_size']:,})", out["full"]),
        (f"hourly update (cache_size {out['incremental']['cache_size']:,})", out["incremental"]),
    ]
    if "large_cache" in out:
        size = out["large_cache"]["full"]["cache_size"]
        rows.append((f"full re-benchmark (cache_size {size:,})", out["large_cache"]["full"]))
        rows.append((f"hourly update (cache_size {size:,})", out["large_cache"]["incremental"]))
    print(f"{'':<38}{'wall s':>9}{'versions/s':>12}{'rows':>10}{'hit rate':>10}{'peak MiB':>10}{'fail':>6}")
    for label, f in rows:
        hit = f["cache_hit_rate"] or 0.0
        print(
            f"{label:<38}{f['wall_seconds']:>9.1f}{f['versions_per_second']:>12,.1f}{f['rows_scored']:>10,}"
            f"{hit:>10.1%}{f['peak_rss_mib']['total']:>10,}{f['failures_total']:>6}"
        )
    f = out["full"]
    print(
        f"full re-benchmark: {f['loads']:,} model loads by the workers, the MLflow server answered "
        f"{f['mlflow_requests'].get('model-versions/get-download-uri', 0):,} get-download-uri and "
        f"{f['mlflow_requests'].get('registered-models/get', 0):,} registered-models/get requests"
    )
    mt = out["metrics"]
    print(
        f"versions.compute over {mt['versions_with_figures']:,} versions: {mt['compute_seconds']:.2f} s "
        f"(reading the shadow rows: {mt['read_shadow_files_seconds']:.1f} s)"
    )
    if "cost_per_version" in out:
        c, ev = out["cost_per_version"], out["mlflow_evaluate"]
        print(
            f"cost per version: fleetmon {c['fleetmon_seconds'] * 1000:.1f} ms "
            f"({c['fleetmon_seconds_with_reading_shadow_rows'] * 1000:.1f} ms with reading the shadow rows), "
            f"mlflow.models.evaluate {ev['evaluate_seconds_mean'] * 1000:.0f} ms "
            f"(median {ev['evaluate_seconds_median'] * 1000:.0f} ms, {ev['sample']} versions): "
            f"{c['ratio']:.1f}x ({c['ratio_with_reading_shadow_rows']:.1f}x; CPU {c['ratio_cpu']:.1f}x)"
        )
        if ev["max_relative_mae_difference_vs_fleetmon"] is not None:
            print(
                f"  MAE, evaluate vs fleetmon: max relative difference {ev['max_relative_mae_difference_vs_fleetmon']:.1e}"
            )
    loads = [f"{label} {f['load_average_1m_after']}" for label, f in rows]
    if "mlflow_evaluate" in out:
        loads.append(f"mlflow.models.evaluate {out['mlflow_evaluate']['load_average_1m_after']}")
    print(
        f"1-minute load average after each measurement (this benchmark alone: about 2-3): {', '.join(loads)}; "
        "other work on the machine slows what it overlaps, so compare CPU seconds too"
    )
    print(
        "aim: "
        + ", ".join(f"{k} {'yes' if v else 'NO' if v is not None else '-'}" for k, v in out["aim"].items())
    )


if __name__ == "__main__":
    raise SystemExit(main())
