"""``fleetmon score``: fleetmon scores challenger versions itself, when the platform writes no shadow predictions.

The served prediction records hold the model's input features (docs/formats.md). Every ``interval_seconds``
this job:

1. reads the prediction sources of ``outputs.predictions`` (files; each read once) and keeps the served rows
   of forecasters with their features for ``window_seconds``;
2. asks the MLflow registry which versions of each fleet model to benchmark: those carrying an alias of
   ``aliases`` (``challenger``) and those newer than the champion, never the version that serves the rows,
   at most ``max_versions_per_model`` (the newest);
3. loads each version with ``mlflow.pyfunc.load_model`` -- from the artifact location the registry's
   version search gave (``storage_location``, or a ``source`` that is one), else from
   ``models:/<name>/<version>`` as the registry resolves it -- and predicts the stored
   features of every target it has not scored yet, in a pool of ``workers`` processes: model code runs
   there, never in this process, each worker under an address-space limit (``memory_limit_mb``) and each
   call under ``timeout_seconds`` (a worker past it is killed and replaced); loaded models are cached per
   worker (``cache_size``), and a version always goes to the same worker, so it loads once;
4. writes the scores as shadow prediction records (``model_version``, ``alias``: the version's alias or
   ``candidate``; the champion row's ``made_at`` and ``target_time``) to a new JSON-lines file in
   ``output_dir``, which the outputs exporter reads as one more prediction source: the version benchmark,
   the verdict and ChallengerOutperformsChampion follow from there. Data still flows one way.

A version that fails to load or predict is a line in ``<state_dir>/failures.jsonl`` (reason ``load_failed``,
``predict_failed``, ``bad_output``, ``timeout``, ``memory``, ``worker_died``) and is tried again after
``retry_after_seconds``; nothing else stops. What was scored persists in ``<state_dir>/scored.json``; the
served rows are read again from the sources at every start. A version the platform already writes shadow
predictions for (rows with its ``model_version`` and an alias other than ``champion``) is not scored.
Each cycle is pushed to the Pushgateway as the batch job ``benchmark`` (``fleetmon_batch_job_*``) with the
cycle's figures (``fleetmon_scoring_*``, docs/metrics.md "Scoring").

The worker processes contain crashes, hangs and memory blow-ups, not malice: a model is pickled code, load
only models from a registry you trust.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from glob import glob
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from collectors.mlflow_client import MlflowError, MlflowRest
from fleetmon import jobs
from fleetmon.config import Config, ModelKey
from fleetmon.outputs.records import (
    FEATURE_PREFIX,
    FleetIndex,
    read_csv,
    read_jsonl,
    read_parquet,
    validate,
)

log = logging.getLogger("fleetmon.scoring")

REASONS = ("load_failed", "predict_failed", "bad_output", "timeout", "memory", "worker_died")
READERS = {"jsonl": read_jsonl, "csv": read_csv, "parquet": read_parquet}
DEFAULT_ALIAS = "candidate"


# ------------------------------------------------------------------------------------ worker process
def _worker_main(conn: Any, memory_limit_mb: int, cache_size: int, tracking_uri: str) -> None:
    """One scoring worker: load (cached) and predict until the pipe closes. Runs in its own process."""
    import resource

    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one bar per model load fills the log
    if memory_limit_mb > 0:
        limit = memory_limit_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    cache: OrderedDict[str, Any] = OrderedDict()
    resolved: dict[str, str] = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        # a batch of versions: one answer per version, sent as soon as it is done (the parent reads them
        # with a timeout each, so a hang is still one version's)
        try:
            for uri, location, columns, values in msg:
                conn.send(_score_one(cache, cache_size, uri, columns, values, resolved, location))
        except (EOFError, OSError):
            return


def _load(uri: str, resolved: dict[str, str], location: str = "") -> Any:
    """``mlflow.pyfunc.load_model`` of a ``models:/<name>/<version>`` URI. What a registered version points
    at never changes, so the artifact location is asked of the registry once per worker (two requests fewer
    on every later load of the version: a third of a load's time at 4,000 versions), or not at all when the
    registry's version search already gave it (``location``: see ``artifact_location``).

    MLflow compares a model's pip requirements with the installed packages on every load (three quarters
    of a small scikit-learn model's load time); a fleet's versions come from one training pipeline, so a
    worker warns of a mismatch on its first load only."""
    import mlflow.pyfunc
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    first = not resolved
    if uri not in resolved:
        resolved[uri] = location or ModelsArtifactRepository.get_underlying_uri(uri)
    return mlflow.pyfunc.load_model(resolved[uri], suppress_warnings=not first)


def artifact_location(mv: dict[str, Any]) -> str:
    """Where a model version's files are, from the registry's version search, when the answer says so: its
    ``storage_location``, or a ``source`` that is itself an artifact location (``file:``, ``s3:``,
    ``mlflow-artifacts:``, ...). What the registry's download URI would be for them. "" for a ``models:/``
    or ``runs:/`` source, which only the registry resolves (one request per version)."""
    storage = str(mv.get("storage_location") or "")
    if storage:
        return storage
    source = str(mv.get("source") or "")
    if not source or source.startswith(("models:", "runs:")):
        return ""
    return source


def _score_one(
    cache: OrderedDict[str, Any],
    cache_size: int,
    uri: str,
    columns: list[str],
    values: np.ndarray,
    resolved: dict[str, str] | None = None,
    location: str = "",
) -> tuple[str, Any, bool]:
    """("ok", predictions, cache hit) or (reason, detail, cache hit)."""
    hit = uri in cache
    resolved = {} if resolved is None else resolved
    try:
        if hit:
            cache.move_to_end(uri)
            model = cache[uri]
        else:
            try:
                model = _load(uri, resolved, location)
            except MemoryError:
                # The cache may hold what the address-space limit needs: empty it and try once more.
                cache.clear()
                model = _load(uri, resolved, location)
            cache[uri] = model
            while len(cache) > cache_size:
                cache.popitem(last=False)
    except MemoryError:
        cache.pop(uri, None)
        return "memory", f"out of memory loading {uri}", hit
    except Exception as e:  # any failure of model code is reported, never raised
        return "load_failed", f"{type(e).__name__}: {str(e)[:300]}", hit
    try:
        frame = _typed_frame(model, columns, values)
        out = model.predict(frame)
    except MemoryError:
        return "memory", f"out of memory predicting with {uri}", hit
    except Exception as e:
        return "predict_failed", f"{type(e).__name__}: {str(e)[:300]}", hit
    try:
        preds = np.asarray(out.iloc[:, 0] if isinstance(out, pd.DataFrame) else out, dtype=np.float64)
        preds = preds.reshape(-1)
    except (TypeError, ValueError) as e:
        return "bad_output", f"predictions are not numbers: {str(e)[:200]}", hit
    if len(preds) != len(values):
        return "bad_output", f"{len(preds)} predictions for {len(values)} rows", hit
    return "ok", preds, hit


def _typed_frame(model: Any, columns: list[str], values: np.ndarray) -> pd.DataFrame:
    """The features as a frame, integer columns as integers where the model's signature asks for them
    (features are stored as numbers: an hour of day 7 arrives as 7.0, which MLflow refuses for a long)."""
    frame = pd.DataFrame(values, columns=columns)
    try:
        schema = model.metadata.get_input_schema()
    except Exception:  # no signature: the frame as it is
        schema = None
    for spec in getattr(schema, "inputs", None) or []:
        name = getattr(spec, "name", None)
        kind = str(getattr(spec, "type", "")).lower()
        if name in frame.columns and kind.endswith(("integer", "long")):
            col = frame[name]
            if np.all(np.isfinite(col)) and np.all(col == np.round(col)):
                frame[name] = col.astype(np.int64 if kind.endswith("long") else np.int32)
    return frame


# Versions per message to a worker (answered one by one): few enough that a batch is over in seconds.
BATCH = 32


class Worker:
    """The parent's end of one worker process; ``call`` kills and replaces it on a timeout or a crash."""

    def __init__(self, memory_limit_mb: int, cache_size: int, tracking_uri: str) -> None:
        self.args = (memory_limit_mb, cache_size, tracking_uri)
        self.ctx = mp.get_context("spawn")  # no fork of a threaded parent; a clean interpreter per worker
        self.proc: Any = None
        self.conn: Any = None
        self.restarts = 0

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker_main, args=(child, *self.args), daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(5)
            self.conn.close()
            self.proc = None

    def call(
        self, uri: str, columns: list[str], values: np.ndarray, timeout: float, location: str = ""
    ) -> tuple[str, Any, bool]:
        return self.call_many([(uri, location, columns, values)], timeout)[0]

    def call_many(
        self, items: Sequence[tuple[str, str, list[str], np.ndarray]], timeout: float
    ) -> list[tuple[str, Any, bool]]:
        """Score (uri, location, columns, values) items in one message: the worker answers each as soon as
        it is done, so it never waits for the next request (a pipe round trip per version was most of an
        hourly update). Each answer has ``timeout`` seconds; a worker past it, or dead, is replaced, that
        item reported, and the items after it sent again to the new worker."""
        out: list[tuple[str, Any, bool]] = []
        todo = list(items)
        unsent = 0
        while todo:
            if self.proc is None or not self.proc.is_alive():
                if self.proc is not None:
                    self.stop()
                    self.restarts += 1
                self._start()
            try:
                self.conn.send(todo)
            except (EOFError, OSError, BrokenPipeError):
                # the worker ended before it read the batch: a fresh one gets it; twice in a row, the
                # first item is the one that cannot be sent
                unsent += 1
                if unsent > 1:
                    out.append(self._died())
                    todo, unsent = todo[1:], 0
                else:
                    self.stop()
                    self.restarts += 1
                continue
            unsent = 0
            done = 0
            for _ in todo:
                try:
                    if not self.conn.poll(timeout):
                        self.stop()
                        self.restarts += 1
                        out.append(("timeout", f"no answer within {timeout:g}s (worker killed)", False))
                        break
                    status, payload, hit = self.conn.recv()
                except (EOFError, OSError, BrokenPipeError):
                    out.append(self._died())
                    break
                out.append((str(status), payload, bool(hit)))
                done += 1
            # the failed item (if any) is answered; the ones after it go to the next worker
            todo = todo[done + 1 :] if done < len(todo) else []
        return out

    def _died(self) -> tuple[str, Any, bool]:
        code = self.proc.exitcode if self.proc is not None else None
        self.stop()
        self.restarts += 1
        # The kernel's OOM killer or an address-space limit hit in C code ends the process: SIGKILL /
        # SIGSEGV / SIGABRT rather than a MemoryError.
        return "worker_died", f"the worker process ended (exit code {code})", False


# ------------------------------------------------------------------------------------ the job
@dataclass
class Candidate:
    key: ModelKey
    model_id: int
    name: str  # registered model
    version: int
    alias: str
    location: str = ""  # the version's artifact location when the registry's search gave it


@dataclass
class CycleResult:
    versions: int = 0
    rows_scored: int = 0
    calls: int = 0
    cache_hits: int = 0
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    files_written: list[Path] = field(default_factory=list)
    registry_error: str | None = None
    seconds: float = 0.0


class Scorer:
    def __init__(self, cfg: Config, clock: Any = time.time) -> None:
        self.cfg = cfg
        self.sc = cfg.scoring
        self.clock = clock
        self.fleet = FleetIndex(cfg.fleet)
        self.features = list(cfg.outputs.features)
        self.sc.state_dir.mkdir(parents=True, exist_ok=True)
        self.sc.output_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.sc.state_dir / "scored.json"
        self.failures_path = self.sc.state_dir / "failures.jsonl"
        # files read by this process (path -> size, mtime; at start every file is read again, to rebuild
        # the rows); served forecaster rows with features; (model id, version) of the shadow rows the
        # platform writes -> their newest target
        self.seen: dict[str, tuple[int, float]] = {}
        self.platform_shadow: dict[tuple[int, int], float] = {}
        self.rows = pd.DataFrame()
        # (model id, version) -> target times already scored; (name, version) -> retry not before
        self.scored: dict[tuple[int, int], set[float]] = {}
        self.retry_at: dict[tuple[str, int], float] = {}
        self._load_state()
        m = cfg.mlflow
        self.mlflow = MlflowRest.from_config(m)
        self.workers = [
            Worker(self.sc.memory_limit_mb, self.sc.cache_size, m.tracking_uri)
            for _ in range(self.sc.workers)
        ]
        self._seq = 0

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.mlflow.close()

    # ---------------------------------------------------------------------------------- inputs
    def read_inputs(self) -> None:
        now = self.clock()
        out_dir = self.sc.output_dir.resolve()
        frames = [self.rows] if len(self.rows) else []
        for src in self.cfg.outputs.predictions:
            for path in sorted(glob(src.glob)):
                p = Path(path)
                if p.resolve().parent == out_dir:  # our own output: never scored again
                    continue
                try:
                    st = p.stat()
                except OSError:
                    continue
                sig = (st.st_size, st.st_mtime)
                if self.seen.get(path) == sig:
                    continue
                self.seen[path] = sig
                try:
                    batch = READERS[src.format](p, "predictions", src.name or "", self.features)
                except (OSError, ValueError) as e:
                    log.warning("cannot read %s: %s", p, e)  # the outputs exporter counts and quarantines it
                    continue
                v = validate(batch, self.fleet, self.features, now, self.cfg.outputs.max_future_skew_seconds)
                rows = v.rows
                # Versions the platform writes shadow predictions for itself: scoring them too would only
                # make duplicates.
                shadow = rows["shadow"].to_numpy(bool) & (rows["version"].to_numpy() > 0)
                for m_id, ver, t in rows.loc[shadow, ["model", "version", "target"]].itertuples(index=False):
                    key = (int(m_id), int(ver))
                    self.platform_shadow[key] = max(self.platform_shadow.get(key, t), float(t))
                keep = ~rows["shadow"].to_numpy(bool) & np.isfinite(rows["prediction"].to_numpy(float))
                keep &= rows["target"].to_numpy(float) >= now - self.sc.window_seconds
                if keep.any():
                    cols = [
                        "model",
                        "made_at",
                        "target",
                        "version",
                        *(FEATURE_PREFIX + f for f in self.features),
                    ]
                    frames.append(rows.loc[keep, [c for c in cols if c in rows.columns]])
        if frames:
            rows = pd.concat(frames, ignore_index=True)
            rows = rows[rows["target"] >= now - self.sc.window_seconds]
            self.rows = rows.drop_duplicates(["model", "target"], keep="last").reset_index(drop=True)

    # ---------------------------------------------------------------------------------- registry
    def candidates(self) -> list[Candidate]:
        """Versions to score, from the registry (raises MlflowError when it cannot be read)."""
        m = self.cfg.mlflow
        by_name = {m.registered_model_pattern.format(**k.labels()): (i, k) for i, k in self.fleet_models()}
        by_tags = {tuple(k.labels().values()): (i, k) for i, k in self.fleet_models()}
        models: dict[str, tuple[int, ModelKey, dict[int, str]]] = {}
        for page in self.mlflow.search_registered_models():
            for rm in page:
                tags = {t.get("key"): t.get("value") for t in rm.get("tags") or []}
                tag_key = tuple(tags.get(m.tag_keys[k]) for k in ("customer", "building", "energy", "model"))
                hit = by_tags.get(tag_key) or by_name.get(str(rm.get("name")))  # type: ignore[arg-type]
                if hit is None:
                    continue
                aliases = {}
                for a in rm.get("aliases") or []:
                    try:
                        aliases[int(a.get("version"))] = str(a.get("alias"))
                    except (TypeError, ValueError):
                        continue
                models[str(rm["name"])] = (hit[0], hit[1], aliases)
        served = self._served_versions()
        out: list[Candidate] = []
        for page in self.mlflow.search_model_versions():
            for mv in page:
                name = str(mv.get("name"))
                if name not in models or mv.get("status", "READY") != "READY":
                    continue
                model_id, key, aliases = models[name]
                try:
                    version = int(mv.get("version") or "")
                except (TypeError, ValueError):
                    continue
                champion = next((v for v, a in aliases.items() if a == "champion"), None)
                alias = aliases.get(version)
                wanted = alias in self.sc.aliases or (
                    self.sc.newer_than_champion and champion is not None and version > champion
                )
                if not wanted or version == served.get(model_id, champion) or alias == "champion":
                    continue
                if (model_id, version) in self.platform_shadow:
                    continue
                out.append(
                    Candidate(key, model_id, name, version, alias or DEFAULT_ALIAS, artifact_location(mv))
                )
        # the newest few per model
        out.sort(key=lambda c: (c.model_id, -c.version))
        kept: list[Candidate] = []
        per: dict[int, int] = {}
        for c in out:
            per[c.model_id] = per.get(c.model_id, 0) + 1
            if per[c.model_id] <= self.sc.max_versions_per_model:
                kept.append(c)
        return kept

    def fleet_models(self) -> list[tuple[int, ModelKey]]:
        """(model id, key) of the models whose versions can be scored: the forecasters."""
        return [(i, k) for i, k in enumerate(self.fleet.models) if self.fleet.is_forecaster[i]]

    def _served_versions(self) -> dict[int, int]:
        """Model id -> the version its newest served row names (rows without one: none)."""
        if not len(self.rows):
            return {}
        newest = self.rows.sort_values("made_at").groupby("model").tail(1)
        return {int(r.model): int(r.version) for r in newest.itertuples() if r.version > 0}

    # ---------------------------------------------------------------------------------- scoring
    def cycle(self) -> CycleResult:
        t0 = time.monotonic()
        res = CycleResult()
        self.read_inputs()
        try:
            cands = self.candidates()
        except MlflowError as e:
            res.registry_error = str(e)
            log.warning("cannot read the MLflow registry: %s", e)
            res.seconds = time.monotonic() - t0
            return res
        now = self.clock()
        res.versions = len(cands)
        by_model = {mid: g for mid, g in self.rows.groupby("model")} if len(self.rows) else {}
        tasks: list[list[tuple[Candidate, pd.DataFrame]]] = [[] for _ in self.workers]
        for c in cands:
            if self.retry_at.get((c.name, c.version), 0) > now:
                continue
            rows = by_model.get(c.model_id)
            if rows is None:
                continue
            done = self.scored.get((c.model_id, c.version), set())
            todo = rows[~rows["target"].isin(done)]
            if not len(todo):
                continue
            w = zlib.crc32(f"{c.name}/{c.version}".encode()) % len(self.workers)
            tasks[w].append((c, todo))
        out_rows: list[dict[str, Any]] = []
        lock = threading.Lock()

        def run(i: int) -> None:
            for start in range(0, len(tasks[i]), BATCH):
                batch = tasks[i][start : start + BATCH]
                items = []
                for c, todo in batch:
                    cols = [FEATURE_PREFIX + f for f in self.features if FEATURE_PREFIX + f in todo.columns]
                    names = [col[len(FEATURE_PREFIX) :] for col in cols]
                    items.append(
                        (f"models:/{c.name}/{c.version}", c.location, names, todo[cols].to_numpy(float))
                    )
                answers = self.workers[i].call_many(items, self.sc.timeout_seconds)
                for (c, todo), (_, _, names, values), answer in zip(batch, items, answers, strict=True):
                    record(c, todo, names, values, answer)

        def record(
            c: Candidate,
            todo: pd.DataFrame,
            names: list[str],
            values: np.ndarray,
            answer: tuple[str, Any, bool],
        ) -> None:
            status, payload, hit = answer
            with lock:
                res.calls += 1
                res.cache_hits += int(hit)
                if status != "ok":
                    res.failures[status] += 1
                    self.retry_at[(c.name, c.version)] = self.clock() + self.sc.retry_after_seconds
                    self._failure(c, status, str(payload))
                    return
                labels = c.key.labels()
                for made, target, pred, xs in zip(
                    todo["made_at"].to_numpy(float),
                    todo["target"].to_numpy(float),
                    payload,
                    values,
                    strict=True,
                ):
                    if not np.isfinite(pred):
                        continue
                    out_rows.append(
                        {
                            **labels,
                            "made_at": _rfc3339(made),
                            "target_time": _rfc3339(target),
                            "prediction": round(float(pred), 6),
                            "model_version": c.version,
                            "alias": c.alias,
                            # the inputs it scored (the outputs exporter checks every record's schema)
                            "features": {
                                n: float(x) for n, x in zip(names, xs, strict=True) if np.isfinite(x)
                            },
                        }
                    )
                self.scored.setdefault((c.model_id, c.version), set()).update(
                    todo["target"].to_numpy(float).tolist()
                )
                self.retry_at.pop((c.name, c.version), None)

        with ThreadPoolExecutor(len(self.workers)) as pool:
            list(pool.map(run, range(len(self.workers))))
        res.rows_scored = len(out_rows)
        if out_rows:
            res.files_written.append(self._write(out_rows))
        self._prune(now)
        self._save_state()
        res.seconds = time.monotonic() - t0
        return res

    def _write(self, rows: list[dict[str, Any]]) -> Path:
        """A whole file under a temporary name, renamed: the outputs exporter never sees half of it."""
        self._seq += 1
        stamp = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y%m%dT%H%M%S")
        path = self.sc.output_dir / f"scored-{stamp}-{os.getpid()}-{self._seq:04d}.jsonl"
        tmp = path.with_name("." + path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        return path

    def _failure(self, c: Candidate, reason: str, detail: str) -> None:
        rec = {
            "time": _rfc3339(self.clock()),
            **c.key.labels(),
            "registered_model": c.name,
            "version": c.version,
            "reason": reason,
            "detail": detail,
        }
        log.warning("scoring %s version %d failed: %s: %s", c.name, c.version, reason, detail)
        try:
            with open(self.failures_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec, sort_keys=True) + "\n")
        except OSError as e:
            log.error("cannot write %s: %s", self.failures_path, e)

    def _prune(self, now: float) -> None:
        horizon = now - self.sc.window_seconds
        self.platform_shadow = {k: t for k, t in self.platform_shadow.items() if t >= horizon}
        for k, targets in list(self.scored.items()):
            kept = {t for t in targets if t >= horizon}
            if kept:
                self.scored[k] = kept
            else:
                del self.scored[k]
        # output files older than the window (wall time: file times are the machine's) are no use to
        # anyone: the exporter has read them
        for p in self.sc.output_dir.glob("scored-*.jsonl"):
            try:
                if p.stat().st_mtime < time.time() - self.sc.window_seconds:
                    p.unlink()
            except OSError:
                continue

    def _load_state(self) -> None:
        try:
            raw = json.loads(self.state_path.read_text(encoding="utf-8"))
            self.scored = {(int(m), int(v)): {float(t) for t in ts} for m, v, ts in raw["scored"]}
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
            # Scoring again costs time, never data: the exporter drops the duplicates of a version.
            log.error("scoring state %s unreadable (%s): starting afresh", self.state_path, e)
            self.scored = {}

    def _save_state(self) -> None:
        doc = {
            "scored": [[m, v, sorted(ts)] for (m, v), ts in self.scored.items()],
        }
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(doc), encoding="utf-8")
            tmp.replace(self.state_path)
        except OSError as e:
            log.error("cannot save %s: %s", self.state_path, e)


# ------------------------------------------------------------------------------------ reporting
def push_cycle(res: CycleResult, workers: Sequence[Worker], gateway: str | None = None) -> None:
    """The cycle as the batch job ``benchmark`` plus its figures, to the Pushgateway (``gateway``, default
    FLEETMON_PUSHGATEWAY or 127.0.0.1:9091, with fleetmon.push's TLS and auth settings); logged if it fails."""
    from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

    from fleetmon import push

    failed = res.registry_error is not None
    try:
        gw = gateway or push.default_gateway()
        push.push_job(
            "benchmark", None, outcome="failure" if failed else "success", duration=res.seconds, gateway=gw
        )
        reg = CollectorRegistry()
        Gauge("fleetmon_scoring_versions", "Versions under scoring in the last cycle.", registry=reg).set(
            res.versions
        )
        Gauge(
            "fleetmon_scoring_rows_scored", "Shadow predictions written in the last cycle.", registry=reg
        ).set(res.rows_scored)
        Gauge(
            "fleetmon_scoring_cache_hit_ratio",
            "Share of the last cycle's calls whose model was already loaded in its worker.",
            registry=reg,
        ).set(res.cache_hits / res.calls if res.calls else 0)
        fails = Gauge(
            "fleetmon_scoring_failures",
            "Versions that failed in the last cycle, by reason.",
            ["reason"],
            registry=reg,
        )
        for r, n in res.failures.items():
            fails.labels(r).set(n)
        Gauge(
            "fleetmon_scoring_worker_restarts",
            "Worker processes replaced since the job started (timeouts, crashes).",
            registry=reg,
        ).set(sum(w.restarts for w in workers))
        pushadd_to_gateway(gw, job="fleetmon-scoring", registry=reg, handler=push.gateway_handler())
    except (push.PushError, ValueError, OSError) as e:
        log.warning("cannot push the scoring cycle: %s", e)


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def main(argv: Sequence[str] | None = None) -> int:
    args, cfg = jobs.start("fleetmon score", __doc__.split("\n\n")[0], argv, "scoring")
    if cfg is None:
        return 2
    scorer = Scorer(cfg)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        while True:
            res = scorer.cycle()
            log.info(
                "scored %d versions: %d rows in %.1fs (%d calls, %d cache hits, failures %s)",
                res.versions,
                res.rows_scored,
                res.seconds,
                res.calls,
                res.cache_hits,
                {k: v for k, v in res.failures.items() if v},
            )
            if not args.no_push:
                push_cycle(res, scorer.workers)
            if args.once or stop.wait(cfg.scoring.interval_seconds):
                return 1 if args.once and res.registry_error else 0
    finally:
        scorer.close()
