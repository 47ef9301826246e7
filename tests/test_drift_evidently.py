"""The Evidently backend: Evidently's own numbers per model, dirty data handled per column."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from fleetmon.config import ModelKey
from fleetmon.drift import ColumnOverride, DriftJob, get_backend
from fleetmon.drift.evidently_backend import EvidentlyBackend

KEY = ModelKey(customer="c01", building="c01-b001", energy="heating", model="forecast")


@pytest.fixture(scope="module")
def backend() -> EvidentlyBackend:
    return get_backend("evidently")


def frames(seed: int = 0, n_ref: int = 400, n_cur: int = 120, shift: float = 0.0):
    rng = np.random.default_rng(seed)

    def one(n: int, s: float) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "temp": rng.normal(10 + s, 3, n),
                "occupancy": rng.integers(0, 4, n).astype(float),  # 4 values: chi-square
                "kind": rng.choice(["office", "school"], n),  # 2 values: Z-test
            }
        )

    return one(n_ref, 0.0), one(n_cur, shift)


def evidently_report(ref: pd.DataFrame, cur: pd.DataFrame, **preset) -> dict:
    """Evidently run directly, the way its documentation shows."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

        dd = DataDefinition(numerical_columns=["temp", "occupancy"], categorical_columns=["kind"])
        snap = Report([DataDriftPreset(**preset)]).run(
            Dataset.from_pandas(cur, data_definition=dd), Dataset.from_pandas(ref, data_definition=dd)
        )
    out = {}
    for m in snap.dict()["metrics"]:
        cfg = m["config"]
        if cfg["type"].endswith("DriftedColumnsCount"):
            out["share"] = m["value"]["share"]
            out["count"] = m["value"]["count"]
        else:
            out[cfg["column"]] = m["value"]
    return out


def test_scores_decisions_and_share_are_evidentlys(backend: EvidentlyBackend) -> None:
    ref, cur = frames(shift=3.0)
    res = backend.run([DriftJob(KEY, ref, cur, ["temp", "occupancy"], ["kind"])])[0]
    ev = evidently_report(ref, cur)
    cols = {c.column: c for c in res.columns}
    assert [c.column for c in res.columns] == ["temp", "occupancy", "kind"]
    assert {c: cols[c].stattest for c in cols} == {"temp": "ks", "occupancy": "chisquare", "kind": "z"}
    for c in cols:
        assert cols[c].score == ev[c]
        assert cols[c].threshold == 0.05
    assert cols["temp"].drifted is True  # shifted by one standard deviation
    assert cols["occupancy"].drifted == bool(ev["occupancy"] < 0.05)
    assert res.share_drifted == ev["share"] and res.n_drifted == ev["count"]
    assert res.dataset_drift == bool(ev["share"] >= 0.5)
    assert (res.n_reference, res.n_current) == (400, 120)


def test_no_drift_on_same_distribution(backend: EvidentlyBackend) -> None:
    ref, _ = frames(seed=1, n_ref=1500)
    res = backend.run([DriftJob(KEY, ref, ref.iloc[:500], ["temp", "occupancy"], ["kind"])])[0]
    # above 1,000 reference rows: normed Wasserstein and Jensen-Shannon
    assert [c.stattest for c in res.columns] == ["wasserstein", "jensenshannon", "jensenshannon"]
    assert [c.threshold for c in res.columns] == [0.1, 0.1, 0.1]
    assert res.n_drifted == 0 and res.share_drifted == 0.0 and res.dataset_drift is False


def test_overrides_and_drift_share(backend: EvidentlyBackend) -> None:
    ref, cur = frames(shift=0.5)
    job = DriftJob(
        KEY,
        ref,
        cur,
        ["temp", "occupancy"],
        ["kind"],
        overrides={"temp": ColumnOverride("wasserstein", 0.01), "kind": ColumnOverride(threshold=0.99)},
        drift_share=0.3,
    )
    res = backend.run([job])[0]
    ev = evidently_report(
        ref,
        cur,
        drift_share=0.3,
        per_column_method={"temp": "wasserstein"},
        per_column_threshold={"temp": 0.01, "kind": 0.99},
    )
    temp, _, kind = res.columns
    assert (temp.stattest, temp.threshold, temp.score, temp.drifted) == (
        "wasserstein",
        0.01,
        ev["temp"],
        True,
    )
    assert (kind.stattest, kind.threshold, kind.score) == ("z", 0.99, ev["kind"])
    assert kind.drifted == bool(ev["kind"] < 0.99)
    assert res.share_drifted == ev["share"]
    assert res.dataset_drift == bool(ev["share"] >= 0.3)


def test_dirty_columns_are_not_computable_and_never_nan(backend: EvidentlyBackend) -> None:
    ref, cur = frames(shift=3.0)
    cur = cur.copy()
    cur["occupancy"] = np.nan  # Evidently fails the whole report on this column
    ref = ref.copy()
    ref.loc[:10, "temp"] = np.inf  # dropped like NaN
    res = backend.run([DriftJob(KEY, ref, cur, ["temp", "occupancy"], ["kind"])])[0]
    temp, occ, kind = res.columns
    assert occ.score is None and occ.drifted is None and occ.error == "empty_current"
    assert "empty column 'occupancy'" in (occ.detail or "")
    assert temp.drifted is True and temp.error is None
    assert kind.error is None and kind.score is not None
    # share over the two computable columns
    assert res.n_drifted == int(temp.drifted) + int(bool(kind.drifted))
    assert res.share_drifted == res.n_drifted / 2 and not math.isnan(res.share_drifted)


def test_empty_current_window_and_bad_overrides(backend: EvidentlyBackend) -> None:
    ref, cur = frames()
    res = backend.run([DriftJob(KEY, ref, cur.iloc[:0], ["temp", "occupancy"], ["kind"])])[0]
    assert [c.error for c in res.columns] == ["empty_current"] * 3
    assert (res.share_drifted, res.n_drifted, res.dataset_drift, res.n_current) == (0.0, 0, False, 0)

    res = backend.run(
        [
            DriftJob(
                KEY,
                ref,
                cur,
                ["temp", "occupancy"],
                ["kind"],
                overrides={"kind": ColumnOverride("ks"), "temp": ColumnOverride("no-such-test")},
            )
        ]
    )[0]
    assert [c.error for c in res.columns] == ["invalid_stattest", None, "invalid_stattest"]
    assert res.columns[1].score is not None


def test_text_in_numerical_column(backend: EvidentlyBackend) -> None:
    ref, cur = frames()
    cur = cur.copy()
    cur["temp"] = "warm"
    res = backend.run([DriftJob(KEY, ref, cur, ["temp", "occupancy"], ["kind"])])[0]
    assert res.columns[0].error == "not_numeric"
    assert res.columns[1].error is None


def test_html_report(backend: EvidentlyBackend, tmp_path) -> None:
    ref, cur = frames(shift=2.0)
    cur = cur.copy()
    cur["occupancy"] = np.nan
    out = tmp_path / "reports" / "c01-b001-heating-forecast.html"
    left_out = backend.write_html_report(DriftJob(KEY, ref, cur, ["temp", "occupancy"], ["kind"]), out)
    assert [c.column for c in left_out] == ["occupancy"]
    html = out.read_text()
    assert html.lstrip().lower().startswith("<!doctype html") or "<html" in html[:500].lower()
    assert "temp" in html and "kind" in html
    assert not list(out.parent.glob("*.tmp"))

    with pytest.raises(ValueError, match="no column is computable"):
        backend.write_html_report(DriftJob(KEY, ref, cur.iloc[:0], ["temp"], []), tmp_path / "x.html")


def test_get_backend() -> None:
    assert type(get_backend("evidently")).__name__ == "EvidentlyBackend"
    with pytest.raises(ValueError, match="unknown drift backend"):
        get_backend("nope")
