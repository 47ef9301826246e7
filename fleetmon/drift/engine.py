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

How the work is batched (one row = one numerical column of one model):

- the jobs are cut into chunks (``chunk``, 256 models); two worker threads take chunks, so both cores
  work. Within a chunk, the rows of all models with the same window length form one block: one
  ``np.sort`` call sorts the whole block and one compiled numba kernel processes it, both outside the
  GIL (a call per model, or per column, would leave the cores waiting on Python);
- per-reference work is cached per model under ``DriftJob.reference_version``: each numerical column
  of the reference is cleaned, sorted and reduced to its distinct values and counts, plus its standard
  deviation (the Wasserstein norm); each categorical column to its value counts. The models of a
  chunk share one reduced block (``_RefBlock``), which a later cycle over the same models hands to the
  kernel as it is. A cycle with unchanged references only copies, sorts and merges the current windows;
- ``_kernels.numeric_kernel`` merges each sorted current row with its cached reference and computes
  every statistic the rule may pick (KS, normed Wasserstein, Z, chi-square, Jensen-Shannon) in one
  pass; the rule, the p-values (the scipy special functions scipy's tests use: ``ndtr`` for Z,
  ``chdtrc`` for chi-square; exact KS p-values depend only on (n_ref, n_cur, D), so each distinct triple
  is computed once with scipy's own routine and memoized) and the decisions are numpy operations over
  the whole block;
- columns are read without pandas where possible: array-form jobs (``DriftJob(reference_values=...)``,
  what the model-outputs exporter builds) are used as they are; a frame's columns are read with pandas'
  column accessor, not one Series per column;
- anything not vectorized (an override to another Evidently test such as ``psi``, Jensen-Shannon forced
  on a numerical column with more than 20 reference values, boolean, float32 or huge int64 columns) is
  computed per column with Evidently's own stattest function, so it is exact by construction;
- Python's cyclic garbage collector is paused during a run (``_gc_paused``): it cost 40 % of a
  40,000-model cycle walking the fleet's objects while results were allocated.

Not computable columns carry the same reason codes as the Evidently backend (``fleetmon.drift.types``);
see ``fleetmon.drift.evidently_backend`` for Evidently's own failures on dirty data.
"""

from __future__ import annotations

import gc
import math
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from fleetmon.config import ModelKey
from fleetmon.drift import _kernels as K
from fleetmon.drift._common import QUIET, classify_error, summarize
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
def _evidently() -> Any:
    """Evidently's stattest registry (imported lazily and quietly: it touches numpy.core on import)."""
    with QUIET, warnings.catch_warnings():
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
    with QUIET, warnings.catch_warnings():
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

    with QUIET, warnings.catch_warnings():
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


# ------------------------------------------------------------------------------------ column access
_MAX_EXACT_INT = 2**53  # integers beyond this are not exact in float64: Evidently's own function instead


_FAST_DTYPE: dict[np.dtype, int] = {}  # 1: fast, 0: not, 2: 8-byte integers (range checked)


def _fast(a: Any) -> bool:
    """Whether a window's column takes the compiled path: a 1-D numpy array of float64 or integers."""
    if type(a) is not np.ndarray or a.ndim != 1:
        return False
    kind = _FAST_DTYPE.get(a.dtype)
    if kind is None:
        k, size = a.dtype.kind, a.dtype.itemsize
        # float32/16: Evidently's np.std runs in that precision; bool, object, datetime: not numbers here
        kind = _FAST_DTYPE[a.dtype] = (
            1 if (k == "f" and size == 8) or (k in "iu" and size < 8) else (2 if k in "iu" else 0)
        )
    if kind == 2:
        return a.size == 0 or bool(a.min() >= -_MAX_EXACT_INT and a.max() <= _MAX_EXACT_INT)
    return kind == 1


def _window(job: DriftJob, reference: bool) -> list[np.ndarray | None]:
    """The numerical columns of one window as numpy arrays (None: the column is missing).

    An array-form job gives them as they are. A frame gives them through pandas' own column accessor
    (``DataFrame._get_column_array``: no Series per column, which costs ~40 us each on a new frame and
    was the engine's limit on small windows); the public ``frame[c]`` when that accessor is unavailable.
    """
    values = job.reference_values if reference else job.current_values
    n = len(job.numerical)
    if values is not None:
        return list(values[:n])
    frame = job.reference if reference else job.current
    names = frame.columns.tolist()
    pos = {c: i for i, c in enumerate(names)}
    getter = getattr(frame, "_get_column_array", None)
    if getter is None or len(pos) != len(names):  # duplicated names: let pandas decide what frame[c] is
        return [frame[c].to_numpy() if c in pos else None for c in job.numerical]
    return [getter(pos[c]) if c in pos else None for c in job.numerical]


# ------------------------------------------------------------------------------------ reference cache
@dataclass
class _RefBlock:
    """The references of the jobs reduced together (one block of rows, one row per numerical column):
    row r's distinct finite values are ``vals[lo[r]:hi[r]]`` with counts ``cnts[lo[r]:hi[r]]``, ``n[r]``
    finite values, ``std[r]`` their np.std (Evidently's Wasserstein norm). A job's rows are consecutive.

    Entries share their block, so a warm cycle hands the kernel the block as it is (no per-model
    copying); a block lives as long as one of its entries (at most the previous references' size when
    references change one model at a time)."""

    vals: np.ndarray
    cnts: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n: np.ndarray
    std: np.ndarray


@dataclass(slots=True)
class _RefEntry:
    """A model's reference, reduced once per ``reference_version``: ``rows[c]`` is the block row of
    numerical column c (job order), -1 when its reference does not take the compiled path (then it
    is tested with Evidently's own function)."""

    version: str
    columns: list[str]
    block: _RefBlock
    rows: list[int]
    # categorical column -> (cleaned reference series, value counts)
    categorical: dict[str, tuple[pd.Series, dict[Any, int]]] = field(default_factory=dict)


def _clean(s: pd.Series) -> pd.Series:
    """Evidently's cleaning: +-inf -> NaN, then drop NaN."""
    if s.dtype.kind == "f":
        return s[np.isfinite(s.to_numpy())]
    with QUIET, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # object columns: pandas may warn about downcasting
        return s.replace([-np.inf, np.inf], np.nan).dropna()


@dataclass(slots=True)
class _Plan:
    """One job's way through a chunk."""

    job: DriftJob
    entry: _RefEntry | None = None
    ref: list[np.ndarray | None] | None = None  # reference columns, read only to build the entry
    ref_rows: list[int] = field(default_factory=list)
    cur: list[np.ndarray | None] | None = None
    fast: list[int] = field(default_factory=list)  # numerical columns computed by the kernel
    row0: int = 0  # this job's first row in its group's results
    group: list[ColumnDrift] | None = None  # the kernel group's column results
    error: str | None = None  # the job failed as a whole (never the chunk)


def _build_references(plans: list[_Plan], n: int) -> None:
    """Reduce the references of these jobs (all with ``n`` rows) in one block: sorted by one np.sort
    call and reduced by one kernel call, both outside the GIL."""
    rows: list[np.ndarray] = []
    for p in plans:
        fast = [_fast(a) for a in p.ref or []]
        p.ref_rows = []
        for c, f in enumerate(fast):
            if f:
                p.ref_rows.append(len(rows))
                rows.append(p.ref[c])  # type: ignore[index, arg-type]
            else:
                p.ref_rows.append(-1)
    block = np.empty((len(rows), n), np.float64)
    for r, a in enumerate(rows):
        block[r] = a
    block.sort(axis=1)  # NaN sort last, -inf first; the kernel keeps the finite part
    vals = np.empty(block.size, np.float64)
    cnts = np.empty(block.size, np.int64)
    offs = np.zeros(len(rows) + 1, np.int64)
    stats = np.zeros((len(rows), 3), np.float64)
    if rows:
        K.reference_kernel(block, n, vals, cnts, offs, stats)
    del block
    used = int(offs[-1])
    ref = _RefBlock(
        vals=vals[:used].copy(),
        cnts=cnts[:used].astype(np.int32 if n < 2**31 else np.int64),
        lo=offs[:-1].copy(),
        hi=offs[1:].copy(),
        n=stats[:, 0].copy(),
        std=stats[:, 2].copy(),
    )
    for p in plans:
        job = p.job
        p.entry = _RefEntry(job.reference_version, job.numerical, ref, p.ref_rows)
        for col in job.categorical:
            if col in job.reference.columns:
                cleaned = _clean(job.reference[col])
                p.entry.categorical[col] = (cleaned, cleaned.value_counts().to_dict())
        p.ref = None


# ------------------------------------------------------------------------------------------ work items
@dataclass
class _Pending:
    """One column's raw statistic (categorical columns), finished (p-value, decision) per chunk."""

    column: str
    stattest: str
    threshold: float
    raw: float  # Z statistic, chi-square statistic or a distance
    df: float = 0.0


# Codes of the compiled tests (index into FAST_TESTS); OTHER: a valid override to another Evidently test
KS, WASSERSTEIN, Z, CHISQUARE, JS = range(5)
OTHER = 5
_DEFAULT_THR = np.array([DEFAULT_THRESHOLD[t] for t in FAST_TESTS])
# Outcome of a kernel row
_OK, _EMPTY_REF, _EMPTY_CUR, _INVALID, _NAN, _SLOW = range(6)


def _reference_rows(plans: list[_Plan], block_rows: list[int]) -> tuple[np.ndarray, ...]:
    """The cached reference of every kernel row: (vals, cnts, lo, hi, n, std) for the kernel.

    The usual case (a cycle over the same jobs as the one that built the references) has all of a
    group's entries in one block: the block is used as it is. Otherwise each job's (consecutive) part
    of its block is copied into one buffer.
    """
    first = plans[0].entry.block  # type: ignore[union-attr]
    idx = np.asarray(block_rows, np.int64)
    if all(p.entry.block is first for p in plans):  # type: ignore[union-attr]
        return first.vals, first.cnts, first.lo[idx], first.hi[idx], first.n[idx], first.std[idx]
    vals, cnts, lo, hi, ref_n, std = [], [], [], [], [], []
    base = 0
    r = 0
    for p in plans:
        k = len(p.fast)
        if not k:
            continue
        b = p.entry.block  # type: ignore[union-attr]
        rows = idx[r : r + k]
        r += k
        # this job's rows in its block are consecutive: so are their values
        first_row = min(x for x in p.entry.rows if x >= 0)  # type: ignore[union-attr]
        last_row = max(p.entry.rows)  # type: ignore[union-attr]
        a, z = int(b.lo[first_row]), int(b.hi[last_row])
        vals.append(b.vals[a:z])
        cnts.append(b.cnts[a:z])
        lo.append(b.lo[rows] - a + base)
        hi.append(b.hi[rows] - a + base)
        ref_n.append(b.n[rows])
        std.append(b.std[rows])
        base += z - a
    return tuple(np.concatenate(x) for x in (vals, cnts, lo, hi, ref_n, std))


_GC_LOCK = threading.Lock()
_GC_PAUSES = [0, False]  # runs in progress, whether the collector was enabled before the first


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's automatic cyclic garbage collection during a run.

    A run allocates hundreds of thousands of small objects (one ColumnDrift per column, one result per
    model) and makes no reference cycles; each allocation burst triggers full collections that walk
    every live object of the process (the fleet's jobs included): measured, 40 % of a 40,000-model cycle.
    Reference counting still frees everything at once; the collector is re-enabled (if it was) when the
    last concurrent run ends.
    """
    with _GC_LOCK:
        if _GC_PAUSES[0] == 0:
            _GC_PAUSES[1] = gc.isenabled()
            gc.disable()
        _GC_PAUSES[0] += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_PAUSES[0] -= 1
            if _GC_PAUSES[0] == 0 and _GC_PAUSES[1]:
                gc.enable()


class FleetDriftEngine:
    """Evidently's DataDriftPreset numbers for a whole fleet, batched, cached and on both cores."""

    name = "fleet"

    def __init__(self, threads: int | None = None, chunk: int = _CHUNK) -> None:
        self.threads = threads or min(2, os.cpu_count() or 1)
        self.chunk = chunk
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
        with _gc_paused():
            return self._run(list(jobs))

    def _run(self, jobs: list[DriftJob]) -> list[DriftResult]:
        futures = [
            self._pool.submit(self._run_chunk, jobs[i : i + self.chunk])
            for i in range(0, len(jobs), self.chunk)
        ]
        results: list[DriftResult] = []
        for f in futures:
            part, builds, hits = f.result()
            results.extend(part)
            self.stats["reference_builds"] += builds
            self.stats["reference_hits"] += hits
        return results

    def _run_chunk(self, jobs: list[DriftJob]) -> tuple[list[DriftResult], int, int]:
        """A chunk of jobs, start to end, in one worker thread: references built (where not cached) and
        current windows tested in blocks of rows of the same length."""
        plans = [_Plan(job) for job in jobs]
        builds: dict[int, list[_Plan]] = {}
        hits = 0
        for p in plans:
            try:
                p.entry = self._cached(p.job)
                if p.entry is None:
                    p.ref = _window(p.job, True)
                    builds.setdefault(p.job.n_reference, []).append(p)
                else:
                    hits += 1
            except Exception as e:  # never let one model take the cycle down
                p.error = f"drift engine failed: {e!r}"
        for n, group in builds.items():
            try:
                _build_references(group, n)
            except Exception as e:
                for p in group:
                    p.error, p.entry = f"drift engine failed: {e!r}", None
            for p in group:
                if p.entry is not None and p.job.reference_version:
                    with self._cache_lock:
                        self._cache[p.job.key] = p.entry
        groups: dict[int, list[_Plan]] = {}
        for p in plans:
            if p.error is not None or p.entry is None:
                continue
            try:
                p.cur = _window(p.job, False)
                p.fast = [c for c, r in enumerate(p.entry.rows) if r >= 0 and _fast(p.cur[c])]
                if p.fast:
                    groups.setdefault(p.job.n_current, []).append(p)
            except Exception as e:
                p.error = f"drift engine failed: {e!r}"
        for n, group in groups.items():
            try:
                self._test_group(group, n)
            except Exception as e:
                for p in group:
                    p.error = f"drift engine failed: {e!r}"
        results = [self._result(p) for p in plans]
        return results, sum(len(g) for g in builds.values()), hits

    def _cached(self, job: DriftJob) -> _RefEntry | None:
        if not job.reference_version:
            return None
        with self._cache_lock:
            entry = self._cache.get(job.key)
        if entry is not None and entry.version == job.reference_version and entry.columns == job.numerical:
            return entry
        return None

    # ----------------------------------------------------------------------------- numerical (batched)
    def _test_group(self, plans: list[_Plan], n: int) -> None:
        """Every kernel row of these jobs (current windows of ``n`` rows): sort, merge, decide."""
        names: list[str] = []
        block_rows: list[int] = []
        r = 0
        for p in plans:
            p.row0 = r
            rows, numerical = p.entry.rows, p.job.numerical  # type: ignore[union-attr]
            block_rows.extend(rows[c] for c in p.fast)
            names.extend(numerical[c] for c in p.fast)
            r += len(p.fast)
        cur = np.empty((r, n), np.float64)
        i = 0
        for p in plans:
            for c in p.fast:
                cur[i] = p.cur[c]  # type: ignore[index]
                i += 1
        cur.sort(axis=1)  # numpy's SIMD sort (NaN last), outside the GIL
        vals, cnts, lo, hi, ref_n, std = _reference_rows(plans, block_rows)
        out = np.empty((r, K.N_OUT), np.float64)
        K.numeric_kernel(vals, cnts, lo, hi, ref_n, cur, n, out)
        del cur
        cds = self._decide(plans, names, ref_n, std, out)
        for p in plans:
            p.group = cds

    def _decide(
        self, plans: list[_Plan], names: list[str], ref_n: np.ndarray, std: np.ndarray, out: np.ndarray
    ) -> list[ColumnDrift]:
        """Evidently's rule, p-values and decisions for every kernel row at once."""
        rows = len(names)
        n_cur = out[:, K.CUR_N]
        nv = out[:, K.N_UNION]
        code = np.where(
            ref_n <= 1000,
            np.where(nv <= 2, Z, np.where(nv <= 5, CHISQUARE, KS)),
            np.where(nv <= 5, JS, WASSERSTEIN),
        )
        thr = _DEFAULT_THR[code]
        outcome = np.full(rows, _OK, np.int8)
        invalid: dict[int, str] = {}
        for p in plans:  # overrides: per row (rare)
            if not p.job.overrides:
                continue
            for j, c in enumerate(p.fast):
                o = p.job.overrides.get(p.job.numerical[c])
                if o is None:
                    continue
                r = p.row0 + j
                if o.stattest:
                    resolved = _resolve_override(o.stattest, True)
                    if isinstance(resolved, str):
                        outcome[r], invalid[r] = _INVALID, resolved
                        continue
                    code[r] = FAST_TESTS.index(resolved[0]) if resolved[0] in FAST_TESTS else OTHER
                    thr[r] = DEFAULT_THRESHOLD.get(resolved[0], 0.0)
                if o.threshold is not None:
                    thr[r] = o.threshold
        score = np.full(rows, np.nan)
        drifted = np.zeros(rows, bool)
        valid = (n_cur > 0) & (ref_n > 0)
        with np.errstate(all="ignore"):
            m = valid & (code == KS)
            if m.any():
                score[m] = [
                    ks_pvalue(a, b, d)
                    for a, b, d in zip(
                        ref_n[m].astype(np.int64).tolist(),
                        n_cur[m].astype(np.int64).tolist(),
                        out[m, K.KS_D].tolist(),
                        strict=True,
                    )
                ]
                drifted[m] = score[m] <= thr[m]
            m = valid & (code == WASSERSTEIN)
            score[m] = out[m, K.WD] / np.maximum(std[m], 0.001)
            drifted[m] = score[m] >= thr[m]
            m = valid & (code == Z)
            const = m & (out[:, K.Z_CONST] == 1.0)  # the same single value in both windows: p = 1
            score[const] = 1.0
            m &= ~const
            score[m] = 2 * (1 - special.ndtr(np.abs(out[m, K.Z_STAT])))
            mz = const | m
            drifted[mz] = score[mz] < thr[mz]
            m = valid & (code == CHISQUARE)
            score[m] = special.chdtrc(out[m, K.CHI_DF], out[m, K.CHI_STAT])
            drifted[m] = score[m] < thr[m]
            m = valid & (code == JS)
            score[m] = out[m, K.JS]
            drifted[m] = score[m] >= thr[m]
        # not computed here (another Evidently test, Z / chi-square / JS outside their range of values):
        # Evidently's own function
        stat_nan = np.isnan(np.choose(np.minimum(code, 4), [out[:, K.KS_D], out[:, K.WD], out[:, K.Z_STAT],
                                                            out[:, K.CHI_STAT], out[:, K.JS]]))  # fmt: skip
        slow = (code == OTHER) | (stat_nan & ~((code == Z) & (out[:, K.Z_CONST] == 1.0)))
        outcome[(outcome == _OK) & slow] = _SLOW
        outcome[(outcome == _OK) & np.isnan(score)] = _NAN
        outcome[n_cur == 0] = _EMPTY_CUR
        outcome[ref_n == 0] = _EMPTY_REF
        cds: list[ColumnDrift] = []
        test_names = [*FAST_TESTS, ""]
        for r, (c, o, k, t, s, d) in enumerate(
            zip(
                names,
                outcome.tolist(),
                code.tolist(),
                thr.tolist(),
                score.tolist(),
                drifted.tolist(),
                strict=True,
            )
        ):
            if o == _OK:
                cds.append(ColumnDrift(c, test_names[k], t, s, d))
            elif o == _NAN:
                cds.append(ColumnDrift(c, test_names[k], t, None, None, SCORE_NAN, "score is NaN"))
            else:
                cds.append(_Deferred(o, invalid.get(r)))  # type: ignore[arg-type]
        return cds

    # ------------------------------------------------------------------------------------------ result
    def _result(self, p: _Plan) -> DriftResult:
        job = p.job
        cols: list[ColumnDrift | _Pending] = []
        if p.error is not None:
            cols = [_not_computable(c, job, STATTEST_ERROR, p.error) for c in job.columns]
        else:
            try:
                cols = self._columns(p)
            except Exception as e:
                cols = [
                    _not_computable(c, job, STATTEST_ERROR, f"drift engine failed: {e!r}")
                    for c in job.columns
                ]
        pending = [c for c in cols if isinstance(c, _Pending)]
        if pending:
            done = _finish(pending)
            cols = [done[id(c)] if isinstance(c, _Pending) else c for c in cols]
        return summarize(job.key, cols, job.drift_share, job.n_reference, job.n_current)  # type: ignore[arg-type]

    def _columns(self, p: _Plan) -> list[ColumnDrift | _Pending]:
        job = p.job
        nc = len(job.numerical)
        fast_row = {c: p.row0 + j for j, c in enumerate(p.fast)}
        if len(p.fast) == nc and not job.categorical and p.group is not None:
            cols: list[ColumnDrift | _Pending] = list(p.group[p.row0 : p.row0 + nc])
            if all(type(c) is ColumnDrift for c in cols):
                return cols
        cols = []
        for ci, c in enumerate(job.numerical):
            r = fast_row.get(ci)
            cd = p.group[r] if r is not None and p.group is not None else None
            if cd is None:
                cols.append(self._slow_column(job, c, True, None))
            elif isinstance(cd, _Deferred):
                cols.append(cd.resolve(self, job, c))
            else:
                cols.append(cd)
        for c in job.categorical:
            cols.append(self._slow_column(job, c, False, p.entry))
        return cols

    # ----------------------------------------------------------------- categorical and the rest (exact)
    def _slow_column(
        self, job: DriftJob, c: str, numerical: bool, entry: _RefEntry | None
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
                fast = _categorical(c, ref, ref_counts, cur, o)
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


@dataclass(slots=True)
class _Deferred:
    """A kernel row the vectorized rule does not finish: not computable, or Evidently's own function."""

    outcome: int
    detail: str | None

    def resolve(self, engine: FleetDriftEngine, job: DriftJob, c: str) -> ColumnDrift | _Pending:
        if self.outcome == _EMPTY_REF:
            return _not_computable(c, job, EMPTY_REFERENCE)
        if self.outcome == _EMPTY_CUR:
            return _not_computable(c, job, EMPTY_CURRENT)
        if self.outcome == _INVALID:
            return _not_computable(c, job, INVALID_STATTEST, self.detail)
        return engine._slow_column(job, c, True, None)


def _finish(pending: list[_Pending]) -> dict[int, ColumnDrift]:
    """p-values and decisions of the categorical columns' statistics."""
    done: dict[int, ColumnDrift] = {}
    by_test: dict[str, list[_Pending]] = {}
    for p in pending:
        by_test.setdefault(p.stattest, []).append(p)
    for name, ps in by_test.items():
        raw = np.fromiter((p.raw for p in ps), np.float64, len(ps))
        thr = np.fromiter((p.threshold for p in ps), np.float64, len(ps))
        with np.errstate(all="ignore"):
            if name == "z":
                score = 2 * (1 - special.ndtr(np.abs(raw)))
                drifted = score < thr
            elif name == "chisquare":
                df = np.fromiter((p.df for p in ps), np.float64, len(ps))
                score = special.chdtrc(df, raw)
                drifted = score < thr
            else:  # distances
                score = raw
                drifted = score >= thr
        for p, s, d in zip(ps, score.tolist(), drifted.tolist(), strict=True):
            if math.isnan(s):
                done[id(p)] = ColumnDrift(p.column, name, p.threshold, None, None, SCORE_NAN, "score is NaN")
            else:
                done[id(p)] = ColumnDrift(p.column, name, p.threshold, s, bool(d))
    return done


def _categorical(
    c: str, ref: pd.Series, ref_counts: dict[Any, int], cur: pd.Series, o: Any
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
        return _Pending(c, name, threshold, float(z))
    rc = np.array([ref_counts.get(k, 0) for k in keys], np.int64)
    cc = np.array([cur_counts.get(k, 0) for k in keys], np.int64)
    if name == "chisquare":
        f_exp = rc * (n_cur / n_ref)
        with np.errstate(all="ignore"):
            stat = float(np.sum((cc - f_exp) ** 2 / f_exp))
        return _Pending(c, name, threshold, stat, df=float(len(keys) - 1))
    return _Pending(c, name, threshold, float(K.js_counts(rc, cc, n_ref, n_cur)))


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
