"""The per-model ``DriftJob``s of one drift cycle, from the in-memory window (or a fixed reference file).

Columns: the configured features plus the model's output, ``prediction`` for forecasters and
``anomaly_score`` for anomaly detectors, all numerical (types are given, not inferred), less
``drift.exclude``. Windows are by
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

from fleetmon.config import DriftConfig
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

    def __init__(self, pattern: str, features: list[str], cache_dir: Path) -> None:
        self.pattern = pattern
        self.features = features
        self.cache_dir = cache_dir
        self._cache: dict[str, tuple[str, pd.DataFrame]] = {}  # path -> (version, frame)

    def _local(self, location: str) -> str:
        if not location.startswith(_ARTIFACT_SCHEMES):
            return location
        # Artifacts of a run are immutable: download each URI once.
        dest = self.cache_dir / "".join(c if c.isalnum() or c in "-_." else "_" for c in location)
        if not dest.exists():
            import mlflow.artifacts

            dest.mkdir(parents=True, exist_ok=True)
            mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(dest))
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


def build_jobs(
    snap: Snapshot,
    fleet: FleetIndex,
    features: list[str],
    drift: DriftConfig,
    now: float,
    references: ReferenceFiles | None = None,
) -> JobSet:
    pred = snap.predictions
    cur_start = now - drift.current_window_seconds
    ref_start = cur_start - drift.reference_window_seconds
    model = pred["model"].to_numpy()
    made = pred["made_at"].to_numpy()
    # One matrix for all columns a job can use; rows sorted by (model, made_at) so every window is a slice.
    names = [*features, "prediction", "anomaly_score"]
    matrix = (
        np.column_stack(
            [pred[FEATURE_PREFIX + f].to_numpy() for f in features]
            + [pred["prediction"].to_numpy(), pred["score"].to_numpy()]
        )
        if len(pred)
        else np.empty((0, len(names)))
    )
    order = np.lexsort((made, model))
    model, made, matrix = model[order], made[order], matrix[order]
    bounds = np.searchsorted(model, np.arange(len(fleet.models) + 1))
    overrides = {
        c: ColumnOverride(stattest=o.stattest, threshold=o.threshold) for c, o in drift.columns.items()
    }
    out = JobSet([])
    for mid, key in enumerate(fleet.models):
        lo, hi = bounds[mid], bounds[mid + 1]
        out_col = output_column(fleet, mid)
        cols = [c for c in (*features, out_col) if c not in drift.exclude]
        idx = [names.index(c) for c in cols]
        m_made = made[lo:hi]
        c_lo = lo + np.searchsorted(m_made, cur_start, side="left")
        c_hi = lo + np.searchsorted(m_made, now, side="right")
        current = pd.DataFrame(matrix[c_lo:c_hi][:, idx], columns=cols)
        if drift.reference == "file" and references is not None:
            try:
                version, reference = references.get(key.labels())
            except (OSError, ValueError, KeyError) as e:
                out.skipped["reference_unavailable"] += 1
                log.debug("no drift reference for %s: %s", key.labels(), e)
                continue
            except Exception as e:  # an MLflow download error: same outcome, never a crash
                out.skipped["reference_unavailable"] += 1
                log.warning("no drift reference for %s: %s: %s", key.labels(), type(e).__name__, e)
                continue
            cols = [c for c in cols if c in reference.columns]
            reference = reference[cols]
            current = current[cols]
        else:
            r_lo = lo + np.searchsorted(m_made, ref_start, side="left")
            r_hi = lo + np.searchsorted(m_made, cur_start, side="left")
            reference = pd.DataFrame(matrix[r_lo:r_hi][:, idx], columns=cols)
            version = f"rolling:{ref_start:.3f}:{cur_start:.3f}:{r_hi - r_lo}"
        if reference.empty:
            out.skipped["no_reference_rows"] += 1
            continue
        out.jobs.append(
            DriftJob(
                key=key,
                reference=reference,
                current=current,
                numerical=cols,
                overrides={c: o for c, o in overrides.items() if c in cols},
                drift_share=drift.drift_share,
                reference_version=version,
            )
        )
    return out
