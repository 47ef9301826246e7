"""Model versions on live actuals: shadow predictions of challengers next to the champion's (issue: closing
the loop). Real files through the real ``OutputsPipeline`` (the harness of tests/test_outputs.py); expected
values computed by hand, the Diebold-Mariano test by its plain textbook formula.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from scipy import stats

from fleetmon.outputs.versions import dm_test
from tests.test_outputs import (
    NOW,
    H,
    Harness,
    J,
    actual,
    make_cfg,
    pred,
    quarantined,
    write_csv,
    write_jsonl,
)

MODEL = {"customer": "c1", "building": "b1", "energy": "heating", "model": "forecast"}


def vpred(
    b: str,
    e: str,
    target: float,
    prediction: float,
    version: Any = None,
    alias: str | None = None,
    made: float | None = None,
) -> dict[str, Any]:
    rec = pred(b, e, "forecast", target, made=made, prediction=prediction)
    if version is not None:
        rec["model_version"] = version
    if alias is not None:
        rec["alias"] = alias
    return rec


def harness(tmp: Path, **versions: Any) -> Harness:
    return Harness(make_cfg(tmp, versions={"min_targets": 24, "margin": 0.05, "alpha": 0.05, **versions}))


def dm_plain(d: list[float], h: int = 1) -> tuple[float, float]:
    """Diebold-Mariano with the Harvey-Leybourne-Newbold correction, straight from the papers' formulas."""
    n = len(d)
    mean = sum(d) / n

    def gamma(k: int) -> float:
        return sum((d[t] - mean) * (d[t - k] - mean) for t in range(k, n)) / n

    v = gamma(0) + 2 * sum(gamma(k) for k in range(1, h))
    dm = mean / math.sqrt(v / n)
    dm *= math.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n)
    return dm, 2 * (1 - stats.t.cdf(abs(dm), n - 1))


def version_series(h: Harness) -> dict[str, list[tuple[dict[str, str], float]]]:
    names = [
        "fleetmon_model_version_paired_targets",
        "fleetmon_model_version_mae_joules",
        "fleetmon_model_challenger_outperforms",
    ]
    return {n: h.samples(n) for n in names}


def promtool_passes(h: Harness) -> None:
    promtool = shutil.which("promtool")
    if promtool:
        res = subprocess.run(
            [promtool, "check", "metrics"], input=h.exporter.exposition(), capture_output=True, timeout=30
        )
        assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()


# ------------------------------------------------------------------------------------ hand-computed
def champion_and_challenger(tmp: Path) -> None:
    t = [NOW - k * H for k in (4, 3, 2, 1)]
    write_jsonl(
        tmp / "act" / "a.jsonl",
        [actual("b1", "heating", ti, v) for ti, v in zip(t, [10, 20, 0, 40], strict=True)],
    )
    champion = [
        vpred("b1", "heating", ti, p, 3, "champion") for ti, p in zip(t, [11, 18, 1, 44], strict=True)
    ]
    challenger = [
        # an older prediction of v4 for t[0]: the newest one (made an hour before the target) counts
        vpred("b1", "heating", t[0], 100.0, "4", "challenger", made=t[0] - 3 * H),
        *(
            vpred("b1", "heating", ti, p, 4.0, "challenger")
            for ti, p in zip(t[:3], [10.5, 21, 0.5], strict=True)
        ),
        vpred("b1", "heating", NOW + H, 1.0, 4, "challenger", made=NOW - 60),  # not matured
    ]
    write_jsonl(tmp / "pred" / "champion.jsonl", champion)
    write_jsonl(tmp / "pred" / "challenger.jsonl", challenger)


def test_per_version_figures_on_paired_targets_are_the_hand_computed_ones(tmp_path: Path) -> None:
    h = harness(tmp_path)
    try:
        champion_and_challenger(tmp_path)
        h.poll()
        champ = {**MODEL, "version": "3", "alias": "champion"}
        chall = {**MODEL, "version": "4", "alias": "challenger"}
        # paired: t0..t2 (v4 has no prediction for t3); errors champion 1, -2, 1; challenger 0.5, 1, 0.5
        assert h.get("fleetmon_model_version_paired_targets", **champ) == 3
        assert h.get("fleetmon_model_version_paired_targets", **chall) == 3
        assert h.get("fleetmon_model_version_mae_joules", **champ) == pytest.approx(4 / 3 * J)
        assert h.get("fleetmon_model_version_rmse_joules", **champ) == pytest.approx(math.sqrt(2) * J)
        assert h.get("fleetmon_model_version_bias_joules", **champ) == pytest.approx(0, abs=1e-6)
        # the zero actual of t2 is skipped: (1/10 + 2/20) / 2
        assert h.get("fleetmon_model_version_mape_ratio", **champ) == pytest.approx(0.1)
        assert h.get("fleetmon_model_version_mae_joules", **chall) == pytest.approx(2 / 3 * J)
        assert h.get("fleetmon_model_version_rmse_joules", **chall) == pytest.approx(math.sqrt(0.5) * J)
        assert h.get("fleetmon_model_version_bias_joules", **chall) == pytest.approx(2 / 3 * J)
        assert h.get("fleetmon_model_version_mape_ratio", **chall) == pytest.approx(0.05)
        pair = {**MODEL, "champion_version": "3", "challenger_version": "4"}
        # squared loss: champion 1, 4, 1 (mean 2), challenger 0.25, 1, 0.25: d = 0.75, 3, 0.75
        assert h.get("fleetmon_model_challenger_loss_improvement_ratio", **pair) == pytest.approx(1.5 / 2)
        assert h.get("fleetmon_model_challenger_dm_pvalue", **pair) == pytest.approx(
            dm_plain([0.75, 3, 0.75])[1]
        )
        # better, but on 3 targets only (min_targets 24)
        assert h.get("fleetmon_model_challenger_outperforms", **pair) == 0
        # only the versions seen: no series of other models or versions
        assert {lab["version"] for lab, _ in h.samples("fleetmon_model_version_paired_targets")} == {"3", "4"}
        assert h.model("fleetmon_model_shadow_predictions_total", "b1", "heating", "forecast") == 5
        assert h.model("fleetmon_model_predictions_total", "b1", "heating", "forecast") == 4
    finally:
        h.close()
    h = harness(tmp_path / "abs", loss="absolute")
    try:
        champion_and_challenger(tmp_path / "abs")
        h.poll()
        pair = {**MODEL, "champion_version": "3", "challenger_version": "4"}
        # absolute loss: champion 1, 2, 1 (mean 4/3), challenger 0.5, 1, 0.5 (mean 2/3)
        assert h.get("fleetmon_model_challenger_loss_improvement_ratio", **pair) == pytest.approx(0.5)
    finally:
        h.close()


def test_shadow_rows_leave_the_models_own_series_as_they_were(tmp_path: Path) -> None:
    with_shadow, without = harness(tmp_path / "with"), harness(tmp_path / "without")
    try:
        champion_and_challenger(tmp_path / "with")
        t = [NOW - k * H for k in (4, 3, 2, 1)]
        write_jsonl(
            tmp_path / "without" / "act" / "a.jsonl",
            [actual("b1", "heating", ti, v) for ti, v in zip(t, [10, 20, 0, 40], strict=True)],
        )
        # the champion's rows without version or alias: what the exporter saw before versions existed
        write_jsonl(
            tmp_path / "without" / "pred" / "p.jsonl",
            [vpred("b1", "heating", ti, p) for ti, p in zip(t, [11, 18, 1, 44], strict=True)],
        )
        with_shadow.poll()
        without.poll()

        def own(h: Harness) -> dict[str, list[Any]]:
            """Every series but the version benchmark's and the per-file read counts."""
            out: dict[str, list[Any]] = {}
            for fam in text_string_to_metric_families(h.collector.prerendered().body.decode()):
                if fam.name.startswith(
                    ("fleetmon_model_version", "fleetmon_model_challenger", "fleetmon_model_serving_version")
                ):
                    continue  # version series: only the rows with a model_version have them
                if fam.name in ("fleetmon_model_shadow_predictions", "fleetmon_outputs_rows_read"):
                    continue
                if fam.name in (
                    "fleetmon_outputs_rows_retained",
                    "fleetmon_outputs_files_read",
                    "fleetmon_outputs_source_info",  # paths
                ):
                    continue
                out[fam.name] = sorted((sorted(s.labels.items()), s.value) for s in fam.samples)
            return out

        a, b = own(with_shadow), own(without)
        assert a.keys() == b.keys()
        for name in a:
            assert a[name] == b[name], name
        assert with_shadow.model("fleetmon_model_mae_joules", "b1", "heating", "forecast", window="24h") == (
            pytest.approx((1 + 2 + 1 + 4) / 4 * J)
        )
        # the shadow predictions of the future target do not make the model look fresher
        assert with_shadow.model(
            "fleetmon_model_latest_prediction_target_timestamp_seconds", "b1", "heating", "forecast"
        ) == pytest.approx(NOW - H)
        assert without.samples("fleetmon_model_version_paired_targets") == []
        # the served version is the champion's, never the challenger's (shadow rows, a newer made_at too)
        assert with_shadow.samples("fleetmon_model_serving_version_info") == [
            ({**MODEL, "version": "3"}, 1.0)
        ]
        assert without.samples("fleetmon_model_serving_version_info") == []
    finally:
        with_shadow.close()
        without.close()


# ------------------------------------------------------------------------------------ the verdict
def test_a_truly_better_challenger_outperforms_a_worse_one_and_a_short_one_do_not(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    n = 48
    targets = [NOW - (k + 1) * H for k in range(n)]
    acts = 50 + 10 * rng.random(n)
    e_champ = rng.normal(0, 2.0, n)
    e_better = rng.normal(0, 0.5, n)
    e_worse = rng.normal(0, 4.0, n)
    recs = []
    for i, t in enumerate(targets):
        recs.append(vpred("b1", "heating", t, float(acts[i] + e_champ[i]), 3, "champion"))
        recs.append(vpred("b1", "heating", t, float(acts[i] + e_better[i]), 4, "challenger"))
        recs.append(vpred("b1", "heating", t, float(acts[i] + e_worse[i]), 5, "challenger"))
    # b2: a much better challenger on 20 targets only (min_targets 24)
    short = []
    for i, t in enumerate(targets[:20]):
        short.append(vpred("b2", "heating", t, float(acts[i] + 3 * e_champ[i]), 1, "champion"))
        short.append(vpred("b2", "heating", t, float(acts[i] + 0.01 * e_better[i]), 2, "challenger"))
    h = harness(tmp_path)
    try:
        write_jsonl(tmp_path / "pred" / "p.jsonl", recs + short)
        write_jsonl(
            tmp_path / "act" / "a.jsonl",
            [actual(b, "heating", t, float(acts[i])) for b in ("b1", "b2") for i, t in enumerate(targets)],
        )
        h.poll()
        better = {**MODEL, "champion_version": "3", "challenger_version": "4"}
        worse = {**MODEL, "champion_version": "3", "challenger_version": "5"}
        assert h.get("fleetmon_model_challenger_outperforms", **better) == 1
        assert h.get("fleetmon_model_challenger_outperforms", **worse) == 0
        assert h.get("fleetmon_model_challenger_loss_improvement_ratio", **worse) < 0
        # the statistic against the plain formula, on the errors as the test made them
        acts_f = [float(a) for a in acts]
        for key, e in ((better, e_better), (worse, e_worse)):
            d = []
            for i in range(n):
                ec = float(acts_f[i] + e_champ[i]) - acts_f[i]
                ex = float(acts_f[i] + e[i]) - acts_f[i]
                d.append(ec * ec - ex * ex)
            _, p = dm_plain(d)
            assert h.get("fleetmon_model_challenger_dm_pvalue", **key) == pytest.approx(
                p, rel=1e-6, abs=1e-300
            )
        assert h.get("fleetmon_model_challenger_dm_pvalue", **better) < 0.001
        for v in ("3", "4", "5"):
            assert (
                h.model(
                    "fleetmon_model_version_paired_targets",
                    "b1",
                    "heating",
                    "forecast",
                    version=v,
                    alias="champion" if v == "3" else "challenger",
                )
                == n
            )
        short_key = {**MODEL, "building": "b2", "champion_version": "1", "challenger_version": "2"}
        assert h.get("fleetmon_model_challenger_dm_pvalue", **short_key) < 0.05
        assert h.get("fleetmon_model_challenger_loss_improvement_ratio", **short_key) > 0.5
        assert h.get("fleetmon_model_challenger_outperforms", **short_key) == 0  # too few targets
        promtool_passes(h)  # the exposition with the new families
    finally:
        h.close()


def test_dm_test_matches_the_plain_formula_with_and_without_lags() -> None:
    d = [0.3, 0.4, 0.8, 0.9, 0.5, 0.2, 0.1, 0.3]  # autocorrelated: a positive HAC variance up to lag 2
    e = [1.0, 1.8, 1.5, 0.7, 0.2, 0.4]
    arr = np.asarray(d + e)
    group = np.asarray([0] * len(d) + [1] * len(e))
    for h in (1, 2, 3):
        n, mean, dm, p = dm_test(arr, group, 2, h=h)
        assert list(n) == [len(d), len(e)]
        for g, xs in enumerate((d, e)):
            want_dm, want_p = dm_plain(xs, h)
            assert mean[g] == pytest.approx(sum(xs) / len(xs))
            assert dm[g] == pytest.approx(want_dm)
            assert p[g] == pytest.approx(want_p)
    # lags that make the uniform-weight variance negative: lag 0 instead (as R's forecast::dm.test)
    zigzag = [1.0, -1.0, 1.2, -0.8, 1.1, -0.9]
    _, _, dm, p = dm_test(np.asarray(zigzag), np.zeros(6, dtype=np.int64), 1, h=2)
    assert dm[0] == pytest.approx(
        dm_plain(zigzag, 1)[0] * math.sqrt((6 + 1 - 4 + 2 / 6) / 6) / math.sqrt(5 / 6)
    )
    # a constant difference has no variance: certain when not 0
    n, mean, dm, p = dm_test(np.asarray([1.0, 1.0, 1.0, 0.0, 0.0]), np.asarray([0, 0, 0, 1, 1]), 2)
    assert p[0] == 0 and p[1] == 1


# ------------------------------------------------------------------------------------ validation
def test_bad_model_versions_are_rejected_as_wrong_type_and_quarantined(tmp_path: Path) -> None:
    t = NOW - H
    bad = ["abc", 0, -1, 2.5, True, "1.5", "", None]  # "" and None: no version (accepted)
    good = [3, "4", 5.0, " 6 "]
    # each made at its own time: none is a duplicate of another
    recs = [
        vpred("b1", "heating", t, 1.0, v, "challenger", made=t - H - 60 * i) for i, v in enumerate(bad + good)
    ]
    h = harness(tmp_path)
    try:
        write_jsonl(tmp_path / "pred" / "p.jsonl", recs)
        write_csv(tmp_path / "pred" / "p.csv", [vpred("b2", "heating", t, 1.0, v) for v in ("x", "7", "7.0")])
        h.poll()
        rejected = h.get(
            "fleetmon_outputs_rows_rejected_total", reason="wrong_type", kind="predictions", **MODEL
        )
        assert rejected == 6
        q = quarantined(tmp_path)
        assert sorted(str(r["record"].get("model_version")) for r in q) == sorted(
            ["abc", "0", "-1", "2.5", "True", "1.5", "x", "7.0"]
        )
        assert all(r["reason"] in ("wrong_type", "duplicate") for r in q)
        assert {r["detail"] for r in q if r["reason"] == "wrong_type"} == {
            "model_version is not a positive integer (the MLflow registry version: 1, 2, ...)"
        }
        # "7" and "7.0" are the same version 7 (and the same target): the second is a duplicate
        assert [r["reason"] for r in q if r["record"].get("model_version") == "7.0"] == ["duplicate"]
        # two without a version, four with one: all shadow rows (alias challenger)
        assert h.model("fleetmon_model_shadow_predictions_total", "b1", "heating", "forecast") == 6
        assert h.model("fleetmon_model_predictions_total", "b1", "heating", "forecast") == 0
        assert h.model("fleetmon_model_predictions_total", "b2", "heating", "forecast") == 1
    finally:
        h.close()


def test_champion_and_challenger_for_the_same_target_are_no_duplicates(tmp_path: Path) -> None:
    t, made = NOW - H, NOW - 2 * H
    recs = [
        vpred("b1", "heating", t, 10.0, 3, "champion", made=made),
        vpred("b1", "heating", t, 11.0, 4, "challenger", made=made),
        vpred("b1", "heating", t, 12.0, 5, "canary", made=made),  # not a configured alias: label ""
        vpred("b1", "heating", t, 10.0, 3, "champion", made=made),  # the same again: a duplicate
    ]
    h = harness(tmp_path)
    try:
        write_jsonl(tmp_path / "pred" / "p.jsonl", recs)
        write_jsonl(tmp_path / "act" / "a.jsonl", [actual("b1", "heating", t, 10.5)])
        h.poll()
        assert h.model("fleetmon_model_predictions_total", "b1", "heating", "forecast") == 1
        assert h.model("fleetmon_model_shadow_predictions_total", "b1", "heating", "forecast") == 2
        dups = [r for r in quarantined(tmp_path) if r["reason"] == "duplicate"]
        assert len(dups) == 1 and dups[0]["record"]["model_version"] == 3
        aliases = {
            lab["version"]: lab["alias"] for lab, _ in h.samples("fleetmon_model_version_paired_targets")
        }
        assert aliases == {"3": "champion", "4": "challenger", "5": ""}
        assert {
            lab["challenger_version"] for lab, _ in h.samples("fleetmon_model_challenger_outperforms")
        } == {"4", "5"}
    finally:
        h.close()
    # the shadow counter continues after a restart (state file), the window is rebuilt without recounting
    h = harness(tmp_path)
    try:
        h.poll()
        assert h.model("fleetmon_model_shadow_predictions_total", "b1", "heating", "forecast") == 2
        assert h.model("fleetmon_model_predictions_total", "b1", "heating", "forecast") == 1
        assert len(h.samples("fleetmon_model_version_paired_targets")) == 3
    finally:
        h.close()


# ------------------------------------------------------------------------------------ anomaly detectors
DETECTOR = {"customer": "c1", "building": "b1", "energy": "heating", "model": "anomaly"}


def apred(target: float, flag: int, version: int, alias: str, b: str = "b1") -> dict[str, Any]:
    rec = pred(b, "heating", "anomaly", target, score=0.9 if flag else 0.1, flag=flag)
    rec["model_version"], rec["alias"] = version, alias
    return rec


def labelled(target: float, label: Any, b: str = "b1") -> dict[str, Any]:
    rec = actual(b, "heating", target, 10.0)
    if label is not None:
        rec["anomaly_label"] = label
    return rec


def test_detector_versions_get_precision_recall_f1_on_labels_and_flag_rates_without(tmp_path: Path) -> None:
    t = [NOW - k * H for k in range(6, 0, -1)]
    labels = [1, 1, 0, 0, None, None]  # the last two hours are not labelled
    champion = [1, 0, 1, 0, 1, 1]  # TP, FN, FP, TN; two flags on unlabelled hours
    challenger = [1, 1, 0, 0, 0, 1]  # TP, TP, TN, TN
    h = harness(tmp_path)
    try:
        write_jsonl(
            tmp_path / "pred" / "a.jsonl",
            [apred(ti, f, 3, "champion") for ti, f in zip(t, champion, strict=True)]
            + [apred(ti, f, 4, "challenger") for ti, f in zip(t, challenger, strict=True)],
        )
        write_jsonl(
            tmp_path / "act" / "a.jsonl", [labelled(ti, lab) for ti, lab in zip(t, labels, strict=True)]
        )
        h.poll()
        champ = {**DETECTOR, "version": "3", "alias": "champion"}
        chall = {**DETECTOR, "version": "4", "alias": "challenger"}
        assert h.get("fleetmon_model_version_paired_targets", **champ) == 6
        assert h.get("fleetmon_model_version_labelled_targets", **champ) == 4
        assert h.get("fleetmon_model_version_flag_rate_ratio", **champ) == pytest.approx(4 / 6)
        assert h.get("fleetmon_model_version_flag_rate_ratio", **chall) == pytest.approx(3 / 6)
        assert h.get("fleetmon_model_version_precision_ratio", **champ) == pytest.approx(0.5)
        assert h.get("fleetmon_model_version_recall_ratio", **champ) == pytest.approx(0.5)
        assert h.get("fleetmon_model_version_f1_ratio", **champ) == pytest.approx(0.5)
        assert h.get("fleetmon_model_version_f1_ratio", **chall) == pytest.approx(1.0)
        # a detector has no forecast errors, a forecaster no flags
        assert h.get("fleetmon_model_version_mae_joules", **champ) is None
        key = {**DETECTOR, "champion_version": "3", "challenger_version": "4"}
        assert h.get("fleetmon_model_challenger_flag_rate_ratio", **key) == pytest.approx(3 / 4)
        # (1 - 0.5) / (1 - 0.5): the challenger removes all of the champion's F1 shortfall
        assert h.get("fleetmon_model_challenger_loss_improvement_ratio", **key) == pytest.approx(1.0)
        # McNemar: 0 targets only the champion got right, 2 only the challenger: p = 2 * 0.5^2
        assert h.get("fleetmon_model_challenger_mcnemar_pvalue", **key) == pytest.approx(0.5)
        assert h.get("fleetmon_model_challenger_dm_pvalue", **key) is None
        assert h.get("fleetmon_model_challenger_outperforms", **key) == 0  # 4 labelled targets < 24
        promtool_passes(h)
    finally:
        h.close()


def test_a_better_detector_outperforms_on_enough_labels_and_never_without(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    n = 150  # inside the 7-day window
    targets = [NOW - (k + 1) * H for k in range(n)]
    truth = rng.random(n) < 0.2
    # the champion misses or invents 30 % of its answers, the challenger 5 %
    champ = np.where(rng.random(n) < 0.3, ~truth, truth).astype(int)
    chall = np.where(rng.random(n) < 0.05, ~truth, truth).astype(int)
    recs = []
    for i, t in enumerate(targets):
        for b in ("b1", "b2"):
            recs.append(apred(t, int(champ[i]), 1, "champion", b))
            recs.append(apred(t, int(chall[i]), 2, "challenger", b))
    acts = [labelled(t, str(int(truth[i]))) for i, t in enumerate(targets)]  # "1" / "0", as CSV has them
    acts += [labelled(t, None, "b2") for t in targets]  # b2: no labels at all
    h = harness(tmp_path)
    try:
        write_jsonl(tmp_path / "pred" / "a.jsonl", recs)
        write_jsonl(tmp_path / "act" / "a.jsonl", acts)
        h.poll()
        key = {**DETECTOR, "champion_version": "1", "challenger_version": "2"}
        b = int(((champ == truth) & (chall != truth)).sum())
        c = int(((champ != truth) & (chall == truth)).sum())
        want_p = min(1.0, stats.binomtest(min(b, c), b + c, 0.5).pvalue)
        assert h.get("fleetmon_model_challenger_mcnemar_pvalue", **key) == pytest.approx(want_p)
        assert want_p < 1e-4
        assert h.get("fleetmon_model_challenger_outperforms", **key) == 1
        unlabelled = {**key, "building": "b2"}
        assert h.get("fleetmon_model_challenger_outperforms", **unlabelled) == 0
        assert h.get("fleetmon_model_challenger_mcnemar_pvalue", **unlabelled) is None
        assert h.get("fleetmon_model_challenger_flag_rate_ratio", **unlabelled) == pytest.approx(
            chall.sum() / champ.sum()
        )
        assert (
            h.get(
                "fleetmon_model_version_f1_ratio",
                **{**DETECTOR, "building": "b2", "version": "1", "alias": "champion"},
            )
            is None
        )
    finally:
        h.close()


def test_bad_anomaly_labels_are_rejected_and_quarantined(tmp_path: Path) -> None:
    t = NOW - H
    h = harness(tmp_path)
    try:
        write_jsonl(
            tmp_path / "act" / "a.jsonl",
            [labelled(t, "yes"), labelled(t - H, 2), labelled(t - 2 * H, 1), labelled(t - 3 * H, None)],
        )
        h.poll()
        assert (
            h.get(
                "fleetmon_outputs_rows_rejected_total",
                reason="wrong_type",
                kind="actuals",
                customer="c1",
                building="b1",
                energy="heating",
                model="",
            )
            is not None
        )
        reasons = sorted((r["reason"], r["detail"]) for r in quarantined(tmp_path))
        assert reasons == [
            ("out_of_range", "anomaly_label not 0 or 1"),
            ("wrong_type", "anomaly_label is not 0/1"),
        ]
    finally:
        h.close()


def test_the_dm_horizon_is_configurable(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 60
    targets = [NOW - (k + 1) * H for k in range(n)]
    acts = 50 + rng.random(n)
    # autocorrelated champion errors, as overlapping multi-step forecasts make them
    e_champ = np.convolve(rng.normal(0, 2, n + 3), np.ones(4) / 2, mode="valid")[:n]
    e_chall = rng.normal(0, 1.0, n)
    recs = []
    for i, t in enumerate(targets):
        recs.append(vpred("b1", "heating", t, float(acts[i] + e_champ[i]), 1, "champion"))
        recs.append(vpred("b1", "heating", t, float(acts[i] + e_chall[i]), 2, "challenger"))
    key = {**MODEL, "champion_version": "1", "challenger_version": "2"}
    got = {}
    for hz in (1, 4):
        d = tmp_path / f"h{hz}"
        h = harness(d, horizon=hz)
        try:
            write_jsonl(d / "pred" / "p.jsonl", recs)
            write_jsonl(
                d / "act" / "a.jsonl",
                [actual("b1", "heating", t, float(acts[i])) for i, t in enumerate(targets)],
            )
            h.poll()
            got[hz] = h.get("fleetmon_model_challenger_dm_pvalue", **key)
        finally:
            h.close()
    # the errors as the pipeline sees them, in target order (oldest first)
    order = np.argsort(targets)
    ec = np.array([float(acts[i] + e_champ[i]) - float(acts[i]) for i in order])
    ex = np.array([float(acts[i] + e_chall[i]) - float(acts[i]) for i in order])
    for hz in (1, 4):
        assert got[hz] == pytest.approx(dm_plain(list(ec * ec - ex * ex), hz)[1], rel=1e-6)
    assert got[1] != pytest.approx(got[4])
