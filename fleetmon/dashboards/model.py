"""Model detail: drift per feature, quality over time, freshness and volume, data quality, versions and
aliases, champion against challengers on live actuals, lineage (the serving version, its run, training data
and code version), training history, and a link to the Evidently HTML report of this building and model."""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models.dashboard import DynamicConfigValue, ValueMap, ValueMappingResult

from fleetmon.dashboards.common import (
    FLEET_LABELS,
    KWH,
    SHORT_WINDOW,
    bar_panel,
    column_link,
    fleet_variables,
    link,
    m,
    model_state,
    new_dashboard,
    q,
    row,
    sel,
    stat_panel,
    state_mappings,
    table_panel,
    text_variable,
    thresholds,
    ts,
    up_links,
)

VARS = FLEET_LABELS
# `fleetmon drift-report --building B --energy E --model M` writes drift-B-E-M.html by default; serve the
# directory you write them to (docs/dashboards.md) and point `reports_url` at it.
REPORT_URL = "${reports_url}/drift-${building}-${energy}-${model}.html"
# MLflow's UI opens a run by its id alone (its route /runs/:runUuid); `mlflow_url` is where the UI is served.
MLFLOW_RUN_URL = "${mlflow_url}/#/runs/${__data.fields.run_id}"


def value_texts(texts: dict[int, tuple[str, str]]) -> list[ValueMap]:
    """Value mappings: value -> (text, colour)."""
    return [
        ValueMap(
            options={
                str(v): ValueMappingResult(text=text, color=colour, index=i)
                for i, (v, (text, colour)) in enumerate(texts.items())
            }
        )
    ]


def build() -> dashboard.Dashboard:
    s = sel(VARS)
    b = sel(("customer", "building", "energy"))  # building-level series (actuals) carry no model label
    d = new_dashboard(
        "model",
        "fleetmon / Model detail",
        "One model of one building: drift per input feature, quality over time, freshness and volume, data "
        "quality, registry versions and aliases, lineage (serving version, MLflow run, training data, code "
        "version), training history. The Evidently report link opens the full HTML drift report "
        "(fleetmon drift-report).",
    )
    d = fleet_variables(d, VARS)
    d = text_variable(
        d,
        "reports_url",
        "Drift reports URL",
        "http://127.0.0.1:8000",
        "where the HTML drift reports written by `fleetmon drift-report` are served (docs/dashboards.md)",
    )
    d = text_variable(
        d,
        "mlflow_url",
        "MLflow URL",
        "http://127.0.0.1:5000",
        "where MLflow's UI is served (the demo's tracking server by default): the Lineage table links each "
        "run there",
    )
    d = up_links(
        d,
        [
            ("Fleet overview", "fleet", ()),
            ("Customer ${customer}", "customer", ("customer",)),
            ("Building ${building}", "building", ("customer", "building")),
        ],
    )
    d = d.link(link("Evidently drift report", REPORT_URL, target_blank=True).icon("doc"))
    report: dict[str, Any] = {
        "title": "Evidently drift report (${building} ${energy} ${model})",
        "url": REPORT_URL,
        "targetBlank": True,
    }

    d = d.with_row(row("Summary"))
    d = d.with_panel(
        stat_panel(
            "State",
            [q(model_state(s), "state", instant=True)],
            w=4,
            mappings=state_mappings(),
            steps=thresholds((None, "green"), (1, "yellow"), (2, "orange"), (4, "red")),
            description="worst state (thresholds: the dashboard's state variables)",
        )
    )
    d = d.with_panel(
        stat_panel(
            "Drift share",
            [q(m("fleetmon_drift_share", s), "drift share", instant=True)],
            w=4,
            unit="percentunit",
            steps=thresholds((None, "green"), (0.5, "orange")),
            links=[report],
            description="share of drifted input columns in the last drift cycle",
        )
    )
    d = d.with_panel(
        stat_panel(
            "Prediction age",
            [q(f"time() - {m('fleetmon_model_last_prediction_timestamp_seconds', s)}", "age", instant=True)],
            w=4,
            unit="s",
            description="seconds since the newest accepted prediction was made",
        )
    )
    d = d.with_panel(
        stat_panel(
            f"Coverage {SHORT_WINDOW}",
            [q(m("fleetmon_model_actual_coverage_ratio", s, window=SHORT_WINDOW), "coverage", instant=True)],
            w=4,
            unit="percentunit",
            description="share of matured predictions with an actual",
        )
    )
    d = d.with_panel(
        stat_panel(
            "Champion version",
            [q(m("fleetmon_mlflow_model_alias_version", s, alias="champion"), "champion", instant=True)],
            w=4,
            description="registered model version the `champion` alias points to",
        )
    )
    d = d.with_panel(
        stat_panel(
            "Last successful training",
            [
                q(
                    f"time() - {m('fleetmon_mlflow_training_last_success_timestamp_seconds', s)}",
                    "age",
                    instant=True,
                )
            ],
            w=4,
            unit="s",
            description="seconds since the newest finished MLflow run ended",
        )
    )

    d = d.with_row(row("Drift"))
    d = d.with_panel(
        ts(
            "Drift score per feature",
            [
                q(
                    f"max by (column, stattest) ({m('fleetmon_drift_column_score', s)})",
                    "{{column}} ({{stattest}})",
                )
            ],
            w=12,
            h=9,
            description="Evidently's score per column: p-value for ks / chisquare / z (drift when small), "
            "distance for wasserstein / jensenshannon (drift when large)",
            panel_links=[link(report["title"], report["url"], target_blank=True)],
        )
    )
    d = d.with_panel(
        table_panel(
            "Features now",
            [
                q(
                    f"max by (column, stattest) ({m('fleetmon_drift_column_score', s)})",
                    instant=True,
                    table_format=True,
                ),
                q(
                    f"max by (column, stattest) ({m('fleetmon_drift_column_drifted', s)})",
                    instant=True,
                    table_format=True,
                ),
            ],
            w=12,
            h=9,
            description="score and verdict per column in the last drift cycle",
            rename={"Value #A": "score", "Value #B": "drifted"},
            sort_by="drifted",
        )
    )
    d = d.with_panel(
        ts(
            "Drift share and dataset drift",
            [
                q(m("fleetmon_drift_share", s), "drift share"),
                q(m("fleetmon_drift_dataset_drifted", s), "dataset drifted"),
            ],
            w=12,
            h=7,
            min_val=0,
            max_val=1,
            panel_links=[link(report["title"], report["url"], target_blank=True)],
        )
    )
    d = d.with_panel(
        ts(
            "Multivariate drift (all features together)",
            [
                q(m("fleetmon_drift_multivariate_error", s), "reconstruction error"),
                q(m("fleetmon_drift_multivariate_upper_threshold", s), "upper threshold"),
                q(m("fleetmon_drift_multivariate_lower_threshold", s), "lower threshold"),
            ],
            w=12,
            h=7,
            description="NannyML's data-reconstruction drift: PCA fitted on the reference, the current window's "
            "mean reconstruction error against the reference chunks' band (mean +- 3 sd); outside the band = "
            "the features' joint distribution changed, e.g. a broken correlation no per-feature test sees",
        )
    )
    d = d.with_panel(
        ts(
            "Drift windows (rows)",
            [
                q(m("fleetmon_drift_reference_rows", s), "reference"),
                q(m("fleetmon_drift_current_rows", s), "current"),
                q(
                    f"count({m('fleetmon_drift_column_computable', s)} == 0) or vector(0)",
                    "columns not computable",
                ),
            ],
            w=12,
            h=7,
            description="rows in the reference and current windows of each drift cycle, and columns whose "
            "drift could not be computed",
        )
    )

    d = d.with_row(row("Quality"))
    err = {metric: m(f"fleetmon_model_{metric}_joules", s) for metric in ("mae", "rmse", "bias")}
    d = d.with_panel(
        ts(
            "Error (kWh): MAE, RMSE, bias",
            [
                q(f"{err['mae']} / {KWH}", "MAE {{window}}"),
                q(f"{err['rmse']} / {KWH}", "RMSE {{window}}"),
                q(f"{err['bias']} / {KWH}", "bias {{window}}"),
            ],
            w=12,
            h=8,
            unit="kwatth",
            description="forecasters, over the matured predictions with an actual in each window; bias > 0 "
            "= over-forecast",
        )
    )
    d = d.with_panel(
        ts(
            "Error before the actuals: estimated against realised MAE (kWh)",
            [
                q(f"{m('fleetmon_model_estimated_mae_joules', s, window=SHORT_WINDOW)} / {KWH}", "estimated"),
                q(
                    f"{m('fleetmon_model_mae_joules', s, window=SHORT_WINDOW)} / {KWH}",
                    "realised (known actuals)",
                ),
            ],
            w=12,
            h=8,
            unit="kwatth",
            description=f"forecasters, over {SHORT_WINDOW}: the realised MAE covers only the hours whose actuals "
            "have arrived; the estimate adds the pending hours' errors as a loss model learnt from the "
            "model's past predicts them (Direct Loss Estimation). The realised line catches up as the "
            "actuals arrive",
        )
    )
    d = d.with_panel(
        stat_panel(
            "How good the estimates were",
            [
                q(
                    'max by (estimator) (fleetmon_outputs_estimation_error_ratio{energy=~"$energy"})',
                    "{{estimator}}",
                    instant=True,
                )
            ],
            w=12,
            h=8,
            unit="percentunit",
            description="all forecasters of this energy type, each day's MAE as known while actuals were "
            "pending against the day's realised MAE once they were in: sum of |estimate - realised| over the "
            "realised; dle = the estimate, known = the MAE of the hours already in, naive = the model's usual "
            "(reference) MAE",
        )
    )
    d = d.with_panel(
        ts(
            "MAPE",
            [q(m("fleetmon_model_mape_ratio", s), "MAPE {{window}}")],
            w=6,
            h=8,
            unit="percentunit",
            description="forecasters: mean |error| / |actual|",
        )
    )
    d = d.with_panel(
        ts(
            "Actual coverage",
            [q(m("fleetmon_model_actual_coverage_ratio", s), "{{window}}")],
            w=6,
            h=8,
            unit="percentunit",
            min_val=0,
            max_val=1,
            description="share of matured predictions that have an actual",
        )
    )
    d = d.with_panel(
        ts(
            "Anomalies flagged",
            [q(m("fleetmon_model_anomaly_ratio", s), "{{window}}")],
            w=12,
            h=7,
            unit="percentunit",
            description="anomaly detectors: share of scored rows flagged anomalous",
        )
    )
    d = d.with_panel(
        ts(
            "Anomaly score quantiles",
            [q(m("fleetmon_model_anomaly_score_quantile", s, window=SHORT_WINDOW), "q{{q}}")],
            w=12,
            h=7,
            min_val=0,
            max_val=1,
            description=f"anomaly detectors: score quantiles over {SHORT_WINDOW}",
        )
    )

    d = d.with_row(row("Freshness and volume"))
    d = d.with_panel(
        ts(
            "Seconds since the newest prediction",
            [q(f"time() - {m('fleetmon_model_last_prediction_timestamp_seconds', s)}", "prediction age")],
            w=8,
            unit="s",
        )
    )
    d = d.with_panel(
        ts(
            "Predictions and actuals per hour",
            [
                q(
                    f"rate({m('fleetmon_model_predictions_total', s)}[$__rate_interval]) * 3600",
                    "predictions",
                ),
                q(f"rate({m('fleetmon_building_actuals_total', b)}[$__rate_interval]) * 3600", "actuals"),
            ],
            w=8,
            description="records accepted per hour of wall time",
        )
    )
    d = d.with_panel(
        ts(
            "Matured predictions",
            [
                q(m("fleetmon_model_matured_predictions", s), "matured {{window}}"),
                q(m("fleetmon_model_matured_predictions_with_actual", s), "with actual {{window}}"),
            ],
            w=8,
            description="predictions whose target time has passed, per window",
        )
    )

    d = d.with_row(row("Data quality"))
    d = d.with_panel(
        ts(
            "Missing feature values",
            [q(m("fleetmon_model_feature_missing_ratio", s, window=SHORT_WINDOW), "{{feature}}")],
            w=8,
            unit="percentunit",
            description=f"share of the {SHORT_WINDOW} rows whose feature is null / NaN; no data: none missing",
        )
    )
    d = d.with_panel(
        stat_panel(
            "Schema mismatch",
            [q(m("fleetmon_outputs_schema_mismatch", s), "{{kind}}", instant=True)],
            w=8,
            h=8,
            steps=thresholds((None, "green"), (1, "red")),
            description="feature columns missing / unexpected in the newest prediction rows",
        )
    )
    d = d.with_panel(
        bar_panel(
            "Rejected rows in range",
            [
                q(
                    f"sum by (reason) (increase({m('fleetmon_outputs_rows_rejected_total', s)}[$__range]))"
                    ' or on () label_replace(vector(0), "reason", "none", "", "")',
                    "{{reason}}",
                    instant=True,
                )
            ],
            w=8,
            steps=thresholds((None, "green"), (1, "red")),
            description="this model's rows rejected (and quarantined) by reason in the time range",
        )
    )

    d = d.with_row(row("Versions and aliases"))
    d = d.with_panel(
        table_panel(
            "Registry versions",
            [
                q(
                    "max by (version, alias, stage, flavor, run_id, params_digest) "
                    f"({m('fleetmon_mlflow_model_version_info', s)})",
                    instant=True,
                    table_format=True,
                )
            ],
            w=12,
            h=7,
            description="versions an alias points to (`latest` = newest version); params_digest identifies "
            "the training run's parameters",
            hide=("Time", "Value"),
            sort_by="version",
        )
    )
    d = d.with_panel(
        ts(
            "Alias versions",
            [
                q(m("fleetmon_mlflow_model_alias_version", s), "{{alias}}"),
                q(m("fleetmon_mlflow_model_versions", s), "versions"),
            ],
            w=12,
            h=7,
            description="which version each alias points to, over time (a step = a promotion)",
        )
    )

    # Champion against challengers on the same matured targets (outputs.versions, docs/metrics.md "Model
    # versions"): only models whose predictions carry a second version (shadow rows) have these series.
    d = d.with_row(row("Versions on live actuals"))
    ver = {metric: m(f"fleetmon_model_version_{metric}_joules", s) for metric in ("mae", "rmse")}
    d = d.with_panel(
        ts(
            "Error by version (kWh)",
            [
                q(f"{ver['mae']} / {KWH}", "MAE v{{version}} {{alias}}"),
                q(f"{ver['rmse']} / {KWH}", "RMSE v{{version}} {{alias}}"),
            ],
            w=12,
            h=8,
            unit="kwatth",
            description="each version's MAE and RMSE on the targets every version of the model predicted "
            "(outputs.versions.window_seconds, matured, with an actual); empty for a model with one version",
        )
    )
    verdict = "max by (champion_version, challenger_version) "
    d = d.with_panel(
        table_panel(
            "Challenger verdict",
            [
                q(
                    verdict + f"({m('fleetmon_model_challenger_outperforms', s)})",
                    instant=True,
                    table_format=True,
                ),
                q(
                    verdict + f"({m('fleetmon_model_challenger_loss_improvement_ratio', s)})",
                    instant=True,
                    table_format=True,
                ),
                q(
                    verdict + f"({m('fleetmon_model_challenger_dm_pvalue', s)})",
                    instant=True,
                    table_format=True,
                ),
            ],
            w=12,
            h=8,
            description="each challenger against the champion on the targets both predicted: outperforms (1 = "
            "loss lower by more than the margin, enough targets, Diebold-Mariano p below alpha; what "
            "ChallengerOutperformsChampion alerts on), the loss improvement (negative = worse) and the p-value",
            rename={
                "champion_version": "champion",
                "challenger_version": "challenger",
                "Value #A": "outperforms",
                "Value #B": "loss improvement",
                "Value #C": "DM p-value",
            },
            units={"Value #B": "percentunit"},
            sort_by="challenger",
        )
    )

    # Lineage (docs/metrics.md): prediction -> the version serving it (outputs exporter) -> its MLflow run ->
    # the run's training data and code version (MLflow exporter, versions an alias points to and the newest).
    d = d.with_row(row("Lineage"))
    d = d.with_panel(
        stat_panel(
            "Serving version",
            [q(f"max({m('fleetmon_model_serving_version', s)}) or on () vector(0)", "serving", instant=True)],
            w=4,
            h=7,
            mappings=value_texts({0: ("none in the records", "text")}),
            steps=thresholds((None, "blue")),
            description="model_version of the model's newest served prediction record (shadow rows aside); "
            "'none in the records' when its records carry no model_version",
        )
    )
    d = d.with_panel(
        stat_panel(
            "Serving version in the registry",
            [
                q(
                    f"max({m('model:fleetmon_model_serving_version_unregistered:bool', s)}) or on () vector(-1)",
                    "unregistered",
                    instant=True,
                )
            ],
            w=4,
            h=7,
            mappings=value_texts(
                {0: ("registered", "green"), 1: ("unregistered", "red"), -1: ("unknown", "text")}
            ),
            description="whether the serving version is a registered version of the model's MLflow model "
            "(ModelServingUnregisteredVersion after 10 minutes); unknown: no model_version in the records, or "
            "MLflow could not be read",
        )
    )
    lineage = m("fleetmon_mlflow_model_version_lineage_info", s)
    d = d.with_panel(
        table_panel(
            "Lineage",
            [
                q(
                    "max by (version, run_id, dataset, dataset_digest, dataset_source, code_version) ("
                    f"{lineage} + on (customer, building, energy, model, version) group_left () "
                    f"{m('fleetmon_model_serving_version_info', s)} or {lineage})",
                    instant=True,
                    table_format=True,
                )
            ],
            w=16,
            h=7,
            description="the registry's versions an alias points to and the newest one, each with its training "
            "run (a link to it in MLflow: the dashboard's MLflow URL), training data (the run's dataset inputs "
            "for training: names, digests, sources; else its training data tag) and code version (git commit, "
            "else source name); 'serving' marks the version the model serves now",
            hide=("Time",),
            rename={"Value": "serving", "dataset_digest": "digest", "dataset_source": "source"},
            column_links=[
                column_link("run_id", "MLflow run ${__data.fields.run_id}", MLFLOW_RUN_URL),
                (
                    "serving",
                    [
                        DynamicConfigValue(
                            id_val="mappings", value=value_texts({2: ("serving", "green"), 1: ("", "text")})
                        )
                    ],
                ),
            ],
            sort_by="version",
        )
    )

    d = d.with_row(row("Training history"))
    d = d.with_panel(
        ts(
            "Runs by status",
            [q(f"max by (status) ({m('fleetmon_mlflow_runs', s)})", "{{status}}")],
            w=8,
            description="MLflow runs of this model by status",
        )
    )
    d = d.with_panel(
        ts(
            "Run duration",
            [q(m("fleetmon_mlflow_run_duration_seconds", s), "{{kind}}")],
            w=8,
            unit="s",
            description="newest finished run: wall time and the logged training / inference durations",
        )
    )
    d = d.with_panel(
        ts(
            "Training metrics (MLflow)",
            [q(m("fleetmon_mlflow_model_quality", s), "{{metric}}")],
            w=8,
            description="quality metrics the newest finished run logged",
        )
    )
    d = d.with_panel(
        stat_panel(
            "Batch job (Pushgateway)",
            [
                q(
                    f"max by (job, outcome) ({m('fleetmon_batch_job_last_outcome', s)}) == 1",
                    "{{job}} {{outcome}}",
                    instant=True,
                )
            ],
            w=24,
            h=3,
            description="last outcome pushed by the model's batch jobs (`fleetmon push`); empty until a job pushes",
        )
    )
    return d
