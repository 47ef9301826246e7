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
    arrays = [as_arrays(j) for j in jobs]
    got = engine.run(jobs + arrays)  # the whole fleet in one batch, as frames and as arrays
    assert len(got) == 2 * len(jobs)
    for job, fl, fa in zip(jobs, got[: len(jobs)], got[len(jobs) :], strict=True):
        assert fl.key == job.key
        ev = evidently.run_one(job)
        assert_same(ev, fl)
        assert_same(ev, fa)


def as_arrays(job: DriftJob, two_d: bool = False) -> DriftJob:
    """The same job in array form (one 1-D array per column, or one 2-D array per window)."""

    def values(frame: pd.DataFrame):
        cols = [frame[c].to_numpy() for c in job.columns]
        return np.vstack(cols) if two_d else cols

    return DriftJob(
        job.key,
        numerical=job.numerical,
        categorical=job.categorical,
        overrides=job.overrides,
        drift_share=job.drift_share,
        reference_version=job.reference_version,
        reference_values=values(job.reference),
        current_values=values(job.current),
    )


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


# --------------------------------------------------------------------------------- batching and forms
def fleet_specs(n: int, seed: int) -> list[dict]:
    """A varied fleet without hypothesis: every size, dirt and (cheap) override of the property test."""
    rng = np.random.default_rng(seed)
    overrides = [None] * 6 + [("ks", None), ("wasserstein", 0.05), ("jensenshannon", None), (None, 0.5),
                              ("chisquare", 0.2), ("no-such-test", None)]  # fmt: skip
    out = []
    for i in range(n):
        num = [
            spec(
                int(rng.choice(UNIQUES)),
                shift=float(rng.choice([0.0, 0.3, 2.0])),
                new_values=bool(rng.integers(2)),
                dirt=str(rng.choice(DIRT)),
                override=overrides[int(rng.integers(len(overrides)))],
                dtype=str(rng.choice(["float64", "int64"])),
            )
            for _ in range(int(rng.integers(1, 4)))
        ]
        cat = [spec(3, numerical=False)] if i % 7 == 0 else []
        out.append({"n_ref": int(rng.choice([40, 200, 999, 1001])), "n_cur": int(rng.choice([0, 9, 50, 50, 60])),
                    "seed": i, "drift_share": 0.5, "num": num, "cat": cat})  # fmt: skip
    return out


def test_batched_fleet_equals_each_model_alone_cold_warm_and_reordered() -> None:
    """Many chunks, mixed window sizes and forms in one run: every result is the one the model gets
    alone (which the property test holds to Evidently's), on a cold cycle, a warm one (references
    cached) and a warm one in another order (cached references spread over many blocks)."""
    specs = fleet_specs(300, seed=5)
    jobs = [make_job(i, m, version=f"v{i}") for i, m in enumerate(specs)]
    jobs = [as_arrays(j, two_d=i % 3 == 1) if i % 3 else j for i, j in enumerate(jobs)]
    with FleetDriftEngine(chunk=32) as alone:
        want = [alone.run([j])[0] for j in jobs]
    with FleetDriftEngine(chunk=64) as batched:
        cold = batched.run(jobs)
        assert batched.stats == {"reference_builds": len(jobs), "reference_hits": 0}
        warm = batched.run(jobs)
        assert batched.stats["reference_hits"] == len(jobs)
        order = np.random.default_rng(1).permutation(len(jobs))
        shuffled = batched.run([jobs[i] for i in order])
        assert batched.stats["reference_builds"] == len(jobs)
    assert cold == want
    assert warm == want
    assert [shuffled[k] for k in np.argsort(order)] == want


def test_array_form_job(evidently: EvidentlyBackend, engine: FleetDriftEngine) -> None:
    m = {"n_ref": 300, "n_cur": 80, "seed": 3, "drift_share": 0.5,
         "num": [spec(0, shift=0.5), spec(6, dtype="int64")], "cat": [spec(3, numerical=False)]}  # fmt: skip
    job = make_job(0, m)
    arr = as_arrays(job)
    assert arr.reference_values is not None and (arr.n_reference, arr.n_current) == (300, 80)
    # frames are built on demand, equal to the originals (what Evidently and the HTML report get)
    pd.testing.assert_frame_equal(arr.reference, job.reference)
    pd.testing.assert_frame_equal(arr.current, job.current)
    assert_same(evidently.run_one(job), evidently.run_one(as_arrays(job)))
    two_d = as_arrays(DriftJob(job.key, job.reference, job.current, job.numerical), two_d=True)
    assert isinstance(two_d.reference_values, np.ndarray) and two_d.reference_values.shape == (2, 300)
    assert (
        engine.run([two_d])[0]
        == engine.run([DriftJob(job.key, job.reference, job.current, job.numerical)])[0]
    )
    # setting a frame replaces the values
    arr.current = job.current.iloc[:10]
    assert arr.current_values is None and arr.n_current == 10
    with pytest.raises(ValueError, match="2-D array with 3 rows"):
        DriftJob(
            job.key,
            numerical=["a", "b", "c"],
            reference_values=np.zeros((2, 5)),
            current_values=np.zeros((3, 5)),
        )
    with pytest.raises(ValueError, match="1-D arrays of one length"):
        DriftJob(
            job.key,
            numerical=["a", "b"],
            reference_values=[np.zeros(5), np.zeros(4)],
            current_values=[np.zeros(3)] * 2,
        )
    with pytest.raises(ValueError, match="either as a frame or as values"):
        DriftJob(job.key, job.reference, job.current, ["n0"], reference_values=[np.zeros(3)])


def test_integers_beyond_float64_precision_are_left_to_evidently(engine) -> None:
    """int64 values that coincide as float64 are not cast: Evidently's own KS on the integers.

    (Evidently's Report itself fails on such a column, in its histogram code, so the oracle here is
    the test it would run: scipy's ks_2samp on the integers.)
    """
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(0)
    big = 2**60 + rng.integers(0, 50, 300)  # distinct int64 values; as float64 they are one or two
    ref, cur = big[:200], big[200:] + 7
    col = engine.run([DriftJob(key(0), pd.DataFrame({"x": ref}), pd.DataFrame({"x": cur}), ["x"])])[
        0
    ].columns[0]
    assert (col.stattest, col.score) == ("ks", float(ks_2samp(ref, cur).pvalue))
    assert col.drifted == (col.score <= 0.05)


def test_run_pauses_the_garbage_collector_and_restores_it(engine) -> None:
    import gc

    job = make_job(0, {"n_ref": 100, "n_cur": 50, "seed": 1, "drift_share": 0.5, "num": [spec(0)], "cat": []})
    assert gc.isenabled()
    engine.run([job])
    assert gc.isenabled()
    gc.disable()
    try:
        engine.run([job])
        assert not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()


@pytest.mark.parametrize("form", ["frames", "arrays"])
def test_columns_outside_the_compiled_path(form: str, evidently, engine) -> None:
    """float32 and text in numerical columns, an empty reference window: Evidently's numbers or
    Evidently's reasons, in both job forms."""
    rng = np.random.default_rng(2)

    def frame(n: int, shift: float) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "f32": rng.normal(shift, 1, n).astype(np.float32),
                "text": rng.choice(["a", "b"], n).astype(object),
                "ok": rng.normal(shift, 1, n),
            }
        )

    cols = ["f32", "text", "ok"]
    jobs = [
        DriftJob(key(0), frame(300, 0.0), frame(100, 1.0), cols),
        # no reference rows at all (a text column there: Evidently says not_numeric, the engine
        # empty_reference -- Evidently checks the type first in that case only; left out)
        DriftJob(key(1), frame(0, 0.0), frame(100, 1.0), ["f32", "ok"]),
    ]
    if form == "arrays":
        jobs = [as_arrays(j) for j in jobs]
    got = engine.run(jobs)
    for job, fl in zip(jobs, got, strict=True):
        assert_same(evidently.run_one(job), fl)
    assert got[0].columns[0].stattest == "ks" and got[0].columns[0].score is not None  # Evidently's function
    assert [c.error for c in got[0].columns] == [None, "not_numeric", None]
    assert [c.error for c in got[1].columns] == ["empty_reference"] * 2


def test_boolean_numerical_column_gets_evidentlys_stattest(evidently, engine) -> None:
    """Evidently's Report fails on a boolean numerical column, in its dataset statistics ("numpy boolean
    subtract"); its own stattest does not. The engine gives the stattest's result (as before batching)."""
    import warnings

    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    rng = np.random.default_rng(2)
    ref, cur = pd.Series(rng.random(300) < 0.3), pd.Series(rng.random(100) < 0.5)
    job = DriftJob(key(0), pd.DataFrame({"flag": ref}), pd.DataFrame({"flag": cur}), ["flag"])
    ev = evidently.run_one(job).columns[0]
    assert ev.error == "stattest_error" and "boolean subtract" in (ev.detail or "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = get_stattest(ref, cur, ColumnType.Numerical, None)
        want = test(ref, cur, ColumnType.Numerical, None)
    for j in (job, as_arrays(job)):
        col = engine.run([j])[0].columns[0]
        assert (col.stattest, col.score, col.drifted) == (
            test.name,
            float(want.drift_score),
            bool(want.drifted),
        )
