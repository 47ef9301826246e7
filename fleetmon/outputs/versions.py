"""Model versions benchmarked on live actuals: champion against challengers on the same matured targets.

Rows: every forecaster prediction with a ``model_version`` (served rows and shadow rows, see
``fleetmon.outputs.store``) whose target has matured within ``outputs.versions.window_seconds``
(``now - window < target_time <= now``) and has an actual. A version's prediction for a target is its newest
(largest made_at). A model is benchmarked when at least two of its versions have such rows.

- **Champion**: the version of the model's newest *served* row (alias ``champion`` or none) in the window;
  every other version of the model there is a challenger. A model whose versions are all shadow rows has no
  champion: its versions get their figures, no comparison.
- **Per version** (``VersionStats``): MAE, RMSE, bias (mean prediction - actual), MAPE (rows with a zero
  actual skipped) on the model's *common* targets, those every one of its versions in the window predicted,
  so the figures of one model's versions are comparable; ``paired`` is the number of those targets. With
  two versions (the usual champion + challenger) these are the targets of the comparison below.
- **Champion vs each challenger** (``ChallengerStats``), on the targets both predicted: the loss
  differential ``d_t = L(e_champion,t) - L(e_challenger,t)`` (``loss``: squared or absolute error; positive
  = the challenger did better), ordered by target time. Diebold-Mariano (1995) statistic
  ``DM = mean(d) / sqrt(V / n)`` with ``V`` the Newey-West/HAC long-run variance of ``d`` with uniform weights
  up to lag ``h - 1`` (DM's own choice for ``h``-step forecasts, ``V = gamma_0 + 2 sum_k gamma_k``,
  autocovariances with divisor ``n``). ``h`` is ``outputs.versions.horizon`` (default 1: lag 0, the
  textbook default, ``V`` = the variance of ``d``); set it to the forecasts' horizon in steps when a target
  is forecast several steps ahead, so the test allows for their overlapping errors. Then the
  Harvey-Leybourne-Newbold (1997) small-sample correction
  ``DM* = DM * sqrt((n + 1 - 2h + h (h - 1) / n) / n)`` and a two-sided p-value from Student's t with
  ``n - 1`` degrees of freedom. ``improvement = mean(d) / mean(L(e_champion))``; the challenger
  *outperforms* when ``improvement > margin``, ``n >= min_targets`` and ``p < alpha``.
  A ``d`` without variance (every target the same difference) gives p = 0 when ``mean(d) != 0``, else 1;
  with ``h > 1``, a negative long-run variance falls back to lag 0 (as R's ``forecast::dm.test``).

**Anomaly detectors** (``anomaly_flag`` of each version's newest row per target, same window, no actual
needed): per version ``flag_rate`` on the common targets and, on those whose actual record carries an
``anomaly_label`` (1 = confirmed anomaly, 0 = confirmed normal; docs/formats.md), ``labelled``,
``precision``, ``recall`` and ``f1`` (NaN without labels, or where undefined). Champion against each
challenger on the targets both scored: ``flag_rate_ratio`` (the challenger's flag rate over the
champion's: what to look at when nothing is labelled); on the labelled ones, ``improvement = (F1_challenger
- F1_champion) / (1 - F1_champion)`` (F1 as a loss ``1 - F1``, so it reads as for forecasters) and
McNemar's exact test of the paired correctness (Dietterich 1998: the standard paired test of two
classifiers on the same cases): ``b`` targets only the champion got right, ``c`` only the challenger,
two-sided ``p = min(1, 2 * Binomial(b + c, 1/2).cdf(min(b, c)))``. It *outperforms* on the same terms
(``improvement > margin``, ``n >= min_targets`` labelled targets, ``p < alpha``); without labels, never.

Everything is one pass of pandas/numpy group operations over the window's rows, whatever the fleet size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from fleetmon.config import VersionsConfig
from fleetmon.outputs.quality import join_actuals
from fleetmon.outputs.records import FleetIndex
from fleetmon.outputs.store import Snapshot, actual_key

# Default forecast horizon h of the Diebold-Mariano test (HAC lags 0..h-1): see the module docstring.
HORIZON = 1

_VERSION_COLUMNS = [
    "model",
    "version",
    "alias",
    "paired",
    "mae",
    "rmse",
    "bias",
    "mape",
    "flag_rate",
    "labelled",
    "precision",
    "recall",
    "f1",
]
_CHALLENGER_COLUMNS = [
    "model",
    "champion",
    "challenger",
    "n",
    "mean_d",
    "mean_loss_champion",
    "dm",
    "pvalue",
    "improvement",
    "outperforms",
    "test",
    "flag_rate_ratio",
]


@dataclass
class Versions:
    # model, version, alias (code: 0 = "", i + 1 = aliases[i]), paired; forecasters: mae, rmse, bias, mape
    # (kWh); anomaly detectors: flag_rate, labelled, precision, recall, f1 (NaN: none / the other kind)
    versions: pd.DataFrame
    # model, champion, challenger, n, mean_d, mean_loss_champion, dm, pvalue, improvement, outperforms,
    # test ("dm" or "mcnemar"), flag_rate_ratio (anomaly detectors; NaN for forecasters)
    challengers: pd.DataFrame


def empty() -> Versions:
    return Versions(pd.DataFrame(columns=_VERSION_COLUMNS), pd.DataFrame(columns=_CHALLENGER_COLUMNS))


def dm_test(d: np.ndarray, group: np.ndarray, n_groups: int, h: int = HORIZON) -> tuple[np.ndarray, ...]:
    """Diebold-Mariano with HLN correction for many series at once.

    ``d``: loss differentials, sorted by group and, within a group, by time; ``group``: their group ids
    (0..n_groups-1). Returns per group: n, mean(d), the corrected statistic DM*, the two-sided p-value
    (Student t, n - 1 dof); NaN where n < 2."""
    n = np.bincount(group, minlength=n_groups).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(group, weights=d, minlength=n_groups) / n
        c = d - mean[group]
        v = np.bincount(group, weights=c * c, minlength=n_groups) / n  # gamma_0
        gamma0 = v.copy()
        for k in range(1, h):  # uniform weights up to lag h - 1 (DM 1995)
            same = group[k:] == group[:-k]
            gk = np.bincount(group[k:][same], weights=(c[k:] * c[:-k])[same], minlength=n_groups) / n
            v += 2 * gk
        # Uniform weights can make the estimate negative: then lag 0 (as R's forecast::dm.test does).
        v = np.where(v > 0, v, gamma0)
        dm = np.where(
            v > 0,
            mean / np.sqrt(np.where(v > 0, v, 1) / n),
            np.where(mean != 0, np.sign(mean) * np.inf, 0.0),
        )
        hln = np.sqrt(np.clip((n + 1 - 2 * h + h * (h - 1) / n) / n, 0, None))
        dm = dm * hln
        p = 2 * stats.t.sf(np.abs(dm), np.maximum(n - 1, 1))
    ok = n >= 2
    return n, mean, np.where(ok, dm, np.nan), np.where(ok, p, np.nan)


def compute(snap: Snapshot, fleet: FleetIndex, cfg: VersionsConfig, now: float) -> Versions:
    frames = [f for f in (snap.predictions, snap.shadow) if "version" in f.columns and len(f)]
    if not frames:
        return empty()
    pred = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    found = (_forecasters(pred, snap, fleet, cfg, now), _detectors(pred, snap, fleet, cfg, now))
    parts = [p for p in found if p is not None]
    if not parts:
        return empty()
    return Versions(
        _concat([p.versions for p in parts], _VERSION_COLUMNS),
        _concat([p.challengers for p in parts], _CHALLENGER_COLUMNS),
    )


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=columns)
    out = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    return out.reindex(columns=columns)


def _forecasters(
    pred: pd.DataFrame, snap: Snapshot, fleet: FleetIndex, cfg: VersionsConfig, now: float
) -> Versions | None:
    # Rows that can be benchmarked: a forecaster's, with a version, matured in the window, with an actual.
    pred = _in_window(pred, fleet.is_forecaster, "prediction", cfg, now)
    if pred is None:
        return None
    actual = join_actuals(Snapshot(pred, snap.actuals))
    rows = _base_rows(pred).assign(error=pred["prediction"].to_numpy() - actual, actual=actual)
    rows = _newest(rows[~np.isnan(actual)])
    if rows.empty:
        return None

    # ----- per version, on the model's common targets
    alias, common = _common_targets(rows)
    e = common["error"].to_numpy()
    nz = common["actual"].to_numpy() != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        ape = np.where(nz, np.abs(e) / np.abs(common["actual"].to_numpy()), np.nan)
    agg = (
        pd.DataFrame(
            {
                "model": common["model"].to_numpy(),
                "version": common["version"].to_numpy(),
                "abs": np.abs(e),
                "sq": e * e,
                "err": e,
                "ape": ape,
            }
        )
        .groupby(["model", "version"])
        .agg(
            paired=("abs", "size"),
            mae=("abs", "mean"),
            sq=("sq", "mean"),
            bias=("err", "mean"),
            mape=("ape", "mean"),
        )
    )
    vs = pd.DataFrame({"alias": alias}).join(agg, how="left")
    vs["paired"] = vs["paired"].fillna(0).astype(np.int64)
    vs["rmse"] = np.sqrt(vs.pop("sq"))
    versions = vs.reset_index().reindex(columns=_VERSION_COLUMNS)

    # ----- champion against each challenger, on the targets both predicted
    pairs = _champion_pairs(rows, ["error"])
    if pairs.empty:
        return Versions(versions, pd.DataFrame(columns=_CHALLENGER_COLUMNS))
    if cfg.loss == "squared":
        loss_champion = pairs["error_champion"].to_numpy() ** 2
        loss_challenger = pairs["error"].to_numpy() ** 2
    else:
        loss_champion = np.abs(pairs["error_champion"].to_numpy())
        loss_challenger = np.abs(pairs["error"].to_numpy())
    group, first = _pair_groups(pairs)
    n_groups = len(first)
    n, mean_d, dm, p = dm_test(loss_champion - loss_challenger, group, n_groups, cfg.horizon)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_lc = np.bincount(group, weights=loss_champion, minlength=n_groups) / n
        improvement = np.where(mean_lc > 0, mean_d / np.where(mean_lc > 0, mean_lc, 1), np.nan)
    outperforms = (improvement > cfg.margin) & (n >= cfg.min_targets) & (p < cfg.alpha)
    challengers = pd.DataFrame(
        {
            "model": first[:, 0],
            "champion": first[:, 1],
            "challenger": first[:, 2],
            "n": n.astype(np.int64),
            "mean_d": mean_d,
            "mean_loss_champion": mean_lc,
            "dm": dm,
            "pvalue": p,
            "improvement": improvement,
            "outperforms": outperforms.astype(np.float64),
            "test": "dm",
            "flag_rate_ratio": np.nan,
        }
    )
    return Versions(versions, challengers)


def _in_window(
    pred: pd.DataFrame, of_kind: np.ndarray, value: str, cfg: VersionsConfig, now: float
) -> pd.DataFrame | None:
    """The rows of models of one kind (``of_kind``: per model id) with a version and a ``value``, whose
    target is in the window; None when there are none."""
    target = pred["target"].to_numpy()
    keep = (
        (pred["version"].to_numpy() > 0)
        & of_kind[pred["model"].to_numpy()]
        & (target <= now)
        & (target > now - cfg.window_seconds)
        & ~np.isnan(pred[value].to_numpy())
    )
    return pred[keep] if keep.any() else None


def _base_rows(pred: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model": pred["model"].to_numpy(),
            "version": pred["version"].to_numpy(),
            "target": pred["target"].to_numpy(),
            "made_at": pred["made_at"].to_numpy(),
            "alias": pred["alias"].to_numpy(),
            "served": ~pred["shadow"].to_numpy(dtype=bool),
        }
    )


def _newest(rows: pd.DataFrame) -> pd.DataFrame:
    """Each version's newest row per target (sorted by made_at), of models with two versions or more."""
    rows = rows.sort_values(["made_at"], kind="stable").drop_duplicates(
        ["model", "version", "target"], keep="last"
    )
    return rows[rows.groupby("model")["version"].transform("nunique").to_numpy() >= 2]


def _common_targets(rows: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame]:
    """Each (model, version)'s newest alias, and the rows of the targets every version of the model has."""
    alias = rows.groupby(["model", "version"], sort=True)["alias"].last()
    n_ver = rows.groupby("model")["version"].nunique()
    per_target = rows.groupby(["model", "target"])["version"].transform("size").to_numpy()
    return alias, rows[per_target == n_ver.reindex(rows["model"]).to_numpy()]


def _pair_groups(pairs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per pair row its (model, champion, challenger) group id, and each group's keys."""
    keys = pairs[["model", "champion", "version"]].to_numpy()
    new_group = np.r_[True, (keys[1:] != keys[:-1]).any(axis=1)]
    return np.cumsum(new_group) - 1, keys[new_group]


def _champion_pairs(rows: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Every challenger row next to the champion's row for the same target: model, version (the
    challenger's), target, ``columns``, champion, ``<column>_champion``; sorted by model, version, target.

    The champion is the version of the model's newest served row; models without served rows have none."""
    served = rows[rows["served"].to_numpy()]
    champion = served.sort_values("made_at", kind="stable").groupby("model")["version"].last()
    if champion.empty:
        return pd.DataFrame(columns=["model", "version", "target", *columns, "champion"])
    per_row = champion.reindex(rows["model"]).to_numpy()
    is_champion = rows["version"].to_numpy() == per_row
    has_champion = rows["model"].isin(champion.index).to_numpy()
    keep = ["model", "version", "target", *columns]
    pairs = rows.loc[has_champion & ~is_champion, keep].merge(
        rows.loc[is_champion, keep].rename(
            columns={"version": "champion", **{c: f"{c}_champion" for c in columns}}
        ),
        on=["model", "target"],
    )
    return pairs.sort_values(["model", "version", "target"], kind="stable")


def _detectors(
    pred: pd.DataFrame, snap: Snapshot, fleet: FleetIndex, cfg: VersionsConfig, now: float
) -> Versions | None:
    """Anomaly detectors' versions: flag rates on the model's common targets and, on those whose actual
    carries an ``anomaly_label``, precision, recall and F1 of ``anomaly_flag``; champion against each
    challenger on the labelled targets both scored (F1 and McNemar's exact test), else flag rates only."""
    pred = _in_window(pred, fleet.is_anomaly, "flag", cfg, now)
    if pred is None:
        return None
    rows = _base_rows(pred).assign(flag=pred["flag"].to_numpy(), label=join_labels(pred, snap.actuals))
    rows = _newest(rows)
    if rows.empty:
        return None
    alias, common = _common_targets(rows)
    flag = common["flag"].to_numpy() == 1
    label = common["label"].to_numpy()
    agg = (
        pd.DataFrame(
            {
                "model": common["model"].to_numpy(),
                "version": common["version"].to_numpy(),
                "flag": flag.astype(np.float64),
                "labelled": ~np.isnan(label),
                "tp": flag & (label == 1),
                "fp": flag & (label == 0),
                "fn": ~flag & (label == 1),
            }
        )
        .groupby(["model", "version"])
        .agg(
            paired=("flag", "size"),
            flag_rate=("flag", "mean"),
            labelled=("labelled", "sum"),
            tp=("tp", "sum"),
            fp=("fp", "sum"),
            fn=("fn", "sum"),
        )
    )
    vs = pd.DataFrame({"alias": alias}).join(agg, how="left")
    vs["paired"] = vs["paired"].fillna(0).astype(np.int64)
    vs["labelled"] = vs["labelled"].fillna(0).astype(np.int64)
    tp, fp, fn = (vs.pop(c).fillna(0).to_numpy(dtype=np.float64) for c in ("tp", "fp", "fn"))
    vs["precision"], vs["recall"], vs["f1"] = _prf(tp, fp, fn)
    vs.loc[vs["labelled"] == 0, ["precision", "recall", "f1"]] = np.nan
    versions = vs.reset_index().reindex(columns=_VERSION_COLUMNS)

    pairs = _champion_pairs(rows, ["flag", "label"])
    if pairs.empty:
        return Versions(versions, pd.DataFrame(columns=_CHALLENGER_COLUMNS))
    group, first = _pair_groups(pairs)
    n_groups = len(first)

    def total(x: np.ndarray) -> np.ndarray:
        return np.bincount(group, weights=x.astype(np.float64), minlength=n_groups)

    f_ch, f_c = pairs["flag"].to_numpy() == 1, pairs["flag_champion"].to_numpy() == 1
    lab = pairs["label"].to_numpy()
    has = ~np.isnan(lab)
    pos, neg = has & (lab == 1), has & (lab == 0)
    n = total(has)
    with np.errstate(invalid="ignore", divide="ignore"):
        flag_rate_ratio = np.where(total(f_c) > 0, total(f_ch) / total(f_c), np.nan)
        f1_ch = _prf(total(f_ch & pos), total(f_ch & neg), total(~f_ch & pos))[2]
        f1_c = _prf(total(f_c & pos), total(f_c & neg), total(~f_c & pos))[2]
        # F1 as a loss (1 - F1), so improvement reads as for forecasters: the share of the champion's loss
        # the challenger removes.
        loss_c = 1 - f1_c
        improvement = np.where(loss_c > 0, (f1_ch - f1_c) / np.where(loss_c > 0, loss_c, 1), np.nan)
    # McNemar's exact test on the paired correctness of the labelled targets: b targets only the champion
    # got right, c only the challenger; under H0 each discordant target is a fair coin.
    right_ch, right_c = has & (f_ch == (lab == 1)), has & (f_c == (lab == 1))
    b, c = total(right_c & ~right_ch), total(~right_c & right_ch)
    disc = b + c
    p = np.where(
        disc > 0, np.minimum(1.0, 2 * stats.binom.cdf(np.minimum(b, c), np.maximum(disc, 1), 0.5)), 1.0
    )
    p = np.where(n > 0, p, np.nan)
    outperforms = (improvement > cfg.margin) & (n >= cfg.min_targets) & (p < cfg.alpha)
    challengers = pd.DataFrame(
        {
            "model": first[:, 0],
            "champion": first[:, 1],
            "challenger": first[:, 2],
            "n": n.astype(np.int64),
            "mean_d": f1_ch - f1_c,
            "mean_loss_champion": loss_c,
            "dm": np.nan,
            "pvalue": p,
            "improvement": improvement,
            "outperforms": outperforms.astype(np.float64),
            "test": "mcnemar",
            "flag_rate_ratio": flag_rate_ratio,
        }
    )
    return Versions(versions, challengers)


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 (NaN where undefined: nothing flagged / nothing to find / neither)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        recall = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    return precision, recall, f1


def join_labels(pred: pd.DataFrame, act: pd.DataFrame) -> np.ndarray:
    """The anomaly label (1, 0; NaN: none) of each prediction row's target, from the actuals."""
    if pred.empty or act.empty or "label" not in act.columns:
        return np.full(len(pred), np.nan)
    index = pd.Index(actual_key(act["be"].to_numpy(), act["target"].to_numpy()))
    pos = index.get_indexer(actual_key(pred["be"].to_numpy(), pred["target"].to_numpy()))
    out = act["label"].to_numpy(dtype=np.float64)[np.where(pos >= 0, pos, 0)]
    return np.where(pos >= 0, out, np.nan)
