"""Shared shapes for fleetmon's dashboards (grafana-foundation-sdk builders).

One module per dashboard builds on these helpers: a `$datasource` variable, the chained fleet variables
(customer -> building -> energy -> model), the PromQL of the model states (ok, drifting, stale, erroring,
failing training) and panel shortcuts whose queries always go through the same datasource reference.
Dashboard uids are fixed here: alert rules link to them.

Panels are laid out by the SDK (`span` = width of 24, `height` in grid rows); panel ids are assigned in
order by `fleetmon.dashboards.build`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from grafana_foundation_sdk.builders import (
    bargauge,
    common,
    dashboard,
    geomap,
    piechart,
    prometheus,
    stat,
    table,
    timeseries,
)
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models.common import (
    BigValueColorMode,
    BigValueGraphMode,
    BigValueTextMode,
    FrameGeometrySourceMode,
    LegendDisplayMode,
    LegendPlacement,
    StackingMode,
    VizOrientation,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardLinkType,
    DataSourceRef,
    DataTransformerConfig,
    DynamicConfigValue,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.dashboard import Threshold as ThresholdStep
from grafana_foundation_sdk.models.geomap import TooltipMode
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

# Fixed uids: alert `dashboard_url` annotations and drill-down links point at these.
UID = {
    "fleet": "fleetmon-fleet",
    "customer": "fleetmon-customer",
    "building": "fleetmon-building",
    "model": "fleetmon-model",
    "training": "fleetmon-training",
    "versions": "fleetmon-versions",
    "platform": "fleetmon-platform",
    "infrastructure": "fleetmon-infrastructure",
}
TAG = "fleetmon"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
# The provisioned datasource (grafana/provisioning/datasources) has this uid.
DATASOURCE_UID = "prometheus"

FLEET_LABELS = ("customer", "building", "energy", "model")
BY_MODEL = "customer, building, energy, model"
# The variables each dashboard level carries, in drill-down order (links fill in all of them).
LEVEL_VARS: dict[str, Sequence[str]] = {
    "fleet": (),
    "customer": ("customer",),
    "building": ("customer", "building"),
    "model": FLEET_LABELS,
}

# Variable sources. Buildings come from the fleet config via the outputs exporter (every configured
# building, whether or not it has predictions yet); energy types and roles from the models' freshness series.
BUILDING_SERIES = "fleetmon_building_info"
MODEL_SERIES = "fleetmon_model_last_prediction_timestamp_seconds"
VARIABLE_SERIES = {
    "customer": BUILDING_SERIES,
    "building": BUILDING_SERIES,
    "energy": MODEL_SERIES,
    "model": MODEL_SERIES,
}

# Quality windows (outputs.windows in the config): the short one is compared with the long one, the
# model's own baseline.
SHORT_WINDOW = "24h"
LONG_WINDOW = "7d"

# Joules -> kWh for people (the exporters use base units; the records carry kWh).
KWH = "3.6e6"

# ------------------------------------------------------------------------------------- PromQL pieces


def sel(names: Sequence[str] = (), **fixed: str) -> str:
    """A label selector body: the dashboard variables `names` as regex matchers plus fixed matchers.

    Regex matchers (`=~"$var"`) so a multi-value or All selection works the same as a single value.
    """
    parts = [f'{n}=~"${n}"' for n in names] + [f'{k}="{v}"' for k, v in fixed.items()]
    return ",".join(parts)


def m(metric: str, selector: str = "", /, **fixed: str) -> str:
    """`metric{selector,fixed...}` (positional-only, so `metric=` can be a label)."""
    body = ",".join(p for p in (selector, ",".join(f'{k}="{v}"' for k, v in fixed.items())) if p)
    return f"{metric}{{{body}}}" if body else metric


def fleet_models(s: str) -> str:
    """One series (value 1) per model: those with predictions and those MLflow knows (every fleet model)."""
    return f"group by ({BY_MODEL}) ({m(MODEL_SERIES, s)} or {m('fleetmon_mlflow_runs', s)})"


# The model states are the alerting rules' recorded flags (prometheus/rules/recording.yml): one definition
# of "drifting", "stale", "erroring", "failing to train" for the alerts, their aggregates and these
# dashboards, computed once per evaluation instead of at every dashboard refresh (a fleet of 40,000 models
# would make a refresh of the raw expressions take minutes). Thresholds: docs/alerting.md.
STATE_RULES = {
    "drifting": "model:fleetmon_model_drifting:bool",
    "erroring": "model:fleetmon_model_erroring:bool",
    "failing training": "model:fleetmon_model_training_failing:bool",
    "stale": "model:fleetmon_model_stale:bool",
}


def flagged(state: str, s: str) -> str:
    return f"{m(STATE_RULES[state], s)} == 1"


def drifting(s: str) -> str:
    """Input drift only this model sees (the recorded flag)."""
    return flagged("drifting", s)


def erroring(s: str) -> str:
    """Error of the last 24 h well above the model's own last 7 days (the recorded flag)."""
    return flagged("erroring", s)


def failing_training(s: str) -> str:
    """Training runs failing again and again (the recorded flag)."""
    return flagged("failing training", s)


def stale(s: str) -> str:
    """No recent prediction (the recorded flag), or known to MLflow and never predicting: a model without any
    prediction has no freshness series, so the flag alone would count it as ok."""
    return (
        f"({flagged('stale', s)})"
        f" or (group by ({BY_MODEL}) ({m('fleetmon_mlflow_runs', s)})"
        f" unless on ({BY_MODEL}) {m(MODEL_SERIES, s)})"
    )


STATES: dict[str, tuple[int, str, str]] = {
    # state: (code, colour, description); the worst state (highest code) wins in the state column.
    "ok": (0, "green", "none of the states below"),
    "drifting": (1, "yellow", "input drift only this model sees (model:fleetmon_model_drifting:bool)"),
    "erroring": (2, "orange", "24h error well above its own 7d error (model:fleetmon_model_erroring:bool)"),
    "failing training": (
        3,
        "orange",
        "training runs failing repeatedly (model:fleetmon_model_training_failing:bool)",
    ),
    "stale": (4, "red", "no recent prediction (model:fleetmon_model_stale:bool), or none ever"),
}
STATE_EXPR = {
    "drifting": drifting,
    "erroring": erroring,
    "failing training": failing_training,
    "stale": stale,
}


def model_state(s: str) -> str:
    """One series per model, value = the code of its worst state (0 ok ... 4 stale).

    `or` keeps a label set from its first operand only, so the terms go worst first and `ok` (every
    model, 0) last.
    """
    terms = []
    for name, fn in sorted(STATE_EXPR.items(), key=lambda item: -STATES[item[0]][0]):
        terms.append(f"group by ({BY_MODEL}) ({fn(s)}) * {STATES[name][0]}")
    terms.append(f"{fleet_models(s)} * 0")
    return f"max by ({BY_MODEL}) (\n  " + "\n  or ".join(terms) + "\n)"


def in_state(state: str, s: str) -> str:
    """The models in `state` (one series per model)."""
    if state == "ok":
        bad = " or ".join(f"({fn(s)})" for fn in STATE_EXPR.values())
        return f"{fleet_models(s)} unless on ({BY_MODEL}) ({bad})"
    return f"group by ({BY_MODEL}) ({STATE_EXPR[state](s)})"


def count_in_state(state: str, s: str, by: str = "") -> str:
    """How many models are in `state`, 0 (not empty) when none: per `by` group, or in total."""
    if by:
        return f"count by ({by}) ({in_state(state, s)}) or count by ({by}) ({fleet_models(s)}) * 0"
    return f"count({in_state(state, s)}) or vector(0)"


def state_mappings() -> list[Any]:
    return [
        ValueMap(
            options={
                str(code): ValueMappingResult(text=name, color=colour, index=code)
                for name, (code, colour, _) in STATES.items()
            }
        )
    ]


# ------------------------------------------------------------------------------------------ variables


def new_dashboard(key: str, title: str, description: str, time_from: str = "now-6h") -> dashboard.Dashboard:
    return (
        dashboard.Dashboard(title)
        .uid(UID[key])
        .description(description)
        .tags([TAG])
        .refresh("30s")
        .time(time_from, "now")
        .timezone("browser")
        .readonly()
        .with_variable(
            dashboard.DatasourceVariable("datasource")
            .label("Data source")
            .type("prometheus")
            .current(VariableOption(selected=True, text="Prometheus", value=DATASOURCE_UID))
        )
        .link(
            dashboard.DashboardLink("fleetmon dashboards")
            .type(DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )


def fleet_variables(d: dashboard.Dashboard, names: Sequence[str], multi: bool = False) -> dashboard.Dashboard:
    """Chained query variables customer -> building -> energy -> model, each filtered by the ones before.

    `multi`: every variable allows several values and All (fleet-wide views); All is `.*`, not a list of
    every value, so a large fleet does not produce a huge regex.
    """
    for i, name in enumerate(names):
        s = sel(names[:i])
        var = (
            dashboard.QueryVariable(name)
            .label(name.capitalize())
            .datasource(DS)
            .query(f"label_values({m(VARIABLE_SERIES[name], s)}, {name})")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(multi)
            .include_all(multi)
        )
        if multi:
            var = var.all_value(".*").current(VariableOption(selected=True, text="All", value="$__all"))
        d = d.with_variable(var)
    return d


def text_variable(
    d: dashboard.Dashboard, name: str, label: str, default: str, description: str
) -> dashboard.Dashboard:
    return d.with_variable(
        dashboard.TextBoxVariable(name)
        .label(label)
        .description(description)
        .default_value(default)
        .current(VariableOption(selected=True, text=default, value=default))
    )


# -------------------------------------------------------------------------------------------- links


def dashboard_url(key: str, params: Mapping[str, str] | None = None, keep_time: bool = True) -> str:
    """A Grafana-relative link to a fleetmon dashboard; `params` are variable values (may be `${...}`)."""
    query = [f"var-{k}={v}" for k, v in (params or {}).items()]
    if keep_time:
        query.append("${__url_time_range}")
    return f"/d/{UID[key]}/{UID[key]}" + ("?" + "&".join(query) if query else "")


def vars_of(names: Sequence[str]) -> dict[str, str]:
    """Pass this dashboard's variables on: {name: "${name}"}."""
    return {n: f"${{{n}}}" for n in names}


def fields_of(names: Sequence[str]) -> dict[str, str]:
    """Fill variables from the clicked row / series: {name: "${__field.labels.name}"}."""
    return {n: f"${{__field.labels.{n}}}" for n in names}


def row_fields(names: Sequence[str]) -> dict[str, str]:
    """Fill variables from the clicked table row: {name: "${__data.fields.name}"}."""
    return {n: f"${{__data.fields.{n}}}" for n in names}


def link(title: str, url: str, target_blank: bool = False) -> dashboard.DashboardLink:
    return (
        dashboard.DashboardLink(title)
        .type(DashboardLinkType.LINK)
        .url(url)
        .target_blank(target_blank)
        .keep_time(False)
        .include_vars(False)
    )


def up_links(d: dashboard.Dashboard, levels: Sequence[tuple[str, str, Sequence[str]]]) -> dashboard.Dashboard:
    """Dashboard links back up the hierarchy: (title, dashboard key, variables to pass)."""
    for title, key, names in levels:
        d = d.link(link(title, dashboard_url(key, vars_of(names))).icon("dashboard"))
    return d


def data_link(title: str, url: str, target_blank: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"title": title, "url": url}
    if target_blank:
        out["targetBlank"] = True
    return out


def column_link(column: str, title: str, url: str) -> tuple[str, list[DynamicConfigValue]]:
    """A table column whose cells link somewhere (use with `table_panel(column_links=...)`)."""
    return column, [DynamicConfigValue(id_val="links", value=[data_link(title, url)])]


# ------------------------------------------------------------------------------------------- queries


def q(
    expr: str, legend: str = "", ref: str = "A", instant: bool = False, table_format: bool = False
) -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(expr).ref_id(ref).legend_format(legend or "__auto").datasource(DS)
    if instant:
        query = query.instant()
    else:
        query = query.range()
    if table_format:
        query = query.format(PromQueryFormat.TABLE)
    return query


def refs(queries: Sequence[prometheus.Dataquery]) -> list[cogbuilder.Builder[cogvariants.Dataquery]]:
    """Give queries the ref ids A, B, C, ... in order."""
    return [query.ref_id(chr(ord("A") + i)) for i, query in enumerate(queries)]


# -------------------------------------------------------------------------------------------- panels


def thresholds(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([ThresholdStep(value=v, color=c) for v, c in steps])
    )


GREEN = thresholds((None, "green"))


PanelT = TypeVar("PanelT")


def _base(
    panel: PanelT, title: str, queries: Sequence[prometheus.Dataquery], w: int, h: int, description: str
) -> PanelT:
    """What every panel shares: title, the `$datasource`, size, description and its queries."""
    return panel.title(title).datasource(DS).span(w).height(h).description(description).targets(refs(queries))  # type: ignore[attr-defined]


def row(title: str) -> dashboard.Row:
    return dashboard.Row(title)


def ts(
    title: str,
    queries: Sequence[prometheus.Dataquery],
    w: int = 12,
    h: int = 8,
    unit: str = "short",
    description: str = "",
    stack: bool = False,
    min_val: float | None = None,
    max_val: float | None = None,
    links: Sequence[dict[str, Any]] = (),
    panel_links: Sequence[dashboard.DashboardLink] = (),
) -> timeseries.Panel:
    p = (
        _base(timeseries.Panel(), title, queries, w, h, description)
        .unit(unit)
        .legend(
            common.VizLegendOptions()
            .display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .fill_opacity(10 if not stack else 60)
        .line_width(1)
    )
    if stack:
        p = p.stacking(common.StackingConfig().mode(StackingMode.NORMAL))
    if min_val is not None:
        p = p.min(min_val)
    if max_val is not None:
        p = p.max(max_val)
    if links:
        p = p.override_by_regexp(".*", [DynamicConfigValue(id_val="links", value=list(links))])
    if panel_links:
        p = p.links(list(panel_links))
    return p


def stat_panel(
    title: str,
    queries: Sequence[prometheus.Dataquery],
    w: int = 4,
    h: int = 4,
    unit: str = "short",
    description: str = "",
    links: Sequence[dict[str, Any]] = (),
    steps: dashboard.ThresholdsConfig = GREEN,
    mappings: Sequence[Any] = (),
    calc: str = "lastNotNull",
    graph: bool = False,
    decimals: float | None = None,
    text_mode: BigValueTextMode = BigValueTextMode.AUTO,
) -> stat.Panel:
    p = (
        _base(stat.Panel(), title, queries, w, h, description)
        .unit(unit)
        .reduce_options(common.ReduceDataOptions().calcs([calc]).values(False))
        .color_mode(BigValueColorMode.VALUE)
        .graph_mode(BigValueGraphMode.AREA if graph else BigValueGraphMode.NONE)
        .text_mode(text_mode)
        .orientation(VizOrientation.AUTO)
        .thresholds(steps)
    )
    if mappings:
        p = p.mappings(list(mappings))
    if decimals is not None:
        p = p.decimals(decimals)
    if links:
        p = p.data_links(panel_links(links))
    return p


def panel_links(links: Sequence[dict[str, Any]]) -> list[Any]:
    """Data links (``data_link`` dicts) as the panel-level links stat and bar gauge panels take."""
    return [link(x["title"], x["url"], bool(x.get("targetBlank"))) for x in links]


def bar_panel(
    title: str,
    queries: Sequence[prometheus.Dataquery],
    w: int = 8,
    h: int = 8,
    unit: str = "short",
    description: str = "",
    steps: dashboard.ThresholdsConfig = GREEN,
    calc: str = "lastNotNull",
    links: Sequence[dict[str, Any]] = (),
) -> bargauge.Panel:
    p = (
        _base(bargauge.Panel(), title, queries, w, h, description)
        .unit(unit)
        .reduce_options(common.ReduceDataOptions().calcs([calc]).values(False))
        .orientation(VizOrientation.HORIZONTAL)
        .thresholds(steps)
        .min(0)
    )
    if links:
        p = p.data_links(panel_links(links))
    return p


def pie_panel(
    title: str,
    queries: Sequence[prometheus.Dataquery],
    w: int = 8,
    h: int = 8,
    unit: str = "short",
    description: str = "",
) -> piechart.Panel:
    return (
        _base(piechart.Panel(), title, queries, w, h, description)
        .unit(unit)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def table_panel(
    title: str,
    queries: Sequence[prometheus.Dataquery],
    w: int = 24,
    h: int = 8,
    description: str = "",
    rename: Mapping[str, str] | None = None,
    hide: Sequence[str] = ("Time",),
    units: Mapping[str, str] | None = None,
    column_links: Sequence[tuple[str, list[DynamicConfigValue]]] = (),
    state_column: str | None = None,
    sort_by: str | None = None,
    desc: bool = True,
    merge: bool = True,
    extra_transforms: Sequence[DataTransformerConfig] = (),
) -> table.Panel:
    """A table of instant, table-format queries merged on their common labels (one row per label set).

    `rename` maps a field (a label or `Value #A`) to a column title; `units` sets units by field name
    (before renaming); `column_links` make cells links; `state_column` gets the model-state mappings.
    """
    p = _base(table.Panel(), title, queries, w, h, description).filterable(True)
    transforms: list[DataTransformerConfig] = []
    if merge and len(queries) > 1:
        transforms.append(DataTransformerConfig(id_val="merge", options={}))
    transforms.extend(extra_transforms)
    exclude = {name: True for name in hide}
    for label in ("__name__", "job", "instance"):
        exclude.setdefault(label, True)
    transforms.append(
        DataTransformerConfig(
            id_val="organize",
            options={"excludeByName": exclude, "renameByName": dict(rename or {}), "indexByName": {}},
        )
    )
    p = p.transformations(transforms)
    for field, unit in (units or {}).items():
        p = p.override_by_name(
            (rename or {}).get(field, field), [DynamicConfigValue(id_val="unit", value=unit)]
        )
    for column, props in column_links:
        p = p.override_by_name(column, props)
    if state_column:
        p = p.override_by_name(
            state_column,
            [
                DynamicConfigValue(id_val="mappings", value=state_mappings()),
                DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"}),
            ],
        )
    if sort_by:
        p = p.sort_by([common.TableSortByFieldState().display_name(sort_by).desc(desc)])
    return p


def geomap_panel(
    title: str,
    queries: Sequence[prometheus.Dataquery],
    w: int = 12,
    h: int = 10,
    description: str = "",
    lat_field: str = "latitude",
    lon_field: str = "longitude",
) -> geomap.Panel:
    """Markers at the coordinates carried as labels (strings: converted to numbers first)."""
    return (
        _base(geomap.Panel(), title, queries, w, h, description)
        .transformations(
            [
                DataTransformerConfig(
                    id_val="convertFieldType",
                    options={
                        "conversions": [
                            {"targetField": lat_field, "destinationType": "number"},
                            {"targetField": lon_field, "destinationType": "number"},
                        ],
                        "fields": {},
                    },
                )
            ]
        )
        .view(geomap.MapViewConfig().id("fit").zoom(14).max_zoom(15))
        .controls(geomap.ControlsOptions().show_zoom(True).mouse_wheel_zoom(True))
        .tooltip(geomap.TooltipOptions().mode(TooltipMode.DETAILS))
        .basemap(common.MapLayerOptions().type("default").name("Basemap"))
        .layers(
            [
                common.MapLayerOptions()
                .type("markers")
                .name("Buildings")
                .location(
                    common.FrameGeometrySource()
                    .mode(FrameGeometrySourceMode.COORDS)
                    .latitude(lat_field)
                    .longitude(lon_field)
                )
                .tooltip(True)
                .config(
                    {"showLegend": False, "style": {"size": {"fixed": 8}, "color": {"fixed": "dark-green"}}}
                )
            ]
        )
    )


# ------------------------------------------------------------------------------------- shared panels


def by_model(expr: str) -> str:
    """Keep only the fleet labels (series from different exporters differ in `instance`, `job`)."""
    return f"max by ({BY_MODEL}) ({expr})"


def models_table(title: str, s: str, w: int = 24, h: int = 10, description: str = "") -> table.Panel:
    """One row per model of the selection: worst state, drift, freshness, error; the model links to its
    detail dashboard."""
    short = SHORT_WINDOW
    return table_panel(
        title,
        [
            q(model_state(s), instant=True, table_format=True),
            q(by_model(m("fleetmon_drift_share", s)), instant=True, table_format=True),
            q(by_model(f"time() - {m(MODEL_SERIES, s)}"), instant=True, table_format=True),
            q(
                by_model(f"{m('fleetmon_model_mae_joules', s, window=short)} / {KWH}"),
                instant=True,
                table_format=True,
            ),
            q(
                by_model(
                    f"{m('fleetmon_model_mae_joules', s, window=SHORT_WINDOW)} / ignoring (window) "
                    f"{m('fleetmon_model_mae_joules', s, window=LONG_WINDOW)}"
                ),
                instant=True,
                table_format=True,
            ),
            q(
                by_model(m("fleetmon_model_actual_coverage_ratio", s, window=short)),
                instant=True,
                table_format=True,
            ),
            q(by_model(m("fleetmon_model_anomaly_ratio", s, window=short)), instant=True, table_format=True),
        ],
        w=w,
        h=h,
        description=description
        or "worst state of each model (see the dashboard's state variables), "
        f"drift share, seconds since the newest prediction, {short} MAE (kWh) and against the "
        f"{LONG_WINDOW} MAE, share of matured predictions with an actual, anomaly detectors' flagged share",
        rename={
            "Value #A": "state",
            "Value #B": "drift share",
            "Value #C": "prediction age",
            "Value #D": f"MAE {short} (kWh)",
            "Value #E": f"MAE {short}/{LONG_WINDOW}",
            "Value #F": f"coverage {short}",
            "Value #G": f"anomalies {short}",
        },
        units={
            "Value #B": "percentunit",
            "Value #C": "s",
            "Value #D": "kwatth",
            "Value #F": "percentunit",
            "Value #G": "percentunit",
        },
        column_links=[
            column_link(
                "model",
                "Model ${__data.fields.building} ${__data.fields.energy} ${__data.fields.model}",
                dashboard_url("model", row_fields(list(FLEET_LABELS))),
            ),
            column_link(
                "building",
                "Building ${__data.fields.building}",
                dashboard_url("building", row_fields(["customer", "building"])),
            ),
        ],
        state_column="state",
        sort_by="state",
    )
