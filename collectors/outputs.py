"""Model outputs: per-model quality, freshness, volume, data quality and drift (issue 4).

Two collectors share one pipeline (``fleetmon.outputs``) per config:

- ``outputs``: every ``outputs.poll_interval_seconds`` reads new prediction/actual files and SQL rows,
  validates and keeps them, then computes quality over the configured windows. Its metric families are
  built once per poll and served from that cache.
- ``drift``: every ``outputs.drift.interval_seconds`` builds one ``DriftJob`` per model from the same
  window and runs the configured drift backend (``outputs.drift.engine``: ``fleet`` or ``evidently``);
  the results are served from cache until the next successful run.

Label values only ever come from the configured fleet (see ``fleetmon.outputs.records``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from fleetmon.config import Config
from fleetmon.drift.multivariate import FitCache, MultivariateResult, reconstruction_drift
from fleetmon.drift.render import render as render_drift
from fleetmon.exporter import FLEET_LABELS, Rendered, register, render_families
from fleetmon.outputs.drift_jobs import JobSet, ReferenceFiles, build_jobs
from fleetmon.outputs.pipeline import OutputsPipeline, safe_url
from fleetmon.outputs.quality import Quality
from fleetmon.outputs.versions import Versions

log = logging.getLogger(__name__)

FLEET = list(FLEET_LABELS)
# Consumption is recorded in kWh (docs/formats.md); Prometheus wants base units, so energy is exported in
# joules (1 kWh = 3.6e6 J; Grafana's "kWh" unit on a query divided by 3.6e6 shows kWh again).
J_PER_KWH = 3.6e6
BE = ["customer", "building", "energy"]

# One pipeline per config object: the two collectors built from the same config share it.
_PIPELINES: dict[int, tuple[Config, OutputsPipeline]] = {}
_PIPELINES_LOCK = threading.Lock()


def pipeline_for(cfg: Config) -> OutputsPipeline:
    with _PIPELINES_LOCK:
        hit = _PIPELINES.get(id(cfg))
        if hit is None or hit[0] is not cfg:
            hit = _PIPELINES[id(cfg)] = (cfg, OutputsPipeline(cfg))
        return hit[1]


def _release(pipeline: OutputsPipeline) -> None:
    with _PIPELINES_LOCK:
        for k, (_, p) in list(_PIPELINES.items()):
            if p is pipeline:
                del _PIPELINES[k]
    pipeline.close()


def _fmt(x: float) -> str:
    return f"{x:g}"


# ------------------------------------------------------------------------------------------ families
def quality_families(p: OutputsPipeline, q: Quality) -> list[Metric]:
    fleet = p.fleet
    labels = fleet.model_labels
    out: list[Metric] = []

    def per_model(
        name: str, doc: str, values: np.ndarray, mask: np.ndarray | None = None
    ) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=FLEET)
        ok = ~np.isnan(values) if mask is None else mask & ~np.isnan(values)
        for i in np.flatnonzero(ok):
            g.add_metric(labels[i], float(values[i]))
        return g

    # ----- windows
    fams: dict[str, GaugeMetricFamily] = {}

    def fam(name: str, doc: str, extra: list[str]) -> GaugeMetricFamily:
        if name not in fams:
            fams[name] = GaugeMetricFamily(name, doc, labels=FLEET + extra)
        return fams[name]

    fc, an = fleet.is_forecaster, fleet.is_anomaly
    for window, w in q.windows.items():
        series: list[tuple[str, str, np.ndarray, np.ndarray]] = [
            (
                "fleetmon_model_matured_predictions",
                "Predictions whose target time has passed, within the window (target_time in (now-window, now]).",
                w.matured,
                np.ones(len(labels), dtype=bool),
            ),
            (
                "fleetmon_model_matured_predictions_with_actual",
                "Matured predictions in the window whose actual is known (joined on building, energy, target_time).",
                w.with_actual,
                np.ones(len(labels), dtype=bool),
            ),
            (
                "fleetmon_model_actual_coverage_ratio",
                "Share of the window's matured predictions that have an actual (0..1).",
                np.where(w.matured > 0, w.with_actual / np.maximum(w.matured, 1), np.nan),
                np.ones(len(labels), dtype=bool),
            ),
            (
                "fleetmon_model_mae_joules",
                "Forecaster mean absolute error over the window's matured predictions with an actual (joules).",
                w.mae * J_PER_KWH,
                fc,
            ),
            (
                "fleetmon_model_rmse_joules",
                "Forecaster root mean squared error over the window's matured predictions with an actual (joules).",
                w.rmse * J_PER_KWH,
                fc,
            ),
            (
                "fleetmon_model_bias_joules",
                "Forecaster mean error, prediction minus actual, over the window (joules; positive = over-forecast).",
                w.bias * J_PER_KWH,
                fc,
            ),
            (
                "fleetmon_model_mape_ratio",
                "Forecaster mean absolute percentage error as a ratio (0.1 = 10%); rows whose actual is 0 are "
                "skipped (see fleetmon_model_mape_skipped_zero_actuals).",
                w.mape,
                fc,
            ),
            (
                "fleetmon_model_mape_skipped_zero_actuals",
                "Forecaster rows in the window left out of MAPE because their actual is 0; only where some "
                "are (absent: none).",
                w.mape_zero_actuals,
                fc,
            ),
            (
                "fleetmon_model_scored_predictions",
                "Anomaly detector rows with a score in the window.",
                w.scored,
                an,
            ),
            (
                "fleetmon_model_anomaly_ratio",
                "Anomaly detector share of the window's rows flagged as anomalous (0..1).",
                w.anomaly_ratio,
                an,
            ),
        ]
        for name, doc, values, mask in series:
            if name == "fleetmon_model_mape_skipped_zero_actuals":
                # only where rows were skipped (0 almost everywhere; docs/metrics.md series budget)
                mask = mask & (values > 0)
            g = fam(name, doc + " Cached; recomputed every outputs poll.", ["window"])
            for i in np.flatnonzero(mask & ~np.isnan(values)):
                g.add_metric([*labels[i], window], float(values[i]))
        g = fam(
            "fleetmon_model_anomaly_score_quantile",
            "Anomaly detector score quantile q (0..1) over the window (numpy linear interpolation). Cached.",
            ["window", "q"],
        )
        for qv, values in w.score_quantiles.items():
            for i in np.flatnonzero(an & ~np.isnan(values)):
                g.add_metric([*labels[i], window, _fmt(qv)], float(values[i]))
        g = fam(
            "fleetmon_model_feature_missing_ratio",
            "Share of the window's matured predictions whose feature value is missing (null/NaN); only where"
            " some are (absent: none missing). Cached.",
            ["window", "feature"],
        )
        # Only where values are missing: one series per model, feature and window would be the largest family
        # (12 series per model of the demo), almost all of them 0 in a healthy fleet (docs/metrics.md budget).
        for feature, values in w.missing_ratio.items():
            for i in np.flatnonzero(values > 0):
                g.add_metric([*labels[i], window, feature], float(values[i]))
    out.extend(fams.values())

    # ----- latest values and freshness
    out.append(
        per_model(
            "fleetmon_model_last_prediction_timestamp_seconds",
            "Unix time (made_at) of the model's newest accepted prediction; time() minus this is its age.",
            p.store.last_made_at,
        )
    )
    out.append(
        per_model(
            "fleetmon_model_latest_prediction_joules",
            "Forecaster prediction for the newest target time it predicted (joules).",
            q.latest_prediction * J_PER_KWH,
            fc,
        )
    )
    out.append(
        per_model(
            "fleetmon_model_latest_prediction_target_timestamp_seconds",
            "Newest target time the model has a prediction for (Unix time).",
            q.latest_target,
        )
    )
    out.append(
        per_model(
            "fleetmon_model_latest_anomaly_score",
            "Anomaly detector score for the newest target time it scored (0..1).",
            q.latest_score,
            an,
        )
    )
    out.append(
        per_model(
            "fleetmon_model_latest_actual_joules",
            "Newest known actual consumption of the model's building and energy type (joules).",
            q.latest_actual * J_PER_KWH,
        )
    )
    out.append(
        per_model(
            "fleetmon_model_latest_actual_target_timestamp_seconds",
            "Target time of the newest known actual of the model's building and energy type (Unix time).",
            q.latest_actual_target,
        )
    )
    out.append(
        per_model(
            "fleetmon_model_latest_matched_prediction_joules",
            "Forecaster prediction for the target time of the newest actual (newest made_at), so it can be "
            "drawn against fleetmon_model_latest_actual_joules (joules).",
            q.latest_matched_prediction * J_PER_KWH,
            fc,
        )
    )
    out.extend(serving_families(p))
    c = CounterMetricFamily(
        "fleetmon_model_predictions",
        "Prediction records accepted for the model (kept across restarts in the state file).",
        labels=FLEET,
    )
    for k, v in enumerate(p.store.predictions_total):
        c.add_metric(labels[k], float(v))
    out.append(c)
    c = CounterMetricFamily(
        "fleetmon_model_shadow_predictions",
        "Shadow prediction records accepted for the model: alias set and not champion (a challenger version "
        "run beside the champion); they feed only the version benchmark, not the model's other series.",
        labels=FLEET,
    )
    for k, v in enumerate(p.store.shadow_total):
        c.add_metric(labels[k], float(v))
    out.append(c)
    c = CounterMetricFamily(
        "fleetmon_building_actuals",
        "Actual records accepted for the building and energy type.",
        labels=BE,
    )
    for k, be in enumerate(fleet.be):
        c.add_metric(list(be), float(p.store.actuals_total[k]))
    out.append(c)
    g = GaugeMetricFamily(
        "fleetmon_outputs_schema_mismatch",
        "Feature columns missing (kind=missing) or not configured (kind=unexpected) in the model's newest "
        "prediction rows; non-zero means the model's input schema changed (those rows are rejected).",
        labels=[*FLEET, "kind"],
    )
    for k in range(len(labels)):
        g.add_metric([*labels[k], "missing"], float(p.store.schema_missing[k]))
        g.add_metric([*labels[k], "unexpected"], float(p.store.schema_unexpected[k]))
    out.append(g)
    return out


def estimation_families(p: OutputsPipeline) -> list[Metric]:
    """The forecasters' error before their actuals arrive (fleetmon.outputs.estimation), and how good the
    estimates turned out once the actuals came."""
    est = p.estimation
    if est is None:
        return []
    fleet = p.fleet
    labels = fleet.model_labels
    g = GaugeMetricFamily(
        "fleetmon_model_estimated_mae_joules",
        "Forecaster MAE over the window's matured predictions: realised where the actual is known, estimated "
        "where it is still pending (Direct Loss Estimation); equals fleetmon_model_mae_joules when nothing is "
        "pending. Cached; recomputed every outputs poll.",
        labels=[*FLEET, "window"],
    )
    for window, e in est.estimates.items():
        for i in np.flatnonzero((e.rows > 0) & np.isfinite(e.estimated_mae)):
            g.add_metric([*labels[i], window], float(e.estimated_mae[i]) * J_PER_KWH)
    fitted = GaugeMetricFamily(
        "fleetmon_outputs_estimation_models_fitted",
        "Forecasters with a loss model to estimate their pending errors from (enough matured rows with an "
        "actual at the last fit).",
        value=float(np.count_nonzero(est.estimator.fitted)),
    )
    energies = sorted({m.energy for m in fleet.models})
    energy = np.array([m.energy for m in fleet.models])
    checked = CounterMetricFamily(
        "fleetmon_outputs_estimation_windows_checked",
        "Forecaster windows (the shortest of outputs.windows) whose estimated MAE, made while actuals were "
        "pending, was checked against the realised MAE once they were in (outputs.estimation.settle_seconds "
        "later), by energy type, since the exporter started.",
        labels=["energy"],
    )
    ratio = GaugeMetricFamily(
        "fleetmon_outputs_estimation_error_ratio",
        "How far the MAE of those windows, as known when they were pending, was from their realised MAE: "
        "the sum of |estimate - realised| over the sum of realised, by energy type and estimator: dle (the "
        "estimate, Direct Loss Estimation), known (the MAE of the rows whose actuals were in, what one sees "
        "without an estimate), naive (the model's reference MAE).",
        labels=["energy", "estimator"],
    )
    for en in energies:
        sel = energy == en
        checked.add_metric([en], float(est.checked[sel].sum()))
        realised = float(est.realised[sel].sum())
        if realised > 0:
            for name, dev in est.deviation.items():
                ratio.add_metric([en, name], float(dev[sel].sum()) / realised)
    errors = CounterMetricFamily(
        "fleetmon_outputs_estimation_errors",
        "Outputs polls whose error estimation failed (the quality was still computed; the last estimates "
        "stand); the exporter's log says why.",
        value=float(p.estimation_errors),
    )
    return [g, fitted, checked, ratio, errors]


def serving_families(p: OutputsPipeline) -> list[Metric]:
    """The version each model serves (``OutputStore.serving_version``): one series per model whose served
    rows carry a ``model_version``, none for the others. The registry side (is it a registered version, its
    run and training data) is joined in Prometheus (prometheus/rules/recording.yml), not here."""
    labels = p.fleet.model_labels
    store = p.store
    info = GaugeMetricFamily(
        "fleetmon_model_serving_version_info",
        "MLflow model version (model_version) of the model's newest served prediction record that carries "
        "one (value 1); shadow rows (alias set and not champion) do not count. Kept across restarts.",
        labels=[*FLEET, "version"],
    )
    number = GaugeMetricFamily(
        "fleetmon_model_serving_version",
        "The same version as a number, for comparisons with the registry's version ranges "
        "(fleetmon_mlflow_model_version_range_first/_last).",
        labels=FLEET,
    )
    for i in np.flatnonzero(store.serving_version > 0):
        v = int(store.serving_version[i])
        info.add_metric([*labels[i], str(v)], 1.0)
        number.add_metric(labels[i], float(v))
    return [info, number]


def versions_families(p: OutputsPipeline, v: Versions) -> list[Metric]:
    """Per model version and per challenger (``fleetmon.outputs.versions``); only versions of the window."""
    labels = p.fleet.model_labels
    aliases = ["", *p.cfg.versions.aliases]
    vl = [*FLEET, "version", "alias"]
    cached = (
        " Over the matured targets of outputs.versions.window_seconds. Cached; recomputed every outputs poll."
    )
    on_common = (
        " on the targets every version of the model seen in the window predicted (paired targets)" + cached
    )
    paired = GaugeMetricFamily(
        "fleetmon_model_version_paired_targets",
        "Matured targets with an actual that every version of the model seen in the window predicted (each "
        "version's newest prediction counts)." + cached,
        labels=vl,
    )
    fams = [
        (
            GaugeMetricFamily(
                "fleetmon_model_version_mae_joules",
                "Mean absolute error of the version" + on_common,
                labels=vl,
            ),
            "mae",
            J_PER_KWH,
        ),
        (
            GaugeMetricFamily(
                "fleetmon_model_version_rmse_joules",
                "Root mean squared error of the version" + on_common,
                labels=vl,
            ),
            "rmse",
            J_PER_KWH,
        ),
        (
            GaugeMetricFamily(
                "fleetmon_model_version_bias_joules",
                "Mean error, prediction minus actual, of the version" + on_common,
                labels=vl,
            ),
            "bias",
            J_PER_KWH,
        ),
        (
            GaugeMetricFamily(
                "fleetmon_model_version_mape_ratio",
                "Mean absolute percentage error (ratio) of the version, zero actuals skipped," + on_common,
                labels=vl,
            ),
            "mape",
            1.0,
        ),
    ]
    on_common_detector = (
        " (anomaly detectors; anomaly_flag of the version's newest score per target) on the targets every "
        "version of the model seen in the window scored"
    )
    on_labelled = on_common_detector + " whose actual carries an anomaly_label." + cached
    fams += [
        (
            GaugeMetricFamily(
                "fleetmon_model_version_flag_rate_ratio",
                "Share of targets the version flagged as anomalous" + on_common_detector + "." + cached,
                labels=vl,
            ),
            "flag_rate",
            1.0,
        ),
        (
            GaugeMetricFamily(
                "fleetmon_model_version_labelled_targets",
                "Targets with an anomaly_label" + on_common_detector + "." + cached,
                labels=vl,
            ),
            "labelled",
            1.0,
        ),
        (
            GaugeMetricFamily(
                "fleetmon_model_version_precision_ratio",
                "Precision of the version's anomaly flags against the labels" + on_labelled,
                labels=vl,
            ),
            "precision",
            1.0,
        ),
        (
            GaugeMetricFamily(
                "fleetmon_model_version_recall_ratio",
                "Recall of the version's anomaly flags against the labels" + on_labelled,
                labels=vl,
            ),
            "recall",
            1.0,
        ),
        (
            GaugeMetricFamily(
                "fleetmon_model_version_f1_ratio",
                "F1 score of the version's anomaly flags against the labels" + on_labelled,
                labels=vl,
            ),
            "f1",
            1.0,
        ),
    ]
    vs = v.versions
    if len(vs):
        models = vs["model"].to_numpy(dtype=np.int64)
        vers = vs["version"].to_numpy(dtype=np.int64)
        codes = vs["alias"].to_numpy(dtype=np.int64)
        n = vs["paired"].to_numpy(dtype=np.float64)
        for i in range(len(vs)):
            key = [*labels[models[i]], str(vers[i]), aliases[codes[i]]]
            paired.add_metric(key, float(n[i]))
            for g, col, scale in fams:
                x = float(vs[col].iat[i])
                if not np.isnan(x):
                    g.add_metric(key, x * scale)
    cl = [*FLEET, "champion_version", "challenger_version"]
    pvalue = GaugeMetricFamily(
        "fleetmon_model_challenger_dm_pvalue",
        "Two-sided p-value of the Diebold-Mariano test (HAC variance, Harvey-Leybourne-Newbold correction, "
        "Student t) of champion against challenger on the targets both predicted (outputs.versions.loss)."
        + cached,
        labels=cl,
    )
    mcnemar = GaugeMetricFamily(
        "fleetmon_model_challenger_mcnemar_pvalue",
        "Anomaly detectors: two-sided p-value of McNemar's exact test of champion against challenger on the "
        "paired correctness of the labelled targets both scored." + cached,
        labels=cl,
    )
    flag_ratio = GaugeMetricFamily(
        "fleetmon_model_challenger_flag_rate_ratio",
        "Anomaly detectors: the challenger's flag rate over the champion's, on the targets both scored "
        "(labelled or not)." + cached,
        labels=cl,
    )
    improvement = GaugeMetricFamily(
        "fleetmon_model_challenger_loss_improvement_ratio",
        "Mean loss of the champion minus the challenger's, over the champion's, on the targets both predicted "
        "(0.1 = the challenger's loss is 10% lower; negative = worse). Anomaly detectors: the loss is 1 - F1 "
        "on the labelled targets." + cached,
        labels=cl,
    )
    outperforms = GaugeMetricFamily(
        "fleetmon_model_challenger_outperforms",
        "1 if the challenger beats the champion: loss improvement above outputs.versions.margin on at least "
        "min_targets paired targets with a Diebold-Mariano (anomaly detectors: McNemar, on labelled targets) "
        "p-value below alpha; else 0." + cached,
        labels=cl,
    )
    ch = v.challengers
    if len(ch):
        models = ch["model"].to_numpy(dtype=np.int64)
        champ = ch["champion"].to_numpy(dtype=np.int64)
        chall = ch["challenger"].to_numpy(dtype=np.int64)
        p_ = ch["pvalue"].to_numpy(dtype=np.float64)
        imp = ch["improvement"].to_numpy(dtype=np.float64)
        outp = ch["outperforms"].to_numpy(dtype=np.float64)
        test = ch["test"].to_numpy()
        fr = ch["flag_rate_ratio"].to_numpy(dtype=np.float64)
        for i in range(len(ch)):
            key = [*labels[models[i]], str(champ[i]), str(chall[i])]
            if not np.isnan(p_[i]):
                (mcnemar if test[i] == "mcnemar" else pvalue).add_metric(key, float(p_[i]))
            if np.isfinite(fr[i]):
                flag_ratio.add_metric(key, float(fr[i]))
            if np.isfinite(imp[i]):
                improvement.add_metric(key, float(imp[i]))
            outperforms.add_metric(key, float(outp[i]))
    return [paired, *(g for g, _, _ in fams), pvalue, mcnemar, flag_ratio, improvement, outperforms]


def ingest_families(p: OutputsPipeline) -> list[Metric]:
    out: list[Metric] = []
    c = CounterMetricFamily(
        "fleetmon_outputs_rows_rejected",
        "Rows rejected by reason and kind (predictions/actuals), each kept in the quarantine file; fleet "
        "labels are set only when the row's keys are valid fleet keys.",
        labels=["reason", "kind", *FLEET],
    )
    for key, n in sorted(p.rejected.items()):
        c.add_metric(list(key), float(n))
    out.append(c)
    up = GaugeMetricFamily(
        "fleetmon_outputs_source_up",
        "1 if the outputs source was read without error on the last poll.",
        labels=["source"],
    )
    errors = CounterMetricFamily(
        "fleetmon_outputs_source_errors",
        "Failed reads of the source (unreadable file, SQL error).",
        labels=["source"],
    )
    files = CounterMetricFamily(
        "fleetmon_outputs_files_read", "Files read from the source (each once).", labels=["source"]
    )
    rows = CounterMetricFamily(
        "fleetmon_outputs_rows_read", "Rows read from the source, accepted or rejected.", labels=["source"]
    )
    other_shard = CounterMetricFamily(
        "fleetmon_outputs_rows_other_shard",
        "Rows of buildings another shard owns, left out unread (not in rows_read; 0 unless sharded).",
        labels=["source"],
    )
    info = GaugeMetricFamily(
        "fleetmon_outputs_source_info",
        "Configured outputs sources.",
        labels=["source", "kind", "format", "location"],
    )
    for name, kind, src in p.sources:
        up.add_metric([name], p.source_up[name])
        errors.add_metric([name], float(p.source_errors[name]))
        files.add_metric([name], float(p.files_read[name]))
        rows.add_metric([name], float(p.rows_read[name]))
        other_shard.add_metric([name], float(p.rows_other_shard[name]))
        if hasattr(src, "glob"):
            info.add_metric([name, kind, src.format, src.glob], 1.0)  # type: ignore[union-attr]
        else:
            info.add_metric([name, kind, "sql", safe_url(src.url)], 1.0)
    out += [up, errors, files, rows, other_shard, info]
    sql_errors = CounterMetricFamily(
        "fleetmon_outputs_sql_read_errors",
        "Failed reads of the SQL source by reason: connect (no connection), connection_lost (during the "
        "query), timeout (outputs.sql[].statement_timeout_seconds), query (refused by the database), result "
        "(unusable: no time column, mixed types); each also counts in fleetmon_outputs_source_errors_total.",
        labels=["source", "reason"],
    )
    for (name, reason), n in sorted(p.sql_errors.items()):
        sql_errors.add_metric([name, reason], float(n))
    late = CounterMetricFamily(
        "fleetmon_outputs_sql_late_rows",
        "Rows of the SQL source counted although their time_column was not newer than the largest value read "
        "before: committed late, found by the overlap (outputs.sql[].overlap_seconds).",
        labels=["source"],
    )
    for name, n in sorted(p.late_rows.items()):
        late.add_metric([name], float(n))
    out += [sql_errors, late]
    n_pred, n_act = p.store.rows()
    g = GaugeMetricFamily(
        "fleetmon_outputs_rows_retained", "Rows kept in memory for windows and drift.", labels=["kind"]
    )
    g.add_metric(["predictions"], float(n_pred))
    g.add_metric(["actuals"], float(n_act))
    out.append(g)
    out.append(
        CounterMetricFamily(
            "fleetmon_outputs_quarantine_write_errors",
            "Failed writes to the quarantine directory (the rows stay counted as rejected).",
            value=float(p.quarantine.write_errors),
        )
    )
    out.append(state_family(p))
    return out


def state_family(p: OutputsPipeline) -> Metric:
    c = CounterMetricFamily(
        "fleetmon_outputs_state_errors",
        "Problems with the state file (outputs.state_dir/state.json) by reason: corrupt (damaged: moved aside, "
        "the previous generation used), unreadable (started afresh), save (could not be written).",
        labels=["reason"],
    )
    for reason, n in sorted(p.state.errors.items()):
        c.add_metric([reason], float(n))
    return c


def building_families(cfg: Config) -> list[Metric]:
    info = GaugeMetricFamily(
        "fleetmon_building_info",
        "Building metadata from the fleet config (value 1).",
        labels=["customer", "building", "building_type", "weather_station", "latitude", "longitude"],
    )
    vol = GaugeMetricFamily(
        "fleetmon_building_volume_cubic_meters",
        "Building volume from the fleet config.",
        labels=["customer", "building"],
    )
    for c, b in cfg.fleet.buildings(cfg.shard):
        info.add_metric(
            [c.id, b.id, b.building_type, b.weather_station, _fmt(b.latitude), _fmt(b.longitude)], 1.0
        )
        vol.add_metric([c.id, b.id], b.volume_m3)
    return [info, vol]


# ------------------------------------------------------------------------------------------ collectors
@register("outputs", help="model outputs: quality, freshness, volume, data quality, bad input")
class OutputsCollector:
    """Serves its series pre-rendered (``prerendered()``, see ``fleetmon.outputs.exposition``): they are
    encoded once per poll, not once per scrape."""

    def __init__(self, cfg: Config, pipeline: OutputsPipeline | None = None) -> None:
        self.cfg = cfg
        self.pipeline = pipeline or pipeline_for(cfg)
        self._static = building_families(cfg)
        # Before the first poll: building metadata and the state file's health. No counters yet: those
        # restored from the state file may be a generation behind (see fleetmon.outputs.state) until the
        # first poll has read again what was read since.
        self._rendered = render_families([*self._static, state_family(self.pipeline)])
        self._refreshed_at: float | None = None  # pipeline clock of the last quality computation

    def poll(self) -> None:
        p = self.pipeline
        generation = p.generation
        p.ingest()
        now = p.clock()
        if (
            p.generation == generation
            and self._refreshed_at is not None
            and now - self._refreshed_at < self.cfg.outputs.refresh_seconds
        ):
            return  # nothing new: the series of the last computation stand (a no-change poll costs a glob)
        self._refreshed_at = now
        q = p.refresh_quality()
        versions = versions_families(p, p.versions) if p.versions is not None else []
        self._rendered = render_families(
            self._static + quality_families(p, q) + estimation_families(p) + versions + ingest_families(p)
        )

    def prerendered(self) -> Rendered:
        return self._rendered

    def collect(self) -> Iterable[Metric]:
        return ()

    def close(self) -> None:
        _release(self.pipeline)


@register("drift", help="data drift per model (Evidently's tests), computed in the background")
class DriftCollector:
    def __init__(self, cfg: Config, pipeline: OutputsPipeline | None = None, backend: Any = None) -> None:
        self.cfg = cfg
        self.pipeline = pipeline or pipeline_for(cfg)
        self.drift = cfg.outputs.drift
        self._backend = backend
        self._references = (
            ReferenceFiles(
                self.drift.reference_path or "",
                list(cfg.outputs.features),
                cfg.outputs.state_dir / "references",
                tracking_uri=cfg.mlflow.tracking_uri,
            )
            if self.drift.reference == "file"
            else None
        )
        self.results: list[Any] = []
        self.multivariate: list[MultivariateResult] = []
        # fits of fixed references (reference: file) kept across cycles; a rolling one changes every cycle
        self._multivariate_fits = FitCache()
        self.jobset: JobSet | None = None
        self._rendered: Any = None
        self._last_success: float | None = None
        self._duration = 0.0

    @property
    def backend(self) -> Any:
        if self._backend is None:
            from fleetmon.drift import get_backend

            self._backend = get_backend(self.drift.engine)
        return self._backend

    def poll(self) -> None:
        if not self.drift.enabled:
            return
        start = time.perf_counter()
        now = self.pipeline.clock()
        snap = self.pipeline.store.snapshot(now)
        jobset = build_jobs(
            snap, self.pipeline.fleet, self.pipeline.features, self.drift, now, self._references
        )
        results = self.backend.run(jobset.jobs)
        mv_cfg = self.drift.multivariate
        multivariate = (
            reconstruction_drift(
                jobset.jobs,
                explained_variance=mv_cfg.explained_variance,
                std_multiplier=mv_cfg.threshold_std,
                cache=self._multivariate_fits if self.drift.reference == "file" else None,
            )
            if mv_cfg.enabled
            else []
        )
        rendered = render_drift(results, multivariate=multivariate)
        self._duration = time.perf_counter() - start
        self.results, self.jobset, self._last_success = results, jobset, time.time()
        self.multivariate = multivariate
        self._rendered = rendered

    def prerendered(self) -> Any:
        """The drift series of the last successful run, rendered once (``fleetmon.drift.render``)."""
        return self._rendered

    def _own_families(self) -> list[Metric]:
        out: list[Metric] = []
        last = GaugeMetricFamily(
            "fleetmon_drift_last_success_timestamp_seconds",
            "Unix time of the last successful drift run; drift series are cached from it.",
        )
        if self._last_success is not None:
            last.add_metric([], self._last_success)
        out.append(last)
        out.append(
            GaugeMetricFamily(
                "fleetmon_drift_run_duration_seconds",
                "Duration of the last drift run (jobs + backend).",
                value=self._duration,
            )
        )
        jobs = GaugeMetricFamily(
            "fleetmon_drift_models", "Models with a drift job in the last run.", value=len(self.results)
        )
        out.append(jobs)
        skipped = GaugeMetricFamily(
            "fleetmon_drift_models_skipped",
            "Models without a drift job in the last run, by reason (no_reference_rows, reference_unavailable).",
            labels=["reason"],
        )
        for reason in ("no_reference_rows", "reference_unavailable"):
            skipped.add_metric([reason], float(self.jobset.skipped[reason] if self.jobset else 0))
        out.append(skipped)
        return out

    def collect(self) -> Iterable[Metric]:
        return self._own_families()

    def close(self) -> None:
        close = getattr(self._backend, "close", None)
        if close is not None:
            close()
        _release(self.pipeline)
