"""The per-model ``DriftJob``s of one drift cycle, from the in-memory window (or a fixed reference file).

Columns: the configured features plus the model's output, ``prediction`` for forecasters and
``anomaly_score`` for anomaly detectors, all numerical (types are given, not inferred), less
``drift.exclude``. Jobs are in array form (``DriftJob(reference_values=..., current_values=...)``):
every window is a view into one matrix built once per cycle, so building 40,000 jobs costs no pandas
work per model (a DataFrame per window used to be most of a drift cycle). Windows are by
``made_at`` (what the model saw when it predicted):

- ``reference: rolling``: reference = ``[now - current - reference, now - current)``, current =
  ``[now - current, now]`` (``reference_window_seconds``, ``current_window_seconds``).
- ``reference: file``: the reference is a file per model, ``reference_path`` with ``{customer}``,
  ``{building}``, ``{energy}``, ``{model}`` placeholders: a local path (JSON lines / CSV / Parquet by
  extension, the prediction record format: features as ``features.<name>`` columns or a ``features``
  object) or an MLflow artifact URI (``runs:/...``, ``models:/...``, ``mlflow-artifacts:/...``),
  downloaded once and cached. The current window is as above.

A model gets no job when it has no reference rows (counted by reason in ``skipped``): a model whose
current window is empty does get one, and the backend reports its columns as not computable.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fleetmon.config import DriftConfig, redact_url
from fleetmon.drift.types import ColumnOverride, DriftJob
from fleetmon.outputs.records import FEATURE_PREFIX, READERS, FleetIndex
from fleetmon.outputs.store import Snapshot

log = logging.getLogger(__name__)

_ARTIFACT_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


def output_column(fleet: FleetIndex, model_id: int) -> str:
    return "anomaly_score" if fleet.is_anomaly[model_id] else "prediction"


@dataclass
class JobSet:
    jobs: list[DriftJob]
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> models without a job


class ReferenceFiles:
    """Fixed reference frames per model, read once per file version (mtime)."""

    def __init__(
        self, pattern: str, features: list[str], cache_dir: Path, tracking_uri: str | None = None
    ) -> None:
        self.pattern = pattern
        # Artifact URIs are resolved against the configured MLflow (mlflow.tracking_uri), not the environment.
        self.tracking_uri = tracking_uri
        self.features = features
        self.cache_dir = cache_dir
        self._cache: dict[str, tuple[str, pd.DataFrame]] = {}  # path -> (version, frame)
        self._arrays: dict[str, tuple[str, dict[str, np.ndarray]]] = {}  # pattern path -> (version, columns)

    def _local(self, location: str) -> str:
        if not location.startswith(_ARTIFACT_SCHEMES):
            return location
        # Artifacts of a run are immutable: download each URI once.
        dest = self.cache_dir / "".join(c if c.isalnum() or c in "-_." else "_" for c in location)
        if not dest.exists():
            import mlflow.artifacts

            dest.mkdir(parents=True, exist_ok=True)
            mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=str(dest), tracking_uri=self.tracking_uri
            )
        files = sorted(p for p in dest.rglob("*") if p.is_file())
        if not files:
            raise FileNotFoundError(f"artifact {location} holds no file")
        return str(files[0])

    def get(self, labels: dict[str, str]) -> tuple[str, pd.DataFrame]:
        path = self._local(self.pattern.format(**labels))
        version = f"file:{path}:{os.stat(path).st_mtime_ns}"
        hit = self._cache.get(path)
        if hit is not None and hit[0] == version:
            return hit
        fmt = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}.get(
            Path(path).suffix.lower()
        )
        if fmt is None:
            raise ValueError(f"reference file {path}: unknown format (use .jsonl, .csv or .parquet)")
        batch = READERS[fmt](Path(path), "predictions", "reference", self.features)
        frame = batch.frame
        cols = {}
        for f in self.features:
            if FEATURE_PREFIX + f in frame.columns:
                cols[f] = pd.to_numeric(frame[FEATURE_PREFIX + f], errors="coerce")
        for c in ("prediction", "anomaly_score"):
            if c in frame.columns:
                cols[c] = pd.to_numeric(frame[c], errors="coerce")
        out = pd.DataFrame(cols).astype(np.float64)
        self._cache[path] = (version, out)
        return version, out

    def arrays(self, labels: dict[str, str]) -> tuple[str, dict[str, np.ndarray]]:
        """The reference of a model as one array per column (read once per file version)."""
        version, frame = self.get(labels)
        path = self.pattern.format(**labels)
        hit = self._arrays.get(path)
        if hit is None or hit[0] != version:
            hit = self._arrays[path] = (version, {c: frame[c].to_numpy() for c in frame.columns})
        return hit


def build_jobs(
    snap: Snapshot,
    fleet: FleetIndex,
    features: list[str],
    drift: DriftConfig,
    now: float,
    references: ReferenceFiles | None = None,
) -> JobSet:
    """One array-form ``DriftJob`` per model: its windows are views into one matrix, no pandas per model.

    The matrix holds every column a job can test (one row per column: the features less the excluded
    ones, then the model's output -- ``prediction`` for forecasters, ``anomaly_score`` for anomaly
    detectors), its columns sorted by (model, made_at), so every window of every model is a slice.
    """
    pred = snap.predictions
    cur_start = now - drift.current_window_seconds
    ref_start = cur_start - drift.reference_window_seconds
    n_models = len(fleet.models)
    model = pred["model"].to_numpy()
    made = pred["made_at"].to_numpy()
    order = np.lexsort((made, model))
    model, made = model[order], made[order]
    feats = [f for f in features if f not in drift.exclude]
    matrix = np.empty((len(feats) + 1, len(pred)), np.float64)
    for k, f in enumerate(feats):
        matrix[k] = pred[FEATURE_PREFIX + f].to_numpy()[order]
    anomaly = fleet.is_anomaly[model] if len(pred) else np.zeros(0, bool)
    matrix[-1] = np.where(anomaly, pred["score"].to_numpy()[order], pred["prediction"].to_numpy()[order])
    # Window bounds of every model at once: rows of a model are sorted by made_at, so the rows before a
    # time are the first ones of its slice (NaN times sort last and fall in no window).
    first = np.searchsorted(model, np.arange(n_models))

    def start(before: np.ndarray) -> np.ndarray:
        return first + np.bincount(model[before], minlength=n_models)[:n_models]

    r_lo, c_lo, c_hi = start(made < ref_start), start(made < cur_start), start(made <= now)
    # Columns and overrides per kind of model (the output column is the matrix's last row)
    kinds = {}
    for anomalous in (False, True):
        out_col = "anomaly_score" if anomalous else "prediction"
        cols = [*feats, out_col] if out_col not in drift.exclude else list(feats)
        overrides = {
            c: ColumnOverride(stattest=o.stattest, threshold=o.threshold)
            for c, o in drift.columns.items()
            if c in cols
        }
        kinds[anomalous] = (cols, overrides)
    out = JobSet([])
    for mid, key in enumerate(fleet.models):
        cols, overrides = kinds[bool(fleet.is_anomaly[mid])]
        rows = matrix[: len(cols)]
        current = rows[:, c_lo[mid] : c_hi[mid]]
        if drift.reference == "file" and references is not None:
            try:
                version, ref = references.arrays(key.labels())
            except (OSError, ValueError, KeyError) as e:
                out.skipped["reference_unavailable"] += 1
                log.debug("no drift reference for %s: %s", key.labels(), e)
                continue
            except Exception as e:  # an MLflow download error: same outcome, never a crash
                out.skipped["reference_unavailable"] += 1
                msg, uri = str(e), references.tracking_uri
                if uri:  # MLflow's errors name the tracking URI, user info and password included
                    msg = msg.replace(uri, redact_url(uri) or "***")
                log.warning("no drift reference for %s: %s: %s", key.labels(), type(e).__name__, msg)
                continue
            keep = [k for k, c in enumerate(cols) if c in ref]
            if len(keep) < len(cols):
                current = current[keep]
                cols = [cols[k] for k in keep]
                overrides = {c: o for c, o in overrides.items() if c in cols}
            reference: np.ndarray | list[np.ndarray] = [ref[c] for c in cols]
            n_ref = len(reference[0]) if cols else 0
        else:
            reference = rows[:, r_lo[mid] : c_lo[mid]]
            n_ref = reference.shape[1]
            version = f"rolling:{ref_start:.3f}:{cur_start:.3f}:{n_ref}"
        if n_ref == 0 or not cols:
            out.skipped["no_reference_rows"] += 1
            continue
        out.jobs.append(
            DriftJob(
                key,
                numerical=cols,
                overrides=overrides,
                drift_share=drift.drift_share,
                reference_version=version,
                reference_values=reference,
                current_values=current,
            )
        )
    return out
