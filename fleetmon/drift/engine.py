"""The fleet drift engine: Evidently's default drift preset, computed for thousands of models at once.

``FleetDriftEngine().run(jobs)`` returns, for every job, what ``EvidentlyBackend`` (Evidently's own
``Report([DataDriftPreset()])``) returns -- the same test per column, score, threshold, decision, share
and dataset flag -- without Evidently's report machinery (about 0.3 s per model, almost all of it
building widgets and charts).

Evidently's rule, read from ``evidently.legacy.calculations.stattests.registry._get_default_stattest``
and ``evidently.legacy.calculations.data_drift.get_one_column_drift`` (0.7.x):

- each column is cleaned first: +-inf become NaN, NaNs are dropped, in both windows; an empty result is an
  error (reference checked first), then a numerical column must have a numeric dtype;
- ``n_values`` = distinct values of reference + current together; ``n_ref`` = cleaned reference rows;
- ``n_ref <= 1000``: numerical -> ``z`` if n_values <= 2, ``chisquare`` if n_values <= 5, else ``ks``;
  categorical -> ``chisquare`` if n_values > 2 else ``z``;
- ``n_ref > 1000``: numerical -> ``jensenshannon`` if n_values <= 5 else ``wasserstein`` (normed);
  categorical -> ``jensenshannon``;
- an override (``ColumnOverride.stattest``) is looked up in Evidently's registry for the column type
  (``chisquare`` and ``z`` exist only for categorical columns, ``ks`` and ``wasserstein`` only for
  numerical ones); the threshold is the override's or the test's default (0.05 for p-values, 0.1 for
  distances);
- drifted: ``ks`` p <= threshold; ``chisquare`` / ``z`` p < threshold; distances >= threshold.

How the work is batched:

- per-reference work is cached per model under ``DriftJob.reference_version``: each numerical column
  of the reference is cleaned, sorted and reduced to its distinct values and counts (plus its standard
  deviation, the Wasserstein norm), each categorical column to its value counts. A cycle with unchanged
  references only reads, cleans and sorts the current windows;
- per model, one compiled numba kernel (``_kernels.numeric_kernel``, ``nogil``) merges each sorted
  current column with the cached reference and computes every statistic the rule may pick (KS, normed
  Wasserstein, Z, chi-square, Jensen-Shannon) in one pass; two worker threads run the models on both
  cores;
- the p-values are then computed for the whole fleet at once with the same scipy special functions
  scipy's tests use (``ndtr`` for Z, ``chdtrc`` for chi-square); exact KS p-values depend only on
  (n_ref, n_cur, D), so each distinct triple is computed once with scipy's own routine and memoized;
- anything not vectorized (an override to another Evidently test such as ``psi``, Jensen-Shannon forced
  on a numerical column with more than 20 reference values, boolean columns) is computed per column with
  Evidently's own stattest function, so it is exact by construction.

Not computable columns carry the same reason codes as the Evidently backend (``fleetmon.drift.types``);
see ``fleetmon.drift.evidently_backend`` for Evidently's own failures on dirty data.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from fleetmon.config import ModelKey
from fleetmon.drift import _kernels as K
from fleetmon.drift._common import classify_error, summarize
from fleetmon.drift.types import (
    EMPTY_CURRENT,
    EMPTY_REFERENCE,
    INVALID_STATTEST,
    MISSING_COLUMN,
    NOT_NUMERIC,
    SCORE_NAN,
    STATTEST_ERROR,
    ColumnDrift,
    DriftJob,
    DriftResult,
)

FAST_TESTS = ("ks", "wasserstein", "z", "chisquare", "jensenshannon")
DEFAULT_THRESHOLD = {"ks": 0.05, "chisquare": 0.05, "z": 0.05, "wasserstein": 0.1, "jensenshannon": 0.1}
_CHUNK = 128  # models per task handed to a worker thread


# ------------------------------------------------------------------------------------ Evidently glue
_EVIDENTLY_LOCK = threading.Lock()


def _evidently() -> Any:
    """Evidently's stattest registry (imported lazily and quietly: it touches numpy.core on import)."""
    with _EVIDENTLY_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from evidently.legacy.calculations.stattests import registry
        from evidently.legacy.core import ColumnType

    return registry, ColumnType


_STATTEST_CACHE: dict[tuple[str, bool], tuple[str, float] | str] = {}


def _resolve_override(name: str, numerical: bool) -> tuple[str, float] | str:
    """(name, default threshold) of an overriding test, or the error message Evidently would raise."""
    key = (name, numerical)
    if key not in _STATTEST_CACHE:
        registry, ColumnType = _evidently()
        try:
            st = registry.get_registered_stattest(
                name, ColumnType.Numerical if numerical else ColumnType.Categorical
            )
            _STATTEST_CACHE[key] = (st.name, float(st.default_threshold))
        except ValueError as e:
            _STATTEST_CACHE[key] = str(e)
    return _STATTEST_CACHE[key]


def _evidently_column(ref: pd.Series, cur: pd.Series, numerical: bool, stattest: str | None, threshold):
    """One column with Evidently's own stattest function (the exact fallback)."""
    registry, ColumnType = _evidently()
    ctype = ColumnType.Numerical if numerical else ColumnType.Categorical
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = registry.get_stattest(ref, cur, ctype, stattest)
        res = test(ref, cur, ctype, threshold)
    return test.name, float(res.actual_threshold), float(res.drift_score), bool(res.drifted)


# ----------------------------------------------------------------------------------- KS p-values
_KS_MEMO: dict[tuple[int, int, float], float] = {}
_KS_LOCK = threading.Lock()


def ks_pvalue(n1: int, n2: int, d: float) -> float:
    """scipy.stats.ks_2samp's two-sided p-value (method='auto') for sizes n1, n2 and statistic d.

    The tail of ``ks_2samp`` after the statistic, with scipy's own exact routine: the p-value is a
    function of (n1, n2, d) only, so it is memoized (a fleet has few distinct triples).
    """
    key = (n1, n2, d)
    hit = _KS_MEMO.get(key)
    if hit is not None:
        return hit
    from scipy.stats import _stats_py, distributions

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mode = "exact" if max(n1, n2) <= 10000 else "asymp"
        prob = -np.inf
        if mode == "exact":
            success, d, prob = _stats_py._attempt_exact_2kssamp(n1, n2, math.gcd(n1, n2), d, "two-sided")
            if not success:
                mode = "asymp"
        if mode == "asymp":
            m, n = sorted([float(n1), float(n2)], reverse=True)
            en = m * n / (m + n)
            prob = distributions.kstwo.sf(d, np.round(en))
    p = float(np.clip(prob, 0, 1))
    with _KS_LOCK:
        if len(_KS_MEMO) > 200_000:
            _KS_MEMO.clear()
        _KS_MEMO[key] = p
    return p


# ------------------------------------------------------------------------------------ reference cache
@dataclass
class _RefNumeric:
    columns: list[str]
    kinds: list[str]  # dtype kind per column: "f", "i", "u" (fast path) or "b", "O", ... (fallback)
    vals: np.ndarray  # distinct finite values of every column, concatenated
    cnts: np.ndarray
    offs: np.ndarray  # column i: vals[offs[i]:offs[i+1]]
    stats: np.ndarray  # (ncols, 3): n, nunique, std
    stds: list[float]  # Evidently's norm input: np.std of the cleaned reference column


@dataclass
class _RefEntry:
    version: str
    numeric: _RefNumeric
    # categorical column -> (cleaned reference series, value counts) or None when not usable
    categorical: dict[str, tuple[pd.Series, dict[Any, int]]] = field(default_factory=dict)


def _clean(s: pd.Series) -> pd.Series:
    """Evidently's cleaning: +-inf -> NaN, then drop NaN."""
    if s.dtype.kind == "f":
        return s[np.isfinite(s.to_numpy())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # object columns: pandas may warn about downcasting
        return s.replace([-np.inf, np.inf], np.nan).dropna()


def _column_matrix(frame: pd.DataFrame, columns: list[str], kinds: list[str]) -> np.ndarray:
    """The fast-path columns of a frame as a (ncols, nrows) float64 matrix (ints cast exactly)."""
    out = np.empty((len(columns), len(frame)), np.float64)
    for i, (c, kind) in enumerate(zip(columns, kinds, strict=True)):
        if kind in "fiu":
            out[i] = frame[c].to_numpy()
        else:
            out[i] = np.nan
    return out


def _fast_kind(s: pd.Series) -> str:
    k = s.dtype.kind
    if k == "f" and s.dtype.itemsize != 8:
        return "F"  # float32/16: Evidently's np.std runs in that precision; use its own function
    return k


def _build_reference(job: DriftJob) -> _RefEntry:
    ref = job.reference
    cols = [c for c in job.numerical if c in ref.columns]
    kinds = [_fast_kind(ref[c]) for c in cols]
    raw = np.sort(_column_matrix(ref, cols, kinds), axis=1)  # NaN sort last, -inf first
    n = raw.shape[1]
    vals = np.empty(len(cols) * n, np.float64)
    cnts = np.empty(len(cols) * n, np.int64)
    offs = np.zeros(len(cols) + 1, np.int64)
    stats = np.zeros((len(cols), 3), np.float64)
    if cols:
        K.reference_kernel(raw, n, vals, cnts, offs, stats)
    used = int(offs[-1])
    # np.std of the cleaned reference (Evidently's Wasserstein norm), from the kernel's two-pass sums
    stds = [float(x) for x in stats[:, 2]]
    numeric = _RefNumeric(cols, kinds, vals[:used].copy(), cnts[:used].copy(), offs, stats, stds)
    entry = _RefEntry(job.reference_version, numeric)
    for c in job.categorical:
        if c in ref.columns:
            s = _clean(ref[c])
            entry.categorical[c] = (s, s.value_counts().to_dict())
    return entry


# ------------------------------------------------------------------------------------------ work items
@dataclass
class _Pending:
    """One column's raw statistic, finished (p-value, decision) for the whole fleet at once."""

    job: int
    column: str
    stattest: str
    threshold: float
    raw: float  # KS D, Z statistic, chi-square statistic or a distance
    n1: int = 0
    n2: int = 0
    df: float = 0.0


class FleetDriftEngine:
    """Evidently's DataDriftPreset numbers for a whole fleet, batched, cached and on both cores."""

    name = "fleet"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or min(2, os.cpu_count() or 1)
        self._cache: dict[ModelKey, _RefEntry] = {}
        self._cache_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="fleetmon-drift")
        self.stats = {"reference_builds": 0, "reference_hits": 0}

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> FleetDriftEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def forget(self, keys: Sequence[ModelKey] | None = None) -> None:
        """Drop cached reference work (all of it, or these models')."""
        with self._cache_lock:
            if keys is None:
                self._cache.clear()
            for k in keys or []:
                self._cache.pop(k, None)

    # ----------------------------------------------------------------------------------------- run
    def run(self, jobs: Sequence[DriftJob]) -> list[DriftResult]:
        jobs = list(jobs)
        columns: list[list[ColumnDrift | _Pending]] = [[] for _ in jobs]
        chunks = [range(i, min(i + _CHUNK, len(jobs))) for i in range(0, len(jobs), _CHUNK)]
        futures = [self._pool.submit(self._run_chunk, jobs, idx, columns) for idx in chunks]
        for f in futures:
            f.result()
        done = self._finish([p for cols in columns for p in cols if isinstance(p, _Pending)])
        results = []
        for i, job in enumerate(jobs):
            cds = [done[id(p)] if isinstance(p, _Pending) else p for p in columns[i]]
            results.append(summarize(job.key, cds, job.drift_share, len(job.reference), len(job.current)))
        return results

    def _reference(self, job: DriftJob) -> _RefEntry:
        if job.reference_version:
            with self._cache_lock:
                entry = self._cache.get(job.key)
            if entry is not None and entry.version == job.reference_version:
                self.stats["reference_hits"] += 1
                return entry
        entry = _build_reference(job)
        self.stats["reference_builds"] += 1
        if job.reference_version:
            with self._cache_lock:
                self._cache[job.key] = entry
        return entry

    def _run_chunk(self, jobs: list[DriftJob], idx: range, columns: list[list[Any]]) -> None:
        for i in idx:
            try:
                columns[i] = self._run_job(i, jobs[i])
            except Exception as e:  # never let one model take the cycle down
                job = jobs[i]
                columns[i] = [
                    _not_computable(c, job, STATTEST_ERROR, f"drift engine failed: {e!r}")
                    for c in [*job.numerical, *job.categorical]
                ]

    def _run_job(self, i: int, job: DriftJob) -> list[ColumnDrift | _Pending]:
        entry = self._reference(job)
        num = entry.numeric
        out: dict[str, ColumnDrift | _Pending] = {}
        # the current window's numerical columns, read once (the only per-cycle pandas work)
        current = job.current
        fast: set[str] = set()
        cur = np.empty((len(num.columns), len(current)), np.float64)
        for ci, (c, kind) in enumerate(zip(num.columns, num.kinds, strict=True)):
            if kind in "fiu" and c in current.columns:
                s = current[c]
                if _fast_kind(s) in "fiu":
                    cur[ci] = s.to_numpy()
                    fast.add(c)
                    continue
            cur[ci] = np.nan
        res = None
        if fast:
            ncols = len(num.columns)
            res = np.empty((ncols, K.N_OUT), np.float64)
            cur.sort(axis=1)  # numpy's sort (NaN last), GIL released
            K.numeric_kernel(num.vals, num.cnts, num.offs, num.stats, cur, cur.shape[1], res)
        for ci, c in enumerate(num.columns):
            if c in fast and res is not None:
                out[c] = self._numeric_column(i, job, c, num, ci, res[ci])
        for c in job.numerical:
            if c not in out:
                out[c] = self._slow_column(i, job, c, True, entry)
        for c in job.categorical:
            out[c] = self._slow_column(i, job, c, False, entry)
        return [out[c] for c in [*job.numerical, *job.categorical]]

    # ------------------------------------------------------------------------------ numerical (fast)
    def _numeric_column(
        self, i: int, job: DriftJob, c: str, num: _RefNumeric, ci: int, r: np.ndarray
    ) -> ColumnDrift | _Pending:
        n_ref = int(num.stats[ci, 0])
        n_cur = int(r[K.CUR_N])
        if n_ref == 0:
            return _not_computable(c, job, EMPTY_REFERENCE)
        if n_cur == 0:
            return _not_computable(c, job, EMPTY_CURRENT)
        o = job.overrides.get(c)
        threshold_override = o.threshold if o else None
        n_values = int(r[K.N_UNION])
        if o and o.stattest:
            resolved = _resolve_override(o.stattest, True)
            if isinstance(resolved, str):
                return _not_computable(c, job, INVALID_STATTEST, resolved)
            name = resolved[0]
        elif n_ref <= 1000:
            name = "z" if n_values <= 2 else "chisquare" if n_values <= 5 else "ks"
        else:
            name = "jensenshannon" if n_values <= 5 else "wasserstein"
        threshold = DEFAULT_THRESHOLD.get(name, 0.0) if threshold_override is None else threshold_override
        if name == "ks":
            return _Pending(i, c, name, threshold, float(r[K.KS_D]), n_ref, n_cur)
        if name == "wasserstein":
            norm = max(num.stds[ci], 0.001)
            return _Pending(i, c, name, threshold, float(r[K.WD]) / norm)
        if name == "z" and r[K.Z_CONST] == 1.0:  # the same single value in both windows: p = 1
            return _decided(c, name, threshold, 1.0)
        if name == "z" and not math.isnan(r[K.Z_STAT]):
            return _Pending(i, c, name, threshold, float(r[K.Z_STAT]))
        if name == "chisquare" and not math.isnan(r[K.CHI_STAT]):
            return _Pending(i, c, name, threshold, float(r[K.CHI_STAT]), df=float(r[K.CHI_DF]))
        if name == "jensenshannon" and not math.isnan(r[K.JS]):
            return _Pending(i, c, name, threshold, float(r[K.JS]))
        # anything else (another Evidently test, JS on > 20 reference values): Evidently's own function
        return self._slow_column(i, job, c, True, None)

    # ----------------------------------------------------------------- categorical and the rest (exact)
    def _slow_column(
        self, i: int, job: DriftJob, c: str, numerical: bool, entry: _RefEntry | None
    ) -> ColumnDrift | _Pending:
        if c not in job.reference.columns or c not in job.current.columns:
            return _not_computable(c, job, MISSING_COLUMN, f"column {c!r} is missing from a window")
        if entry is not None and not numerical and c in entry.categorical:
            ref, ref_counts = entry.categorical[c]
        else:
            ref, ref_counts = _clean(job.reference[c]), None
        cur = _clean(job.current[c])
        if ref.empty:
            return _not_computable(c, job, EMPTY_REFERENCE)
        if cur.empty:
            return _not_computable(c, job, EMPTY_CURRENT)
        if numerical and not (pd.api.types.is_numeric_dtype(ref) and pd.api.types.is_numeric_dtype(cur)):
            return _not_computable(c, job, NOT_NUMERIC)
        o = job.overrides.get(c)
        if o and o.stattest:
            resolved = _resolve_override(o.stattest, numerical)
            if isinstance(resolved, str):
                return _not_computable(c, job, INVALID_STATTEST, resolved)
        if not numerical and ref_counts is not None:
            try:
                fast = _categorical(i, c, ref, ref_counts, cur, o)
            except Exception as e:
                return _not_computable(c, job, classify_error(e), str(e))
            if fast is not None:
                return fast
        try:
            name, threshold, score, drifted = _evidently_column(
                ref, cur, numerical, o.stattest if o else None, o.threshold if o else None
            )
        except Exception as e:
            return _not_computable(c, job, classify_error(e), str(e))
        if math.isnan(score):
            return ColumnDrift(c, name, threshold, None, None, SCORE_NAN, "score is NaN")
        return ColumnDrift(c, name, threshold, score, drifted)

    # ---------------------------------------------------------------------------------------- finish
    def _finish(self, pending: list[_Pending]) -> dict[int, ColumnDrift]:
        """p-values for the whole fleet at once, then every decision."""
        done: dict[int, ColumnDrift] = {}
        by_test: dict[str, list[_Pending]] = {}
        for p in pending:
            by_test.setdefault(p.stattest, []).append(p)
        for name, ps in by_test.items():
            raw = np.fromiter((p.raw for p in ps), np.float64, len(ps))
            thr = np.fromiter((p.threshold for p in ps), np.float64, len(ps))
            if name == "z":
                score = 2 * (1 - special.ndtr(np.abs(raw)))
                drifted = score < thr
            elif name == "chisquare":
                df = np.fromiter((p.df for p in ps), np.float64, len(ps))
                score = special.chdtrc(df, raw)
                drifted = score < thr
            elif name == "ks":
                score = np.fromiter((ks_pvalue(p.n1, p.n2, p.raw) for p in ps), np.float64, len(ps))
                drifted = score <= thr
            else:  # distances
                score = raw
                drifted = score >= thr
            for p, s, d in zip(ps, score.tolist(), drifted.tolist(), strict=True):
                if math.isnan(s):
                    done[id(p)] = ColumnDrift(
                        p.column, name, p.threshold, None, None, SCORE_NAN, "score is NaN"
                    )
                else:
                    done[id(p)] = ColumnDrift(p.column, name, p.threshold, s, bool(d))
        return done


def _categorical(
    i: int, c: str, ref: pd.Series, ref_counts: dict[Any, int], cur: pd.Series, o: Any
) -> ColumnDrift | _Pending | None:
    """A categorical column from value counts (Evidently's chisquare / z / jensenshannon); None: not here."""
    cur_counts = cur.value_counts().to_dict()
    keys = list(set(ref_counts) | set(cur_counts))
    n_ref, n_cur = len(ref), len(cur)
    if o and o.stattest:
        name = o.stattest
    elif n_ref <= 1000:
        name = "chisquare" if len(keys) > 2 else "z"
    else:
        name = "jensenshannon"
    if name not in ("chisquare", "z", "jensenshannon"):
        return None
    threshold = DEFAULT_THRESHOLD[name] if o is None or o.threshold is None else o.threshold
    if name == "z":
        if len(ref_counts) == 1 and len(cur_counts) == 1 and next(iter(ref_counts)) == next(iter(cur_counts)):
            return _decided(c, name, threshold, 1.0)
        key0 = sorted(keys)[0]
        x1 = n_ref - ref_counts.get(key0, 0)
        x2 = n_cur - cur_counts.get(key0, 0)
        p1 = float(x1) / n_ref
        p2 = float(x2) / n_cur
        pp = float(p1 * n_ref + p2 * n_cur) / (n_ref + n_cur)
        with np.errstate(all="ignore"):
            z = (p1 - p2) / np.sqrt(pp * (1 - pp) * (1.0 / n_ref + 1.0 / n_cur))
        return _Pending(i, c, name, threshold, float(z))
    rc = np.array([ref_counts.get(k, 0) for k in keys], np.int64)
    cc = np.array([cur_counts.get(k, 0) for k in keys], np.int64)
    if name == "chisquare":
        f_exp = rc * (n_cur / n_ref)
        with np.errstate(all="ignore"):
            stat = float(np.sum((cc - f_exp) ** 2 / f_exp))
        return _Pending(i, c, name, threshold, stat, df=float(len(keys) - 1))
    return _Pending(i, c, name, threshold, float(K.js_counts(rc, cc, n_ref, n_cur)))


def _decided(c: str, name: str, threshold: float, p: float) -> ColumnDrift:
    return ColumnDrift(c, name, threshold, p, bool(p < threshold))


def _not_computable(c: str, job: DriftJob, reason: str, detail: str | None = None) -> ColumnDrift:
    o = job.overrides.get(c)
    return ColumnDrift(
        column=c,
        stattest=(o.stattest if o and o.stattest else ""),
        threshold=(o.threshold if o and o.threshold is not None else math.nan),
        score=None,
        drifted=None,
        error=reason,
        detail=detail,
    )
