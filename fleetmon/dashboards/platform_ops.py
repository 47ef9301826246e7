"""Platform: the four golden signals per app and for model serving (latency, traffic, errors, saturation),
then the EnergyHub ops panels from container logs (API gateway responses, API errors by route, training event
messages, error types, max replica count, system warnings, memory occupation).

Latency, traffic and errors are the alerting rules' recorded series (prometheus/rules/recording.yml: the
same definitions as ApiHighLatency and ApiHighErrorRatio, computed once per evaluation)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common, dashboard, timeseries
from grafana_foundation_sdk.models.common import BigValueTextMode, GraphThresholdsStyleMode
from grafana_foundation_sdk.models.dashboard import (
    DynamicConfigValue,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

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
SERVING = 'app="model-serving"'

# Recorded series (prometheus/rules/recording.yml)
LATENCY_Q = "app:fleetmon_http_request_duration_seconds:quantile_rate5m"
LATENCY_THRESHOLD = "app:fleetmon_http_request_duration_seconds:p95_threshold"
ROUTE_P95 = "app_route:fleetmon_http_request_duration_seconds:quantile_rate5m"
REQUESTS = "app:fleetmon_http_requests:rate5m"
RATIO_5XX = "app:fleetmon_http_requests_5xx:ratio_rate5m"
ROUTE_5XX = "app_route:fleetmon_http_requests_5xx:ratio_rate5m"
HOST_CPU = '1 - avg by (instance) (rate(fleetmon_host_cpu_seconds_total{mode="idle"}[$__rate_interval]))'
# ApiHighErrorRatio's threshold on the 5xx share (alerts.yml)
ERROR_RATIO_ALERT = 0.05


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


def latency_panel(title: str, selector: str, w: int, description: str) -> timeseries.Panel:
    """p50 / p95 / p99 per app and the p95 threshold of ApiHighLatency (dashed)."""
    queries = [
        q(f'{LATENCY_Q}{{{selector},quantile="{qv}"}}', f"{{{{app}}}} p{name}")
        for qv, name in (("0.5", "50"), ("0.95", "95"), ("0.99", "99"))
    ]
    queries.append(q(f"{LATENCY_THRESHOLD}{{{selector}}}", "{{app}} p95 threshold"))
    return ts(title, queries, w=w, h=8, unit="s", min_val=0, description=description).override_by_regexp(
        ".* threshold",
        [
            DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
            DynamicConfigValue(id_val="custom.fillOpacity", value=0),
        ],
    )


def saturation_panel(title: str, selector: str, w: int, description: str) -> timeseries.Panel:
    """Memory utilisation per app and the hosts' CPU (0..1, left axis), replicas per app (right axis)."""
    return ts(
        title,
        [
            q(f"max by (app) (fleetmon_app_memory_utilization_max_ratio{{{selector}}})", "{{app}} memory"),
            q(HOST_CPU, "CPU {{instance}}"),
            q(f"max by (app) (fleetmon_app_replicas{{{selector}}})", "{{app}} replicas"),
        ],
        w=w,
        h=8,
        unit="percentunit",
        min_val=0,
        description=description,
    ).override_by_regexp(
        ".* replicas",
        [
            DynamicConfigValue(id_val="unit", value="short"),
            DynamicConfigValue(id_val="decimals", value=0),
            DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
        ],
    )


def golden_signals(d: dashboard.Dashboard) -> dashboard.Dashboard:
    """Latency, traffic, errors and saturation side by side, per app ($app), then for model serving."""
    d = d.with_row(row("Golden signals"))
    d = d.with_panel(
        latency_panel(
            "Latency (p50 / p95 / p99)",
            APP,
            6,
            "request durations per app over 5 minutes, from the access lines that carry one (nginx "
            "$request_time, JSON request logs); dashed: ApiHighLatency's p95 threshold",
        )
    )
    d = d.with_panel(
        ts(
            "Traffic",
            [q(f"{REQUESTS}{{{APP}}}", "{{app}}")],
            w=6,
            unit="reqps",
            min_val=0,
            description="requests per second per app (5 minutes), every access line",
        )
    )
    d = d.with_panel(
        ts(
            "Errors (5xx ratio)",
            [q(f"{RATIO_5XX}{{{APP}}}", "{{app}}")],
            w=6,
            unit="percentunit",
            min_val=0,
            description=f"share of each app's requests answered 5xx (5 minutes); ApiHighErrorRatio pages over "
            f"{ERROR_RATIO_ALERT:.0%}",
        )
        .thresholds(thresholds((None, "transparent"), (ERROR_RATIO_ALERT, "red")))
        .thresholds_style(common.GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.DASHED))
    )
    d = d.with_panel(
        saturation_panel(
            "Saturation",
            APP,
            6,
            "highest memory working set / limit among each app's replicas, the hosts' CPU utilization "
            "(container logs carry no CPU: a process group named like the app shows its own on the "
            "Infrastructure dashboard), replicas per app (right axis)",
        )
    )

    d = d.with_row(row("Model serving"))
    d = d.with_panel(
        stat_panel(
            "Model serving p95 latency",
            [q(f'{LATENCY_Q}{{{SERVING},quantile="0.95"}}', "p95", instant=True)],
            w=6,
            unit="s",
            steps=thresholds((None, "green"), (0.1, "orange"), (0.25, "red")),
            description="over the last 5 minutes; ApiHighLatency over 0.1 s",
        )
    )
    d = d.with_panel(
        stat_panel(
            "Model serving requests",
            [q(f"{REQUESTS}{{{SERVING}}}", "requests/s", instant=True)],
            w=6,
            unit="reqps",
            description="requests per second over the last 5 minutes",
        )
    )
    d = d.with_panel(
        stat_panel(
            "Model serving 5xx ratio",
            [q(f"{RATIO_5XX}{{{SERVING}}} or vector(0)", "5xx", instant=True)],
            w=6,
            unit="percentunit",
            steps=thresholds((None, "green"), (0.01, "orange"), (ERROR_RATIO_ALERT, "red")),
            description="share of requests answered 5xx over the last 5 minutes",
        )
    )
    d = d.with_panel(
        stat_panel(
            "Model serving replicas",
            [q(f"max(fleetmon_app_replicas{{{SERVING}}})", "replicas", instant=True)],
            w=6,
            description="replica count last reported by the platform (ReplicaCount)",
        )
    )
    d = d.with_panel(
        latency_panel(
            "Model serving latency (p50 / p95 / p99)",
            SERVING,
            12,
            "durations of model serving's requests (its JSON request log, duration_ms) over 5 minutes; "
            "dashed: ApiHighLatency's threshold",
        )
    )
    d = d.with_panel(
        ts(
            "Model serving latency by route (p95)",
            [q(f"max by (route) ({ROUTE_P95}{{{SERVING}}})", "{{route}}")],
            w=12,
            unit="s",
            min_val=0,
            description="predictions of each energy type and model role, metadata, health probes",
        )
    )
    d = d.with_panel(
        ts(
            "Model serving requests by status",
            [
                q(
                    f"sum by (status) (rate(fleetmon_http_requests_total{{{SERVING}}}[$__rate_interval]))",
                    "{{status}}",
                ),
            ],
            w=12,
            unit="reqps",
            stack=True,
        )
    )
    d = d.with_panel(
        saturation_panel(
            "Model serving saturation",
            SERVING,
            12,
            "highest memory working set / limit among its replicas, the hosts' CPU utilization, its "
            "replicas (right axis)",
        )
    )

    d = d.with_row(row("Latency by route"))
    d = d.with_panel(
        ts(
            "Latency by route (p95)",
            [q(f"max by (app, route) ({ROUTE_P95}{{{APP}}})", "{{app}} {{route}}")],
            w=12,
            h=9,
            unit="s",
            min_val=0,
            description="p95 of each route template over 5 minutes",
        )
    )
    d = d.with_panel(
        table_panel(
            "Routes: latency, traffic, errors",
            [
                q(f"max by (app, route) ({ROUTE_P95}{{{APP}}})", instant=True, table_format=True),
                q(
                    f"sum by (app, route) (rate(fleetmon_http_requests_total{{{APP}}}[$__rate_interval]))",
                    instant=True,
                    table_format=True,
                ),
                q(f"max by (app, route) ({ROUTE_5XX}{{{APP}}})", instant=True, table_format=True),
            ],
            w=12,
            h=9,
            description="per route template: p95 latency (routes whose lines carry a duration), requests "
            "per second and 5xx share",
            rename={"Value #A": "p95", "Value #B": "requests/s", "Value #C": "5xx"},
            units={"Value #A": "s", "Value #B": "reqps", "Value #C": "percentunit"},
            sort_by="p95",
        )
    )
    return d


def build() -> dashboard.Dashboard:
    d = new_dashboard(
        "platform",
        "fleetmon / Platform",
        "The ML platform's apps, from their container logs: the golden signals (latency, traffic, errors, "
        "saturation) per app and for model serving, API gateway responses, API errors, training event "
        "messages, error types, replicas, system warnings and memory (Azure Container Apps, Docker, "
        "Kubernetes logs).",
        time_from="now-24h",
    )
    d = app_variable(d)
    d = up_links(d, [("Fleet overview", "fleet", ()), ("Infrastructure", "infrastructure", ())])

    d = golden_signals(d)

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
