"""The fleet engine returns Evidently's own numbers: a property test against Evidently's Report."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetmon.config import ModelKey
from fleetmon.drift import ColumnOverride, DriftJob, DriftResult, get_backend
from fleetmon.drift.engine import FleetDriftEngine, ks_pvalue
from fleetmon.drift.evidently_backend import EvidentlyBackend


@pytest.fixture(scope="module")
def evidently() -> EvidentlyBackend:
    return get_backend("evidently")


@pytest.fixture(scope="module")
def engine():
    with FleetDriftEngine() as e:
        yield e


def key(i: int) -> ModelKey:
    return ModelKey(customer="c01", building=f"c01-b{i:03d}", energy="heating", model="forecast")


def assert_same(ev: DriftResult, fl: DriftResult) -> None:
    """Every score to 1e-9 and every decision equal, or both not computable for the same reason."""
    assert [c.column for c in fl.columns] == [c.column for c in ev.columns]
    for e, f in zip(ev.columns, fl.columns, strict=True):
        where = f"{ev.key.building} column {e.column}: evidently {e} / engine {f}"
        assert f.error == e.error, where
        if e.error is not None:
            assert f.score is None and f.drifted is None, where
            continue
        assert (f.stattest, f.threshold, f.drifted) == (e.stattest, e.threshold, e.drifted), where
        assert f.score is not None and e.score is not None
        assert abs(f.score - e.score) <= 1e-9 * max(1.0, abs(e.score)), where
    assert (fl.n_drifted, fl.share_drifted, fl.dataset_drift) == (
        ev.n_drifted,
        ev.share_drifted,
        ev.dataset_drift,
    )
    assert not math.isnan(fl.share_drifted)
    assert (fl.n_reference, fl.n_current) == (ev.n_reference, ev.n_current)


# --------------------------------------------------------------------------------- generated fleets
# Sizes on both sides of every threshold of Evidently's rule: reference 999 / 1000 / 1001 rows (1000 is
# the last "small" size), and 1 / 2 / 5 / 6 distinct values (<= 2: Z, <= 5: chi-square / JS, > 5: KS /
# Wasserstein); small references (KS exact p-values), empty current windows, NaN, inf, constant columns.
REF_SIZES = [999, 1000, 1001, 40, 1500]
CUR_SIZES = [0, 1, 9, 60, 300]
UNIQUES = [1, 2, 3, 5, 6, 30, 0]  # 0: continuous
DIRT = ["clean", "clean", "some_nan", "some_inf", "all_nan_current", "all_nan_reference"]
OVERRIDES = [None, None, None, ("ks", None), ("wasserstein", 0.05), ("jensenshannon", None), ("psi", None),
             ("chisquare", 0.2), ("z", None), (None, 0.5), ("no-such-test", None)]  # fmt: skip


@st.composite
def columns(draw, numerical: bool):
    return {
        "numerical": numerical,
        "uniques": draw(st.sampled_from(UNIQUES if numerical else [1, 2, 3, 5, 6, 12])),
        "new_values": draw(st.booleans()),  # values in the current window the reference never saw
        "shift": draw(st.sampled_from([0.0, 0.0, 0.3, 2.0])),
        "dirt": draw(st.sampled_from(DIRT)),
        "override": draw(st.sampled_from(OVERRIDES)),
        "dtype": draw(st.sampled_from(["float64", "float64", "int64"])) if numerical else "object",
    }


@st.composite
def models(draw):
    return {
        "n_ref": draw(st.sampled_from(REF_SIZES)),
        "n_cur": draw(st.sampled_from(CUR_SIZES)),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "num": draw(st.lists(columns(True), min_size=0, max_size=3)),
        "cat": draw(st.lists(columns(False), min_size=0 if True else 1, max_size=2)),
        "drift_share": draw(st.sampled_from([0.5, 0.5, 0.3, 1.0])),
    }


def values(rng: np.random.Generator, spec: dict, n: int, current: bool) -> np.ndarray:
    k = spec["uniques"]
    if spec["numerical"]:
        if k == 0:
            x = rng.normal(spec["shift"] if current else 0.0, 1.0, n)
        else:
            pool = np.round(np.linspace(-1.0, 1.0, k) * 3, 3) if k > 1 else np.array([4.0])
            if current and spec["new_values"]:
                pool = np.append(pool, 7.5)
            weights = np.linspace(1.0, 1.0 + (spec["shift"] if current else 0.0), len(pool))
            x = rng.choice(pool, n, p=weights / weights.sum())
        if spec["dtype"] == "int64":
            return np.round(x * 10).astype(np.int64)
        return x.astype(np.float64)
    pool = [f"cat{j}" for j in range(k)]
    if current and spec["new_values"]:
        pool.append("unseen")
    weights = np.linspace(1.0, 1.0 + (spec["shift"] if current else 0.0), len(pool))
    return rng.choice(np.array(pool, dtype=object), n, p=weights / weights.sum())


def dirty(rng: np.random.Generator, x: np.ndarray, spec: dict, current: bool) -> np.ndarray | list:
    dirt = spec["dirt"]
    if dirt == "clean" or len(x) == 0:
        return x
    x = x.astype(np.float64) if spec["numerical"] else x.astype(object)
    if (dirt == "all_nan_current" and current) or (dirt == "all_nan_reference" and not current):
        x[:] = None if not spec["numerical"] else np.nan
    elif dirt == "some_nan":
        x[rng.random(len(x)) < 0.1] = None if not spec["numerical"] else np.nan
    elif dirt == "some_inf" and spec["numerical"]:
        x[rng.random(len(x)) < 0.05] = np.inf
    return x


def make_job(i: int, m: dict, version: str = "") -> DriftJob:
    rng = np.random.default_rng(m["seed"])
    specs = {f"n{j}": s for j, s in enumerate(m["num"])} | {f"c{j}": s for j, s in enumerate(m["cat"])}
    frames = []
    for n, current in ((m["n_ref"], False), (m["n_cur"], True)):
        frames.append(
            pd.DataFrame({c: dirty(rng, values(rng, s, n, current), s, current) for c, s in specs.items()})
        )
    overrides = {
        c: ColumnOverride(stattest=s["override"][0], threshold=s["override"][1])
        for c, s in specs.items()
        if s["override"] is not None
    }
    return DriftJob(
        key=key(i),
        reference=frames[0],
        current=frames[1],
        numerical=[c for c in specs if c.startswith("n")],
        categorical=[c for c in specs if c.startswith("c")],
        overrides=overrides,
        drift_share=m["drift_share"],
        reference_version=version,
    )


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # the same fleets every run: CI stays reproducible and bounded
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(fleet=st.lists(models(), min_size=1, max_size=3))
def test_engine_equals_evidently_report(fleet, evidently: EvidentlyBackend, engine: FleetDriftEngine) -> None:
    jobs = [make_job(i, m) for i, m in enumerate(fleet)]
    got = engine.run(jobs)  # the whole fleet in one batch
    assert len(got) == len(jobs)
    for job, fl in zip(jobs, got, strict=True):
        assert fl.key == job.key
        assert_same(evidently.run_one(job), fl)


# --------------------------------------------------------------------------------- explicit cases
def spec(uniques: int, numerical: bool = True, **kw) -> dict:
    base = {"uniques": uniques, "numerical": numerical, "new_values": False, "shift": 0.0, "dirt": "clean",
            "override": None, "dtype": "float64" if numerical else "object"}  # fmt: skip
    return base | kw


@pytest.mark.parametrize("n_ref", [999, 1000, 1001])
@pytest.mark.parametrize("uniques", [1, 2, 5, 6])
def test_rule_boundaries(n_ref: int, uniques: int, evidently, engine) -> None:
    m = {"n_ref": n_ref, "n_cur": 200, "seed": n_ref * 10 + uniques, "drift_share": 0.5,
         "num": [spec(uniques, shift=0.3)], "cat": [spec(uniques, numerical=False, shift=0.3)]}  # fmt: skip
    job = make_job(0, m)
    ev, fl = evidently.run_one(job), engine.run([job])[0]
    assert_same(ev, fl)
    expected_num = {1: "z", 2: "z", 5: "chisquare", 6: "ks"} if n_ref <= 1000 else {}
    if n_ref <= 1000:
        assert fl.columns[0].stattest == expected_num[uniques]
        assert fl.columns[1].stattest == ("chisquare" if uniques > 2 else "z")
    else:
        assert fl.columns[0].stattest == ("jensenshannon" if uniques <= 5 else "wasserstein")
        assert fl.columns[1].stattest == "jensenshannon"


def test_reference_cache_is_reused_and_invalidated(evidently, engine) -> None:
    m = {"n_ref": 1500, "n_cur": 300, "seed": 7, "drift_share": 0.5,
         "num": [spec(0), spec(6), spec(2)], "cat": [spec(3, numerical=False)]}  # fmt: skip
    engine.forget()
    job = make_job(0, m, version="ref-1")
    before = dict(engine.stats)
    assert_same(evidently.run_one(job), engine.run([job])[0])
    # a new current window, same reference version: reference work comes from the cache
    m2 = m | {"seed": 8, "n_ref": 1500}
    job2 = make_job(0, m2, version="ref-1")
    job2.reference = job.reference
    assert_same(evidently.run_one(job2), engine.run([job2])[0])
    assert engine.stats["reference_builds"] - before["reference_builds"] == 1
    assert engine.stats["reference_hits"] - before["reference_hits"] == 1
    # the reference changes (new version): recomputed, and the numbers follow the new reference
    job3 = make_job(0, m | {"seed": 9}, version="ref-2")
    assert_same(evidently.run_one(job3), engine.run([job3])[0])
    assert engine.stats["reference_builds"] - before["reference_builds"] == 2


def test_a_failing_model_does_not_take_the_fleet_down(engine) -> None:
    good = make_job(
        0, {"n_ref": 100, "n_cur": 50, "seed": 1, "drift_share": 0.5, "num": [spec(0)], "cat": []}
    )
    bad = make_job(1, {"n_ref": 100, "n_cur": 50, "seed": 1, "drift_share": 0.5, "num": [spec(0)], "cat": []})
    bad.current = bad.current.rename(columns={"n0": "other"})  # schema changed under the engine
    res = engine.run([good, bad])
    assert res[0].columns[0].error is None and res[0].columns[0].score is not None
    assert res[1].columns[0].error == "missing_column"
    assert res[1].share_drifted == 0.0 and res[1].dataset_drift is False


def test_ks_pvalue_is_scipys() -> None:
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(3)
    for n1, n2 in [(200, 50), (999, 13), (20000, 30)]:
        a, b = rng.normal(size=n1), rng.normal(0.3, size=n2)
        r = ks_2samp(a, b)
        assert ks_pvalue(n1, n2, float(r.statistic)) == float(r.pvalue)


def test_get_backend_fleet() -> None:
    e = get_backend("fleet")
    try:
        assert isinstance(e, FleetDriftEngine) and e.run([]) == []
    finally:
        e.close()
