"""Training & registry: training status by state, training metrics, run duration by type, registry details
(the EnergyHub "MLflow info detail" panels, fleet-wide with filters)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from fleetmon.dashboards.common import (
    BY_MODEL,
    FLEET_LABELS,
    bar_panel,
    by_model,
    column_link,
    count_in_state,
    dashboard_url,
    fields_of,
    fleet_variables,
    m,
    new_dashboard,
    pie_panel,
    q,
    row,
    row_fields,
    sel,
    stat_panel,
    table_panel,
    thresholds,
    ts,
    up_links,
)

VARS = FLEET_LABELS


def build() -> dashboard.Dashboard:
    s = sel(VARS)
    d = new_dashboard(
        "training",
        "fleetmon / Training & registry",
        "MLflow training runs and the model registry across the fleet (filter by customer, building, energy "
        "type, model role). Click a model to open its detail dashboard.",
        time_from="now-24h",
    )
    d = fleet_variables(d, VARS, multi=True)
    d = up_links(d, [("Fleet overview", "fleet", ())])
    to_model = dashboard_url("model", row_fields(list(FLEET_LABELS)))

    d = d.with_row(row("Model training status"))
    runs = m("fleetmon_mlflow_runs", s)
    d = d.with_panel(
        stat_panel(
            "Runs by status",
            [q(f"sum by (status) ({runs})", "{{status}}", instant=True)],
            w=10,
            description="MLflow runs of the selected models by status",
        )
    )
    d = d.with_panel(
        stat_panel(
            "Models failing training",
            [q(count_in_state("failing training", s), "failing", instant=True)],
            w=4,
            steps=thresholds((None, "green"), (1, "orange")),
            description="models whose training runs fail again and again (model:fleetmon_model_training_failing:bool)",
        )
    )
    d = d.with_panel(
        stat_panel(
            "Models never trained",
            [
                q(
                    f"count(max by ({BY_MODEL}) ({runs}) unless on ({BY_MODEL}) "
                    f"{m('fleetmon_mlflow_training_last_success_timestamp_seconds', s)}) or vector(0)",
                    "never",
                    instant=True,
                )
            ],
            w=4,
            steps=thresholds((None, "green"), (1, "orange")),
            description="models without any finished run",
        )
    )
    d = d.with_panel(
        stat_panel(
            "MLflow reachable",
            [q("fleetmon_mlflow_up", "up", instant=True)],
            w=3,
            steps=thresholds((None, "red"), (1, "green")),
        )
    )
    d = d.with_panel(
        stat_panel(
            "MLflow data age",
            [q("fleetmon_mlflow_last_success_age_seconds", "age", instant=True)],
            w=3,
            unit="s",
            description="seconds since the last successful MLflow poll",
        )
    )
    d = d.with_panel(
        table_panel(
            "Model training status",
            [
                q(by_model(m("fleetmon_mlflow_runs", s, status="finished")), instant=True, table_format=True),
                q(by_model(m("fleetmon_mlflow_runs", s, status="failed")), instant=True, table_format=True),
                q(by_model(m("fleetmon_mlflow_runs", s, status="running")), instant=True, table_format=True),
                q(
                    by_model(f"time() - {m('fleetmon_mlflow_training_last_success_timestamp_seconds', s)}"),
                    instant=True,
                    table_format=True,
                ),
                q(
                    by_model(m("fleetmon_mlflow_run_duration_seconds", s, kind="wall")),
                    instant=True,
                    table_format=True,
                ),
                q(
                    by_model(m("fleetmon_mlflow_model_alias_version", s, alias="champion")),
                    instant=True,
                    table_format=True,
                ),
            ],
            h=10,
            description="per model: runs by status, time since the newest finished run, its wall time, the "
            "champion version",
            rename={
                "Value #A": "finished",
                "Value #B": "failed",
                "Value #C": "running",
                "Value #D": "since last success",
                "Value #E": "last run duration",
                "Value #F": "champion",
            },
            units={"Value #D": "s", "Value #E": "s"},
            column_links=[
                column_link("model", "Model ${__data.fields.building} ${__data.fields.model}", to_model)
            ],
            sort_by="failed",
        )
    )
    d = d.with_panel(
        ts("Runs by status over time", [q(f"sum by (status) ({runs})", "{{status}}")], w=12, h=7)
    )
    d = d.with_panel(
        ts(
            "Seconds since the last successful training (oldest 10)",
            [
                q(
                    f"topk(10, time() - {m('fleetmon_mlflow_training_last_success_timestamp_seconds', s)})",
                    "{{building}} {{energy}} {{model}}",
                )
            ],
            w=12,
            h=7,
            unit="s",
            links=[
                {
                    "title": "Model ${__field.labels.building} ${__field.labels.model}",
                    "url": dashboard_url("model", fields_of(list(FLEET_LABELS))),
                }
            ],
        )
    )

    d = d.with_row(row("Model run duration"))
    dur = m("fleetmon_mlflow_run_duration_seconds", s)
    d = d.with_panel(
        bar_panel(
            "Model run duration type (mean)",
            [q(f"avg by (kind) ({dur})", "{{kind}}", instant=True)],
            w=8,
            unit="s",
            description="mean over the selected models of the newest run's durations, by kind",
        )
    )
    d = d.with_panel(
        bar_panel(
            "Model run duration (longest 15, wall)",
            [
                q(
                    f"topk(15, {m('fleetmon_mlflow_run_duration_seconds', s, kind='wall')})",
                    "{{building}} {{energy}} {{model}}",
                    instant=True,
                )
            ],
            w=8,
            unit="s",
            links=[
                {
                    "title": "Model ${__field.labels.building} ${__field.labels.model}",
                    "url": dashboard_url("model", fields_of(list(FLEET_LABELS))),
                }
            ],
        )
    )
    d = d.with_panel(
        ts("Run duration by kind over time", [q(f"avg by (kind) ({dur})", "{{kind}}")], w=8, unit="s")
    )

    d = d.with_row(row("Model training metrics"))
    quality = m("fleetmon_mlflow_model_quality", s)
    d = d.with_panel(
        table_panel(
            "Model training metrics",
            [
                q(
                    by_model(m("fleetmon_mlflow_model_quality", s, metric=metric)),
                    instant=True,
                    table_format=True,
                )
                for metric in ("mae", "rmse", "mape")
            ],
            w=16,
            h=9,
            description="metrics logged by each model's newest finished run (mlflow.metric_keys)",
            rename={"Value #A": "mae", "Value #B": "rmse", "Value #C": "mape"},
            column_links=[
                column_link("model", "Model ${__data.fields.building} ${__data.fields.model}", to_model)
            ],
            sort_by="mape",
        )
    )
    d = d.with_panel(
        ts("Training metrics (fleet mean)", [q(f"avg by (metric) ({quality})", "{{metric}}")], w=8, h=9)
    )

    d = d.with_row(row("Registry"))
    d = d.with_panel(
        table_panel(
            "Model registry details",
            [
                q(
                    f"max by ({BY_MODEL}, version, alias, stage, flavor, params_digest, run_id) "
                    f"({m('fleetmon_mlflow_model_version_info', s)})",
                    instant=True,
                    table_format=True,
                )
            ],
            h=9,
            description="versions the aliases point to (`latest` = newest), flavour, parameters digest, "
            "training run",
            hide=("Time", "Value"),
            column_links=[
                column_link("model", "Model ${__data.fields.building} ${__data.fields.model}", to_model)
            ],
        )
    )
    d = d.with_panel(
        pie_panel(
            "Versions per alias",
            [
                q(
                    f"count by (alias) ({m('fleetmon_mlflow_model_version_info', s)})",
                    "{{alias}}",
                    instant=True,
                )
            ],
            w=6,
        )
    )
    d = d.with_panel(
        stat_panel(
            "Registered versions",
            [q(f"sum({m('fleetmon_mlflow_model_versions', s)})", "versions", instant=True)],
            w=6,
            h=8,
        )
    )
    d = d.with_panel(
        stat_panel(
            "Unmapped MLflow objects",
            [
                q(
                    "sum(fleetmon_mlflow_unmapped_runs)",
                    "runs",
                    instant=True,
                ),
                q("sum(fleetmon_mlflow_unmapped_registered_models)", "registered models", instant=True),
            ],
            w=6,
            h=8,
            steps=thresholds((None, "green"), (1, "orange")),
            description="runs / registered models that map to no fleet model (quarantined, see "
            "mlflow.quarantine_file)",
        )
    )
    d = d.with_panel(
        ts(
            "Newest version age (oldest 10)",
            [
                q(
                    f"topk(10, time() - {m('fleetmon_mlflow_model_latest_version_creation_timestamp_seconds', s)})",
                    "{{building}} {{energy}} {{model}}",
                )
            ],
            w=6,
            h=8,
            unit="s",
        )
    )

    d = d.with_row(row("Batch jobs and the MLflow exporter"))
    d = d.with_panel(
        table_panel(
            "Batch jobs (Pushgateway)",
            [
                q(
                    f"max by (job, {BY_MODEL}, outcome) ({m('fleetmon_batch_job_last_outcome', s)}) == 1",
                    instant=True,
                    table_format=True,
                ),
                q(
                    f"max by (job, {BY_MODEL}) (time() - {m('fleetmon_batch_job_last_run_timestamp_seconds', s)})",
                    instant=True,
                    table_format=True,
                ),
                q(
                    f"max by (job, {BY_MODEL}) ({m('fleetmon_batch_job_duration_seconds', s)})",
                    instant=True,
                    table_format=True,
                ),
            ],
            w=12,
            h=8,
            description="what batch jobs pushed with `fleetmon push` (empty until a job pushes)",
            hide=("Time", "Value #A"),
            rename={"Value #B": "since last run", "Value #C": "duration"},
            units={"Value #B": "s", "Value #C": "s"},
        )
    )
    d = d.with_panel(
        ts(
            "MLflow requests by code",
            [q("sum by (code) (rate(fleetmon_mlflow_requests_total[$__rate_interval]))", "{{code}}")],
            w=6,
            h=8,
            unit="reqps",
        )
    )
    d = d.with_panel(
        ts(
            "MLflow poll duration",
            [q("fleetmon_mlflow_last_poll_duration_seconds", "{{mode}}")],
            w=6,
            h=8,
            unit="s",
        )
    )
    return d
