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
  autocovariances with divisor ``n``). ``HORIZON`` is 1: fleetmon compares forecasts of the same targets and
  does not know their horizon, and lag 0 is the textbook default (``V`` = the variance of ``d``). Then the
  Harvey-Leybourne-Newbold (1997) small-sample correction
  ``DM* = DM * sqrt((n + 1 - 2h + h (h - 1) / n) / n)`` and a two-sided p-value from Student's t with
  ``n - 1`` degrees of freedom. ``improvement = mean(d) / mean(L(e_champion))``; the challenger
  *outperforms* when ``improvement > margin``, ``n >= min_targets`` and ``p < alpha``.
  A ``d`` without variance (every target the same difference) gives p = 0 when ``mean(d) != 0``, else 1;
  with ``h > 1``, a negative long-run variance falls back to lag 0 (as R's ``forecast::dm.test``).

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
from fleetmon.outputs.store import Snapshot

# Forecast horizon h of the Diebold-Mariano test (HAC lags 0..h-1): see the module docstring.
HORIZON = 1

_VERSION_COLUMNS = ["model", "version", "alias", "paired", "mae", "rmse", "bias", "mape"]
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
]


@dataclass
class Versions:
    # model, version, alias (code: 0 = "", i + 1 = aliases[i]), paired, mae, rmse, bias, mape (kWh; NaN: none)
    versions: pd.DataFrame
    # model, champion, challenger, n, mean_d, mean_loss_champion, dm, pvalue, improvement, outperforms
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
    # Rows that can be benchmarked: a forecaster's, with a version, matured in the window, with an actual.
    model = pred["model"].to_numpy()
    target = pred["target"].to_numpy()
    keep = (
        (pred["version"].to_numpy() > 0)
        & fleet.is_forecaster[model]
        & (target <= now)
        & (target > now - cfg.window_seconds)
        & ~np.isnan(pred["prediction"].to_numpy())
    )
    if not keep.any():
        return empty()
    pred = pred[keep]
    actual = join_actuals(Snapshot(pred, snap.actuals))
    rows = pd.DataFrame(
        {
            "model": pred["model"].to_numpy(),
            "version": pred["version"].to_numpy(),
            "target": pred["target"].to_numpy(),
            "made_at": pred["made_at"].to_numpy(),
            "alias": pred["alias"].to_numpy(),
            "served": ~pred["shadow"].to_numpy(dtype=bool),
            "error": pred["prediction"].to_numpy() - actual,
            "actual": actual,
        }
    )
    rows = rows[~np.isnan(actual)]
    # The newest prediction of each version for each target.
    rows = rows.sort_values(["made_at"], kind="stable").drop_duplicates(
        ["model", "version", "target"], keep="last"
    )
    n_versions = rows.groupby("model")["version"].transform("nunique").to_numpy()
    rows = rows[n_versions >= 2]
    if rows.empty:
        return empty()

    # ----- per version, on the model's common targets
    by_mv = rows.groupby(["model", "version"], sort=True)
    alias = by_mv["alias"].last()  # rows are sorted by made_at: the newest row's alias
    n_ver = rows.groupby("model")["version"].nunique()
    per_target = rows.groupby(["model", "target"])["version"].transform("size").to_numpy()
    common = rows[per_target == n_ver.reindex(rows["model"]).to_numpy()]
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
    versions = vs.reset_index()[_VERSION_COLUMNS]

    # ----- champion against each challenger, on the targets both predicted
    served = rows[rows["served"].to_numpy()]
    champion = served.sort_values("made_at", kind="stable").groupby("model")["version"].last()
    if champion.empty:
        return Versions(versions, pd.DataFrame(columns=_CHALLENGER_COLUMNS))
    champ_rows = rows[rows["version"].to_numpy() == champion.reindex(rows["model"]).to_numpy()]
    chall_rows = rows[rows["model"].isin(champion.index).to_numpy()]
    chall_rows = chall_rows[
        chall_rows["version"].to_numpy() != champion.reindex(chall_rows["model"]).to_numpy()
    ]
    pairs = chall_rows[["model", "version", "target", "error"]].merge(
        champ_rows[["model", "version", "target", "error"]].rename(
            columns={"version": "champion", "error": "error_champion"}
        ),
        on=["model", "target"],
    )
    if pairs.empty:
        return Versions(versions, pd.DataFrame(columns=_CHALLENGER_COLUMNS))
    pairs = pairs.sort_values(["model", "version", "target"], kind="stable")
    if cfg.loss == "squared":
        loss_champion = pairs["error_champion"].to_numpy() ** 2
        loss_challenger = pairs["error"].to_numpy() ** 2
    else:
        loss_champion = np.abs(pairs["error_champion"].to_numpy())
        loss_challenger = np.abs(pairs["error"].to_numpy())
    keys = pairs[["model", "champion", "version"]].to_numpy()
    new_group = np.r_[True, (keys[1:] != keys[:-1]).any(axis=1)]
    group = np.cumsum(new_group) - 1
    first = keys[new_group]
    n_groups = len(first)
    n, mean_d, dm, p = dm_test(loss_champion - loss_challenger, group, n_groups)
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
        }
    )
    return Versions(versions, challengers)
