"""The demo fleet in MLflow, through MLflow's own client: seeded history, then live training.

Seeding (idempotent: a restart adds nothing):

- one experiment per building, named ``{customer}/{building}``;
- per model 4-6 historical training runs over the last weeks (mostly FINISHED, some FAILED and KILLED;
  every building has at least one of each of the latter), tagged with the four fleet tags
  (``mlflow.tag_keys``) and ``fleetmon.demo.history=<energy>/<model>/<n>``, which is what makes re-seeding
  find them; metrics ``mae``/``rmse``/``mape`` (``mape`` as a ratio) and the duration metrics, params
  (``algorithm``, ``lookback_hours``, ...), all in one ``log_batch`` per run; lineage: a (fake, deterministic)
  ``mlflow.source.git.commit`` and ``mlflow.source.name`` tag, and for FINISHED runs the training data set
  (the building's actuals: name, digest, source) as a dataset input with context ``training``
  (``log_inputs``, what ``mlflow.log_input`` sends; one more request per finished run);
- per model a registered model ``{customer}.{building}.{energy}.{model}`` with the same tags and 1-3
  versions pointing at its latest finished runs (``runs:/<run_id>/model``); aliases ``champion`` (the
  previous version when there are two or more) and ``challenger`` (the newest).

Live training (``Trainer``): the simulator calls ``start`` / ``finish`` as its training jobs are received and
end (the same jobs that appear in the container logs, matched by the ``job_id`` tag); a finished run now and
then becomes a new version that takes the ``challenger`` alias, and sometimes ``champion`` moves to it. A
retrain requested through the training API (trigger ``retrain``) always becomes a new ``challenger`` version
when it finishes, and its run carries the request's ``fleetmon.retrain.reason`` / ``.requested_by`` /
``.request_id`` tags. Live runs carry the same lineage as seeded ones (commit tags; a dataset input when they
finish).
MLflow calls run on a worker thread so a slow or absent server never stalls the simulator.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fleetmon.config import Config, ModelKey
from simulator.world import World

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("fleetmon.demo.mlflow")

HISTORY_TAG = "fleetmon.demo.history"
# A forecaster version whose run holds a real model (artifact MODEL_PATH) carries MODEL_TAG = MODEL_FLAVOR.
MODEL_TAG = "fleetmon.demo.model"
MODEL_FLAVOR = "sklearn"
MODEL_PATH = "model"
# Simulated hours a demo model is fitted on.
TRAIN_HOURS = 168
JOB_TAG = "job_id"
# Lineage (docs/metrics.md, fleetmon_mlflow_model_version_lineage_info): the code version MLflow records for a
# run from a git checkout, and the context tag mlflow.log_input(..., context="training") sets.
GIT_COMMIT_TAG = "mlflow.source.git.commit"
SOURCE_NAME_TAG = "mlflow.source.name"
DATA_CONTEXT_TAG = "mlflow.data.context"
TRAIN_ENTRY_POINT = "fleetmon-demo/train.py"
DAY_MS = 86_400_000

FORECAST_ALGOS = ("lightgbm", "xgboost", "prophet", "ridge")
ANOMALY_ALGOS = ("isolation_forest", "autoencoder", "robust_zscore")


@dataclass
class HistRun:
    key: ModelKey
    n: int
    status: str
    start_ms: int
    end_ms: int
    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def history_id(self) -> str:
        return f"{self.key.energy}/{self.key.model}/{self.n}"


def wait_for_mlflow(uri: str, stop: threading.Event, timeout: float | None = None) -> bool:
    """Poll ``/health`` until MLflow answers; False if stopped or timed out first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.5
    while not stop.is_set():
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:
                if 200 <= r.status < 300:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        if deadline is not None and time.monotonic() > deadline:
            return False
        stop.wait(delay)
        delay = min(5.0, delay * 1.5)
    return False


class FleetMlflow:
    """Maps the fleet onto MLflow objects, following the config's ``mlflow:`` naming."""

    def __init__(self, cfg: Config, world: World, client: MlflowClient | None = None) -> None:
        self.cfg = cfg
        self.world = world
        self._client = client  # made on first use: planning versions needs no server
        self.requests = 0  # MLflow calls made (seeding keeps this low)
        self._lock = threading.Lock()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.cfg.mlflow.tracking_uri)
        return self._client

    # ------------------------------------------------------------------------------- naming
    def tags(self, key: ModelKey) -> dict[str, str]:
        tk = self.cfg.mlflow.tag_keys
        return {tk[k]: v for k, v in key.labels().items()}

    def model_name(self, key: ModelKey) -> str:
        return self.cfg.mlflow.registered_model_pattern.format(**key.labels())

    def aliases(self) -> tuple[str, str | None]:
        a = self.cfg.mlflow.aliases
        return (a[0] if a else "champion", a[1] if len(a) > 1 else None)

    # ------------------------------------------------------------------------------- lineage
    def code_tags(self, generation: str) -> dict[str, str]:
        """The source tags of a training run: a (fake, deterministic) git commit of the training code."""
        commit = hashlib.sha1(f"{self.cfg.demo.seed}:code:{generation}".encode()).hexdigest()
        return {GIT_COMMIT_TAG: commit, SOURCE_NAME_TAG: TRAIN_ENTRY_POINT}

    def training_input(self, key: ModelKey, snapshot: str) -> Any:
        """What ``mlflow.log_input(dataset, context="training")`` logs: the building's actuals the model was
        trained on (name, digest of this snapshot, source), as a ``DatasetInput``."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        name = f"{key.building}-{key.energy}-actuals"
        digest = hashlib.sha256(f"{self.cfg.demo.seed}:data:{name}:{snapshot}".encode()).hexdigest()[:8]
        source = json.dumps({"uri": f"var/demo/outputs/actuals/{key.customer}/{key.building}/{key.energy}"})
        return DatasetInput(
            Dataset(name=name, digest=digest, source_type="local", source=source),
            tags=[InputTag(key=DATA_CONTEXT_TAG, value="training")],
        )

    # ------------------------------------------------------------------------------- history
    def _metrics(self, rng: random.Random, key: ModelKey, status: str, quality: float) -> dict[str, float]:
        m = self.cfg.mlflow
        scale = float(
            self.world.typical_consumption(key.energy)[self.world.index[(key.customer, key.building)]]
        )
        forecaster = not self.cfg.fleet.is_anomaly_detector(key.model)
        train_s = rng.uniform(120, 1500) if forecaster else rng.uniform(60, 600)
        out: dict[str, float] = {}
        durations = m.duration_metric_keys
        if status == "FINISHED":
            mape = rng.uniform(0.04, 0.11) * quality
            values = {"mae": scale * mape * 0.9, "rmse": scale * mape * 1.2, "mape": mape}
            for name in m.metric_keys:
                out[name] = round(values.get(name, rng.uniform(0.05, 0.5) * quality), 4)
            if not forecaster:
                out["precision"] = round(rng.uniform(0.7, 0.95), 3)
                out["recall"] = round(rng.uniform(0.6, 0.9), 3)
            if "inference" in durations:
                out[durations["inference"]] = round(rng.uniform(0.01, 0.4), 4)
        elif status == "KILLED":
            train_s *= rng.uniform(0.2, 0.8)
        else:  # FAILED: crashed early, nothing evaluated
            train_s *= rng.uniform(0.05, 0.3)
        if "training" in durations:
            out[durations["training"]] = round(train_s, 2)
        return out

    def _params(self, rng: random.Random, key: ModelKey) -> dict[str, str]:
        if self.cfg.fleet.is_anomaly_detector(key.model):
            return {
                "algorithm": rng.choice(ANOMALY_ALGOS),
                "lookback_hours": str(rng.choice([168, 336, 720])),
                "contamination": str(rng.choice([0.005, 0.01, 0.02])),
                "threshold": str(rng.choice([0.5, 0.6, 0.7])),
                "features": ",".join(self.cfg.outputs.features or ["outdoor_temperature", "occupancy"]),
            }
        return {
            "algorithm": rng.choice(FORECAST_ALGOS),
            "lookback_hours": str(rng.choice([168, 336, 720, 2160])),
            "horizon_hours": "24",
            "n_estimators": str(rng.choice([200, 400, 800])),
            "learning_rate": str(rng.choice([0.01, 0.03, 0.05, 0.1])),
            "features": ",".join(self.cfg.outputs.features or ["outdoor_temperature", "occupancy"]),
        }

    def history(self, now_ms: int) -> dict[tuple[str, str], list[HistRun]]:
        """The planned history per building (deterministic from the seed; times relative to ``now_ms``)."""
        seed = self.cfg.demo.seed
        plan: dict[tuple[str, str], list[HistRun]] = {}
        by_building: dict[tuple[str, str], list[ModelKey]] = {}
        for m in self.world.models:
            by_building.setdefault((m.customer, m.building), []).append(m)
        # anchor history to the day, so a restart the same day plans identical runs
        day0 = now_ms - now_ms % DAY_MS
        for bkey, models in by_building.items():
            runs: list[HistRun] = []
            for mi, key in enumerate(models):
                rng = random.Random(f"{seed}:history:{key.customer}:{key.building}:{key.energy}:{key.model}")
                n_runs = rng.randint(4, 6)
                statuses = [
                    rng.choices(["FINISHED", "FAILED", "KILLED"], [0.75, 0.15, 0.10])[0]
                    for _ in range(n_runs)
                ]
                statuses[-1] = statuses[-2] = "FINISHED"  # the newest models are usable
                if mi == 0:
                    statuses[0] = "FAILED"  # every building shows a failed ...
                if mi == 1 % len(models):
                    statuses[1] = "KILLED"  # ... and a killed run
                t = day0 - rng.randint(25, 35) * DAY_MS
                for n, status in enumerate(statuses):
                    t += int(rng.uniform(3.5, 6.5) * DAY_MS)
                    metrics = self._metrics(rng, key, status, quality=1.0 - 0.05 * n)
                    dur_key = self.cfg.mlflow.duration_metric_keys.get("training")
                    dur_ms = int(metrics.get(dur_key, 300.0) * 1000) if dur_key else 300_000
                    tags = {
                        **self.tags(key),
                        HISTORY_TAG: f"{key.energy}/{key.model}/{n}",
                        **self.code_tags(f"history-{n}"),
                    }
                    if status == "FAILED":
                        tags["error"] = rng.choice(
                            ["ValueError: Input X contains NaN.", "MemoryError", "KeyError: 'humidity'"]
                        )
                    runs.append(HistRun(key, n, status, t, t + dur_ms, metrics, self._params(rng, key), tags))
            plan[bkey] = runs
        return plan

    # ---------------------------------------------------------------------------------- seed
    def seed(
        self, now: float | None = None, stop: threading.Event | None = None, workers: int = 4
    ) -> dict[str, int]:
        """Create what is missing; returns counts of what was created.

        Buildings are seeded by a few threads: the server (sqlite, one worker) spends most of each request
        waiting, so four in flight roughly halve the wall time of a first seeding.
        """
        now_ms = int((time.time() if now is None else now) * 1000)
        created = {"experiments": 0, "runs": 0, "registered_models": 0, "versions": 0}
        plan = list(self.history(now_ms).items())
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="demo-seed") as pool:
            futures = [pool.submit(self._seed_building, b, runs, stop) for b, runs in plan]
            for fut in futures:
                for k, v in fut.result().items():
                    created[k] += v
        return created

    def _seed_building(
        self, bkey: tuple[str, str], runs: list[HistRun], stop: threading.Event | None
    ) -> dict[str, int]:
        from mlflow.entities import Metric, Param

        created = {"experiments": 0, "runs": 0, "registered_models": 0, "versions": 0}
        if stop is not None and stop.is_set():
            return created
        client = self.client
        cust, bld = bkey
        name = f"{cust}/{bld}"
        exp = client.get_experiment_by_name(name)
        self._count(1)
        if exp is None:
            exp_id = client.create_experiment(
                name, tags={"customer": cust, "building": bld, "fleetmon.demo": "true"}
            )
            self._count(1)
            created["experiments"] += 1
            existing: dict[str, str] = {}
        else:
            exp_id = exp.experiment_id
            existing = self._history_runs(exp_id)
        run_ids: dict[str, str] = dict(existing)
        for hr in runs:
            if hr.history_id in existing:
                continue
            run = client.create_run(
                exp_id,
                start_time=hr.start_ms,
                tags={**hr.tags, "mlflow.runName": f"train-{hr.key.energy}-{hr.key.model}-{hr.n}"},
            )
            rid = run.info.run_id
            client.log_batch(
                rid,
                metrics=[Metric(k, v, hr.end_ms, 0) for k, v in hr.metrics.items()],
                params=[Param(k, v) for k, v in hr.params.items()],
            )
            if hr.status == "FINISHED":  # trained on something: its data set (versions come from these)
                client.log_inputs(rid, [self.training_input(hr.key, f"history-{hr.n}")])
                self._count(1)
            client.set_terminated(rid, status=hr.status, end_time=hr.end_ms)
            self._count(3)
            run_ids[hr.history_id] = rid
            created["runs"] += 1
        by_model: dict[ModelKey, list[HistRun]] = {}
        for hr in runs:
            by_model.setdefault(hr.key, []).append(hr)
        for key, hrs in by_model.items():
            c = self._seed_registered_model(key, hrs, run_ids)
            created["registered_models"] += c[0]
            created["versions"] += c[1]
        return created

    def _count(self, n: int) -> None:
        with self._lock:
            self.requests += n

    def _history_runs(self, exp_id: str) -> dict[str, str]:
        out: dict[str, str] = {}
        token = None
        while True:
            page = self.client.search_runs(
                [exp_id], filter_string=f"tags.`{HISTORY_TAG}` != ''", max_results=1000, page_token=token
            )
            self._count(1)
            for r in page:
                hid = r.data.tags.get(HISTORY_TAG)
                if hid:
                    out[hid] = r.info.run_id
            token = page.token
            if not token:
                return out

    def _seed_registered_model(
        self, key: ModelKey, hrs: list[HistRun], run_ids: dict[str, str]
    ) -> tuple[int, int]:
        from mlflow.exceptions import MlflowException

        client = self.client
        name = self.model_name(key)
        made_model = 0
        try:
            client.create_registered_model(
                name, tags=self.tags(key), description=f"{key.energy} {key.model} model of {key.building}"
            )
            made_model = 1
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        self._count(1)
        finished = [h for h in hrs if h.status == "FINISHED"]
        wanted = finished[len(finished) - self.n_versions(key, len(finished)) :]
        have: dict[str | None, str] = {}
        if not made_model:  # a model made just now has no versions yet
            have = {
                mv.tags.get(HISTORY_TAG): mv.version
                for mv in client.search_model_versions(f"name='{name}'")
                if mv.tags.get(HISTORY_TAG)
            }
            self._count(1)
        made = 0
        versions: list[str] = []
        for h in wanted:
            if h.history_id in have:
                versions.append(str(have[h.history_id]))
                continue
            rid = run_ids[h.history_id]
            mv = client.create_model_version(
                name,
                source=f"runs:/{rid}/{MODEL_PATH}",
                run_id=rid,
                tags={**self.tags(key), HISTORY_TAG: h.history_id},
                await_creation_for=0,
            )
            self._count(1)
            versions.append(str(mv.version))
            made += 1
        if made:  # aliases only when the versions were just made: a restart must not undo live moves
            champion, challenger = self.aliases()
            if len(versions) >= 2:
                client.set_registered_model_alias(name, champion, versions[-2])
                if challenger:
                    client.set_registered_model_alias(name, challenger, versions[-1])
            else:
                client.set_registered_model_alias(name, champion, versions[-1])
            self._count(2)
        return made_model, made

    # ---------------------------------------------------------------------------- versions
    def n_versions(self, key: ModelKey, finished: int) -> int:
        """How many seeded versions the model gets (of its ``finished`` history runs, the newest): 1-3, at
        least 2 for a model that runs a challenger beside its champion (``World.challengers``)."""
        rng = random.Random(f"{self.cfg.demo.seed}:versions:{self.model_name(key)}")
        n = min(finished, rng.randint(1, 3))
        return max(n, min(finished, 2)) if key in self.world.challengers else n

    def version_plan(self, now_ms: int) -> dict[ModelKey, tuple[int, int | None]]:
        """Per model, the (champion, challenger) versions seeding gives a new registry: versions are
        numbered 1..n in order, the champion alias on the one before the newest, challenger on the newest
        (one version: champion only). Needs no server, so the simulator knows them before seeding."""
        out: dict[ModelKey, tuple[int, int | None]] = {}
        for runs in self.history(now_ms).values():
            finished: dict[ModelKey, int] = {}
            for hr in runs:
                finished[hr.key] = finished.get(hr.key, 0) + (hr.status == "FINISHED")
            for key, n_done in finished.items():
                n = self.n_versions(key, n_done)
                out[key] = (n - 1, n) if n >= 2 else (n, None)
        return out

    def champions(self) -> dict[ModelKey, int]:
        """The version each fleet model's ``champion`` alias names in the registry now."""
        champion, _ = self.aliases()
        by_name = {self.model_name(k): k for k in self.world.models}
        out: dict[ModelKey, int] = {}
        token = None
        while True:
            page = self.client.search_registered_models(max_results=1000, page_token=token)
            self._count(1)
            for rm in page:
                key = by_name.get(rm.name)
                if key is not None and champion in (rm.aliases or {}):
                    out[key] = int(rm.aliases[champion])
            token = page.token
            if not token:
                return out

    def fit_model(self, key: ModelKey, end_s: float, salt: str) -> tuple[Any, Any]:
        """A real scikit-learn forecaster of the model's building and energy type: spline features of
        every input, ridge regression, fitted on the ``TRAIN_HOURS`` simulated hours up to ``end_s`` (its
        features and measured consumption). Returns (model, training frame)."""
        import pandas as pd
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import SplineTransformer

        rng = random.Random(f"{self.cfg.demo.seed}:model:{salt}")
        interval = 3600.0 / self.cfg.demo.time_scale
        k_end = max(int(end_s // interval), TRAIN_HOURS - 1)  # simulated hours start at 0
        bi = self.world.index[(key.customer, key.building)]
        names = self.feature_names()
        truths = [self.world.truth(k) for k in range(k_end - TRAIN_HOURS + 1, k_end + 1)]
        x = pd.DataFrame({f: [float(t.features[f][bi]) for t in truths] for f in names})
        y = [float(t.actual[key.energy][bi]) for t in truths]
        model = make_pipeline(
            SplineTransformer(n_knots=rng.choice([4, 5, 6]), degree=3),
            Ridge(alpha=rng.choice([0.3, 1.0, 3.0])),
        )
        return model.fit(x, y), x

    def feature_names(self) -> list[str]:
        from simulator.world import FEATURES

        return [f for f in self.cfg.outputs.features if f in FEATURES] or list(FEATURES)

    def log_model(self, run_id: str, key: ModelKey, end_s: float, salt: str) -> None:
        """Fit the model and log it as the run's ``model`` artifact (an MLflow scikit-learn model, loadable
        with ``mlflow.pyfunc``), which the version's source ``runs:/<run>/model`` names."""
        import tempfile
        from pathlib import Path

        import mlflow.sklearn
        import sklearn
        import skops.io

        model, _ = self.fit_model(key, end_s, salt)
        # skops (MLflow's default format) trusts only what it was told to: we made this model ourselves.
        trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
        with tempfile.TemporaryDirectory(prefix="fleetmon-demo-model-") as d:
            path = Path(d) / MODEL_PATH
            mlflow.sklearn.save_model(
                model,
                str(path),
                pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
                skops_trusted_types=trusted,
            )
            self.client.log_artifacts(run_id, str(path), MODEL_PATH)
        self._count(2)

    def log_seeded_models(self, now_ms: int, stop: threading.Event | None = None) -> int:
        """A real model for every seeded forecaster version that has none yet (tag ``MODEL_TAG``); returns
        how many were logged. After seeding, on the same thread: seeding itself stays quick."""
        plan = {(hr.key, hr.history_id): hr for runs in self.history(now_ms).values() for hr in runs}
        by_name = {
            self.model_name(k): k for k in self.world.models if self.world.fleet.is_forecaster(k.model)
        }
        made = 0
        versions: list[Any] = []
        token = None
        while True:
            page = self.client.search_model_versions("", max_results=10000, page_token=token)
            self._count(1)
            versions.extend(page)
            token = page.token
            if not token:
                break
        for mv in versions:
            if stop is not None and stop.is_set():
                break
            key = by_name.get(mv.name)
            hist = (mv.tags or {}).get(HISTORY_TAG)
            if key is None or not hist or (mv.tags or {}).get(MODEL_TAG) or (key, hist) not in plan:
                continue
            self.log_model(str(mv.run_id), key, plan[(key, hist)].end_ms / 1000, f"{mv.name}/{hist}")
            self.client.set_model_version_tag(mv.name, mv.version, MODEL_TAG, MODEL_FLAVOR)
            self._count(1)
            made += 1
        return made

    # ---------------------------------------------------------------------------- live runs
    def start_run(
        self, key: ModelKey, job_id: str, t: float, trigger: str, tags: dict[str, str] | None = None
    ) -> str:
        """A RUNNING run for a training job; ``tags``: more tags (a requested retrain's reason ...)."""
        from mlflow.entities import Param

        client = self.client
        name = f"{key.customer}/{key.building}"
        exp = client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else client.create_experiment(name)
        rng = random.Random(job_id)
        run = client.create_run(
            exp_id,
            start_time=int(t * 1000),
            tags={
                **(tags or {}),
                **self.tags(key),
                JOB_TAG: job_id,
                "trigger": trigger,
                **self.code_tags("live"),
                "mlflow.runName": f"train-{key.energy}-{key.model}-{job_id[:8]}",
            },
        )
        client.log_batch(
            run.info.run_id,
            params=[Param(k, v) for k, v in self._params(rng, key).items()],
        )
        return str(run.info.run_id)

    def finish_run(
        self, key: ModelKey, run_id: str, t: float, status: str, new_version: bool, promote: bool
    ) -> None:
        from mlflow.entities import Metric

        client = self.client
        rng = random.Random(run_id)
        metrics = self._metrics(rng, key, status, quality=0.9)
        client.log_batch(run_id, metrics=[Metric(k, v, int(t * 1000), 0) for k, v in metrics.items()])
        if status == "FINISHED":
            client.log_inputs(run_id, [self.training_input(key, f"live-{int(t)}")])
        client.set_terminated(run_id, status=status, end_time=int(t * 1000))
        if status == "FINISHED" and new_version:
            name = self.model_name(key)
            tags = self.tags(key)
            if self.world.fleet.is_forecaster(key.model):
                self.log_model(run_id, key, t, run_id)
                tags[MODEL_TAG] = MODEL_FLAVOR
            mv = client.create_model_version(
                name, source=f"runs:/{run_id}/{MODEL_PATH}", run_id=run_id, tags=tags, await_creation_for=0
            )
            champion, challenger = self.aliases()
            if promote or not challenger:
                client.set_registered_model_alias(name, champion, str(mv.version))
                self.world.serving[key] = int(mv.version)  # its rows name the new champion from now on
            else:
                client.set_registered_model_alias(name, challenger, str(mv.version))


class Trainer:
    """Runs MLflow work on one thread: waits for the server, seeds, then applies live training events."""

    def __init__(self, fm: FleetMlflow, seed_now: float | None = None) -> None:
        self.fm = fm
        self.seed_now = seed_now
        self.queue: queue.Queue[tuple[str, tuple[Any, ...]] | None] = queue.Queue()
        self.stop = threading.Event()
        self.seeded = threading.Event()
        self.models_logged = threading.Event()
        self.errors = 0
        self.runs: dict[str, str] = {}  # job id -> run id
        self.thread = threading.Thread(target=self._loop, name="demo-mlflow", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self, op: str, *args: Any) -> None:
        self.queue.put((op, args))

    def close(self, timeout: float = 10.0) -> None:
        self.stop.set()
        self.queue.put(None)
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _loop(self) -> None:
        uri = self.fm.cfg.mlflow.tracking_uri
        log.info("waiting for MLflow at %s", uri)
        while not self.stop.is_set():
            if not wait_for_mlflow(uri, self.stop):
                return
            try:
                t0 = time.monotonic()
                created = self.fm.seed(self.seed_now, self.stop)
                log.info(
                    "MLflow seeded in %.1fs (%d requests): created %s",
                    time.monotonic() - t0,
                    self.fm.requests,
                    created,
                )
                self.seeded.set()
                break
            except Exception as e:  # keep trying: the server may be restarting
                self.errors += 1
                log.warning("seeding MLflow at %s failed (will retry): %s", uri, e)
                self.stop.wait(5.0)
        try:
            t0 = time.monotonic()
            made = self.fm.log_seeded_models(int((self.seed_now or time.time()) * 1000), self.stop)
            log.info("logged %d scikit-learn models of seeded versions in %.1fs", made, time.monotonic() - t0)
            # the registry's champions (a restart finds the aliases live training moved)
            self.fm.world.serving.update(self.fm.champions())
        except Exception as e:  # the versions stay without a model: fleetmon score reports load_failed
            self.errors += 1
            log.warning("logging the seeded versions' models failed: %s", e)
        self.models_logged.set()
        while not self.stop.is_set():
            item = self.queue.get()
            if item is None:
                return
            op, args = item
            try:
                if op == "start":
                    key, job_id, t, trigger, *tags = args
                    self.runs[job_id] = self.fm.start_run(key, job_id, t, trigger, *tags)
                elif op == "finish":
                    key, job_id, t, status, new_version, promote = args
                    run_id = self.runs.pop(job_id, None)
                    if run_id is not None:
                        self.fm.finish_run(key, run_id, t, status, new_version, promote)
            except Exception as e:
                self.errors += 1
                log.warning("MLflow %s for %s failed: %s", op, args[:2], e)
