"""Incidents injected into the demo fleet on a deterministic schedule, and the ground truth they leave.

Incidents come in *waves*. Wave 0 starts ``first_incident_after_seconds`` after start-up and holds every
kind, staggered over the first 105 s, so within five minutes of start-up all eight kinds are under way. Later
waves (one per ``period``) hold three to five kinds. Every incident ends before the next wave begins (a gap
of a few minutes), so alerts fire, resolve, and fire again elsewhere. Within a wave, every model incident
has a building of its own, and the platform incidents an app of their own: a 5xx burst, slow answers and
unhealthy replicas never hit the same app at once, so each page has one cause (the 5xx burst takes the
gateway, so wave 0's latency spike is on model-serving).

A ``weather_station_fault`` is the one incident with a shared cause: the weather feed of one station goes
wrong, so every model of every building reporting to it sees the same shifted weather (one page for the
station, ``WeatherFeedFault``, not one per model). The station is fixed per fleet (``fault_station``: the
smallest station with two or more buildings, preferring one that spans customers, so the fault cannot be
mistaken for a customer's own data feed); its buildings are never quiet, and no other incident of the wave
touches them. Its record names the station and the buildings (``detail.weather_station``,
``detail.buildings``).

A share of buildings (about 40 % of each customer's, at least one when the customer has two or more) is
*quiet*: no incident ever targets them, so an end-to-end test can check that they raise nothing. The first
ground-truth record (kind ``quiet_buildings``) lists them. The simulator adds one record of kind
``challenger`` per forecaster running a challenger version (``simulator.world.Challenger``; never in a quiet
building), after the first wave: readers of the incidents skip that kind.

Everything is decided by ``random.Random(f"{seed}:...")`` streams: the same seed, fleet and start time give
the same schedule, whenever a wave happens to be generated.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetmon.config import FleetConfig, ModelKey
from simulator.world import rfc3339

KINDS = (
    "data_drift",
    "error_growth",
    "stale_predictions",
    "training_failures",
    "http_5xx_burst",
    "replica_unhealthy",
    "latency_spike",
    "weather_station_fault",
)
MODEL_KINDS = ("data_drift", "error_growth", "stale_predictions", "training_failures")
# Apps whose replicas can turn unhealthy (the gateway has its own incident kind).
REPLICA_APPS = ("api", "model-serving", "training-api", "training-processor")
# Apps whose access logs carry request durations (the gateway's nginx `$request_time`, model-serving's JSON
# request log), what slows them down, and by how much: every answer that does real work takes `factor` times
# longer (health probes and cached static files do not). Sized so the p95 rises 6-10x, well past the
# ApiHighLatency thresholds (gateway 0.5 s, model-serving 0.1 s; normally about 0.17 s and 0.05 s).
LATENCY_APPS = ("gateway", "model-serving")
LATENCY_CAUSES = {
    "gateway": "api upstream slow (database connection pool exhausted)",
    "model-serving": "CPU throttled (noisy neighbour on the node)",
}
LATENCY_FACTOR = {"gateway": (8.0, 12.0), "model-serving": (6.0, 9.0)}
# Drifting inputs: the building's weather feed going wrong (a swapped or faulty station), so every weather
# feature shifts at once -- most of the model's inputs drift, which is what Evidently's dataset drift (share of
# drifted columns >= 0.5) flags. Shifts are ~3x each feature's weekly spread so a KS test on a dozen points
# tells them apart from a week of reference within a few points.
DRIFT_SHIFTS: dict[str, tuple[float, float]] = {
    "outdoor_temperature": (14.0, 20.0),
    "humidity": (-45.0, -35.0),
    "solar_radiation": (350.0, 500.0),
}


@dataclass
class Incident:
    id: str
    kind: str
    start: float
    end: float
    key: ModelKey | None = None
    app: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def active(self, t: float) -> bool:
        return self.start <= t < self.end

    def progress(self, t: float) -> float:
        return min(1.0, max(0.0, (t - self.start) / (self.end - self.start)))

    def record(self) -> dict[str, Any]:
        labels = (
            self.key.labels()
            if self.key
            else {"customer": None, "building": None, "energy": None, "model": None}
        )
        return {
            "id": self.id,
            "kind": self.kind,
            **labels,
            "app": self.app,
            "start": rfc3339(self.start),
            "end": rfc3339(self.end),
            "detail": self.detail,
        }


def fault_station(fleet: FleetConfig) -> tuple[str, list[tuple[str, str]]] | None:
    """The station whose weather feed the demo breaks, and its buildings: the smallest station with two or
    more buildings, then the one spanning the most customers, then by name (None: no such station)."""
    stations: dict[str, list[tuple[str, str]]] = {}
    for c in fleet.customers:
        for b in c.buildings:
            if b.weather_station:
                stations.setdefault(b.weather_station, []).append((c.id, b.id))
    shared = [(s, bs) for s, bs in stations.items() if len(bs) >= 2]
    if not shared:
        return None
    return min(shared, key=lambda sb: (len(sb[1]), -len({c for c, _ in sb[1]}), sb[0]))


def choose_quiet(fleet: FleetConfig, seed: int, share: float = 0.4) -> list[tuple[str, str]]:
    rng = random.Random(f"{seed}:quiet")
    station = fault_station(fleet)
    faulty = set(station[1]) if station else set()
    quiet: list[tuple[str, str]] = []
    for c in fleet.customers:
        # the fault station's buildings are never quiet: its incident targets them all
        ids = [b.id for b in c.buildings if (c.id, b.id) not in faulty]
        n = min(len(ids) - 1, max(1, round(share * len(ids)))) if len(ids) >= 2 else 0
        quiet.extend((c.id, b) for b in sorted(rng.sample(ids, n)))
    return quiet


class Schedule:
    """The incident schedule of one simulator run (start-up at wall time ``start``)."""

    def __init__(
        self,
        fleet: FleetConfig,
        seed: int,
        start: float,
        interval: float,
        first_after: float,
        ground_truth: Path | None = None,
        durations: tuple[float, float] | None = None,
    ) -> None:
        self.fleet = fleet
        self.seed = seed
        self.start = start
        self.interval = interval
        self.first_after = first_after
        self.path = ground_truth
        self.quiet = choose_quiet(fleet, seed)
        self.station = fault_station(fleet)
        quiet = set(self.quiet)
        self.pool = [m for m in fleet.models() if (m.customer, m.building) not in quiet]
        self.forecasters = [m for m in self.pool if fleet.is_forecaster(m.model)]
        # Durations: long enough for a drift window of a dozen simulated hours and for `for:` clauses.
        self.dur_min = max(480.0, 16 * interval)
        self.dur_max = max(840.0, 28 * interval)
        if durations is not None:  # demo.incident_duration_seconds (tests: short incidents)
            self.dur_min, self.dur_max = durations
        self.gap = max(240.0, 8 * interval)
        self.spread = 120.0
        self.period = self.spread + self.dur_max + self.gap
        self.incidents: list[Incident] = []
        self._next_wave = 0
        self._next_id = 1 + self._existing_ids()
        if self.path is not None:
            self._write(
                {
                    "id": f"quiet-{self.start_stamp()}",
                    "kind": "quiet_buildings",
                    "customer": None,
                    "building": None,
                    "energy": None,
                    "model": None,
                    "app": None,
                    "start": rfc3339(self.start),
                    "end": None,
                    "detail": {"buildings": [{"customer": c, "building": b} for c, b in self.quiet]},
                }
            )

    def start_stamp(self) -> str:
        return rfc3339(self.start).replace("-", "").replace(":", "")

    def _existing_ids(self) -> int:
        """Ids continue after a restart (the ground truth file is appended to, never rewritten)."""
        if self.path is None or not self.path.exists():
            return 0
        top = 0
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    rid = str(json.loads(line).get("id", ""))
                except (ValueError, AttributeError):
                    continue
                if rid.startswith("inc-") and rid[4:].isdigit():
                    top = max(top, int(rid[4:]))
        return top

    def write_record(self, rec: dict[str, Any]) -> None:
        """Append another ground-truth record (e.g. a challenger's); nothing without a ground-truth file."""
        if self.path is not None:
            self._write(rec)

    def _write(self, rec: dict[str, Any]) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    def wave_start(self, w: int) -> float:
        return self.start + self.first_after + w * self.period

    def advance(self, now: float) -> list[Incident]:
        """Schedule every wave that starts within one period of ``now``; return the new incidents."""
        new: list[Incident] = []
        while self.wave_start(self._next_wave) <= now + self.period:
            new.extend(self._make_wave(self._next_wave))
            self._next_wave += 1
        for inc in new:
            self.incidents.append(inc)
            if self.path is not None:
                self._write(inc.record())
        # forget incidents long over (the ground truth file keeps them)
        horizon = now - 2 * self.period
        self.incidents = [i for i in self.incidents if i.end >= horizon]
        return new

    def active(self, t: float) -> list[Incident]:
        return [i for i in self.incidents if i.active(t)]

    def _make_wave(self, w: int) -> list[Incident]:
        rng = random.Random(f"{self.seed}:wave:{w}")
        t0 = self.wave_start(w)
        if w == 0:
            kinds = list(KINDS)
            rng.shuffle(kinds)
            offsets = [15.0 * i for i in range(len(kinds))]
        else:
            kinds = rng.sample(KINDS, rng.randint(3, 5))
            offsets = sorted(rng.uniform(0, self.spread) for _ in kinds)
        if self.station is None and "weather_station_fault" in kinds:
            kinds.remove("weather_station_fault")  # a fleet without a shared station
            offsets = offsets[: len(kinds)]
        taken_buildings: set[tuple[str, str]] = set()
        if "weather_station_fault" in kinds and self.station is not None:
            taken_buildings.update(self.station[1])  # the station's buildings are its incident's alone
        taken_models: set[ModelKey] = set()
        apps = self._wave_apps(rng, kinds)
        out: list[Incident] = []
        for kind, off in zip(kinds, offsets, strict=True):
            start = t0 + off
            end = start + rng.uniform(self.dur_min, self.dur_max)
            inc = Incident(id="", kind=kind, start=start, end=end)
            if kind in MODEL_KINDS:
                cands = self.forecasters if kind == "error_growth" else self.pool
                key = self._pick(rng, cands, taken_buildings, taken_models)
                if key is None:
                    continue
                taken_models.add(key)
                taken_buildings.add((key.customer, key.building))
                inc.key = key
                if kind == "data_drift":
                    inc.detail = {
                        "cause": "weather feed fault",
                        "shifts": {
                            f: round(rng.uniform(lo, hi), 1) for f, (lo, hi) in sorted(DRIFT_SHIFTS.items())
                        },
                    }
                elif kind == "error_growth":
                    inc.detail = {"max_error_factor": round(rng.uniform(2.0, 2.6), 2)}
                elif kind == "training_failures":
                    inc.app = "training-processor"
                    inc.detail = {"exception": rng.choice(["ValueError", "MemoryError", "KeyError"])}
            elif kind == "weather_station_fault":
                assert self.station is not None
                station, buildings = self.station
                inc.detail = {
                    "cause": "weather feed fault",
                    "weather_station": station,
                    "buildings": [{"customer": c, "building": b} for c, b in buildings],
                    "shifts": {
                        f: round(rng.uniform(lo, hi), 1) for f, (lo, hi) in sorted(DRIFT_SHIFTS.items())
                    },
                }
            elif kind == "http_5xx_burst":
                inc.app = "gateway"
                inc.detail = {"share_5xx": round(rng.uniform(0.3, 0.5), 2)}
            elif kind == "latency_spike":
                inc.app = apps[kind]
                inc.detail = {
                    "factor": round(rng.uniform(*LATENCY_FACTOR[inc.app]), 1),
                    "cause": LATENCY_CAUSES[inc.app],
                }
            else:
                inc.app = apps[kind]
                inc.detail = {"reasons": ["ReplicaUnhealthy", "BackoffLimitExceeded"]}
            inc.id = f"inc-{self._next_id:03d}"
            self._next_id += 1
            out.append(inc)
        return out

    @staticmethod
    def _wave_apps(rng: random.Random, kinds: list[str]) -> dict[str, str]:
        """The app of each platform incident of a wave, a different one for each (the 5xx burst is the
        gateway's, then the latency spike, then the unhealthy replicas pick among the apps left)."""
        taken = {"gateway"} if "http_5xx_burst" in kinds else set()
        apps: dict[str, str] = {}
        for kind, cands in (("latency_spike", LATENCY_APPS), ("replica_unhealthy", REPLICA_APPS)):
            if kind in kinds:
                free = [a for a in cands if a not in taken]
                apps[kind] = rng.choice(free)
                taken.add(apps[kind])
        return apps

    @staticmethod
    def _pick(
        rng: random.Random,
        cands: list[ModelKey],
        taken_buildings: set[tuple[str, str]],
        taken_models: set[ModelKey],
    ) -> ModelKey | None:
        """A model in a building no other incident of the wave touches (any free model if none)."""
        free = [m for m in cands if (m.customer, m.building) not in taken_buildings]
        if not free:
            free = [m for m in cands if m not in taken_models]
        return rng.choice(free) if free else None


def error_factor(inc: Incident, t: float) -> float:
    """A forecaster's error factor: grows from 1 to ``max_error_factor`` over the incident (smoothly)."""
    top = float(inc.detail.get("max_error_factor", 2.0))
    return 1.0 + (top - 1.0) * math.sqrt(inc.progress(t))
