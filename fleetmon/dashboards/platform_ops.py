"""Platform: the EnergyHub ops panels from container logs (API gateway responses, API errors by route,
training event messages, error types, max replica count, system warnings, memory occupation)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models.common import BigValueTextMode
from grafana_foundation_sdk.models.dashboard import VariableOption, VariableRefresh, VariableSort

from fleetmon.dashboards.common import (
    DS,
    bar_panel,
    new_dashboard,
    pie_panel,
    q,
    row,
    stat_panel,
    table_panel,
    thresholds,
    ts,
    up_links,
)

APP = 'app=~"$app"'
NAMED = BigValueTextMode.VALUE_AND_NAME


def app_variable(d: dashboard.Dashboard) -> dashboard.Dashboard:
    return d.with_variable(
        dashboard.QueryVariable("app")
        .label("App")
        .datasource(DS)
        .query("label_values(fleetmon_logs_files, app)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


def total(metric: str, by: str, extra: str = "") -> str:
    """Events counted in the dashboard's time range, per `by`."""
    selector = ",".join(x for x in (APP, extra) if x)
    return f"round(sum by ({by}) (increase({metric}{{{selector}}}[$__range])))"


def build() -> dashboard.Dashboard:
    d = new_dashboard(
        "platform",
        "fleetmon / Platform",
        "The ML platform's apps, from their container logs: API gateway responses, API errors, training "
        "event messages, error types, replicas, system warnings and memory (Azure Container Apps, Docker, "
        "Kubernetes logs).",
        time_from="now-24h",
    )
    d = app_variable(d)
    d = up_links(d, [("Fleet overview", "fleet", ())])

    d = d.with_row(row("API gateway"))
    d = d.with_panel(
        stat_panel(
            "API gateway responses",
            [q(total("fleetmon_http_requests_total", "status"), "Requests {{status}}", instant=True)],
            w=12,
            h=5,
            text_mode=NAMED,
            description="responses in the time range by HTTP status (access logs)",
        )
    )
    d = d.with_panel(
        stat_panel(
            "Error ratio (5xx)",
            [
                q(
                    f'sum(rate(fleetmon_http_requests_total{{{APP},status=~"5.."}}[$__rate_interval])) '
                    f"/ sum(rate(fleetmon_http_requests_total{{{APP}}}[$__rate_interval])) or vector(0)",
                    "5xx",
                    instant=True,
                )
            ],
            w=4,
            h=5,
            unit="percentunit",
            steps=thresholds((None, "green"), (0.05, "orange"), (0.2, "red")),
        )
    )
    d = d.with_panel(
        pie_panel(
            "Responses by app",
            [q(total("fleetmon_http_requests_total", "app"), "{{app}}", instant=True)],
            w=8,
            h=5,
        )
    )
    d = d.with_panel(
        ts(
            "Responses over time",
            [
                q(
                    f"sum by (status) (rate(fleetmon_http_requests_total{{{APP}}}[$__rate_interval]))",
                    "{{status}}",
                )
            ],
            w=24,
            h=8,
            unit="reqps",
            stack=True,
        )
    )
    d = d.with_panel(
        table_panel(
            "API errors",
            [
                q(
                    f"max by (app, method, route, status) (fleetmon_http_last_error_timestamp_seconds{{{APP}}}) * 1000",
                    instant=True,
                    table_format=True,
                ),
                q(
                    f"round(sum by (app, method, route, status) (increase(fleetmon_http_requests_total{{{APP},"
                    f'status=~"[45].."}}[$__range])))',
                    instant=True,
                    table_format=True,
                ),
            ],
            h=9,
            description="4xx / 5xx responses by route template: last error time (log time) and count in the range",
            rename={"Value #A": "last error", "Value #B": "errors in range"},
            units={"Value #A": "dateTimeAsIso"},
            sort_by="last error",
        )
    )

    d = d.with_row(row("Training processing and errors"))
    d = d.with_panel(
        stat_panel(
            "Training processing event messages",
            [q(total("fleetmon_training_events_total", "kind"), "{{kind}}", instant=True)],
            w=12,
            h=5,
            text_mode=NAMED,
            description="`Received message` / `Training job finished` / `Failed to process` lines in the range",
        )
    )
    d = d.with_panel(
        ts(
            "Training events over time",
            [
                q(
                    f"sum by (kind) (rate(fleetmon_training_events_total{{{APP}}}[$__rate_interval]))",
                    "{{kind}}",
                )
            ],
            w=12,
            h=5,
            unit="ops",
        )
    )
    d = d.with_panel(
        bar_panel(
            "Error types",
            [q(total("fleetmon_app_errors_total", "error_type"), "{{error_type}}", instant=True)],
            w=8,
            h=8,
            description="ERROR / CRITICAL log lines in the range, by exception class or error_code",
        )
    )
    d = d.with_panel(
        ts(
            "Errors over time by app",
            [q(f"sum by (app) (rate(fleetmon_app_errors_total{{{APP}}}[$__rate_interval]))", "{{app}}")],
            w=16,
            h=8,
            unit="ops",
        )
    )

    d = d.with_row(row("Container apps"))
    d = d.with_panel(
        stat_panel(
            "MAX replica count of apps",
            [
                q(
                    f"max by (app) (max_over_time(fleetmon_app_replicas_max{{{APP}}}[$__range]))",
                    "{{app}}",
                    instant=True,
                )
            ],
            w=12,
            h=5,
            text_mode=NAMED,
            description="the highest replica count each app reported (ReplicaCount system events)",
        )
    )
    d = d.with_panel(
        stat_panel(
            "System warnings of container apps",
            [
                q(
                    total("fleetmon_platform_events_total", "reason", 'event_type="Warning"')
                    + ' or on () label_replace(vector(0), "reason", "none", "", "")',
                    "{{reason}}",
                    instant=True,
                )
            ],
            w=12,
            h=5,
            text_mode=NAMED,
            steps=thresholds((None, "green"), (1, "orange")),
            description="Warning system events in the range by reason (ReplicaUnhealthy, "
            "BackoffLimitExceeded, FailedMount, ...)",
        )
    )
    d = d.with_panel(
        ts("Replicas", [q(f"max by (app) (fleetmon_app_replicas{{{APP}}})", "{{app}}")], w=8, h=8)
    )
    d = d.with_panel(
        ts(
            "System events by reason",
            [
                q(
                    f"sum by (reason) (rate(fleetmon_platform_events_total{{{APP}}}[$__rate_interval]))",
                    "{{reason}}",
                )
            ],
            w=8,
            h=8,
            unit="ops",
        )
    )
    d = d.with_panel(
        ts(
            "Memory occupation",
            [q(f"max by (app) (fleetmon_app_memory_utilization_max_ratio{{{APP}}})", "{{app}}")],
            w=8,
            h=8,
            unit="percentunit",
            min_val=0,
            description="highest working set / limit among each app's live replicas",
        )
    )
    d = d.with_panel(
        ts(
            "Memory working set",
            [
                q(f"max by (app) (fleetmon_app_memory_working_set_bytes{{{APP}}})", "{{app}}"),
                q(f"max by (app) (fleetmon_app_memory_limit_bytes{{{APP}}})", "{{app}} limit"),
            ],
            w=24,
            h=8,
            unit="bytes",
            description="summed over live replicas",
        )
    )

    d = d.with_row(row("Log pipeline"))
    d = d.with_panel(
        ts(
            "Log lines by format",
            [
                q(
                    f"sum by (format) (rate(fleetmon_logs_lines_total{{{APP}}}[$__rate_interval]))",
                    "{{format}}",
                )
            ],
            w=8,
            unit="ops",
        )
    )
    d = d.with_panel(
        bar_panel(
            "Rejected log lines",
            [
                q(
                    total("fleetmon_logs_rejected_lines_total", "reason")
                    + ' or on () label_replace(vector(0), "reason", "none", "", "")',
                    "{{reason}}",
                    instant=True,
                )
            ],
            w=8,
            steps=thresholds((None, "green"), (1, "orange")),
            description="lines that could not be used, by reason (sampled to the quarantine file)",
        )
    )
    d = d.with_panel(
        ts(
            "Tail lag",
            [q(f"max by (app) (fleetmon_logs_unread_bytes{{{APP}}})", "{{app}}")],
            w=8,
            unit="bytes",
            description="bytes written to the logs but not read yet",
        )
    )
    return d
