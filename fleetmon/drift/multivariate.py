"""Multivariate drift for the fleet: NannyML's data-reconstruction drift, batched over all models.

``reconstruction_drift(jobs)`` returns, for every ``DriftJob``, the number NannyML's
``DataReconstructionDriftCalculator`` (nannyml 0.13.1, default settings) computes on that model's
features -- fitted on the reference window, evaluated on the current window as one chunk -- with its
thresholds and alert, without sklearn or pandas per model. One score over all input features
together catches what per-column tests miss: a broken correlation with unchanged marginals.

The method (https://nannyml.readthedocs.io/en/stable/how_it_works/multivariate_drift.html), read from
the installed source (``nannyml/drift/multivariate/data_reconstruction/calculator.py``, "calc.py" below):

- fit on the reference (calc.py 136-174): ``SimpleImputer(strategy='mean')`` per continuous feature
  (calc.py 132, 155), ``StandardScaler`` (calc.py 162), ``PCA(n_components=0.65)`` (calc.py 43, 164);
- reconstruction error of a chunk (calc.py 246-264): impute with the reference means, scale, project
  on the kept components and back (``pca.inverse_transform(pca.transform(x))``), Euclidean distance of
  each row to its reconstruction, mean over the chunk's rows;
- thresholds (calc.py 50, 266-277): the errors of the reference's chunks (calc.py 171), offset by
  ``StandardDeviationThreshold()``: ``np.nanmean`` +- 3 * ``np.nanstd`` (ddof 0) (thresholds.py 152-189);
  a lower threshold <= 0 is replaced by *no* lower threshold, not by 0 (``override_using_none=True``,
  calc.py 272; thresholds.py 265-276): ``lower_threshold`` is then None here;
- alert (calc.py 283-287): ``not (lower < error < upper)``, a missing lower threshold being -inf.

Each step as sklearn 1.9 does it, batched (numpy over stacks of models, one ``np.linalg.eigh`` on a
(models, k, k) stack instead of a PCA per model):

- imputer: per feature, the mean of the reference's non-NaN values (``SimpleImputer._dense_fit``);
- scaler: mean, variance by the corrected two-pass formula (``_incremental_mean_and_var``); a feature
  whose variance is within rounding of 0 (``_is_constant_feature``) keeps scale 1 -- it is centred,
  not divided by ~0 -- so one constant feature gives finite numbers, as in NannyML;
- PCA: sklearn's "covariance_eigh" solver (what PCA picks for >= 10 rows per feature: 168 x 6):
  ``C = (X'X - n m m') / (n - 1)``, ``eigh``, eigenvalues descending and clipped at 0, components kept =
  ``searchsorted(cumsum(ratio), 0.65, side='right') + 1`` (sklearn/decomposition/_pca.py 527, 604-663);
  below 10 rows per feature sklearn uses a full SVD instead: the same subspace, to rounding;
- the residual of a scaled row x is ``(I - V V')(x - pca.mean_)``, V the kept components: the same
  vector as ``x - inverse_transform(transform(x))``.

Chunking (``reference_chunk_size``, the one place where it is decided): the current window is one
analysis chunk, so the reference is cut into chunks of the current window's row count (or of
``chunk_size`` if given) -- what ``DataReconstructionDriftCalculator(chunk_size=n_current)`` does:
a ``SizeBasedChunker`` in row order (chunk.py 233-234, 377-410), whose last, incomplete chunk is
*kept* (``incomplete='keep'``, chunk.py 334, 404) and counts in the thresholds like the others. 168
reference / 24 current rows: 7 reference chunks. (NannyML's own default without ``chunk_size`` is 10
chunks per data set, ``DefaultChunker``, chunk.py 506-516: that would split the current window too.)

Not computable (``MultivariateResult.error``, a bounded code, never an exception; error NaN,
``drifted`` False): no feature columns, a missing or non-numeric column (NannyML would count-encode
bool/object columns as categorical: not supported here), an empty window, fewer than two reference
chunks (NannyML's band would have zero width: every window an alert), +-inf in a window (sklearn's
imputer rejects it), a feature without any reference value (the imputer has no mean; NannyML fails),
all features constant in the reference (no variance to decompose), and a reference that the kept
components reconstruct exactly (e.g. 2 rows: the band is rounding noise).

Jobs: the features are the job's ``numerical`` columns less the model output (``prediction`` /
``anomaly_score``, which ``fleetmon.outputs.drift_jobs`` adds as the last column); categorical
columns are not used. Values are computed in float64 (NannyML keeps float32 input in float32).

Batching: models with the same number of features, sorted by window sizes, form buckets of at most
``_BUCKET_MODELS`` models and ``_BUCKET_ROWS`` padded rows (padding is masked out of every sum); two
threads take buckets (numpy releases the GIL in most of the array work). With a ``FitCache``, a model's fit
and thresholds are kept under its ``reference_version`` (and the settings): a cycle over unchanged
references only evaluates the current windows. The cold path (the demo's rolling reference changes
every cycle) does not rely on it.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from fleetmon.config import ModelKey
from fleetmon.drift.types import EMPTY_CURRENT, EMPTY_REFERENCE, MISSING_COLUMN, NOT_NUMERIC, DriftJob

OUTPUT_COLUMNS = ("prediction", "anomaly_score")  # the model's output: never a feature here

# Why a model's multivariate score is not computable (``MultivariateResult.error``): bounded, label-safe.
NO_FEATURES = "no_features"
TOO_FEW_REFERENCE_CHUNKS = "too_few_reference_chunks"
NON_FINITE = "non_finite"
EMPTY_REFERENCE_COLUMN = "empty_reference_column"
CONSTANT_FEATURES = "constant_features"
DEGENERATE_REFERENCE = "degenerate_reference"
ENGINE_ERROR = "engine_error"
REASONS = (
    NO_FEATURES,
    MISSING_COLUMN,
    NOT_NUMERIC,
    EMPTY_REFERENCE,
    EMPTY_CURRENT,
    TOO_FEW_REFERENCE_CHUNKS,
    NON_FINITE,
    EMPTY_REFERENCE_COLUMN,
    CONSTANT_FEATURES,
    DEGENERATE_REFERENCE,
    ENGINE_ERROR,
)

MIN_REFERENCE_CHUNKS = 2  # one chunk: np.nanstd = 0, a zero-width band
# Residual variance share below which the reference is reconstructed exactly (its errors are rounding)
_DEGENERATE_SHARE = 1e-10
_EPS = float(np.finfo(np.float64).eps)
_BUCKET_MODELS = 2048
_BUCKET_ROWS = 400_000  # models x padded reference rows per bucket: ~20 MB per (models, 6, rows) array


def reference_chunk_size(n_current: int, chunk_size: int | None) -> int:
    """Rows per reference chunk: the current window's rows (it is one analysis chunk), or ``chunk_size``."""
    return n_current if chunk_size is None else chunk_size


@dataclass
class MultivariateResult:
    key: ModelKey
    columns: list[str]  # the features used
    reconstruction_error: float  # of the current window; NaN when not computable
    lower_threshold: float | None  # None: no lower threshold (NannyML drops one <= 0); NaN: not computable
    upper_threshold: float  # NaN when not computable
    drifted: bool  # the error is outside the band (NannyML's alert); False when not computable
    n_components: int  # PCA components kept (0 when not computable)
    reference_rows: int
    current_rows: int
    error: str | None = None  # one of REASONS when not computable


@dataclass(frozen=True, slots=True)
class _Fit:
    """One model's fitted reference and thresholds (what NannyML's ``fit`` keeps), as cached."""

    settings: tuple[object, ...]  # reference_version, columns, explained variance, chunk size, multiplier
    impute: np.ndarray  # (k,) reference means of the raw features (SimpleImputer)
    center: np.ndarray  # (k,) StandardScaler mean_
    scale: np.ndarray  # (k,) StandardScaler scale_ (1 for constant features)
    pca_mean: np.ndarray  # (k,) PCA mean_ of the scaled reference (~0)
    residual: np.ndarray  # (k, k) I - V V', V the kept components
    n_components: int
    lower: float  # -inf: no lower threshold
    upper: float


@dataclass(slots=True)
class _Fits:
    """The fits of a stack of models, as arrays (one row per model)."""

    impute: np.ndarray  # (M, k)
    center: np.ndarray  # (M, k)
    scale: np.ndarray  # (M, k)
    pca_mean: np.ndarray  # (M, k)
    residual: np.ndarray  # (M, k, k)
    n_components: np.ndarray  # (M,)
    lower: np.ndarray  # (M,), -inf: no lower threshold
    upper: np.ndarray  # (M,)

    def take(self, rows: list[int]) -> _Fits:
        if len(rows) == len(self.lower):
            return self
        return _Fits(*(getattr(self, f)[rows] for f in _FITS_FIELDS))

    def row(self, m: int, settings: tuple[object, ...]) -> _Fit:
        return _Fit(
            settings, self.impute[m], self.center[m], self.scale[m], self.pca_mean[m], self.residual[m],
            int(self.n_components[m]), float(self.lower[m]), float(self.upper[m]),
        )  # fmt: skip

    @staticmethod
    def stack(fits: list[_Fit]) -> _Fits:
        return _Fits(
            *(np.stack([getattr(f, name) for f in fits]) for name in _FITS_FIELDS[:5]),
            *(np.array([getattr(f, name) for f in fits]) for name in _FITS_FIELDS[5:]),
        )


_FITS_FIELDS = ("impute", "center", "scale", "pca_mean", "residual", "n_components", "lower", "upper")


class FitCache:
    """Fitted references per model, reused while ``DriftJob.reference_version`` and the settings hold."""

    def __init__(self) -> None:
        self._fits: dict[ModelKey, _Fit] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.builds = 0

    def get(self, key: ModelKey, settings: tuple[object, ...]) -> _Fit | None:
        with self._lock:
            fit = self._fits.get(key)
        return fit if fit is not None and fit.settings == settings else None

    def put(self, key: ModelKey, fit: _Fit) -> None:
        with self._lock:
            self._fits[key] = fit

    def forget(self, keys: Sequence[ModelKey] | None = None) -> None:
        with self._lock:
            if keys is None:
                self._fits.clear()
            for k in keys or []:
                self._fits.pop(k, None)


@dataclass(slots=True)
class _Plan:
    """One job's way through a cycle."""

    job: DriftJob
    columns: tuple[str, ...]
    ref: np.ndarray | list[np.ndarray] | None = None  # (k, n_ref) rows, or k 1-D arrays
    cur: np.ndarray | list[np.ndarray] | None = None
    n_ref: int = 0
    n_cur: int = 0
    chunk: int = 0
    settings: tuple[object, ...] = ()
    fit: _Fit | None = None  # from the cache, or to put in it
    error: str | None = None
    # the outcome
    value: float = math.nan
    lower: float = math.nan
    upper: float = math.nan
    n_components: int = 0


# Features of a job's numerical columns: (their row indices, their names, whether rows 0..k-1)
_Layout = tuple[list[int], tuple[str, ...], bool]


def reconstruction_drift(
    jobs: Sequence[DriftJob],
    *,
    explained_variance: float = 0.65,
    chunk_size: int | None = None,
    std_multiplier: float = 3.0,
    cache: FitCache | None = None,
    threads: int | None = None,
) -> list[MultivariateResult]:
    """NannyML's data-reconstruction drift of every job's features, one result per job, in order.

    ``explained_variance``: PCA's ``n_components`` as a share of variance (0 < x < 1); ``chunk_size``:
    rows per reference chunk (default: the current window's rows); ``std_multiplier``: the band's
    half-width in standard deviations of the reference chunks' errors (both sides). ``cache``: keep
    the fits under each job's ``reference_version`` for the next cycle.
    """
    if not 0.0 < explained_variance < 1.0:
        raise ValueError(f"explained_variance must be in (0, 1), got {explained_variance!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size!r}")
    if std_multiplier < 0:
        raise ValueError(f"std_multiplier must be >= 0, got {std_multiplier!r}")
    layouts: dict[tuple[str, ...], _Layout] = {}
    plans = [_plan(job, layouts, explained_variance, chunk_size, std_multiplier) for job in jobs]
    todo = [p for p in plans if p.error is None]
    if cache is not None:
        for p in todo:
            if p.job.reference_version:
                p.fit = cache.get(p.job.key, p.settings)
                cache.hits += p.fit is not None
    buckets = _buckets(todo)
    keep = cache is not None
    n_threads = max(1, min(threads or min(2, os.cpu_count() or 1), len(buckets)))
    with ThreadPoolExecutor(n_threads, thread_name_prefix="fleetmon-mvdrift") as pool:
        built = sum(pool.map(lambda b: _run_bucket(b, explained_variance, std_multiplier, keep), buckets))
    if cache is not None:
        cache.builds += built
        for p in todo:
            if p.fit is not None and p.job.reference_version:
                cache.put(p.job.key, p.fit)
    return [_result(p) for p in plans]


# ------------------------------------------------------------------------------------------ planning
def _layout(numerical: list[str], layouts: dict[tuple[str, ...], _Layout]) -> _Layout:
    key = tuple(numerical)
    hit = layouts.get(key)
    if hit is None:
        idx = [c for c, name in enumerate(key) if name not in OUTPUT_COLUMNS]
        hit = layouts[key] = (idx, tuple(key[c] for c in idx), idx == list(range(len(idx))))
    return hit


def _plan(
    job: DriftJob, layouts: dict[tuple[str, ...], _Layout], ev: float, chunk_size: int | None, mult: float
) -> _Plan:
    """Which features, their windows, and the checks that need no arithmetic."""
    idx, columns, prefix = _layout(job.numerical, layouts)
    p = _Plan(job, columns)
    try:
        if not idx:
            p.error = NO_FEATURES
            return p
        p.ref = _window(job, idx, prefix, True)
        p.cur = _window(job, idx, prefix, False)
        if p.ref is None or p.cur is None:
            p.error = MISSING_COLUMN
            return p
        if not (_numeric(p.ref) and _numeric(p.cur)):
            p.error = NOT_NUMERIC
            return p
        p.n_ref, p.n_cur = _n_rows(p.ref), _n_rows(p.cur)
        if p.n_ref == 0:
            p.error = EMPTY_REFERENCE
        elif p.n_cur == 0:
            p.error = EMPTY_CURRENT
        else:
            p.chunk = reference_chunk_size(p.n_cur, chunk_size)
            if -(-p.n_ref // p.chunk) < MIN_REFERENCE_CHUNKS:
                p.error = TOO_FEW_REFERENCE_CHUNKS
        p.settings = (job.reference_version, columns, ev, p.chunk, mult)
    except Exception:  # never let one model take the cycle down
        p.error = ENGINE_ERROR
    return p


def _window(
    job: DriftJob, idx: list[int], prefix: bool, reference: bool
) -> np.ndarray | list[np.ndarray] | None:
    """The feature rows of one window (array form as it is; a frame's columns), None if one is missing."""
    values = job.reference_values if reference else job.current_values
    if values is not None:
        if isinstance(values, np.ndarray):
            return values[: len(idx)] if prefix else values[idx]  # the exporter's case: a view
        return [values[c] for c in idx]
    frame = job.reference if reference else job.current
    names = [job.numerical[c] for c in idx]
    if any(c not in frame.columns for c in names):
        return None
    return [frame[c].to_numpy() for c in names]


def _numeric(values: np.ndarray | list[np.ndarray]) -> bool:
    """Integers or floats, what NannyML takes as continuous (bool and object columns are categorical)."""
    if isinstance(values, np.ndarray):
        return values.dtype.kind in "iuf"
    return all(a.dtype.kind in "iuf" for a in values)


def _n_rows(values: np.ndarray | list[np.ndarray]) -> int:
    return int(values.shape[1]) if isinstance(values, np.ndarray) else len(values[0])


def _buckets(plans: list[_Plan]) -> list[list[_Plan]]:
    """Models with the same feature count, sorted by window sizes, cut to bound the padded arrays."""
    by_k: dict[int, list[_Plan]] = {}
    for p in plans:
        by_k.setdefault(len(p.columns), []).append(p)
    out: list[list[_Plan]] = []
    for group in by_k.values():
        group.sort(key=lambda p: (p.fit is not None, p.n_ref, p.n_cur))
        bucket: list[_Plan] = []
        widest = 0  # the bucket's padded width: its longest window
        for p in group:
            rows = max(widest, p.n_ref, p.n_cur)
            if bucket and (len(bucket) >= _BUCKET_MODELS or (len(bucket) + 1) * rows > _BUCKET_ROWS):
                out.append(bucket)
                bucket, rows = [], max(p.n_ref, p.n_cur)
            bucket.append(p)
            widest = rows
        if bucket:
            out.append(bucket)
    return out


# ------------------------------------------------------------------------------------------ arithmetic
def _run_bucket(plans: list[_Plan], ev: float, mult: float, keep: bool) -> int:
    """One bucket, start to end: fit the references not cached, evaluate every current window.

    Fills each plan's outcome (or its ``error``); ``keep``: also each fresh fit as a ``_Fit`` (for the
    cache). Returns the number of references fitted."""
    try:
        k = len(plans[0].columns)
        fresh = [p for p in plans if p.fit is None]
        hits = [p for p in plans if p.fit is not None]
        parts: list[tuple[list[_Plan], _Fits]] = []
        if fresh:
            fits = _fit_references(fresh, k, ev, mult)
            ok = [m for m, p in enumerate(fresh) if p.error is None]
            if keep:
                for m in ok:
                    fresh[m].fit = fits.row(m, fresh[m].settings)
            parts.append(([fresh[m] for m in ok], fits.take(ok)))
        if hits:
            parts.append((hits, _Fits.stack([p.fit for p in hits])))  # type: ignore[misc]
        for group, group_fits in parts:
            if not group:
                continue
            values = _current_errors(group, group_fits, k)
            for p, v, lo, up, nc in zip(
                group,
                values.tolist(),
                group_fits.lower.tolist(),
                group_fits.upper.tolist(),
                group_fits.n_components.tolist(),
                strict=True,
            ):
                p.value, p.lower, p.upper, p.n_components = v, lo, up, nc
        built = len(fresh) - sum(p.error is not None for p in fresh)
    except Exception:  # a bug or a memory error: this bucket is not computable, the cycle goes on
        for p in plans:
            p.error, p.fit = ENGINE_ERROR, None
        built = 0
    for p in plans:
        p.ref = p.cur = None  # let the windows go
    return built


def _stack(windows: list[np.ndarray | list[np.ndarray]], rows: np.ndarray, k: int) -> np.ndarray:
    """(models, k, max rows) float64, zero-padded past each model's rows."""
    out = np.zeros((len(windows), k, int(rows.max())), np.float64)
    for m, (w, n) in enumerate(zip(windows, rows.tolist(), strict=True)):
        out[m, :, :n] = w
    return out


def _row_mask(rows: np.ndarray, width: int) -> np.ndarray:
    return np.arange(width)[None, :] < rows[:, None]  # (models, width)


def _impute(x: np.ndarray, rows: np.ndarray, means: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """Replace NaN by each feature's mean: the reference's own (``means`` None: fit) or given ones.

    Returns (x, means, has_inf, no_value): per model, whether a window holds +-inf, and (fit only)
    whether a feature has no reference value at all. One pass when the stack is all finite."""
    m = x.shape[0]
    has_inf = np.zeros(m, bool)
    no_value = np.zeros(m, bool)
    if np.isfinite(x).all():  # the usual case: nothing to impute
        return x, (x.sum(axis=2) / rows[:, None] if means is None else means), has_inf, no_value
    has_inf = np.isinf(x).any(axis=(1, 2))
    missing = np.isnan(x)  # padding is 0, never missing
    if means is None:  # SimpleImputer(strategy="mean"): the mean of the non-NaN values
        present = rows[:, None] - missing.sum(axis=2)
        with np.errstate(all="ignore"):
            means = np.where(missing, 0.0, x).sum(axis=2) / present
        no_value = (present == 0).any(axis=1)
    return np.where(missing, means[:, :, None], x), means, has_inf, no_value


def _fit_references(plans: list[_Plan], k: int, ev: float, mult: float) -> _Fits:
    """NannyML's fit (imputer, scaler, PCA) and reference-chunk thresholds for a stack of models.

    Sets ``error`` on the plans whose reference is not usable."""
    n = np.array([p.n_ref for p in plans], np.int64)
    nf = n.astype(np.float64)[:, None]  # (M, 1)
    x, impute, has_inf, no_value = _impute(_stack([p.ref for p in plans], n, k), nf[:, 0], None)  # type: ignore[misc]
    width = x.shape[2]
    rmask = _row_mask(n, width)  # (M, R)
    with np.errstate(all="ignore"):
        # StandardScaler: mean, corrected two-pass variance; constant features keep scale 1
        center = x.sum(axis=2) / nf
        x -= center[:, :, None]  # x is ours (a new stack): work in place
        x *= rmask[:, None, :]  # padding back to 0
        correction = x.sum(axis=2)
        var = (np.einsum("mkr,mkr->mk", x, x) - correction**2 / nf) / nf
        constant = var <= nf * _EPS * var + (nf * center * _EPS) ** 2
        scale = np.where(constant, 1.0, np.sqrt(var))
        x /= scale[:, :, None]  # the scaled reference; padding stays 0
        # PCA with sklearn's covariance_eigh solver
        pca_mean = x.sum(axis=2) / nf
        cov = x @ x.transpose(0, 2, 1)
        cov -= nf[:, :, None] * pca_mean[:, :, None] * pca_mean[:, None, :]
        cov /= (nf - 1.0)[:, :, None]
        unusable = has_inf | no_value | constant.all(axis=1) | ~np.isfinite(cov).all(axis=(1, 2))
        cov[unusable] = np.eye(k)  # keeps eigh finite; these models are reported as not computable
        eigval, eigvec = np.linalg.eigh(cov)
        eigval, eigvec = eigval[:, ::-1], eigvec[:, :, ::-1]  # descending, as sklearn
        eigval = np.where(eigval < 0.0, 0.0, eigval)
        total = eigval.sum(axis=1)
        cumulative = np.cumsum(eigval / total[:, None], axis=1)
        n_comp = np.minimum((cumulative <= ev).sum(axis=1) + 1, k)  # searchsorted(side="right") + 1
        kept = np.arange(k)[None, :] < n_comp[:, None]  # (M, k)
        degenerate = (eigval * ~kept).sum(axis=1) <= _DEGENERATE_SHARE * total
        v = eigvec * kept[:, None, :]
        residual = np.eye(k)[None] - v @ v.transpose(0, 2, 1)  # (M, k, k): I - V V'
        # the reference rows' errors, then the chunks' means
        x -= pca_mean[:, :, None]
        row_err = _row_errors(residual, x) * rmask
        del x
        chunk = np.array([p.chunk for p in plans], np.int64)
        n_chunks = -(-n // chunk)
        max_chunks = int(n_chunks.max())
        bins = len(plans) * max_chunks
        ids = np.arange(width)[None, :] // chunk[:, None] + np.arange(len(plans))[:, None] * max_chunks
        ids = np.where(rmask, ids, bins)  # padding goes to one extra bin
        sums = np.bincount(ids.ravel(), row_err.ravel(), bins + 1)[:-1].reshape(len(plans), max_chunks)
        counts = np.bincount(ids.ravel(), None, bins + 1)[:-1].reshape(len(plans), max_chunks)
        in_ref = counts > 0
        chunk_err = sums / np.maximum(counts, 1)
        mean = (chunk_err * in_ref).sum(axis=1) / n_chunks  # np.nanmean over the reference chunks
        dev = (chunk_err - mean[:, None]) * in_ref
        std = np.sqrt((dev * dev).sum(axis=1) / n_chunks)  # np.nanstd, ddof 0
        lower = mean - mult * std
        lower = np.where(lower <= 0.0, -np.inf, lower)  # calculate_threshold_values(override_using_none=True)
        upper = mean + mult * std
    for m in np.flatnonzero(unusable | degenerate).tolist():
        p = plans[m]
        if has_inf[m]:
            p.error = NON_FINITE
        elif no_value[m]:
            p.error = EMPTY_REFERENCE_COLUMN
        elif constant[m].all():
            p.error = CONSTANT_FEATURES
        elif unusable[m]:
            p.error = NON_FINITE  # values so large that their squares overflow
        else:
            p.error = DEGENERATE_REFERENCE
    return _Fits(impute, center, scale, pca_mean, residual, n_comp, lower, upper)


def _row_errors(residual: np.ndarray, xc: np.ndarray) -> np.ndarray:
    """Euclidean norm of each row's residual ``(I - V V') xc``: (M, k, k) x (M, k, R) -> (M, R)."""
    d = np.einsum("mij,mjr->mir", residual, xc)  # einsum: BLAS on stacks of 6x6 is slower here
    return np.sqrt(np.einsum("mkr,mkr->mr", d, d))


def _current_errors(plans: list[_Plan], fits: _Fits, k: int) -> np.ndarray:
    """Mean reconstruction error of each current window, with each model's fit (NaN: +-inf in it)."""
    n = np.array([p.n_cur for p in plans], np.int64)
    x, _, has_inf, _ = _impute(_stack([p.cur for p in plans], n, k), n, fits.impute)  # type: ignore[misc]
    with np.errstate(all="ignore"):
        x = (x - fits.center[:, :, None]) / fits.scale[:, :, None] - fits.pca_mean[:, :, None]
        row_err = _row_errors(fits.residual, x) * _row_mask(n, x.shape[2])
        err = row_err.sum(axis=1) / n
    for m in np.flatnonzero(has_inf).tolist():
        plans[m].error = NON_FINITE
    return np.where(has_inf, np.nan, err)


def _result(p: _Plan) -> MultivariateResult:
    if p.error is not None:
        return MultivariateResult(
            p.job.key, list(p.columns), math.nan, math.nan, math.nan, False, 0, p.n_ref, p.n_cur, p.error
        )
    drifted = not (p.lower < p.value < p.upper)  # NannyML's alert (no lower threshold: -inf)
    lower = None if p.lower == -math.inf else p.lower
    return MultivariateResult(
        p.job.key, list(p.columns), p.value, lower, p.upper, drifted, p.n_components, p.n_ref, p.n_cur
    )
