"""The physical world of the demo fleet: weather, occupancy, consumption, and what the models say about it.

Everything is a pure function of (seed, fleet, simulated hour ``k``): the same seed gives the same data on
every run, a restart continues the same series, and actuals for an hour can be recomputed when they are
due. Simulated hour ``k`` happens at wall time ``k * interval`` (interval = 3600 / time_scale), so the
simulated calendar (hour of day, weekday, season) runs ``time_scale`` times faster than the wall clock.

- outdoor temperature: season (colder in the north) + a daily cycle + slow "weather" (sum of sinusoids with
  per-station phases) + noise; solar radiation from day length, season and cloudiness; humidity opposite to
  the daily temperature cycle.
- occupancy: a per building-type weekly profile (offices and schools on weekdays, retail every day, ...).
- electricity (kWh/h): volume x intensity x (base load + occupancy); heating (kWh/h): volume x insulation x
  (degree-hours below 17 °C + hot water); multiplicative noise; ~1 % of hours carry a true anomaly
  (a spike or a dip in the measured consumption).
- forecasters predict the expected consumption from the features they are given (so a drifted input
  feature also hurts the forecast), with a small per-model bias and noise; anomaly detectors compare the
  measured hour with their expectation and give a score in 0..1 and a flag.
- model versions: every forecaster row names the version it comes from (``model_version``: the MLflow
  registry's champion version, ``World.serving``, known from the seeding plan before MLflow answers and
  kept up to date as live training promotes; ``alias: "champion"``). A few forecasters
  (``demo.challenger_share``, never in a quiet building) also run their registry challenger beside it: a
  shadow row (``alias: "challenger"``) for the same target whose error is ``CHALLENGER_NOISE`` times the
  champion's (truly better for half of them, worse for the others). As many anomaly detectors run a
  challenger too, always a worse, jumpy one (it flags from ``DETECTOR_CHALLENGER_Z`` instead of
  ``DETECTOR_Z``: every true anomaly and a false alarm on about one hour in eight). The ground truth
  (``Challenger.record``) says which is which; actuals carry ``anomaly_label`` (the hour's true anomaly),
  what detectors' versions are scored against. The other versions' predictions are fleetmon's to make
  (``fleetmon score``: the registry's versions are real scikit-learn models, simulator.mlflow_seed).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from fleetmon.config import FleetConfig, ModelKey
from fleetmon.sharding import stable_hash

FEATURES = ("outdoor_temperature", "solar_radiation", "hour_of_day", "day_of_week", "occupancy", "humidity")

# building type -> (electricity kWh per m³ per hour at full occupancy scale, heating multiplier)
INTENSITY: dict[str, tuple[float, float]] = {
    "office": (0.0035, 1.0),
    "school": (0.0025, 1.1),
    "hospital": (0.0060, 1.4),
    "retail": (0.0050, 0.9),
    "residential": (0.0015, 1.2),
    "station": (0.0040, 0.8),
}
# heating kWh per m³ per degree-hour below the balance point (Finnish stock: ~40 kWh/m³/year)
HEATING_PER_M3_K = 0.00042
BALANCE_POINT_C = 17.0
ANOMALY_PROBABILITY = 0.01
ANOMALY_FLAG_THRESHOLD = 0.5
# Model versions of the forecasters' rows (see the module docstring).
CHAMPION_VERSION = 1
# A challenger's error as a multiple of its champion's: better -> 0.4x, worse -> 1.5x (the champion's bias,
# noise and incident effects, and the part of the measured hour's own variation it misses). A true anomaly
# (1 % of hours) surprises both alike: that hour the challenger forecasts what the champion does. Why not
# independent noise: with squared loss the few anomaly hours (errors ~20x the usual) would decide the loss
# differential, and a Diebold-Mariano test on a few days of targets could not tell a better challenger
# from chance. This way a better one's squared loss is lower by 84 % on every other hour (~20-84 % over a
# window with anomalies), past outputs.versions' margin (5 %) at p << alpha (0.05).
CHALLENGER_NOISE = {True: 0.4, False: 1.5}
# An anomaly detector's champion flags from |z| above 4 (z: the measured hour's relative deviation from the
# expectation in units of 5 %; the measured noise alone is ~0.8 z), its challenger from 1.25: the same true
# anomalies, and a false alarm on about one hour in eight.
DETECTOR_Z = 4.0
DETECTOR_CHALLENGER_Z = 1.25


def is_heating_like(energy: str) -> bool:
    return "heat" in energy.lower()


@dataclass
class Effects:
    """What incidents do to the models at one simulated hour."""

    # model key -> {feature: additive shift} of its input features
    drift: dict[ModelKey, dict[str, float]] = field(default_factory=dict)
    # forecaster key -> multiplicative error factor (1.0 = healthy)
    error_factor: dict[ModelKey, float] = field(default_factory=dict)
    # models that write nothing
    stale: set[ModelKey] = field(default_factory=set)


@dataclass(frozen=True)
class Challenger:
    """A challenger version a forecaster runs beside its champion (shadow predictions)."""

    key: ModelKey
    better: bool  # truly better than the champion (smaller noise), else worse
    detector: bool = False  # an anomaly detector's challenger (flags from a lower threshold)
    champion_version: int = CHAMPION_VERSION
    challenger_version: int = CHAMPION_VERSION + 1

    @property
    def noise_factor(self) -> float:
        """Forecasters: its error as a multiple of the champion's (``CHALLENGER_NOISE``); anomaly detectors
        (always worse): 1, they differ in their threshold (``DETECTOR_CHALLENGER_Z``)."""
        return 1.0 if self.detector else CHALLENGER_NOISE[self.better]

    def record(self, rid: str, start: float) -> dict[str, Any]:
        """Its ground-truth record (the format of ``simulator.incidents.Incident.record``): from ``start``
        (the first simulated hour written), no end."""
        return {
            "id": rid,
            "kind": "challenger",
            **self.key.labels(),
            "app": None,
            "start": rfc3339(start),
            "end": None,
            "detail": {
                "champion_version": self.champion_version,
                "challenger_version": self.challenger_version,
                "better": self.better,
                "detector": self.detector,
                "noise_factor": self.noise_factor,
            },
        }


def choose_challengers(
    fleet: FleetConfig, seed: int, share: float, exclude: set[tuple[str, str]]
) -> dict[ModelKey, Challenger]:
    """Models that run a challenger: ``share`` of the forecasters outside the buildings ``exclude`` (the quiet
    ones; at least one when ``share`` > 0), half of them (rounded up) with a better challenger, and ``share``
    of the anomaly detectors there, each with a worse (jumpy) one."""
    if share <= 0:
        return {}
    free = [m for m in fleet.models() if (m.customer, m.building) not in exclude]
    better: dict[ModelKey, bool] = {}  # forecasters' challengers
    jumpy: list[ModelKey] = []  # anomaly detectors' challengers
    cands = [m for m in free if fleet.is_forecaster(m.model)]
    if cands:
        rng = random.Random(f"{seed}:challengers")
        chosen = rng.sample(cands, min(len(cands), max(1, round(share * len(cands)))))
        n_better = (len(chosen) + 1) // 2  # the sample's order is random: its first half is better
        better.update((m, i < n_better) for i, m in enumerate(chosen))
    # Anomaly detectors: the champion already flags nearly every true anomaly and little else (an anomaly is
    # x1.6..2.5 or x0.2..0.5, far beyond the noise), so a challenger can only be worse: a jumpy one.
    dets = [m for m in free if fleet.is_anomaly_detector(m.model)]
    if dets:
        rng = random.Random(f"{seed}:detector-challengers")
        jumpy = rng.sample(dets, min(len(dets), max(1, round(share * len(dets)))))
    picked = {m: Challenger(m, better=b) for m, b in better.items()}
    picked |= {m: Challenger(m, better=False, detector=True) for m in jumpy}
    return {m: picked[m] for m in free if m in picked}  # in fleet order


@dataclass
class StepTruth:
    k: int
    features: dict[str, np.ndarray]  # feature -> per building
    expected: dict[str, np.ndarray]  # energy -> expected consumption per building (kWh)
    actual: dict[str, np.ndarray]  # energy -> measured consumption per building (kWh)
    anomaly: dict[str, np.ndarray]  # energy -> bool per building: a true anomaly this hour
    regular: dict[str, np.ndarray]  # energy -> the measured hour without its anomaly (expected x noise)


def _occupancy_profile(btype: str, hour: int, dow: int, doy: int) -> float:
    weekday = dow < 5
    if btype == "office":
        if not weekday:
            return 0.05
        return 0.85 if 8 <= hour < 17 else 0.4 if hour in (7, 17) else 0.03
    if btype == "school":
        if not weekday or 152 <= doy < 225:  # weekends and the summer break
            return 0.03
        return 0.9 if 8 <= hour < 15 else 0.3 if hour in (7, 15) else 0.02
    if btype == "hospital":
        return 0.9 if 7 <= hour < 20 else 0.6
    if btype == "retail":
        if 9 <= hour < 21:
            return 0.9 if not weekday else 0.65
        return 0.02
    if btype == "residential":
        if hour >= 22 or hour < 7:
            return 0.9
        return 0.75 if not weekday or hour >= 17 else 0.35
    if btype == "station":
        if 7 <= hour < 9 or 16 <= hour < 18:
            return 0.9 if weekday else 0.5
        return 0.5 if 5 <= hour < 23 else 0.05
    return 0.9 if 8 <= hour < 17 and weekday else 0.1


class World:
    """The fleet's buildings and models, and their data at any simulated hour."""

    def __init__(
        self,
        fleet: FleetConfig,
        seed: int,
        actual_delay_hours: tuple[int, int] = (2, 4),
        actual_delay_overrides: dict[str, int] | None = None,
    ) -> None:
        self.fleet = fleet
        self.seed = seed
        self.buildings = fleet.buildings()
        n = len(self.buildings)
        self.index = {(c.id, b.id): i for i, (c, b) in enumerate(self.buildings)}
        self.volume = np.array([b.volume_m3 or 10_000.0 for _, b in self.buildings])
        self.lat = np.array([b.latitude or 60.2 for _, b in self.buildings])
        self.btype = [b.building_type for _, b in self.buildings]
        # weather is shared by buildings reporting to the same station
        stations = sorted({b.weather_station or f"site-{c.id}-{b.id}" for c, b in self.buildings})
        st_index = {s: i for i, s in enumerate(stations)}
        self.station_of = np.array(
            [st_index[b.weather_station or f"site-{c.id}-{b.id}"] for c, b in self.buildings]
        )
        self.n_stations = len(stations)
        phases = np.array(
            [[(stable_hash(seed, s, j) % 10_000) / 10_000 * 2 * math.pi for j in range(4)] for s in stations]
        )
        self.weather_phase = phases.reshape(len(stations), 4)
        # per building constants
        r = np.array(
            [
                [(stable_hash(seed, c.id, b.id, j) % 100_000) / 100_000 for j in range(6)]
                for c, b in self.buildings
            ]
        ).reshape(n, 6)
        self.insulation = 0.7 + 0.6 * r[:, 0]
        self.e_intensity = np.array([INTENSITY.get(t, (0.003, 1.0))[0] for t in self.btype]) * (
            0.8 + 0.4 * r[:, 1]
        )
        self.h_mult = np.array([INTENSITY.get(t, (0.003, 1.0))[1] for t in self.btype])
        # actuals arrive lo..hi simulated hours after the hour they measure (demo.actual_delay_hours), or
        # the building's own delay (demo.actual_delay_overrides, by building id)
        lo, hi = actual_delay_hours
        lag = (lo + (r[:, 2] * (hi - lo + 1)).astype(int)).clip(lo, hi)
        overrides = actual_delay_overrides or {}
        unknown = sorted(set(overrides) - {b.id for _, b in self.buildings})
        if unknown:
            raise ValueError(
                f"demo.actual_delay_overrides: no such building in the fleet: {', '.join(unknown)}"
            )
        self.actual_lag = np.array(
            [overrides.get(b.id, int(lag[i])) for i, (_, b) in enumerate(self.buildings)]
        )
        self.energies = {(c.id, b.id): list(b.energy_types or fleet.energy_types) for c, b in self.buildings}
        self.models: list[ModelKey] = fleet.models()
        # per model constants: bias and noise of its forecasts
        self.model_bias = {
            m: ((stable_hash(seed, "bias", *m.labels().values()) % 10_000) / 10_000 - 0.5) * 0.04
            for m in self.models
        }
        self.model_noise = {
            m: 0.04 + (stable_hash(seed, "noise", *m.labels().values()) % 10_000) / 10_000 * 0.04
            for m in self.models
        }
        self._typical: dict[str, np.ndarray] = {}
        # forecasters running a challenger version beside the champion (set by the simulator)
        self.challengers: dict[ModelKey, Challenger] = {}
        # the registry's champion version of each forecaster, which its rows name (set by the simulator
        # from the seeding plan, then from MLflow; CHAMPION_VERSION until then)
        self.serving: dict[ModelKey, int] = {}

    # ---------------------------------------------------------------------------------- truth
    def truth(self, k: int) -> StepTruth:
        n = len(self.buildings)
        rng = np.random.default_rng([self.seed, k & 0xFFFFFFFF, k >> 32])
        hour, day = k % 24, k // 24
        dow, doy = day % 7, day % 365
        season = math.cos(2 * math.pi * (doy - 20) / 365)  # 1 in mid-January, -1 in mid-July
        ph = self.weather_phase[self.station_of]
        t_days = k / 24.0
        weather = (
            1.0 * np.sin(2 * math.pi * t_days / 3.1 + ph[:, 0])
            + 0.6 * np.sin(2 * math.pi * t_days / 6.7 + ph[:, 1])
            + 0.4 * np.sin(2 * math.pi * t_days / 1.7 + ph[:, 2])
        )
        # Day-to-day weather is kept small next to the hourly spread on purpose: a drift test on one
        # simulated day against a week must not flag an incident-free building most of the time.
        st_noise = rng.normal(0.0, 2.0, self.n_stations)[self.station_of]
        temp = (
            4.5
            - 0.9 * (self.lat - 60.0)
            - 11.0 * season
            + (2.0 + 1.5 * (1 - season) / 2) * math.cos(2 * math.pi * (hour - 15) / 24)
            + weather
            + st_noise
        )
        # day length shrinks towards the north in winter and grows in summer
        day_len = np.clip(12.0 - 6.5 * season * (1 + (self.lat - 60.0) / 10.0), 2.0, 22.0)
        sunrise = 12.5 - day_len / 2
        into_day = (hour + 0.5 - sunrise) / day_len
        elevation = np.where((into_day > 0) & (into_day < 1), np.sin(np.pi * np.clip(into_day, 0, 1)), 0.0)
        cloud = np.clip(
            0.6 + 0.3 * np.sin(2 * math.pi * t_days / 2.3 + ph[:, 3]) + rng.normal(0, 0.12, n), 0.1, 1.0
        )
        solar = np.round(np.maximum(0.0, (430.0 - 350.0 * season) * elevation * cloud), 1)
        humidity = np.clip(
            76.0 + 8.0 * season + 10.0 * math.cos(2 * math.pi * (hour - 5) / 24) + rng.normal(0, 4.0, n),
            15.0,
            100.0,
        )
        base_occ = np.array([_occupancy_profile(t, hour, dow, doy) for t in self.btype])
        occupancy = np.clip(base_occ + rng.normal(0, 0.05, n), 0.0, 1.0)
        features = {
            "outdoor_temperature": np.round(temp, 2),
            "solar_radiation": solar,
            "hour_of_day": np.full(n, float(hour)),
            "day_of_week": np.full(n, float(dow)),
            "occupancy": np.round(occupancy, 3),
            "humidity": np.round(humidity, 1),
        }
        expected: dict[str, np.ndarray] = {}
        actual: dict[str, np.ndarray] = {}
        anomaly: dict[str, np.ndarray] = {}
        regular: dict[str, np.ndarray] = {}
        for e in sorted({e for es in self.energies.values() for e in es}):
            exp = self.expected(e, features)
            noise = rng.lognormal(0.0, 0.04, n)
            is_anom = rng.random(n) < ANOMALY_PROBABILITY
            # an anomaly is a spike (x1.6..2.5) or a dip (x0.2..0.5) in the measured hour
            spike = rng.random(n) < 0.6
            factor = np.where(spike, rng.uniform(1.6, 2.5, n), rng.uniform(0.2, 0.5, n))
            expected[e] = exp
            actual[e] = np.round(exp * noise * np.where(is_anom, factor, 1.0), 3)
            anomaly[e] = is_anom
            regular[e] = exp * noise
        return StepTruth(k, features, expected, actual, anomaly, regular)

    def expected(
        self, energy: str, f: dict[str, np.ndarray], idx: slice | np.ndarray | None = None
    ) -> np.ndarray:
        """Expected consumption (kWh for the hour) given features: what a good model learns.

        ``f`` holds one value per building (or per building in ``idx``).
        """
        sel = slice(None) if idx is None else idx
        volume = self.volume[sel]
        occ = f["occupancy"]
        if is_heating_like(energy):
            degree = np.maximum(0.0, BALANCE_POINT_C - f["outdoor_temperature"])
            hot_water = 2.0 * (0.3 + 0.7 * occ)
            solar_gain = f["solar_radiation"] / 400.0
            heat = volume * HEATING_PER_M3_K * self.insulation[sel] * self.h_mult[sel]
            return heat * np.maximum(0.3, degree + hot_water - solar_gain)
        lighting = 1.0 + 0.15 * np.clip(1.0 - f["solar_radiation"] / 300.0, 0.0, 1.0) * occ
        return volume * self.e_intensity[sel] * (0.35 + 0.65 * occ) * lighting

    def typical_consumption(self, energy: str) -> np.ndarray:
        """Mean expected consumption per building over a simulated winter week (scale of MLflow metrics)."""
        if energy not in self._typical:
            vals = [self.expected(energy, self.truth(k).features) for k in range(0, 168, 7)]
            self._typical[energy] = np.mean(vals, axis=0)
        return self._typical[energy]

    # -------------------------------------------------------------------------------- records
    def prediction_records(
        self, k: int, t_k: float, interval: float, effects: Effects
    ) -> list[dict[str, Any]]:
        """What every (non-stale) model writes for simulated hour ``k`` (wall time ``t_k``)."""
        truth = self.truth(k)
        rng = np.random.default_rng([self.seed, 7, k & 0xFFFFFFFF, k >> 32])
        target = rfc3339(t_k)
        made_forecast = rfc3339(t_k - 0.25 * interval)
        out: list[dict[str, Any]] = []
        draws = rng.normal(0.0, 1.0, (len(self.models), 2))
        for mi, m in enumerate(self.models):
            if m in effects.stale:
                continue
            bi = self.index[(m.customer, m.building)]
            feats = {f: float(truth.features[f][bi]) for f in FEATURES}
            if m in effects.drift:
                for name, shift in effects.drift[m].items():
                    if name in feats:
                        feats[name] = _clip_feature(name, feats[name] + shift)
                seen = self.expected(m.energy, {f: np.array([v]) for f, v in feats.items()}, np.array([bi]))[
                    0
                ]
            else:
                seen = float(truth.expected[m.energy][bi])
            rec: dict[str, Any] = {**m.labels()}
            if self.fleet.is_anomaly_detector(m.model):
                measured = float(truth.actual[m.energy][bi])
                z = (measured / max(seen, 1e-9) - 1.0) / 0.05
                score = _anomaly_score(z, DETECTOR_Z, draws[mi, 0])
                rec.update(
                    made_at=target,
                    target_time=target,
                    anomaly_score=round(score, 4),
                    anomaly_flag=int(score >= ANOMALY_FLAG_THRESHOLD),
                    model_version=self.serving.get(m, CHAMPION_VERSION),
                    alias="champion",
                )
            else:
                factor = effects.error_factor.get(m, 1.0)
                noise = self.model_noise[m] * factor
                pred = seen * (1.0 + self.model_bias[m]) * factor * (1.0 + noise * draws[mi, 1])
                rec.update(
                    made_at=made_forecast,
                    target_time=target,
                    prediction=round(float(max(0.0, pred)), 3),
                    model_version=self.serving.get(m, CHAMPION_VERSION),
                    alias="champion",
                )
            feats_out: dict[str, float | int] = dict(feats)
            for f in ("hour_of_day", "day_of_week"):
                if f in feats_out:
                    feats_out[f] = int(feats_out[f])
            rec["features"] = feats_out
            out.append(rec)
            ch = self.challengers.get(m)
            if ch is not None and ch.detector:
                score = _anomaly_score(z, DETECTOR_CHALLENGER_Z, draws[mi, 0])
                out.append(
                    {
                        **m.labels(),
                        "made_at": target,
                        "target_time": target,
                        "anomaly_score": round(score, 4),
                        "anomaly_flag": int(score >= ANOMALY_FLAG_THRESHOLD),
                        "model_version": ch.challenger_version,
                        "alias": "challenger",
                        "features": feats_out,
                    }
                )
            elif ch is not None and "prediction" in rec:
                # Its error on the measured hour is noise_factor x the champion's (same inputs, same
                # incident effects); a true anomaly surprises both alike: the same forecast that hour.
                pred = float(rec["prediction"])
                if not truth.anomaly[m.energy][bi]:
                    regular = float(truth.regular[m.energy][bi])
                    pred = regular + ch.noise_factor * (pred - regular)
                out.append(
                    {
                        **m.labels(),
                        "made_at": made_forecast,
                        "target_time": target,
                        "prediction": round(float(max(0.0, pred)), 3),
                        "model_version": ch.challenger_version,
                        "alias": "challenger",
                        "features": feats_out,
                    }
                )
        return out

    def actual_records(self, j: int, interval: float, first_k: int) -> list[dict[str, Any]]:
        """Actuals that arrive at simulated hour ``j``: each building's hour ``j - lag`` (not before first_k)."""
        observed = rfc3339(j * interval)
        by_k: dict[int, StepTruth] = {}
        out: list[dict[str, Any]] = []
        for bi, (c, b) in enumerate(self.buildings):
            k = j - int(self.actual_lag[bi])
            if k < first_k:
                continue
            truth = by_k.get(k) or by_k.setdefault(k, self.truth(k))
            for e in self.energies[(c.id, b.id)]:
                out.append(
                    {
                        "customer": c.id,
                        "building": b.id,
                        "energy": e,
                        "target_time": rfc3339(k * interval),
                        "actual": float(truth.actual[e][bi]),
                        # the meter data's own verdict on the hour (what a detector is scored against)
                        "anomaly_label": int(truth.anomaly[e][bi]),
                        "observed_at": observed,
                    }
                )
        return out


def _anomaly_score(z: float, z_threshold: float, draw: float) -> float:
    """An anomaly detector's score in 0..1: about 0.5 where |z| reaches its threshold, plus a little noise."""
    score = 1.0 / (1.0 + math.exp(-(abs(z) - z_threshold) * 1.5)) + abs(float(draw)) * 0.04
    return min(1.0, max(0.0, score))


def _clip_feature(name: str, v: float) -> float:
    if name == "humidity":
        return round(min(100.0, max(0.0, v)), 1)
    if name in ("solar_radiation",):
        return round(max(0.0, v), 1)
    if name == "occupancy":
        return round(min(1.0, max(0.0, v)), 3)
    return round(v, 2)


def rfc3339(t: float) -> str:
    """RFC 3339 UTC: whole seconds when the time is whole, else milliseconds."""
    dt = datetime.fromtimestamp(t, UTC)
    if abs(t - round(t)) < 1e-6:
        return datetime.fromtimestamp(round(t), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
