"""Model versions: the fleet's leaderboard per model type, champion against challenger with the verdict, and
each version's benchmark history on live actuals (the benchmark engine's dashboard of seed 001, ch. 4-5:
"the best models for each model type").

Every figure is the outputs exporter's version benchmark (``outputs.versions``, docs/metrics.md "Model
versions"): each version scored on the matured targets that every version of its model predicted, so the
versions of one model are compared on the same targets. Across buildings the scale differs, so the
leaderboard ranks by MAPE (a ratio), not by MAE. Anomaly detectors have no MAPE: they are ranked by F1
against the actuals' anomaly labels and judged by McNemar's test, in a row of their own.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models.dashboard import DynamicConfigValue

from fleetmon.dashboards.common import (
    FLEET_LABELS,
    KWH,
    column_link,
    dashboard_url,
    fleet_variables,
    m,
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

VARS = FLEET_LABELS
LEADERBOARD_SIZE = 50


def build() -> dashboard.Dashboard:
    s = sel(VARS)
    d = new_dashboard(
        "versions",
        "fleetmon / Model versions",
        "Every model version benchmarked on live actuals: the best per model type, champion against "
        "challenger with the Diebold-Mariano verdict, each version's history. Filter by customer, building, "
        "energy type and model role; click a model to open its detail dashboard.",
        time_from="now-24h",
    )
    d = fleet_variables(d, VARS, multi=True)
    d = up_links(d, [("Fleet overview", "fleet", ()), ("Training & registry", "training", VARS)])
    to_model = dashboard_url("model", row_fields(list(FLEET_LABELS)))
    model_link = column_link("building", "Model ${__data.fields.building} ${__data.fields.model}", to_model)
    mape = m("fleetmon_model_version_mape_ratio", s)
    mae = m("fleetmon_model_version_mae_joules", s)
    paired = m("fleetmon_model_version_paired_targets", s)
    outperforms = m("fleetmon_model_challenger_outperforms", s)
    improvement = m("fleetmon_model_challenger_loss_improvement_ratio", s)
    pvalue = m("fleetmon_model_challenger_dm_pvalue", s)

    d = d.with_row(row("Leaderboard"))
    d = d.with_panel(
        stat_panel(
            "Challengers beating their champion",
            [
                q(
                    f"sum(max by (customer, building, energy, model) ({outperforms})) or vector(0)",
                    instant=True,
                )
            ],
            w=6,
            description="models with a challenger version that outperforms the champion (what "
            "ChallengerOutperformsChampion fires on, before its 10 minutes)",
            steps=thresholds((None, "green"), (1, "blue")),
        )
    )
    d = d.with_panel(
        stat_panel(
            "Models with versions under benchmark",
            [q(f"count(count by (customer, building, energy, model) ({paired})) or vector(0)", instant=True)],
            w=6,
            description="models whose predictions carry two or more versions (champion and shadow rows)",
        )
    )
    d = d.with_panel(
        stat_panel(
            "Versions under benchmark",
            [q(f"count({paired}) or vector(0)", instant=True)],
            w=6,
            description="versions scored on the paired targets of their model",
        )
    )
    d = d.with_panel(
        stat_panel(
            "Median loss improvement",
            [q(f"quantile(0.5, {improvement})", instant=True)],
            w=6,
            unit="percentunit",
            description="median over every challenger of the share of the champion's loss it saves "
            "(negative: challengers are worse on the whole)",
        )
    )
    d = d.with_panel(
        table_panel(
            "Best version per model type",
            [
                q(f"bottomk by (energy, model) (1, {mape})", instant=True, table_format=True),
            ],
            w=10,
            h=8,
            description="for each energy type and model role, the version with the lowest MAPE on live "
            "actuals across the selected fleet",
            rename={"Value": "MAPE", "version": "version", "alias": "alias"},
            units={"Value": "percentunit"},
            column_links=[model_link],
            sort_by="energy",
            desc=False,
        )
    )
    top = f"bottomk({LEADERBOARD_SIZE}, {mape})"
    d = d.with_panel(
        table_panel(
            f"Leaderboard: the {LEADERBOARD_SIZE} versions with the lowest MAPE",
            [
                q(top, instant=True, table_format=True),
                q(f"{mae} / {KWH} and {top}", instant=True, table_format=True),
                q(f"{paired} and {top}", instant=True, table_format=True),
            ],
            w=14,
            h=8,
            description="every benchmarked version, lowest MAPE first; MAE in kWh and the paired targets "
            "the figures are over",
            rename={"Value #A": "MAPE", "Value #B": "MAE (kWh)", "Value #C": "paired targets"},
            units={"Value #A": "percentunit", "Value #B": "kwatth"},
            column_links=[model_link],
            sort_by="MAPE",
            desc=False,
        )
    )

    d = d.with_row(row("Champion against challenger"))
    d = d.with_panel(
        table_panel(
            "Verdicts",
            [
                q(outperforms, instant=True, table_format=True),
                q(improvement, instant=True, table_format=True),
                q(pvalue, instant=True, table_format=True),
            ],
            w=24,
            h=8,
            description="each challenger against its champion on the targets both predicted: outperforms "
            "(1 = loss lower by more than outputs.versions.margin on at least min_targets targets, and "
            "Diebold-Mariano p below alpha), the loss improvement and the p-value",
            rename={
                "champion_version": "champion",
                "challenger_version": "challenger",
                "Value #A": "outperforms",
                "Value #B": "loss improvement",
                "Value #C": "DM p-value",
            },
            units={"Value #B": "percentunit"},
            column_links=[model_link],
            sort_by="loss improvement",
        )
    )
    challenger = "{{building}} {{energy}} {{model}} v{{challenger_version}} vs v{{champion_version}}"
    d = d.with_panel(
        ts(
            "Loss improvement over time",
            [q(improvement, challenger)],
            unit="percentunit",
            description="share of the champion's loss each challenger saves, as more targets mature",
        )
    )
    d = d.with_panel(
        ts(
            "Diebold-Mariano p-value over time",
            [q(pvalue, challenger)],
            unit="short",
            min_val=0,
            max_val=1,
            description="below outputs.versions.alpha (0.05) the difference is significant",
        )
    )

    d = detector_rows(d, s, model_link)

    d = d.with_row(row("Benchmark history"))
    version = "{{building}} {{energy}} {{model}} v{{version}} {{alias}}"
    d = d.with_panel(
        ts(
            "MAPE by version",
            [q(mape, version)],
            w=8,
            unit="percentunit",
            description="each version's MAPE on the paired targets of the window",
        )
    )
    d = d.with_panel(
        ts(
            "MAE by version (kWh)",
            [q(f"{mae} / {KWH}", version)],
            w=8,
            unit="kwatth",
            description="each version's MAE on the paired targets of the window",
        )
    )
    d = d.with_panel(
        ts(
            "Paired targets",
            [
                q(
                    f"max by (customer, building, energy, model) ({paired})",
                    "{{building}} {{energy}} {{model}}",
                )
            ],
            w=8,
            description="matured targets every version of the model predicted (what the figures are over)",
        )
    )
    return d


def detector_rows(
    d: dashboard.Dashboard, s: str, model_link: tuple[str, list[DynamicConfigValue]]
) -> dashboard.Dashboard:
    """Anomaly detectors' versions: scored against the actuals' ``anomaly_label`` (precision, recall, F1) and
    by how often they flag; champion against challenger by McNemar's exact test."""
    f1 = m("fleetmon_model_version_f1_ratio", s)
    precision = m("fleetmon_model_version_precision_ratio", s)
    recall = m("fleetmon_model_version_recall_ratio", s)
    flag_rate = m("fleetmon_model_version_flag_rate_ratio", s)
    labelled = m("fleetmon_model_version_labelled_targets", s)
    mcnemar = m("fleetmon_model_challenger_mcnemar_pvalue", s)
    flag_ratio = m("fleetmon_model_challenger_flag_rate_ratio", s)
    # the verdict series of anomaly detectors only (forecasters have no flag-rate ratio)
    pair = "customer, building, energy, model, champion_version, challenger_version"
    det_outperforms = f"{m('fleetmon_model_challenger_outperforms', s)} and on ({pair}) {flag_ratio}"

    d = d.with_row(row("Anomaly detectors"))
    d = d.with_panel(
        table_panel(
            "Best detector version per model type",
            [q(f"topk by (energy, model) (1, {f1})", instant=True, table_format=True)],
            w=8,
            h=8,
            description="for each energy type and detector, the version with the highest F1 against the "
            "actuals' anomaly labels across the selected fleet (absent where nothing was labelled or flagged)",
            rename={"Value": "F1"},
            units={"Value": "percentunit"},
            column_links=[model_link],
            sort_by="energy",
            desc=False,
        )
    )
    top = f"topk({LEADERBOARD_SIZE}, {flag_rate})"
    d = d.with_panel(
        table_panel(
            f"Detector versions: the {LEADERBOARD_SIZE} that flag most",
            [
                q(top, instant=True, table_format=True),
                q(f"{precision} and {top}", instant=True, table_format=True),
                q(f"{recall} and {top}", instant=True, table_format=True),
                q(f"{f1} and {top}", instant=True, table_format=True),
                q(f"{labelled} and {top}", instant=True, table_format=True),
            ],
            w=16,
            h=8,
            description="each benchmarked detector version: the share of the paired targets it flagged, "
            "and against the labelled ones precision, recall and F1 (a jumpy version flags often at low "
            "precision)",
            rename={
                "Value #A": "flag rate",
                "Value #B": "precision",
                "Value #C": "recall",
                "Value #D": "F1",
                "Value #E": "labelled targets",
            },
            units={
                "Value #A": "percentunit",
                "Value #B": "percentunit",
                "Value #C": "percentunit",
                "Value #D": "percentunit",
            },
            column_links=[model_link],
            sort_by="flag rate",
        )
    )
    d = d.with_panel(
        table_panel(
            "Detector verdicts",
            [
                q(det_outperforms, instant=True, table_format=True),
                q(flag_ratio, instant=True, table_format=True),
                q(mcnemar, instant=True, table_format=True),
            ],
            w=24,
            h=8,
            description="each detector challenger against its champion: outperforms (F1 better by more than "
            "outputs.versions.margin on enough labelled targets, McNemar p below alpha), how many times as "
            "often it flags, and McNemar's exact p-value on the paired correctness of the labelled targets",
            rename={
                "champion_version": "champion",
                "challenger_version": "challenger",
                "Value #A": "outperforms",
                "Value #B": "flag rate x champion",
                "Value #C": "McNemar p-value",
            },
            column_links=[model_link],
            sort_by="flag rate x champion",
        )
    )
    version = "{{building}} {{energy}} {{model}} v{{version}} {{alias}}"
    d = d.with_panel(
        ts(
            "Detector flag rate by version",
            [q(flag_rate, version)],
            w=12,
            unit="percentunit",
            description="share of the paired targets each detector version flagged, as targets mature",
        )
    )
    d = d.with_panel(
        ts(
            "Detector F1 by version",
            [q(f1, version)],
            w=12,
            unit="percentunit",
            min_val=0,
            max_val=1,
            description="each detector version's F1 against the labelled targets of the window",
        )
    )
    return d
