"""Building: consumption actual against predicted, metadata, location, its models' state."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from fleetmon.dashboards.common import (
    KWH,
    STATES,
    count_in_state,
    dashboard_url,
    fields_of,
    fleet_variables,
    geomap_panel,
    m,
    models_table,
    new_dashboard,
    q,
    row,
    sel,
    stat_panel,
    table_panel,
    thresholds,
    ts,
    up_links,
)

VARS = ("customer", "building")
INFO_LABELS = "customer, building, building_type, weather_station, latitude, longitude"


def build() -> dashboard.Dashboard:
    s = sel(VARS)
    d = new_dashboard(
        "building",
        "fleetmon / Building",
        "One building: its consumption against the forecasts, its metadata and location, and the state of "
        "its models (one forecaster and one anomaly detector per energy type). Click a model to drill down.",
    )
    d = fleet_variables(d, VARS)
    d = up_links(d, [("Fleet overview", "fleet", ()), ("Customer ${customer}", "customer", ("customer",))])

    d = d.with_row(row("Production & consumption"))
    actual = m("fleetmon_model_latest_actual_joules", s)
    d = d.with_panel(
        ts(
            "Consumption: actual vs predicted (kWh per hour)",
            [
                q(f"max by (energy) ({actual}) / {KWH}", "actual {{energy}}"),
                q(
                    f"max by (energy, model) ({m('fleetmon_model_latest_matched_prediction_joules', s)}) / {KWH}",
                    "predicted {{energy}} ({{model}})",
                ),
            ],
            w=16,
            h=9,
            unit="kwatth",
            description="the newest hourly actual and the forecast made for that same hour, per energy type",
        )
    )
    d = d.with_panel(
        geomap_panel(
            "Building location",
            [
                q(
                    f"max by ({INFO_LABELS}) ({m('fleetmon_building_info', s)})",
                    instant=True,
                    table_format=True,
                )
            ],
            w=8,
            h=9,
            description="from the latitude / longitude labels of fleetmon_building_info (fleet config)",
        )
    )
    d = d.with_panel(
        stat_panel(
            "Latest forecast",
            [
                q(
                    f"max by (energy, model) ({m('fleetmon_model_latest_prediction_joules', s)}) / {KWH}",
                    "{{energy}}",
                    instant=True,
                )
            ],
            w=8,
            h=4,
            unit="kwatth",
            description="forecast for the newest hour a prediction exists for",
        )
    )
    d = d.with_panel(
        stat_panel(
            "Latest actual",
            [q(f"max by (energy) ({actual}) / {KWH}", "{{energy}}", instant=True)],
            w=8,
            h=4,
            unit="kwatth",
        )
    )
    d = d.with_panel(
        ts(
            "Anomaly score",
            [
                q(
                    f"max by (energy, model) ({m('fleetmon_model_latest_anomaly_score', s)})",
                    "{{energy}} {{model}}",
                )
            ],
            w=8,
            h=4,
            min_val=0,
            max_val=1,
            description="the anomaly detectors' score for the newest hour (0..1)",
        )
    )

    d = d.with_row(row("Building"))
    d = d.with_panel(
        table_panel(
            "Building metadata",
            [
                q(
                    f"max by ({INFO_LABELS}) ({m('fleetmon_building_info', s)})",
                    instant=True,
                    table_format=True,
                ),
                q(
                    f"max by (customer, building) ({m('fleetmon_building_volume_cubic_meters', s)})",
                    instant=True,
                    table_format=True,
                ),
            ],
            w=12,
            h=5,
            description="from the fleet config: type, volume, weather station (FMI station id), coordinates",
            hide=("Time", "Value #A"),
            rename={"Value #B": "volume", "building_type": "type", "weather_station": "weather station"},
            units={"Value #B": "m3"},
        )
    )
    for state, (_code, colour, meaning) in STATES.items():
        d = d.with_panel(
            stat_panel(
                state.capitalize(),
                [q(count_in_state(state, s), state, instant=True)],
                w=2 if state != "failing training" else 4,
                h=5,
                description=f"models {state}: {meaning}",
                steps=thresholds((None, "green"), (1, colour))
                if state != "ok"
                else thresholds((None, "green")),
            )
        )

    d = d.with_row(row("Models"))
    d = d.with_panel(models_table("Models of this building", s, h=8))
    d = d.with_panel(
        ts(
            "Seconds since the newest prediction",
            [
                q(
                    f"max by (energy, model) (time() - {m('fleetmon_model_last_prediction_timestamp_seconds', s)})",
                    "{{energy}} {{model}}",
                )
            ],
            w=12,
            unit="s",
            links=[
                {
                    "title": "Model ${__field.labels.energy} ${__field.labels.model}",
                    "url": dashboard_url(
                        "model",
                        {
                            "customer": "${customer}",
                            "building": "${building}",
                            **fields_of(["energy", "model"]),
                        },
                    ),
                }
            ],
        )
    )
    d = d.with_panel(
        ts(
            "Drift share",
            [q(f"max by (energy, model) ({m('fleetmon_drift_share', s)})", "{{energy}} {{model}}")],
            w=12,
            unit="percentunit",
            min_val=0,
            max_val=1,
            description="share of drifted input columns per model (last drift cycle)",
            links=[
                {
                    "title": "Model ${__field.labels.energy} ${__field.labels.model}",
                    "url": dashboard_url(
                        "model",
                        {
                            "customer": "${customer}",
                            "building": "${building}",
                            **fields_of(["energy", "model"]),
                        },
                    ),
                }
            ],
        )
    )

    d = d.with_row(row("Against its peers"))
    # the building's own series, to keep only its peer groups' medians and bands
    own = m("model:fleetmon_model_peer_signal:value", s, signal="mape")
    group = "building_type, energy, model, signal"
    median = "building_type:fleetmon_model_peer_signal:median"
    band = (
        f"{median} + 3 * (1.4826 * building_type:fleetmon_model_peer_signal:mad"
        " + on (signal) group_left signal:fleetmon_model_peer_signal:spread_floor)"
    )
    d = d.with_panel(
        ts(
            "Forecast error against its peers (7-day MAPE)",
            [
                q(f"max by (energy) ({own})", "{{energy}} (this building)"),
                q(f"max by (energy) ({median} and on ({group}) {own})", "{{energy}} peers' median"),
                q(f"max by (energy) (({band}) and on ({group}) {own})", "{{energy}} peers' outlier line"),
            ],
            w=16,
            h=8,
            unit="percentunit",
            min_val=0,
            description="the building's forecasters' 7-day MAPE against the median of the forecasters of the "
            "same energy type in buildings of the same type, and the line above which it is an outlier "
            "(median + 3 x (1.4826 x MAD + floor); ModelPeerOutlier, docs/alerting.md)",
        )
    )
    d = d.with_panel(
        table_panel(
            "Peer scores",
            [
                q(
                    f"max by (energy, model, signal, peers) ({m('model:fleetmon_model_peer_score:robust_z', s)})",
                    instant=True,
                    table_format=True,
                )
            ],
            w=8,
            h=8,
            description="robust score of each model among its peers (building type, customer): "
            "(value - peers' median) / (1.4826 x MAD + floor); above 3 while the peers are fine is an outlier",
            hide=("Time",),
            rename={"Value": "score"},
            sort_by="score",
        )
    )
    return d
