"""The batched data-reconstruction drift returns NannyML's own numbers (DataReconstructionDriftCalculator).

Every comparison runs NannyML on the same data (nothing hard-coded). Tolerance: relative 1e-9, plus an
absolute 1e-12 for the lower threshold, a difference of O(1) numbers (mean - 3 std) that can be close
to 0. What differs from NannyML is rounding only: sklearn's PCA uses a full SVD below 10 reference rows
per feature where we always use the covariance eigendecomposition, and sums run in another order.

nannyml is a test dependency: this module fails (ImportError) without it, it does not skip.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")  # NannyML sends usage events to Segment otherwise

with warnings.catch_warnings():  # third-party import noise (pytest turns warnings into errors)
    warnings.simplefilter("ignore")
    import nannyml as nml
    from nannyml.exceptions import NannyMLException

from fleetmon.config import ModelKey
from fleetmon.drift.multivariate import (
    CONSTANT_FEATURES,
    DEGENERATE_REFERENCE,
    EMPTY_REFERENCE_COLUMN,
    NO_FEATURES,
    NON_FINITE,
    REASONS,
    TOO_FEW_REFERENCE_CHUNKS,
    FitCache,
    MultivariateResult,
    reconstruction_drift,
)
from fleetmon.drift.types import EMPTY_CURRENT, EMPTY_REFERENCE, MISSING_COLUMN, NOT_NUMERIC, DriftJob

FEATURES = ["outdoor_temperature", "solar_radiation", "hour_of_day", "day_of_week", "occupancy", "humidity"]
REL, ABS_LOWER = 1e-9, 1e-12


def key(i: int) -> ModelKey:
    return ModelKey(customer="c01", building=f"c01-b{i:03d}", energy="heating", model="forecast")


def correlated(rng: np.random.Generator, n: int, mix: np.ndarray, loc: np.ndarray) -> np.ndarray:
    """(6, n) rows of correlated features: a fixed linear mix of independent noise, per model."""
    return mix @ rng.normal(size=(len(loc), n)) + loc[:, None]


def model_params(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    mix = rng.normal(size=(6, 6)) * rng.uniform(0.2, 3.0, size=(6, 1))
    mix[1] += 2.0 * mix[0]  # a strong pair, as temperature and solar radiation
    return mix, rng.uniform(-20, 200, size=6)


def job(i: int, ref: np.ndarray, cur: np.ndarray, rng: np.random.Generator, version: str = "") -> DriftJob:
    """An exporter-like job: the features, then the model's output as the last row (not a feature)."""
    pred_ref = ref.sum(axis=0, keepdims=True) + rng.normal(size=(1, ref.shape[1]))
    pred_cur = cur.sum(axis=0, keepdims=True) + rng.normal(size=(1, cur.shape[1]))
    return DriftJob(
        key(i),
        numerical=[*FEATURES, "prediction"],
        reference_values=np.vstack([ref, pred_ref]),
        current_values=np.vstack([cur, pred_cur]),
        reference_version=version,
    )


def nannyml(ref: np.ndarray, cur: np.ndarray, chunk: int | None = None) -> dict:
    """NannyML's numbers: reference chunks of ``chunk`` rows (default: the current window's), the
    current window as one chunk."""
    ref_df = pd.DataFrame({c: ref[j] for j, c in enumerate(FEATURES)})
    cur_df = pd.DataFrame({c: cur[j] for j, c in enumerate(FEATURES)})
    n_cur = len(cur_df)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "too few chunks", pandas' chained assignment, ...
        calc = nml.DataReconstructionDriftCalculator(column_names=FEATURES, chunk_size=chunk or n_cur)
        calc.fit(ref_df)
        out = {"lower": calc.lower_threshold_value, "upper": calc.upper_threshold_value}
        if chunk is not None and chunk != n_cur:  # the current window as one chunk: fitted the same way
            calc = nml.DataReconstructionDriftCalculator(column_names=FEATURES, chunk_size=n_cur).fit(ref_df)
        res = calc.calculate(cur_df).filter(period="analysis").to_df()
    assert len(res) == 1
    out["value"] = float(res[("reconstruction_error", "value")].iloc[0])
    out["n_components"] = int(calc._pca.n_components_)
    if chunk is None or chunk == n_cur:
        out["alert"] = bool(res[("reconstruction_error", "alert")].iloc[0])
    return out


def assert_nannyml(r: MultivariateResult, ref: np.ndarray, cur: np.ndarray, chunk: int | None = None) -> dict:
    nm = nannyml(ref, cur, chunk)
    where = f"{r.key.building}: ours {r} / nannyml {nm}"
    assert r.error is None, where
    assert r.columns == FEATURES, where
    assert math.isclose(r.reconstruction_error, nm["value"], rel_tol=REL), where
    assert math.isclose(r.upper_threshold, nm["upper"], rel_tol=REL), where
    if nm["lower"] is None:
        assert r.lower_threshold is None, where
    else:
        assert r.lower_threshold is not None, where
        assert math.isclose(r.lower_threshold, nm["lower"], rel_tol=REL, abs_tol=ABS_LOWER), where
    assert r.n_components == nm["n_components"], where
    if "alert" in nm:
        assert r.drifted == nm["alert"], where
    assert (r.reference_rows, r.current_rows) == (ref.shape[1], cur.shape[1]), where
    return nm


def assert_same(a: MultivariateResult, b: MultivariateResult) -> None:
    """Our own results, computed in other batches: equal to rounding (sums over other padding)."""
    assert (a.key, a.columns, a.error, a.drifted, a.n_components) == (
        b.key,
        b.columns,
        b.error,
        b.drifted,
        b.n_components,
    )
    assert (a.reference_rows, a.current_rows, a.lower_threshold is None) == (
        b.reference_rows, b.current_rows, b.lower_threshold is None
    )  # fmt: skip
    for x, y in ((a.reconstruction_error, b.reconstruction_error), (a.upper_threshold, b.upper_threshold),
                 (a.lower_threshold or 0.0, b.lower_threshold or 0.0)):  # fmt: skip
        assert math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-15), (a, b)


# ------------------------------------------------------------------------------------ equal to NannyML
def test_plain_fleet_equals_nannyml() -> None:
    rng = np.random.default_rng(11)
    refs, curs, jobs = [], [], []
    for i in range(12):
        mix, loc = model_params(rng)
        ref, cur = correlated(rng, 168, mix, loc), correlated(rng, 24, mix, loc)
        if i % 4 == 3:
            cur[0] += 3 * mix[0].std()  # some drift, so both decisions occur
        refs.append(ref)
        curs.append(cur)
        jobs.append(job(i, ref, cur, rng))
    results = reconstruction_drift(jobs)
    assert [r.key for r in results] == [j.key for j in jobs]
    alerts = [assert_nannyml(r, ref, cur)["alert"] for r, ref, cur in zip(results, refs, curs, strict=True)]
    assert any(alerts) and not all(alerts)


def test_demo_like_features_as_one_array_per_column() -> None:
    """Rounded, bounded, integer (int8) features like the demo's, each window one 1-D array per column."""
    rng = np.random.default_rng(5)
    refs, curs, jobs = [], [], []
    for i in range(6):
        windows = []
        for n in (168, 24):
            hour = rng.integers(0, 24, n)
            temp = np.round(rng.normal(8, 6, n) + 4 * np.sin(hour / 24 * 2 * np.pi), 1)
            solar = np.round(np.clip(np.sin((hour - 6) / 12 * np.pi), 0, None) * rng.uniform(200, 800, n))
            occupancy = np.round(np.clip(rng.beta(2, 3, n), 0, 1), 2)
            humidity = np.round(np.clip(85 - 1.5 * temp + rng.normal(0, 5, n), 0, 100), 1)
            cols = [
                temp,
                solar,
                hour.astype(np.int8),
                rng.integers(0, 7, n).astype(np.int8),
                occupancy,
                humidity,
            ]
            windows.append(cols)
        refs.append(np.array(windows[0], np.float64))
        curs.append(np.array(windows[1], np.float64))
        jobs.append(
            DriftJob(key(i), numerical=FEATURES, reference_values=windows[0], current_values=windows[1])
        )
    for r, ref, cur in zip(reconstruction_drift(jobs), refs, curs, strict=True):
        assert_nannyml(r, ref, cur)


def test_nans_are_imputed_with_the_reference_means() -> None:
    rng = np.random.default_rng(12)
    refs, curs, jobs = [], [], []
    for i in range(8):
        mix, loc = model_params(rng)
        ref, cur = correlated(rng, 168, mix, loc), correlated(rng, 24, mix, loc)
        ref[rng.random(ref.shape) < 0.08] = np.nan
        cur[rng.random(cur.shape) < 0.15] = np.nan
        if i == 0:
            cur[2] = np.nan  # a feature missing from the whole current window
        if i == 1:
            ref[4, :160] = np.nan  # a feature with few reference values
        refs.append(ref)
        curs.append(cur)
        jobs.append(job(i, ref, cur, rng))
    for r, ref, cur in zip(reconstruction_drift(jobs), refs, curs, strict=True):
        assert math.isfinite(r.reconstruction_error)
        assert_nannyml(r, ref, cur)


def test_constant_feature_keeps_scale_one() -> None:
    """A zero-variance reference feature is centred, not divided by ~0 (StandardScaler's scale 1)."""
    rng = np.random.default_rng(13)
    refs, curs, jobs = [], [], []
    for i, (ref_value, cur_value) in enumerate([(0.1, 0.1), (0.1, 5.1), (7.0, 7.0), (3.3, np.nan)]):
        mix, loc = model_params(rng)
        ref, cur = correlated(rng, 168, mix, loc), correlated(rng, 24, mix, loc)
        ref[3], cur[3] = ref_value, cur_value
        refs.append(ref)
        curs.append(cur)
        jobs.append(job(i, ref, cur, rng))
    results = reconstruction_drift(jobs)
    for r, ref, cur in zip(results, refs, curs, strict=True):
        assert all(math.isfinite(x) for x in (r.reconstruction_error, r.upper_threshold))
        assert_nannyml(r, ref, cur)
    # scale 1: a constant feature that moves by 5 in the current window adds ~5 (unscaled) to each row
    assert results[1].reconstruction_error > results[0].reconstruction_error + 2


def test_different_sizes_in_one_batch() -> None:
    """Reference / current sizes mixed in one stack (padding), incomplete last reference chunks, fewer
    than 10 reference rows per feature (sklearn's full-SVD path), small chunks (no lower threshold)."""
    rng = np.random.default_rng(14)
    sizes = [(168, 24), (170, 24), (191, 24), (30, 5), (59, 6), (100, 7), (500, 48), (48, 2), (12, 3)]
    refs, curs, jobs = [], [], []
    for i, (n_ref, n_cur) in enumerate(sizes * 2):
        mix, loc = model_params(rng)
        ref, cur = correlated(rng, n_ref, mix, loc), correlated(rng, n_cur, mix, loc)
        refs.append(ref)
        curs.append(cur)
        jobs.append(job(i, ref, cur, rng))
    results = reconstruction_drift(jobs)
    lowers = [assert_nannyml(r, ref, cur)["lower"] for r, ref, cur in zip(results, refs, curs, strict=True)]
    assert None in lowers and any(x is not None for x in lowers)  # both threshold cases are covered
    # the numbers of a model do not depend on the rest of the batch
    for i in (0, 3, 8):
        assert_same(reconstruction_drift([jobs[i]])[0], results[i])


def test_explicit_chunk_size() -> None:
    rng = np.random.default_rng(15)
    refs, curs, jobs = [], [], []
    for i, (n_ref, n_cur) in enumerate([(168, 10), (168, 24), (200, 30)]):
        mix, loc = model_params(rng)
        ref, cur = correlated(rng, n_ref, mix, loc), correlated(rng, n_cur, mix, loc)
        refs.append(ref)
        curs.append(cur)
        jobs.append(job(i, ref, cur, rng))
    for r, ref, cur in zip(reconstruction_drift(jobs, chunk_size=24), refs, curs, strict=True):
        assert_nannyml(r, ref, cur, chunk=24)


def test_other_explained_variance_and_multiplier() -> None:
    rng = np.random.default_rng(16)
    mix, loc = model_params(rng)
    ref, cur = correlated(rng, 168, mix, loc), correlated(rng, 24, mix, loc)
    r = reconstruction_drift([job(0, ref, cur, rng)], explained_variance=0.9, std_multiplier=2.0)[0]
    ref_df = pd.DataFrame({c: ref[j] for j, c in enumerate(FEATURES)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calc = nml.DataReconstructionDriftCalculator(
            column_names=FEATURES,
            chunk_size=24,
            n_components=0.9,
            threshold=nml.thresholds.StandardDeviationThreshold(2, 2),
        ).fit(ref_df)
        res = calc.calculate(pd.DataFrame({c: cur[j] for j, c in enumerate(FEATURES)})).filter(
            period="analysis"
        )
    assert r.n_components == calc._pca.n_components_
    assert math.isclose(
        r.reconstruction_error, res.to_df()[("reconstruction_error", "value")].iloc[0], rel_tol=REL
    )
    assert math.isclose(r.upper_threshold, calc.upper_threshold_value, rel_tol=REL)


# ------------------------------------------------------------------------- what univariate tests miss
def test_broken_correlation_is_caught_where_per_column_ks_is_not() -> None:
    """Same marginals, broken correlation: the per-column KS test (what the univariate engine runs on
    small windows) sees nothing -- its p-values do not change at all, the current values of each column
    are the same -- while the reconstruction error leaves NannyML's band.

    The intact windows are the control. A band from 7 reference chunks is narrow (NannyML's method: the
    std of 7 chunk errors), so an intact window falls outside it now and then; with this seed none does.
    The broken windows' errors are ~3x the intact ones' with any seed."""
    rng = np.random.default_rng(19)
    refs, intact, broken, jobs = [], [], [], []
    for i in range(5):
        mix = np.eye(6) * 0.3
        mix[:, 0] = [1.0, 0.9, -0.8, 0.7, 0.95, -0.9]  # one strong common factor
        loc = rng.uniform(0, 50, 6)
        ref, cur = correlated(rng, 168, mix, loc), correlated(rng, 24, mix, loc)
        shuffled = cur.copy()
        for row in (0, 2, 4):  # each column's own values, paired with other rows' values
            shuffled[row] = rng.permutation(shuffled[row])
        refs.append(ref)
        intact.append(cur)
        broken.append(shuffled)
        jobs += [job(2 * i, ref, cur, rng), job(2 * i + 1, ref, shuffled, rng)]
    results = reconstruction_drift(jobs)
    for i in range(5):
        r_intact, r_broken = results[2 * i], results[2 * i + 1]
        p_intact = [ks_2samp(refs[i][c], intact[i][c]).pvalue for c in range(6)]
        p_broken = [ks_2samp(refs[i][c], broken[i][c]).pvalue for c in range(6)]
        assert p_broken == p_intact
        assert min(p_broken) > 0.05, "the per-column test must not flag the broken window"
        assert not r_intact.drifted
        assert r_broken.drifted
        assert r_broken.reconstruction_error > 1.5 * r_intact.reconstruction_error
        assert assert_nannyml(r_broken, refs[i], broken[i])["alert"]
        assert not assert_nannyml(r_intact, refs[i], intact[i])["alert"]


# ------------------------------------------------------------------------------------ not computable
def nannyml_fails(ref: np.ndarray, cur: np.ndarray) -> bool:
    try:
        nannyml(ref, cur)
    except NannyMLException:
        return True
    return False


def test_not_computable_cases_have_reason_codes() -> None:
    rng = np.random.default_rng(18)
    mix, loc = model_params(rng)

    def windows(n_ref: int = 168, n_cur: int = 24) -> tuple[np.ndarray, np.ndarray]:
        return correlated(rng, n_ref, mix, loc), correlated(rng, n_cur, mix, loc)

    cases: list[tuple[str | None, DriftJob, np.ndarray | None, np.ndarray | None]] = []
    ref, cur = windows()
    cases.append((None, job(0, ref, cur, rng), ref, cur))  # a good model between the bad ones
    ref, cur = windows(168, 0)
    cases.append((EMPTY_CURRENT, job(1, ref, cur, rng), ref, cur))
    ref, cur = windows(0, 24)
    cases.append((EMPTY_REFERENCE, job(2, ref, cur, rng), None, None))
    ref, cur = windows(20, 24)  # one (incomplete) reference chunk
    cases.append((TOO_FEW_REFERENCE_CHUNKS, job(3, ref, cur, rng), ref, cur))
    ref, cur = windows()
    ref[1, 5] = np.inf
    cases.append((NON_FINITE, job(4, ref, cur, rng), ref, cur))
    ref, cur = windows()
    cur[2, 3] = -np.inf
    cases.append((NON_FINITE, job(5, ref, cur, rng), ref, cur))
    ref, cur = windows()
    ref[4] = np.nan
    cases.append((EMPTY_REFERENCE_COLUMN, job(6, ref, cur, rng), ref, cur))
    ref, cur = windows()
    ref[:] = np.array([1.5, 0.1, 3.0, 2.0, 0.7, 65.2])[:, None]
    cases.append((CONSTANT_FEATURES, job(7, ref, cur, rng), ref, cur))
    ref, cur = windows(2, 1)  # two rows: PCA's kept component goes through both, errors are rounding
    cases.append((DEGENERATE_REFERENCE, job(8, ref, cur, rng), ref, cur))
    only_output = DriftJob(key(9), numerical=["prediction"], reference_values=ref[:1], current_values=cur[:1])
    cases.append((NO_FEATURES, only_output, None, None))
    ref, cur = windows()
    text = [*ref[:5], np.array(["x"] * 168, dtype=object)]
    cases.append(
        (
            NOT_NUMERIC,
            DriftJob(key(10), numerical=FEATURES, reference_values=text, current_values=list(cur)),
            None,
            None,
        )
    )
    frames = DriftJob(
        key(11),
        pd.DataFrame({c: ref[j] for j, c in enumerate(FEATURES[:5])}),
        pd.DataFrame({c: cur[j] for j, c in enumerate(FEATURES)}),
        numerical=FEATURES,
    )
    cases.append((MISSING_COLUMN, frames, None, None))

    results = reconstruction_drift([c[1] for c in cases])
    for (reason, _, ref_w, cur_w), r in zip(cases, results, strict=True):
        if reason is None:
            assert_nannyml(r, ref_w, cur_w)  # type: ignore[arg-type]
            continue
        assert r.error == reason, r
        assert r.error in REASONS
        assert math.isnan(r.reconstruction_error) and not r.drifted and r.n_components == 0
        if reason in (EMPTY_CURRENT, NON_FINITE, EMPTY_REFERENCE_COLUMN):
            assert nannyml_fails(ref_w, cur_w), reason  # type: ignore[arg-type]
        elif reason in (TOO_FEW_REFERENCE_CHUNKS, CONSTANT_FEATURES, DEGENERATE_REFERENCE):
            # NannyML returns a band that flags every window: zero width, or rounding noise around 0
            nm = nannyml(ref_w, cur_w)  # type: ignore[arg-type]
            assert nm["alert"]
            assert nm["upper"] - (nm["lower"] or 0.0) < 1e-12 or nm["upper"] < 1e-12


# --------------------------------------------------------------------------------------- job handling
def test_output_column_is_not_a_feature_and_frames_equal_arrays() -> None:
    rng = np.random.default_rng(19)
    mix, loc = model_params(rng)
    ref, cur = correlated(rng, 168, mix, loc), correlated(rng, 24, mix, loc)
    a = job(0, ref, cur, rng)
    b = job(0, ref, cur, rng)  # other prediction values
    frames = DriftJob(
        key(0),
        pd.DataFrame({**{c: ref[j] for j, c in enumerate(FEATURES)}, "anomaly_score": rng.normal(size=168)}),
        pd.DataFrame({**{c: cur[j] for j, c in enumerate(FEATURES)}, "anomaly_score": rng.normal(size=24)}),
        numerical=[*FEATURES, "anomaly_score"],
    )
    ra, rb, rf = reconstruction_drift([a, b, frames])
    assert ra.columns == FEATURES
    assert ra == rb  # the output column plays no part
    assert_same(rf, ra)
    assert_nannyml(ra, ref, cur)


def test_fit_cache_reuses_references_by_version() -> None:
    rng = np.random.default_rng(20)
    jobs, refs, curs = [], [], []
    for i in range(4):
        mix, loc = model_params(rng)
        ref, cur = correlated(rng, 168, mix, loc), correlated(rng, 24, mix, loc)
        refs.append(ref)
        curs.append(cur)
        jobs.append(job(i, ref, cur, rng, version=f"ref-{i}-v1"))
    cache = FitCache()
    cold = reconstruction_drift(jobs, cache=cache)
    assert (cache.builds, cache.hits) == (4, 0)
    for a, b in zip(reconstruction_drift(jobs, cache=cache), cold, strict=True):
        assert_same(a, b)
    assert (cache.builds, cache.hits) == (4, 4)
    # a new current window with a cached reference; a new reference under a new version
    mix, loc = model_params(rng)
    new_cur = correlated(rng, 24, mix, loc)
    new_ref = correlated(rng, 168, mix, loc)
    jobs[0] = job(0, refs[0], new_cur, rng, version="ref-0-v1")
    jobs[1] = job(1, new_ref, curs[1], rng, version="ref-1-v2")
    warm = reconstruction_drift(jobs, cache=cache)
    assert (cache.builds, cache.hits) == (5, 7)
    for a, b in zip(warm, reconstruction_drift(jobs), strict=True):  # == no cache
        assert_same(a, b)
    assert_nannyml(warm[0], refs[0], new_cur)
    assert_nannyml(warm[1], new_ref, curs[1])


def test_bad_settings_raise() -> None:
    with pytest.raises(ValueError):
        reconstruction_drift([], explained_variance=1.0)
    with pytest.raises(ValueError):
        reconstruction_drift([], chunk_size=0)
    assert reconstruction_drift([]) == []
