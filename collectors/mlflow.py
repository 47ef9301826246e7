"""MLflow collector: training runs, durations, quality metrics and the model registry, per fleet model.

How MLflow maps to the fleet is the convention in docs/formats.md ("MLflow convention"): runs carry the tags
``customer``/``building``/``energy``/``model`` (keys from ``mlflow.tag_keys``); registered models carry the
same tags or are named by ``mlflow.registered_model_pattern``. Anything that does not map is counted by
reason and recorded once in ``mlflow.quarantine_file``, never guessed.

Polling (``poll()``, in the background) keeps per-run and per-model state in memory:

- The first poll, and one every ``full_resync_seconds``, reads everything (exact by construction; after a
  restart the first poll is full again, so no state is persisted).
- Other polls ask only for what changed. MLflow 3 has no "last updated" attribute on runs (searchable run
  attributes are run_id, run_name, user_id, status, start_time, end_time, artifact_uri: see
  ``mlflow/entities/run_info.py``), so an incremental poll asks for: experiments created since the watermark
  (and all runs of those: seeded or imported runs carry old timestamps), runs with
  ``attributes.status = 'RUNNING'``, runs with ``attributes.end_time >= watermark - margin``, and, for runs
  we knew as running that are in neither answer, those runs by id (deleted or ended long ago).
  A run is replaced by id, so counts stay exact when it moves running -> finished/failed.
- The registry: every poll pages through the registered models (1,000 per request), because aliases carry no
  timestamp at all (``set_registered_model_alias`` in ``mlflow/store/model_registry/sqlalchemy_store.py`` does
  not touch ``last_updated_time``) and "a new alias is seen on the next poll" needs them. Versions are
  re-read only for registered models whose ``last_updated_timestamp`` moved (a version was created,
  transitioned or deleted), batched ``name IN (...)``.
- Lineage costs no request of its own: ``runs/search`` answers carry each run's dataset inputs
  (``inputs.dataset_inputs``: name, digest, source, ``mlflow.data.context`` tag; ``_search_runs`` in
  ``mlflow/store/tracking/sqlalchemy_store.py`` joins them in) and tags (``mlflow.source.git.commit``,
  ``mlflow.source.name``), read anyway for the fleet mapping. Each run keeps a small ``Lineage`` tuple; the
  exported versions (aliased and the newest) are joined to their run by the version's ``run_id``.

As shard i of N (``shard``, fleetmon/sharding.py) the collector exports only the buildings it owns: it does
not read experiments named (``mlflow.experiment_pattern``) for other shards' buildings, and it keeps no run
or registered model whose tags or name map to one. What maps to no building at all (runs without fleet tags,
malformed objects, registered models no pattern maps) is shard 0's to count and quarantine.

A scrape (``collect()``) yields metric families built at the end of the last successful poll, plus the live
health series; when MLflow is down the last good values keep being served with ``fleetmon_mlflow_up 0``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import string
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from collectors.mlflow_client import MlflowError, MlflowRest
from fleetmon.config import Config
from fleetmon.exporter import FLEET_LABELS, Rendered, register, render_families

log = logging.getLogger(__name__)

Key = tuple[str, str, str, str]  # (customer, building, energy, model), the fleet spine
# (dataset, dataset_digest, dataset_source, code_version) of a run; "" where unknown
Lineage = tuple[str, str, str, str]
NO_LINEAGE: Lineage = ("", "", "", "")

RUN_STATUSES = ("running", "finished", "failed", "killed")  # always exported (0 when none)
# wrong_experiment: sharded with mlflow.experiment_pattern, a run in one building's experiment tagged for a
# building of another shard (which never reads that experiment)
RUN_UNMAPPED_REASONS = ("missing_tags", "unknown_fleet_key", "malformed", "wrong_experiment")
MODEL_UNMAPPED_REASONS = ("no_fleet_mapping", "unknown_fleet_key", "duplicate_fleet_key", "malformed")
ACTIVE_RUN_STATUSES = frozenset({"running", "scheduled"})
RUN_ID_BATCH = 100
MODEL_NAME_BATCH = 50  # names per ``name IN (...)`` in a GET query string
# Lineage of a run: the training data (dataset inputs, else the run tag named by ``mlflow.training_data_tag``)
# and the code version (MLflow's source tags).
GIT_COMMIT_TAG = "mlflow.source.git.commit"
SOURCE_NAME_TAG = "mlflow.source.name"
DATA_CONTEXT_TAG = "mlflow.data.context"  # mlflow.log_input(..., context="training")
MAX_LINEAGE_LABEL = 200  # characters of a lineage label value (a dataset source may be a long URI)
# Registered version numbers are exported as ranges of consecutive numbers (first..last): one range per model
# unless versions were deleted. Beyond this many ranges the oldest are merged into one (their gaps, deleted
# versions long ago, then count as registered), so a model costs at most 2 x MAX_VERSION_RANGES series.
MAX_VERSION_RANGES = 16


@dataclass(slots=True)
class RunRec:
    run_id: str
    key: Key | None
    reason: str | None  # why it is unmapped
    status: str  # lowercase MLflow status
    start_ms: int | None
    end_ms: int | None
    metrics: dict[str, float]  # only the configured quality and duration keys
    params_digest: str
    flavor: str
    lineage: Lineage = NO_LINEAGE


@dataclass(slots=True)
class VersionRec:
    version: int
    creation_ms: int
    stage: str  # lowercase current_stage ("none", "staging", "production", "archived")
    run_id: str
    flavor: str  # from the version's flavor tag, "" if absent


@dataclass(slots=True)
class ModelRec:
    name: str
    key: Key | None
    reason: str | None
    last_updated_ms: int
    aliases: dict[str, int]
    versions: dict[int, VersionRec] = field(default_factory=dict)


@dataclass(slots=True)
class RunAgg:
    status: Counter[str] = field(default_factory=Counter)
    last_success_end_ms: int | None = None
    newest_finished: RunRec | None = None
    newest_by_kind: dict[str, tuple[int, str, float]] = field(default_factory=dict)


class _Malformed(Exception):
    pass


@register("mlflow", help="MLflow runs, durations, quality metrics and registry per fleet model")
class MlflowCollector:
    name = "mlflow"

    def __init__(self, cfg: Config, client: MlflowRest | None = None) -> None:
        self.cfg = cfg
        m = cfg.mlflow
        self.m = m
        self.client = client or MlflowRest.from_config(m)
        self.shard = cfg.shard
        self.fleet: set[Key] = {
            (k.customer, k.building, k.energy, k.model) for k in cfg.fleet.models(self.shard)
        }
        # Registered-model names the pattern gives each fleet model (every shard's, so that another shard's
        # model is known as such): exact lookup, no ambiguous regex.
        self.name_to_key: dict[str, Key] = {
            m.registered_model_pattern.format(
                customer=k.customer, building=k.building, energy=k.energy, model=k.model
            ): (k.customer, k.building, k.energy, k.model)
            for k in cfg.fleet.models()
        }
        self.experiment_re = _pattern_re(m.experiment_pattern)
        # Experiments of this shard's buildings (by experiment_pattern): only this shard reads them, so it
        # answers for every run in them.
        self._building_experiments: set[str] = set()
        self.duration_keys = dict(m.duration_metric_keys)  # kind -> metric key
        self.training_data_tag = m.training_data_tag
        self.wanted_metrics = set(m.metric_keys) | set(self.duration_keys.values())
        qf = Path(m.quarantine_file)
        if not qf.is_absolute() and cfg.source is not None:
            qf = cfg.source.parent / qf
        self.quarantine_file = qf
        self._quarantined = _read_quarantined(qf)

        # --- state (touched only by the poll thread)
        self._experiments: set[str] = set()
        self._runs: dict[str, RunRec] = {}
        self._runs_by_key: dict[Key, set[str]] = defaultdict(set)
        self._run_agg: dict[Key, RunAgg] = {}
        self._models: dict[str, ModelRec] = {}
        self._synced = False
        self._watermark_ms = 0  # start of the last successful poll, local clock
        self._last_full_monotonic = 0.0

        # --- published (read by scrapes; replaced whole, never mutated)
        self._rendered: Rendered | None = None
        self._up = 0.0
        self._last_success_ts: float | None = None
        self._last_poll: dict[str, tuple[int, float]] = {}  # mode -> (requests, seconds)
        self._recovering_logged = False
        self._poll_lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    # ================================================================================== polling
    def poll(self) -> None:
        with self._poll_lock:
            start_ms = int(time.time() * 1000)
            t0 = time.perf_counter()
            req0 = self.client.request_count()
            full = (
                not self._synced
                or self.m.full_resync_seconds == 0
                or time.monotonic() - self._last_full_monotonic >= self.m.full_resync_seconds
            )
            try:
                if full:
                    self._poll_full()
                else:
                    self._poll_incremental(self._watermark_ms - int(self.m.incremental_margin_seconds * 1000))
            except MlflowError:
                self._up = 0.0
                self._recovering_logged = False
                raise  # the framework logs the cause once and records fleetmon_poll_success 0
            except Exception:
                # Not MLflow's fault (an answer we did not foresee): the state may be half-applied, so the
                # next poll reads everything again.
                self._up = 0.0
                self._synced = False
                raise
            if full:
                self._synced = True
                self._last_full_monotonic = time.monotonic()
            self._watermark_ms = start_ms
            mode = "full" if full else "incremental"
            # replaced, not mutated: a scrape may be iterating the old dict
            self._last_poll = {
                **self._last_poll,
                mode: (self.client.request_count() - req0, time.perf_counter() - t0),
            }
            # Encoded once per poll, served as bytes on every scrape (72,000 series at 1,000 buildings).
            self._rendered = render_families(self._build_families())
            if self._up == 0.0 and self._last_success_ts is not None and not self._recovering_logged:
                log.info("MLflow at %s answers again", self.client.shown_url)
                self._recovering_logged = True
            self._up = 1.0
            self._last_success_ts = time.time()

    # ----------------------------------------------------------------------------------- full read
    def _poll_full(self) -> None:
        """Read everything into fresh state; if any request fails, the previous state is put back."""
        saved = (self._experiments, self._runs, self._runs_by_key, self._run_agg, self._models)
        quarantine: list[dict[str, Any]] = []
        try:
            self._experiments = self._own_experiments(self.client.search_experiments())
            self._runs, self._runs_by_key, self._run_agg = {}, defaultdict(set), {}
            # Each page is parsed into compact records as it arrives: 40,000 runs of raw JSON held at once
            # would cost the exporter hundreds of MiB.
            for page in self.client.search_runs(sorted(self._experiments)):
                for raw in page:
                    self._ingest_run(raw, quarantine)
            raw_models = self._fetch_registered_models()
            raw_versions: list[dict[str, Any]] = []
            for page in self.client.search_model_versions():
                raw_versions.extend(page)
        except BaseException:
            self._experiments, self._runs, self._runs_by_key, self._run_agg, self._models = saved
            raise
        for key in list(self._runs_by_key):
            self._aggregate(key)
        self._models = {}
        self._apply_registered_models(raw_models, quarantine)
        self._apply_versions(raw_versions, set(self._models), quarantine)
        self._write_quarantine(quarantine)

    # ---------------------------------------------------------------------------- incremental read
    def _poll_incremental(self, since_ms: int) -> None:
        new_exps = self._own_experiments(
            self.client.search_experiments(f"attribute.creation_time >= {since_ms}")
        )
        exp_ids = sorted(self._experiments | new_exps)
        raw_runs: list[dict[str, Any]] = []
        # Experiments created lately are read whole: a seeder or an import fills a new experiment with
        # runs whose start and end times lie in the past, which the end_time filter below cannot see.
        for page in self.client.search_runs(sorted(new_exps)):
            raw_runs.extend(page)
        for flt in ("attributes.status = 'RUNNING'", f"attributes.end_time >= {since_ms}"):
            for page in self.client.search_runs(exp_ids, flt):
                raw_runs.extend(page)
        seen = {_run_id(r) for r in raw_runs}
        # Runs we knew as active that are in neither answer: deleted, or ended with an old end_time.
        vanished = sorted(
            rid for rid, r in self._runs.items() if r.status in ACTIVE_RUN_STATUSES and rid not in seen
        )
        found: dict[str, dict[str, Any]] = {}
        for i in range(0, len(vanished), RUN_ID_BATCH):
            ids = ", ".join(f"'{rid}'" for rid in vanished[i : i + RUN_ID_BATCH])
            for page in self.client.search_runs(exp_ids, f"attributes.run_id IN ({ids})", "ALL"):
                for r in page:
                    found[_run_id(r)] = r
        raw_models = self._fetch_registered_models()
        changed = sorted(
            n
            for n, raw in _by_name(raw_models).items()
            if n not in self._models
            or self._models[n].last_updated_ms != _int(raw.get("last_updated_timestamp"))
        )
        raw_versions: list[dict[str, Any]] = []
        for i in range(0, len(changed), MODEL_NAME_BATCH):
            flt = "name IN (" + ", ".join(_quote(n) for n in changed[i : i + MODEL_NAME_BATCH]) + ")"
            for page in self.client.search_model_versions(flt):
                raw_versions.extend(page)

        # every request succeeded: apply
        quarantine: list[dict[str, Any]] = []
        self._experiments |= new_exps
        dirty: set[Key] = set()
        for raw in raw_runs:
            dirty |= self._ingest_run(raw, quarantine)
        for rid in vanished:
            got = found.get(rid)
            if got is None or (got.get("info") or {}).get("lifecycle_stage") == "deleted":
                dirty |= self._drop_run(rid)
            else:
                dirty |= self._ingest_run(got, quarantine)
        for key in dirty:
            self._aggregate(key)
        self._apply_registered_models(raw_models, quarantine)
        self._apply_versions(raw_versions, set(changed), quarantine)
        self._write_quarantine(quarantine)

    def _own_experiments(self, experiments: list[dict[str, Any]]) -> set[str]:
        """Ids of the experiments to read: all but those named for another shard's building, and fleetmon's
        own evaluation runs (``evaluations.experiment``: not the platform's training runs)."""
        out = set()
        for e in experiments:
            name = str(e.get("name", ""))
            if "experiment_id" not in e or name == self.cfg.evaluations.experiment:
                continue
            match = self.experiment_re.fullmatch(name) if self.experiment_re else None
            if match is None:
                out.add(str(e["experiment_id"]))
            elif self.shard.owns(match["customer"], match["building"]):
                out.add(str(e["experiment_id"]))
                self._building_experiments.add(str(e["experiment_id"]))
        return out

    def _fetch_registered_models(self) -> list[dict[str, Any]]:
        """Every registered model but those of other shards' buildings (by tags, else by name)."""
        out: list[dict[str, Any]] = []
        for page in self.client.search_registered_models():
            out.extend(raw for raw in page if self._owns_model(raw))
        return out

    def _owns_model(self, raw: Any) -> bool:
        if self.shard.count == 1:
            return True
        name = raw.get("name") if isinstance(raw, dict) else None
        try:
            tags = {str(t["key"]): str(t.get("value", "")) for t in raw.get("tags", [])}
        except (KeyError, TypeError, AttributeError):
            tags = {}
        customer, building = tags.get(self.m.tag_keys["customer"]), tags.get(self.m.tag_keys["building"])
        if not (customer and building) and isinstance(name, str) and name in self.name_to_key:
            customer, building = self.name_to_key[name][:2]
        return self.shard.owns(customer, building)  # naming no building: shard 0's

    # --------------------------------------------------------------------------------------- runs
    def _ingest_run(self, raw: dict[str, Any], quarantine: list[dict[str, Any]]) -> set[Key]:
        """Replace one run's record; returns the fleet keys whose aggregates must be recomputed."""
        try:
            rec = self._parse_run(raw)
        except _Malformed as e:
            rid = _run_id(raw) or f"unknown-{hashlib.sha256(repr(raw).encode()).hexdigest()[:12]}"
            if not self.shard.owns(None, None) and not self._in_building_experiment(raw):
                return self._drop_run(rid)  # a malformed run names no building: shard 0's
            rec = RunRec(rid, None, "malformed", "unknown", None, None, {}, "", "")
            quarantine.append({"kind": "run", "id": rid, "reason": "malformed", "detail": str(e)})
        dirty = self._drop_run(rec.run_id)
        if rec.reason == "other_shard":
            return dirty  # another shard's building (it moved there, if we held it): not kept
        self._runs[rec.run_id] = rec
        if rec.key is not None:
            self._runs_by_key[rec.key].add(rec.run_id)
            dirty.add(rec.key)
        elif rec.reason != "malformed":
            quarantine.append({"kind": "run", "id": rec.run_id, "reason": rec.reason, "detail": ""})
        return dirty

    def _in_building_experiment(self, raw: Any) -> bool:
        """Whether the run is in an experiment of this shard's buildings (only this shard reads those)."""
        info = raw.get("info") if isinstance(raw, dict) else None
        exp = info.get("experiment_id") if isinstance(info, dict) else None
        return self.shard.count > 1 and str(exp) in self._building_experiments

    def _drop_run(self, run_id: str) -> set[Key]:
        old = self._runs.pop(run_id, None)
        if old is None or old.key is None:
            return set()
        self._runs_by_key[old.key].discard(run_id)
        return {old.key}

    def _parse_run(self, raw: dict[str, Any]) -> RunRec:
        info = raw.get("info") if isinstance(raw, dict) else None
        if not isinstance(info, dict):
            raise _Malformed("run has no info object")
        rid = _run_id(raw)
        status = info.get("status")
        if not rid or not isinstance(status, str):
            raise _Malformed("run info lacks run_id or status")
        data = raw.get("data") or {}
        try:
            tags = {str(t["key"]): str(t.get("value", "")) for t in data.get("tags", [])}
            params = {str(p["key"]): str(p.get("value", "")) for p in data.get("params", [])}
            metrics = {
                str(x["key"]): float(x["value"])
                for x in data.get("metrics", [])
                if x.get("key") in self.wanted_metrics
            }
            start = _opt_int(info.get("start_time"))
            end = _opt_int(info.get("end_time"))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise _Malformed(f"bad run data: {type(e).__name__}: {e}") from e
        values = [tags.get(self.m.tag_keys[label]) for label in FLEET_LABELS]
        key: Key | None = None
        reason: str | None = None
        ours = self._in_building_experiment(raw)
        if ours and all(values[:2]) and not self.shard.owns(values[0], values[1]):
            reason = "wrong_experiment"  # the building's shard never reads this experiment
        elif not ours and not self.shard.owns(values[0], values[1]):
            reason = "other_shard"  # or, without both ids, shard 0's to report
        elif any(v is None or v == "" for v in values):
            reason = "missing_tags"
        elif tuple(values) not in self.fleet:
            reason = "unknown_fleet_key"
        else:
            key = tuple(values)  # type: ignore[assignment]
        return RunRec(
            run_id=rid,
            key=key,
            reason=reason,
            status=status.lower(),
            start_ms=start,
            end_ms=end,
            metrics=metrics,
            params_digest=_digest(params),
            flavor=self._run_flavor(tags),
            lineage=self._run_lineage(raw, tags),
        )

    def _run_lineage(self, raw: dict[str, Any], tags: dict[str, str]) -> Lineage:
        """The run's training data and code version. Data: its dataset inputs logged for training
        (``mlflow.data.context=training``; without such, those logged without a context), names and digests
        joined by "," in name order, the source's URI; else the ``training_data_tag`` run tag. Code: the git
        commit MLflow recorded, else the source name (entry point). Never makes the run malformed."""
        datasets: set[tuple[str, str, str]] = set()
        untagged: set[tuple[str, str, str]] = set()
        inputs = raw.get("inputs")
        entries = inputs.get("dataset_inputs") if isinstance(inputs, dict) else None
        for entry in entries if isinstance(entries, list) else ():
            ds = entry.get("dataset") if isinstance(entry, dict) else None
            if not isinstance(ds, dict):
                continue
            context = None
            for t in entry.get("tags") or ():
                if isinstance(t, dict) and t.get("key") == DATA_CONTEXT_TAG:
                    context = str(t.get("value", ""))
            item = (str(ds.get("name") or ""), str(ds.get("digest") or ""), _dataset_source(ds.get("source")))
            if context == "training":
                datasets.add(item)
            elif context is None:
                untagged.add(item)
        chosen = sorted(datasets or untagged)
        if chosen:
            dataset, digest, source = (_cap(",".join(x[i] for x in chosen)) for i in range(3))
        else:
            dataset, digest, source = _cap(tags.get(self.training_data_tag, "")), "", ""
        code = _cap(tags.get(GIT_COMMIT_TAG) or tags.get(SOURCE_NAME_TAG) or "")
        lineage = (dataset, digest, source, code)
        if lineage == NO_LINEAGE:
            return NO_LINEAGE
        # Interned: the runs of one pipeline share their data set and commit (40,000 runs, a few distinct).
        return (sys.intern(dataset), sys.intern(digest), sys.intern(source), sys.intern(code))

    def _run_flavor(self, tags: dict[str, str]) -> str:
        if tags.get(self.m.flavor_tag):
            return tags[self.m.flavor_tag]
        # MLflow 2 clients record logged models in this run tag (JSON list with "flavors").
        hist = tags.get("mlflow.log-model.history")
        if hist:
            try:
                for model in json.loads(hist):
                    flavors = [f for f in model.get("flavors", {}) if f != "python_function"]
                    if flavors:
                        return str(flavors[0])
            except (ValueError, TypeError, AttributeError, RecursionError):  # a tag is the client's text
                pass
        return ""

    def _aggregate(self, key: Key) -> None:
        ids = self._runs_by_key.get(key)
        if not ids:
            self._run_agg.pop(key, None)
            self._runs_by_key.pop(key, None)
            return
        agg = RunAgg()
        for rid in ids:
            r = self._runs[rid]
            agg.status[r.status] += 1
            if r.status != "finished" or r.end_ms is None:
                continue
            if agg.last_success_end_ms is None or r.end_ms > agg.last_success_end_ms:
                agg.last_success_end_ms = r.end_ms
            nf = agg.newest_finished
            if nf is None or (r.end_ms, r.run_id) > (nf.end_ms or 0, nf.run_id):
                agg.newest_finished = r
            for kind, mkey in self.duration_keys.items():
                if mkey in r.metrics:
                    cur = agg.newest_by_kind.get(kind)
                    if cur is None or (r.end_ms, r.run_id) > (cur[0], cur[1]):
                        agg.newest_by_kind[kind] = (r.end_ms, r.run_id, r.metrics[mkey])
        self._run_agg[key] = agg

    # ----------------------------------------------------------------------------------- registry
    def _apply_registered_models(
        self, raw_models: list[dict[str, Any]], quarantine: list[dict[str, Any]]
    ) -> None:
        old = self._models
        new: dict[str, ModelRec] = {}
        taken: dict[Key, str] = {}
        for raw in sorted(raw_models, key=lambda r: str(r.get("name", ""))):
            name = raw.get("name")
            if not isinstance(name, str) or not name:
                quarantine.append(
                    {"kind": "registered_model", "id": repr(raw)[:200], "reason": "malformed", "detail": ""}
                )
                continue
            try:
                tags = {str(t["key"]): str(t.get("value", "")) for t in raw.get("tags", [])}
                aliases = {str(a["alias"]): int(a["version"]) for a in raw.get("aliases", [])}
                last_updated = _int(raw.get("last_updated_timestamp"))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                new[name] = ModelRec(name, None, "malformed", -1, {})
                quarantine.append(
                    {"kind": "registered_model", "id": name, "reason": "malformed", "detail": str(e)}
                )
                continue
            key, reason = self._model_key(name, tags)
            if key is not None and key in taken:
                key, reason = None, "duplicate_fleet_key"
            if key is not None:
                taken[key] = name
            else:
                quarantine.append({"kind": "registered_model", "id": name, "reason": reason, "detail": ""})
            rec = ModelRec(name, key, reason, last_updated, aliases)
            if name in old:
                rec.versions = old[name].versions
            new[name] = rec
        self._models = new

    def _model_key(self, name: str, tags: dict[str, str]) -> tuple[Key | None, str | None]:
        values = [tags.get(self.m.tag_keys[label]) for label in FLEET_LABELS]
        if all(values):  # tags win over the name pattern
            key = (values[0], values[1], values[2], values[3])
            if key in self.fleet:
                return key, None
            return None, "unknown_fleet_key"
        if name in self.name_to_key:
            return self.name_to_key[name], None
        return None, "no_fleet_mapping"

    def _apply_versions(
        self, raw_versions: list[dict[str, Any]], replace: set[str], quarantine: list[dict[str, Any]]
    ) -> None:
        """Versions of the models in ``replace`` are replaced by what was read (exact: deletions too)."""
        fresh: dict[str, dict[int, VersionRec]] = {n: {} for n in replace}
        for raw in raw_versions:
            name = raw.get("name")
            if name not in fresh:
                continue
            try:
                tags = {str(t["key"]): str(t.get("value", "")) for t in raw.get("tags", [])}
                v = VersionRec(
                    version=int(raw["version"]),
                    creation_ms=_int(raw.get("creation_timestamp")),
                    stage=str(raw.get("current_stage") or "None").lower(),
                    run_id=str(raw.get("run_id") or ""),
                    flavor=tags.get(self.m.flavor_tag, ""),
                )
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                vid = f"{name}/{raw.get('version')}"
                quarantine.append(
                    {"kind": "model_version", "id": vid, "reason": "malformed", "detail": str(e)}
                )
                continue
            if v.stage.startswith("deleted"):
                continue
            fresh[name][v.version] = v
        for name, versions in fresh.items():
            if name in self._models:
                self._models[name].versions = versions

    # --------------------------------------------------------------------------------- quarantine
    def _write_quarantine(self, items: list[dict[str, Any]]) -> None:
        new = [q for q in items if (q["kind"], q["id"], q["reason"]) not in self._quarantined]
        if not new:
            return
        try:
            self.quarantine_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.quarantine_file, "a", encoding="utf-8") as f:
                now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                for q in new:
                    f.write(json.dumps({"time": now, "source": self.client.shown_url, **q}) + "\n")
                    self._quarantined.add((q["kind"], q["id"], q["reason"]))
        except OSError as e:
            log.error("cannot write MLflow quarantine file %s: %s", self.quarantine_file, e)

    # ================================================================================== metrics
    def _build_families(self) -> list[Metric]:
        fl = list(FLEET_LABELS)
        runs = GaugeMetricFamily(
            "fleetmon_mlflow_runs",
            "MLflow runs per fleet model by status (cached from the last poll).",
            labels=[*fl, "status"],
        )
        last_ok = GaugeMetricFamily(
            "fleetmon_mlflow_training_last_success_timestamp_seconds",
            "End time of the model's newest FINISHED MLflow run (cached).",
            labels=fl,
        )
        dur = GaugeMetricFamily(
            "fleetmon_mlflow_run_duration_seconds",
            "Durations of the newest finished run: kind=wall is end-start, other kinds are logged "
            "duration metrics (newest finished run that logged them) (cached).",
            labels=[*fl, "kind"],
        )
        quality = GaugeMetricFamily(
            "fleetmon_mlflow_model_quality",
            "Configured quality metrics of the model's newest finished MLflow run (cached).",
            labels=[*fl, "metric"],
        )
        for key in sorted(self.fleet):
            agg = self._run_agg.get(key)
            k = list(key)
            statuses = RUN_STATUSES if agg is None else sorted(set(RUN_STATUSES) | set(agg.status))
            for st in statuses:
                runs.add_metric([*k, st], float(agg.status.get(st, 0) if agg else 0))
            if agg is None:
                continue
            if agg.last_success_end_ms is not None:
                last_ok.add_metric(k, agg.last_success_end_ms / 1000)
            nf = agg.newest_finished
            if nf is not None:
                if nf.start_ms is not None and nf.end_ms is not None:
                    dur.add_metric([*k, "wall"], max(0, nf.end_ms - nf.start_ms) / 1000)
                for mk in self.m.metric_keys:
                    if mk in nf.metrics:
                        quality.add_metric([*k, mk], nf.metrics[mk])
            for kind, (_, _, value) in sorted(agg.newest_by_kind.items()):
                dur.add_metric([*k, kind], value)

        unmapped_runs = Counter(r.reason for r in self._runs.values() if r.key is None)
        ur = GaugeMetricFamily(
            "fleetmon_mlflow_unmapped_runs",
            "MLflow runs that do not map to a fleet model, by reason (cached).",
            labels=["reason"],
        )
        for reason in RUN_UNMAPPED_REASONS:
            ur.add_metric([reason], float(unmapped_runs.get(reason, 0)))

        versions = GaugeMetricFamily(
            "fleetmon_mlflow_model_versions",
            "Number of versions of the model's registered model (cached).",
            labels=fl,
        )
        alias = GaugeMetricFamily(
            "fleetmon_mlflow_model_alias_version",
            "Version number a configured alias of the registered model points to (cached).",
            labels=[*fl, "alias"],
        )
        stage = GaugeMetricFamily(
            "fleetmon_mlflow_model_stage_version",
            "Highest version number in a (deprecated) registry stage, where stages are used (cached).",
            labels=[*fl, "stage"],
        )
        newest = GaugeMetricFamily(
            "fleetmon_mlflow_model_latest_version_creation_timestamp_seconds",
            "Creation time of the registered model's newest version (cached).",
            labels=fl,
        )
        info = GaugeMetricFamily(
            "fleetmon_mlflow_model_version_info",
            "Registered model versions that an alias points to (alias=latest: the newest version), "
            "with their training run, flavour and parameters digest (cached).",
            labels=[*fl, "version", "run_id", "flavor", "params_digest", "alias", "stage"],
        )
        lineage = GaugeMetricFamily(
            "fleetmon_mlflow_model_version_lineage_info",
            "Lineage of the versions an alias points to and of the newest version (one series per version): "
            "training run, training data (the run's dataset inputs for training, else its training data "
            "tag) and code version (git commit, else source name) (cached).",
            labels=[*fl, "version", "run_id", "dataset", "dataset_digest", "dataset_source", "code_version"],
        )
        range_first = GaugeMetricFamily(
            "fleetmon_mlflow_model_version_range_first",
            "First version number of a range of consecutive registered (non-deleted) versions; range = that "
            "number. A version is registered if it lies in one of the model's ranges (cached).",
            labels=[*fl, "range"],
        )
        range_last = GaugeMetricFamily(
            "fleetmon_mlflow_model_version_range_last",
            "Last version number of a range of consecutive registered (non-deleted) versions (cached).",
            labels=[*fl, "range"],
        )
        unmapped_models: Counter[str] = Counter()
        for m in sorted(self._models.values(), key=lambda m: m.name):
            if m.key is None:
                unmapped_models[m.reason or "no_fleet_mapping"] += 1
                continue
            k = list(m.key)
            versions.add_metric(k, float(len(m.versions)))
            targets: list[tuple[str, int]] = [
                (a, m.aliases[a]) for a in self.m.aliases if a in m.aliases and m.aliases[a] in m.versions
            ]
            if m.versions:
                latest = max(m.versions)
                newest.add_metric(k, max(v.creation_ms for v in m.versions.values()) / 1000)
                targets.append(("latest", latest))
                by_stage: dict[str, int] = {}
                for v in m.versions.values():
                    if v.stage != "none":
                        by_stage[v.stage] = max(by_stage.get(v.stage, 0), v.version)
                for st, ver in sorted(by_stage.items()):
                    stage.add_metric([*k, st], float(ver))
            for first, last in _ranges(m.versions):
                range_first.add_metric([*k, str(first)], float(first))
                range_last.add_metric([*k, str(first)], float(last))
            seen: set[int] = set()
            for a, ver in targets:
                if a != "latest":
                    alias.add_metric([*k, a], float(ver))
                v = m.versions[ver]
                run = self._runs.get(v.run_id)
                flavor = v.flavor or (run.flavor if run else "") or "unknown"
                info.add_metric(
                    [*k, str(ver), v.run_id, flavor, run.params_digest if run else "", a, v.stage], 1.0
                )
                if ver not in seen:
                    seen.add(ver)
                    lineage.add_metric([*k, str(ver), v.run_id, *(run.lineage if run else NO_LINEAGE)], 1.0)
        um = GaugeMetricFamily(
            "fleetmon_mlflow_unmapped_registered_models",
            "Registered models that do not map to a fleet model, by reason (cached).",
            labels=["reason"],
        )
        for reason in MODEL_UNMAPPED_REASONS:
            um.add_metric([reason], float(unmapped_models.get(reason, 0)))
        objects = GaugeMetricFamily(
            "fleetmon_mlflow_objects",
            "MLflow objects held in the exporter's state, by kind (cached).",
            labels=["kind"],
        )
        objects.add_metric(["experiment"], float(len(self._experiments)))
        objects.add_metric(["run"], float(len(self._runs)))
        objects.add_metric(["registered_model"], float(len(self._models)))
        objects.add_metric(["model_version"], float(sum(len(m.versions) for m in self._models.values())))
        return [
            runs, last_ok, dur, quality, ur, versions, alias, stage, newest, info, lineage,
            range_first, range_last, um, objects,
        ]  # fmt: skip

    def prerendered(self) -> Rendered | None:
        """The fleet series of the last successful poll (None before the first one)."""
        return self._rendered

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "fleetmon_mlflow_up", "1 if the last poll of MLflow succeeded, else 0.", value=self._up
        )
        ts = self._last_success_ts
        if ts is not None:
            yield GaugeMetricFamily(
                "fleetmon_mlflow_last_success_timestamp_seconds",
                "Unix time of the last successful MLflow poll.",
                value=ts,
            )
            yield GaugeMetricFamily(
                "fleetmon_mlflow_last_success_age_seconds",
                "Seconds since the last successful MLflow poll.",
                value=max(0.0, time.time() - ts),
            )
        req = CounterMetricFamily(
            "fleetmon_mlflow_requests",
            "HTTP requests made to MLflow (every attempt, retries included), by endpoint and status code "
            "(code=error: no answer).",
            labels=["endpoint", "code"],
        )
        for (endpoint, code), n in sorted(self.client.counts().items()):
            req.add_metric([endpoint, code], float(n))
        yield req
        spent = CounterMetricFamily(
            "fleetmon_mlflow_request_seconds",
            "Seconds spent in HTTP requests to MLflow, by endpoint (divide by requests for the mean latency).",
            labels=["endpoint"],
        )
        for endpoint, t in sorted(self.client.seconds().items()):
            spent.add_metric([endpoint], t)
        yield spent
        last_req = GaugeMetricFamily(
            "fleetmon_mlflow_last_poll_requests",
            "MLflow requests made by the last successful poll of each mode (full or incremental).",
            labels=["mode"],
        )
        last_dur = GaugeMetricFamily(
            "fleetmon_mlflow_last_poll_duration_seconds",
            "Duration of the last successful poll of each mode (full or incremental).",
            labels=["mode"],
        )
        for mode, (n, secs) in sorted(self._last_poll.items()):
            last_req.add_metric([mode], float(n))
            last_dur.add_metric([mode], secs)
        yield last_req
        yield last_dur


# ================================================================================== helpers
def _pattern_re(pattern: str) -> re.Pattern[str] | None:
    """``mlflow.experiment_pattern`` (``{customer}/{building}``, checked by the config) as a regex with those
    two named groups; None for "" (no experiment is known to be one building's)."""
    if not pattern:
        return None
    out, seen = "", set()
    for literal, name, _, _ in string.Formatter().parse(pattern):
        out += re.escape(literal)
        if name is not None:
            out += f"(?P={name})" if name in seen else f"(?P<{name}>.+?)"
            seen.add(name)
    return re.compile(out)


def _run_id(raw: dict[str, Any]) -> str:
    info = raw.get("info") if isinstance(raw, dict) else None
    if not isinstance(info, dict):
        return ""
    return str(info.get("run_id") or info.get("run_uuid") or "")


def _by_name(raw_models: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in raw_models if isinstance(r.get("name"), str)}


def _int(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def _opt_int(v: Any) -> int | None:
    return None if v is None or v == "" else int(v)


def _digest(params: dict[str, str]) -> str:
    """A short, stable digest of a run's parameters ("" when it has none)."""
    if not params:
        return ""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def _ranges(versions: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive version numbers as (first, last) ranges, oldest first; beyond ``MAX_VERSION_RANGES`` the
    oldest are merged into one."""
    out: list[tuple[int, int]] = []
    for v in sorted(versions):
        if out and v == out[-1][1] + 1:
            out[-1] = (out[-1][0], v)
        else:
            out.append((v, v))
    if len(out) > MAX_VERSION_RANGES:
        cut = len(out) - MAX_VERSION_RANGES + 1
        out = [(out[0][0], out[cut - 1][1]), *out[cut:]]
    return out


def _cap(text: str) -> str:
    return text if len(text) <= MAX_LINEAGE_LABEL else text[: MAX_LINEAGE_LABEL - 3] + "..."


def _dataset_source(source: Any) -> str:
    """Where a dataset input comes from: MLflow keeps the source as JSON text (``{"uri": ...}`` for files and
    URLs, ``{"path": ...}``, ``{"table_name": ...}``, ...); the location in it, else the text itself."""
    if not isinstance(source, str) or not source:
        return ""
    if len(source) <= 4096:
        try:
            parsed = json.loads(source)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict):
            for key in ("uri", "url", "path", "table_name", "location"):
                value = parsed.get(key)
                if isinstance(value, str) and value:
                    return _cap(value)
    return _cap(source)


def _quote(name: str) -> str:
    """Quote a registered model name for an MLflow search filter."""
    if "'" not in name:
        return f"'{name}'"
    return '"' + name.replace('"', '\\"') + '"'


def _read_quarantined(path: Path) -> set[tuple[str, str, str]]:
    """(kind, id, reason) already recorded, so a restart does not record them again."""
    seen: set[tuple[str, str, str]] = set()
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    q = json.loads(line)
                    seen.add((q["kind"], q["id"], q["reason"]))
                except (ValueError, KeyError, TypeError, RecursionError):
                    continue
    except OSError:
        pass
    return seen
