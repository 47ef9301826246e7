"""The demo fleet simulator: one ``step(now)`` advances everything it writes to wall time ``now``.

Layout under ``demo.output_dir`` (``docs/formats.md``):

- ``outputs/predictions/predictions-<time>.jsonl``: every model's record for one simulated hour;
- ``outputs/actuals/actuals-<time>.jsonl``: the measured hours that arrive then (2-4 hours late);
- ``logs/<app>/...``: container logs (``simulator.logs``);
- ``ground_truth.jsonl``: the incidents, written when scheduled (``simulator.incidents``), and the
  challenger versions (``simulator.world.Challenger``);
- ``simulator.json``: start time, interval and seed of the running simulation.

Simulated hour ``k`` is the wall instant ``k * interval`` (interval = 3600 / time_scale). At start-up the
simulator backfills ``demo.backfill_hours`` hours ending now; afterwards each step writes the hours whose
instant has passed, so no timestamp is ever in the future. Output files are written whole (temporary
name, then rename) and never rewritten: a restart skips hours already on disk.

Training jobs happen now and then (and often, and failing, for a model with a ``training_failures``
incident); each is a ``Received message`` line in training-api, a ``Training job finished`` / ``Failed to
process`` line in training-processor, and, when MLflow is on, a run with the same ``job_id`` tag. Jobs are
triggered by the schedule (``schedule``), by the pipeline retrying a failing model (``retry``) or by a
request to the training API (``retrain``, ``simulator.training_api``: ``serve_training_api`` starts it, each
``step`` takes the requests accepted since the last one); a retrain that finishes always registers a new
version with the ``challenger`` alias. With ``demo.pushgateway_url`` set, every job's outcome is pushed to
the Pushgateway (``fleetmon.push``) from a worker thread.
"""

from __future__ import annotations

import calendar
import dataclasses
import json
import logging
import math
import os
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetmon.config import Config, ModelKey
from simulator.incidents import Incident, Schedule, error_factor
from simulator.ledger import FILE_NAME as LEDGER_FILE
from simulator.ledger import Ledger
from simulator.logs import DEFAULT_MAX_BYTES, Platform
from simulator.training_api import TRIGGER as RETRAIN
from simulator.training_api import OutcomePusher, RetrainQueue, RetrainRequest, TrainingApi
from simulator.world import Effects, World, choose_challengers, rfc3339

log = logging.getLogger("fleetmon.demo")

_STAMP = re.compile(r"-(\d{8}T\d{6}(?:\.\d+)?Z)\.jsonl$")


def stamp(t: float) -> str:
    return rfc3339(t).replace("-", "").replace(":", "")


def write_jsonl_atomic(path: Path, records: list[dict[str, Any]]) -> bool:
    """Write records to ``path`` whole (temp name + rename); False if the file already exists."""
    if path.exists():
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
    os.replace(tmp, path)
    return True


@dataclass
class Job:
    key: ModelKey
    job_id: str
    received: float
    finish: float
    trigger: str
    outcome: str | None = None  # "success" / "failure" once it ended
    request: RetrainRequest | None = None  # the training API request of a "retrain" job


def retrain_tags(req: RetrainRequest) -> dict[str, str]:
    """The MLflow tags of a requested retrain's run: why, by whom, the caller's request id (shortened)."""
    fields = {"reason": req.reason, "requested_by": req.requested_by, "request_id": req.request_id}
    return {f"fleetmon.retrain.{k}": v[:500] for k, v in fields.items() if v}


class Simulator:
    def __init__(
        self,
        cfg: Config,
        start: float,
        mlflow: bool = True,
        log_max_bytes: int = DEFAULT_MAX_BYTES,
        mlflow_client: Any = None,
    ) -> None:
        demo = cfg.demo
        self.cfg = cfg
        self.start = start
        self.interval = 3600.0 / demo.time_scale
        self.out = Path(demo.output_dir)
        self.pred_dir = self.out / "outputs" / "predictions"
        self.act_dir = self.out / "outputs" / "actuals"
        for d in (self.pred_dir, self.act_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.world = World(cfg.fleet, demo.seed, demo.actual_delay_hours, demo.actual_delay_overrides)
        self.schedule = Schedule(
            cfg.fleet,
            demo.seed,
            start,
            self.interval,
            demo.first_incident_after_seconds,
            self.out / "ground_truth.jsonl",
            demo.incident_duration_seconds,
        )
        # Models running a challenger beside the champion: never in a quiet building (those stay silent).
        self.world.challengers = choose_challengers(
            cfg.fleet, demo.seed, demo.challenger_share, set(self.schedule.quiet)
        )
        self._challengers_recorded = False
        self.ledger = Ledger(self.out / LEDGER_FILE)  # what was written, counted as it is written
        self.platform = Platform(
            self.out / "logs", self.world.models, demo.seed, log_max_bytes, ledger=self.ledger
        )
        k_now = self.k_at(start)
        self.first_k = k_now - demo.backfill_hours + 1
        self.next_pred_k = self.first_k
        self.next_act_j = self.first_k
        self.last_t = start
        self.files_written = 0
        self.keep_seconds = max(demo.backfill_hours * self.interval, cfg.outputs.retention_seconds) + 3600
        self._next_prune = start
        self.train_rng = random.Random(f"{demo.seed}:training")
        # fleet-wide: a training job every ~40 s for the 80-model demo, more for bigger fleets
        self.train_rate = min(0.5, len(self.world.models) / 3200.0)
        self.pending: list[Job] = []
        self.jobs: list[Job] = []  # every job received (tests read it)
        self.trainer = None
        # Retraining requests from the training API (``serve_training_api``), handed over at each step.
        self.retrain = RetrainQueue(self.world.models, demo.training_api_max_pending)
        self.api: TrainingApi | None = None
        self.pusher: OutcomePusher | None = None
        if demo.pushgateway_url:
            self.pusher = OutcomePusher(demo.pushgateway_url)
            self.pusher.start()
        # The registry's versions as seeding makes them (no server needed): the champion each model's rows
        # name, and the version each challenger's shadow rows name.
        from simulator.mlflow_seed import FleetMlflow, Trainer

        fm = FleetMlflow(cfg, self.world, mlflow_client)
        plan = fm.version_plan(int(start * 1000))
        for key, (champion, challenger) in plan.items():
            self.world.serving[key] = champion
            ch = self.world.challengers.get(key)
            if ch is not None and challenger is not None:
                self.world.challengers[key] = dataclasses.replace(
                    ch, champion_version=champion, challenger_version=challenger
                )
        if mlflow:
            self.trainer = Trainer(fm, seed_now=start)
            self.trainer.start()
        self._write_state()

    # ------------------------------------------------------------------------------- time
    def k_at(self, t: float) -> int:
        """The last simulated hour whose instant is at or before ``t``."""
        return math.floor(t / self.interval + 1e-9)

    def t_of(self, k: int) -> float:
        return k * self.interval

    def _write_state(self) -> None:
        state = {
            "start": rfc3339(self.start),
            "interval_seconds": self.interval,
            "seed": self.cfg.demo.seed,
            "first_hour": rfc3339(self.t_of(self.first_k)),
            "pid": os.getpid(),
        }
        tmp = self.out / ".simulator.json.tmp"
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        os.replace(tmp, self.out / "simulator.json")

    # ------------------------------------------------------------------------------- step
    def effects(self, t: float) -> Effects:
        eff = Effects()
        for inc in self.schedule.active(t):
            if inc.kind == "weather_station_fault":
                # the station's shifted weather reaches every model of every building on it
                shifts = {str(f): float(v) for f, v in inc.detail["shifts"].items()}
                on_station = {(b["customer"], b["building"]) for b in inc.detail["buildings"]}
                for m in self.world.models:
                    if (m.customer, m.building) in on_station:
                        eff.drift[m] = shifts
                continue
            if inc.key is None:
                continue
            if inc.kind == "data_drift":
                eff.drift[inc.key] = {str(f): float(v) for f, v in inc.detail["shifts"].items()}
            elif inc.kind == "error_growth":
                eff.error_factor[inc.key] = error_factor(inc, t)
            elif inc.kind == "stale_predictions":
                eff.stale.add(inc.key)
        return eff

    def step(self, now: float) -> None:
        """Advance to wall time ``now``: incidents, output files, logs, training jobs."""
        self.schedule.advance(now)
        if not self._challengers_recorded:
            # After the first wave's records (a reader waiting for incidents finds them first), once per run
            # like the quiet-buildings record.
            for i, ch in enumerate(self.world.challengers.values()):
                rid = f"challenger-{self.schedule.start_stamp()}-{i + 1:02d}"
                self.schedule.write_record(ch.record(rid, self.t_of(self.first_k)))
            self._challengers_recorded = True
        k_now = self.k_at(now)
        while self.next_pred_k <= k_now:
            k = self.next_pred_k
            t_k = self.t_of(k)
            recs = self.world.prediction_records(k, t_k, self.interval, self.effects(t_k))
            if write_jsonl_atomic(self.pred_dir / f"predictions-{stamp(t_k)}.jsonl", recs):
                self.files_written += 1
                self.ledger.output_file("predictions", len(recs))
            self.next_pred_k += 1
        while self.next_act_j <= k_now:
            j = self.next_act_j
            recs = self.world.actual_records(j, self.interval, self.first_k)
            if recs and write_jsonl_atomic(self.act_dir / f"actuals-{stamp(self.t_of(j))}.jsonl", recs):
                self.files_written += 1
                self.ledger.output_file("actuals", len(recs))
            self.next_act_j += 1
        if now > self.last_t:
            t0, t1 = self.last_t, now
            overlapping = [i for i in self.schedule.incidents if i.start < t1 and i.end > t0]
            self._training(t0, t1, overlapping)
            self.platform.emit(t0, t1, overlapping)
            self.platform.flush()
            self.last_t = now
        self.ledger.flush()
        if now >= self._next_prune:
            self._prune(now)
            self._next_prune = now + 300

    def _job_id(self) -> str:
        return str(uuid.UUID(int=self.train_rng.getrandbits(128), version=4))

    def serve_training_api(self, port: int | None = None) -> TrainingApi | None:
        """Start the training API on 127.0.0.1:``port`` (default ``demo.training_api_port``; 0: off).
        None when off or when the port cannot be had (logged; the simulator runs on without it)."""
        port = self.cfg.demo.training_api_port if port is None else port
        if not port:
            log.info("training API off (demo.training_api_port: 0)")
            return None
        api = TrainingApi(self.retrain, port)
        if not api.start():
            return None
        self.api = api
        return api

    def _training(self, t0: float, t1: float, incidents: list[Incident]) -> None:
        rng = self.train_rng
        arrivals: list[tuple[float, ModelKey, str, RetrainRequest | None]] = []
        t = t0
        while True:
            t += rng.expovariate(self.train_rate)
            if t > t1:
                break
            arrivals.append((t, rng.choice(self.world.models), "schedule", None))
        for inc in incidents:
            if inc.kind != "training_failures" or inc.key is None:
                continue
            # the pipeline retries the failing model every ~30 s while the incident lasts
            t = max(t0, inc.start)
            end = min(t1, inc.end)
            while True:
                t += rng.expovariate(1 / 30)
                if t > end:
                    break
                arrivals.append((t, inc.key, "retry", None))
        # Requests accepted by the training API since the last step: received when they arrived (within
        # this step's interval; a simulator behind the wall clock, fast-forwarding, receives them at t1).
        for r in self.retrain.take():
            arrivals.append((min(max(r.received, t0), t1), r.key, RETRAIN, r))
        arrivals.sort(key=lambda a: a[0])
        for t, key, trigger, req in arrivals:
            if req is None:
                job = Job(key, self._job_id(), t, t + rng.uniform(8, 25), trigger)
            else:  # its own random stream: a request never shifts the scheduled jobs of a seeded run
                job = Job(
                    key, req.job_id, t, t + random.Random(req.job_id).uniform(8, 25), trigger, request=req
                )
            self.jobs.append(job)
            self.pending.append(job)
            self.platform.training_received(t, key, job.job_id, trigger)
            if self.trainer is not None:
                if req is None:
                    self.trainer.submit("start", key, job.job_id, t, trigger)
                else:
                    self.trainer.submit("start", key, job.job_id, t, trigger, retrain_tags(req))
        due = sorted((j for j in self.pending if j.finish <= t1), key=lambda j: j.finish)
        self.pending = [j for j in self.pending if j.finish > t1]
        for job in due:
            failing = next(
                (
                    i
                    for i in incidents
                    if i.kind == "training_failures" and i.key == job.key and i.active(job.finish)
                ),
                None,
            )
            job_rng = rng
            if job.request is None:
                new_version = rng.random() < 0.25
                # never for a model running a challenger: its ground truth names the champion it beats
                promote = rng.random() < 0.5 and job.key not in self.world.challengers
            else:  # a requested retrain always yields a new version, as challenger (never promoted)
                new_version, promote = True, False
                job_rng = random.Random(f"{job.job_id}:finish")
            if failing is not None:
                self.platform.training_failed(
                    job.finish, job.key, job.job_id, str(failing.detail.get("exception", "ValueError"))
                )
                status = "FAILED"
            else:
                mae = job_rng.uniform(0.04, 0.1) * float(
                    self.world.typical_consumption(job.key.energy)[
                        self.world.index[(job.key.customer, job.key.building)]
                    ]
                )
                self.platform.training_finished(
                    job.finish, job.key, job.job_id, job.finish - job.received, mae
                )
                status = "FINISHED"
            job.outcome = "success" if status == "FINISHED" else "failure"
            if job.request is not None:
                self.retrain.done(job.job_id, ok=status == "FINISHED")
            if self.trainer is not None:
                self.trainer.submit("finish", job.key, job.job_id, job.finish, status, new_version, promote)
            if self.pusher is not None:
                self.pusher.submit(job.key, job.outcome, job.finish - job.received, job.finish)

    def _prune(self, now: float) -> None:
        """Delete output files older than the retention horizon (a long demo must not fill the disk)."""
        horizon = now - self.keep_seconds
        for d in (self.pred_dir, self.act_dir):
            for p in d.glob("*.jsonl"):
                m = _STAMP.search(p.name)
                if not m:
                    continue
                try:
                    t = calendar.timegm(time.strptime(m.group(1).split(".")[0], "%Y%m%dT%H%M%S"))
                except ValueError:
                    continue
                if t < horizon:
                    p.unlink(missing_ok=True)

    # -------------------------------------------------------------------------------- run
    def fast_forward(self, hours: int, stop: threading.Event | None = None) -> None:
        """Simulate ``hours`` simulated hours after start-up without sleeping."""
        for i in range(hours + 1):
            if stop is not None and stop.is_set():
                break
            self.step(self.start + i * self.interval)

    def run_forever(self, stop: threading.Event, tick: float = 1.0) -> None:
        errors = 0
        while not stop.is_set():
            try:
                self.step(time.time())
            except Exception:  # disk full, permissions...: keep the demo alive, say so
                errors += 1
                log.exception("simulator step failed (%d so far)", errors)
            stop.wait(tick)

    def close(self, drain_seconds: float = 0.0) -> None:
        """Stop the training API, the Pushgateway and MLflow workers; with ``drain_seconds``, first let the
        workers finish queued work (pushes get up to 5 s even without)."""
        if self.api is not None:
            self.api.close()
            self.api = None
        if self.pusher is not None:
            self.pusher.close(timeout=max(5.0, drain_seconds))
            self.pusher = None
        if self.trainer is None:
            return
        if drain_seconds > 0:
            deadline = time.monotonic() + drain_seconds
            while time.monotonic() < deadline and (
                not self.trainer.seeded.is_set() or not self.trainer.queue.empty()
            ):
                if not self.trainer.thread.is_alive():
                    break
                time.sleep(0.1)
        self.trainer.close()
