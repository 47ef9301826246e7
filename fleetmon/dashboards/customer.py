"""Customer: its buildings and their models' state, consumption totals."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from fleetmon.dashboards.common import (
    KWH,
    STATES,
    column_link,
    count_in_state,
    dashboard_url,
    fleet_models,
    fleet_variables,
    in_state,
    m,
    model_state,
    models_table,
    new_dashboard,
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

VARS = ("customer",)
BY_BUILDING = "customer, building"


def build() -> dashboard.Dashboard:
    s = sel(VARS)
    d = new_dashboard(
        "customer",
        "fleetmon / Customer",
        "One customer: its buildings, the state of their models and their consumption. Click a building or "
        "a model to drill down.",
    )
    d = fleet_variables(d, VARS)
    d = up_links(d, [("Fleet overview", "fleet", ())])

    d = d.with_row(row("Models by state"))
    d = d.with_panel(
        stat_panel(
            "Building count", [q(f"count({m('fleetmon_building_info', s)})", "buildings", instant=True)], w=4
        )
    )
    for state, (_code, colour, meaning) in STATES.items():
        d = d.with_panel(
            stat_panel(
                state.capitalize(),
                [q(count_in_state(state, s), state, instant=True)],
                w=4,
                description=f"models {state}: {meaning}",
                steps=thresholds((None, "green"), (1, colour))
                if state != "ok"
                else thresholds((None, "green")),
            )
        )

    d = d.with_row(row("Buildings"))
    actual = m("fleetmon_model_latest_actual_joules", s)
    d = d.with_panel(
        table_panel(
            "Buildings",
            [
                q(
                    f"max by (customer, building, building_type, weather_station) ({m('fleetmon_building_info', s)})",
                    instant=True,
                    table_format=True,
                ),
                q(f"count by ({BY_BUILDING}) ({fleet_models(s)})", instant=True, table_format=True),
                q(
                    f"count by ({BY_BUILDING}) ({fleet_models(s)} unless on (customer, building, energy, model) "
                    f"({in_state('ok', s)})) or count by ({BY_BUILDING}) ({fleet_models(s)}) * 0",
                    instant=True,
                    table_format=True,
                ),
                q(f"max by ({BY_BUILDING}) ({model_state(s)})", instant=True, table_format=True),
                q(
                    f"sum by ({BY_BUILDING}) (max by (customer, building, energy) ({actual})) / {KWH}",
                    instant=True,
                    table_format=True,
                ),
            ],
            h=10,
            description="the customer's buildings, how many of their models are not ok, the worst state and "
            "the latest hour's consumption (all energy types, kWh)",
            hide=("Time", "Value #A"),
            rename={
                "Value #B": "models",
                "Value #C": "models not ok",
                "Value #D": "worst state",
                "Value #E": "latest hour (kWh)",
                "building_type": "type",
                "weather_station": "weather station",
            },
            units={"Value #E": "kwatth"},
            column_links=[
                column_link(
                    "building",
                    "Building ${__data.fields.building}",
                    dashboard_url("building", row_fields(["customer", "building"])),
                ),
            ],
            state_column="worst state",
            sort_by="worst state",
        )
    )
    d = d.with_panel(models_table("Models", s, h=12))

    d = d.with_row(row("Consumption"))
    d = d.with_panel(
        stat_panel(
            "Consumption, latest hour",
            [
                q(
                    f"sum by (energy) (max by (customer, building, energy) ({actual})) / {KWH}",
                    "{{energy}}",
                    instant=True,
                )
            ],
            w=6,
            h=8,
            unit="kwatth",
            description="the newest known hourly actual of every building, summed per energy type (kWh); "
            "fleetmon has no cumulative energy counter, so totals are of the latest hour",
        )
    )
    d = d.with_panel(
        ts(
            "Consumption per energy type (kWh per hour)",
            [q(f"sum by (energy) (max by (customer, building, energy) ({actual})) / {KWH}", "{{energy}}")],
            w=9,
            h=8,
            unit="kwatth",
            description="the customer's buildings' newest hourly actuals, summed per energy type",
        )
    )
    d = d.with_panel(
        ts(
            "Consumption per building (kWh per hour)",
            [q(f"max by (building, energy) ({actual}) / {KWH}", "{{building}} {{energy}}")],
            w=9,
            h=8,
            unit="kwatth",
            links=[
                {
                    "title": "Building ${__field.labels.building}",
                    "url": dashboard_url(
                        "building", {"customer": "${customer}", "building": "${__field.labels.building}"}
                    ),
                }
            ],
        )
    )
    d = d.with_panel(
        ts(
            "Models by state over time",
            [q(count_in_state(state, s), state) for state in STATES if state != "ok"],
            w=24,
            h=7,
        )
    )
    return d
