"""Fleet overview (ops): shared causes and peer outliers, models by state, worst buildings, firing alerts,
per-customer summary."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from fleetmon.dashboards.common import (
    BY_MODEL,
    STATES,
    column_link,
    count_in_state,
    dashboard_url,
    fleet_models,
    in_state,
    m,
    model_state,
    new_dashboard,
    q,
    row,
    row_fields,
    stat_panel,
    table_panel,
    thresholds,
    ts,
)

BY_BUILDING = "customer, building"


def not_ok(s: str = "") -> str:
    """The models in any bad state (one series per model)."""
    return f"{fleet_models(s)} unless on ({BY_MODEL}) ({in_state('ok', s)})"


def worst_buildings(n: int = 10) -> str:
    """The n buildings with the most models in a bad state (0 included, so the table is never empty)."""
    return (
        f"topk({n}, count by ({BY_BUILDING}) ({not_ok()})"
        f" or count by ({BY_BUILDING}) ({fleet_models('')}) * 0)"
    )


def build() -> dashboard.Dashboard:
    d = new_dashboard(
        "fleet",
        "fleetmon / Fleet overview",
        "Every model of the fleet by state, the buildings in the worst shape, firing alerts and a summary "
        "per customer. Click a customer or a building to drill down.",
    )

    # What no single-model view shows, first: one cause behind many models, and a model unlike its peers.
    d = d.with_row(row("Shared causes and peer outliers"))
    d = d.with_panel(
        stat_panel(
            "Weather stations with a broken feed",
            [q("sum(weather_station:fleetmon_feed_fault:bool) or vector(0)", "stations", instant=True)],
            w=4,
            h=4,
            description="stations where at least 2, and half, of the buildings' inputs drifted together "
            "(WeatherFeedFault)",
            steps=thresholds((None, "green"), (1, "red")),
        )
    )
    d = d.with_panel(
        stat_panel(
            "Customers with a broken data feed",
            [q("sum(customer:fleetmon_feed_fault:bool) or vector(0)", "customers", instant=True)],
            w=4,
            h=4,
            description="customers where at least 2, and half, of the buildings' inputs drifted together, "
            "not explained by a station (CustomerDataFeedFault)",
            steps=thresholds((None, "green"), (1, "red")),
        )
    )
    d = d.with_panel(
        stat_panel(
            "Peer outliers",
            [
                q(
                    "count(max without (peers) (model:fleetmon_model_peer_score:robust_z) > 3) or vector(0)",
                    "models",
                    instant=True,
                )
            ],
            w=4,
            h=4,
            description="models with a robust peer score above 3 (ModelPeerOutlier once it lasts and the "
            "peers are fine)",
            steps=thresholds((None, "green"), (1, "orange")),
        )
    )
    d = d.with_panel(
        table_panel(
            "Buildings with a feed fault, by weather station",
            [
                q("weather_station:fleetmon_buildings_feed_fault:sum", instant=True, table_format=True),
                q("weather_station:fleetmon_buildings:count", instant=True, table_format=True),
                q("weather_station:fleetmon_feed_fault:bool", instant=True, table_format=True),
            ],
            w=12,
            h=8,
            description="per weather station: buildings whose inputs drifted together on several models, "
            "of how many; 1 in the last column is a WeatherFeedFault",
            rename={"Value #A": "buildings with a feed fault", "Value #B": "buildings", "Value #C": "fault"},
            sort_by="buildings with a feed fault",
        )
    )
    d = d.with_panel(
        table_panel(
            "Farthest from their peers",
            [
                q(
                    "topk(10, max without (peers) (model:fleetmon_model_peer_score:robust_z))",
                    instant=True,
                    table_format=True,
                )
            ],
            w=12,
            h=8,
            description="the 10 models with the highest robust score among their peers (building type or "
            "customer): above 3 is an outlier",
            hide=("Time", "weather_station"),
            rename={"Value": "score"},
            column_links=[
                column_link(
                    "building",
                    "Building ${__data.fields.building}",
                    dashboard_url("building", row_fields(["customer", "building"])),
                ),
            ],
            sort_by="score",
        )
    )

    d = d.with_row(row("Models by state"))
    d = d.with_panel(
        stat_panel(
            "Models",
            [q(f"count({fleet_models('')})", "models", instant=True)],
            w=4,
            description="every fleet model: those with predictions and those MLflow knows",
        )
    )
    for state, (_code, colour, meaning) in STATES.items():
        links = []
        if state == "failing training":
            links = [{"title": "Training & registry", "url": dashboard_url("training")}]
        d = d.with_panel(
            stat_panel(
                state.capitalize(),
                [q(count_in_state(state, ""), state, instant=True)],
                w=4,
                description=f"models {state}: {meaning}",
                steps=thresholds((None, "green"), (1, colour))
                if state != "ok"
                else thresholds((None, "green")),
                links=links,
            )
        )
    d = d.with_panel(
        ts(
            "Models by state over time",
            [q(count_in_state(state, ""), state) for state in STATES if state != "ok"],
            w=24,
            h=7,
            description="how many models were in each bad state (a model can be in several)",
        )
    )

    d = d.with_row(row("Worst buildings and firing alerts"))
    top = worst_buildings()
    restrict = f" and on ({BY_BUILDING}) ({top})"
    d = d.with_panel(
        table_panel(
            "Worst buildings",
            [
                q(top, instant=True, table_format=True),
                q(f"max by ({BY_BUILDING}) ({model_state('')}){restrict}", instant=True, table_format=True),
                q(
                    f"max by ({BY_BUILDING}) (fleetmon_drift_share){restrict}",
                    instant=True,
                    table_format=True,
                ),
                q(
                    f"max by ({BY_BUILDING}) (time() - {m('fleetmon_model_last_prediction_timestamp_seconds')})"
                    f"{restrict}",
                    instant=True,
                    table_format=True,
                ),
            ],
            w=12,
            h=10,
            description="the 10 buildings with the most models in a bad state; worst state of their models, "
            "highest drift share, oldest newest-prediction",
            rename={
                "Value #A": "models not ok",
                "Value #B": "worst state",
                "Value #C": "max drift share",
                "Value #D": "oldest prediction age",
            },
            units={"Value #C": "percentunit", "Value #D": "s"},
            column_links=[
                column_link(
                    "building",
                    "Building ${__data.fields.building}",
                    dashboard_url("building", row_fields(["customer", "building"])),
                ),
                column_link(
                    "customer",
                    "Customer ${__data.fields.customer}",
                    dashboard_url("customer", row_fields(["customer"])),
                ),
            ],
            state_column="worst state",
            sort_by="models not ok",
        )
    )
    d = d.with_panel(
        table_panel(
            "Firing alerts",
            [q('ALERTS{alertstate="firing"}', instant=True, table_format=True)],
            w=12,
            h=10,
            description="Prometheus' ALERTS series (empty when nothing fires); open Alertmanager for silences",
            hide=("Time", "Value", "alertstate"),
            column_links=[
                column_link(
                    "building",
                    "Building ${__data.fields.building}",
                    dashboard_url("building", row_fields(["customer", "building"])),
                ),
            ],
        )
    )
    d = d.with_panel(
        stat_panel(
            "Firing alerts by severity",
            [
                q(
                    'count by (severity) (ALERTS{alertstate="firing"}) or on () label_replace(vector(0), "severity", '
                    '"none", "", "")',
                    "{{severity}}",
                    instant=True,
                )
            ],
            w=24,
            h=3,
            description="firing alerts by severity (the Watchdog always fires: it proves the alerting path)",
            steps=thresholds((None, "green")),
        )
    )

    d = d.with_row(row("Customers"))
    cust = "customer"
    d = d.with_panel(
        table_panel(
            "Per-customer summary",
            [
                q(f"count by ({cust}) (fleetmon_building_info)", instant=True, table_format=True),
                q(f"count by ({cust}) ({fleet_models('')})", instant=True, table_format=True),
                *[q(count_in_state(state, "", by=cust), instant=True, table_format=True) for state in STATES],
            ],
            w=24,
            h=8,
            description="buildings and models of each customer, and how many models are in each state",
            rename={
                "Value #A": "buildings",
                "Value #B": "models",
                **{f"Value #{chr(ord('C') + i)}": state for i, state in enumerate(STATES)},
            },
            column_links=[
                column_link(
                    "customer",
                    "Customer ${__data.fields.customer}",
                    dashboard_url("customer", row_fields(["customer"])),
                ),
            ],
            sort_by="customer",
            desc=False,
        )
    )

    d = d.with_row(row("Sources"))
    d = d.with_panel(
        stat_panel(
            "Exporter targets up",
            [q('up{job=~"fleetmon-.*"}', "{{job}}", instant=True)],
            w=8,
            steps=thresholds((None, "red"), (1, "green")),
            description="Prometheus scrape health of each fleetmon exporter (1 up, 0 down)",
        )
    )
    d = d.with_panel(
        stat_panel(
            "MLflow reachable",
            [q("fleetmon_mlflow_up", "mlflow", instant=True)],
            w=4,
            steps=thresholds((None, "red"), (1, "green")),
            description="1 if the MLflow exporter's last poll succeeded",
        )
    )
    d = d.with_panel(
        stat_panel(
            "Outputs sources up",
            [q("fleetmon_outputs_source_up", "{{source}}", instant=True)],
            w=6,
            steps=thresholds((None, "red"), (1, "green")),
            description="1 if the model-outputs source was read without error on the last poll",
        )
    )
    d = d.with_panel(
        stat_panel(
            "Drift results age",
            [q("time() - fleetmon_drift_last_success_timestamp_seconds", "drift", instant=True)],
            w=6,
            unit="s",
            description="seconds since the last successful drift cycle (the drift series are from it)",
        )
    )
    return d
