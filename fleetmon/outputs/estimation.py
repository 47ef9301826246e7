"""Estimated forecast error before the actuals arrive (Direct Loss Estimation), for the whole fleet at once.

Meter data arrive hours or days after the hour they measure, so the realised MAE of a window (``quality``)
lags: it only covers the rows whose actual is known. Direct Loss Estimation (DLE, as in NannyML's
``nannyml/performance_estimation/direct_loss_estimation/``, read in nannyml 0.13.1) fills the gap: on a
reference period where the actuals are known, fit a *nuisance* model predicting each row's loss from the
model's inputs; on rows still waiting for their actual, the estimated MAE is the mean of the predicted
losses. NannyML's definitions, which this module follows:

- inputs of the nuisance model: ``feature_column_names + [y_pred]`` (``metrics.py``, ``MAE._fit`` and
  ``MAE._estimate``);
- losses: ``abs(y_true - y_pred)`` for MAE, ``np.square(y_true - y_pred)`` for MSE and RMSE;
- row estimates are clipped at 0 (``np.maximum(0, ...)`` in ``_estimate``); a chunk's MAE is their mean,
  its RMSE ``sqrt(mean(estimated squared errors))`` (``RMSE._estimate``);
- sampling error (``nannyml/sampling_error/regression.py``): MAE ``std(reference abs errors) / sqrt(n)``,
  RMSE ``sqrt(std(reference squared errors)**2 / (4 n mean(reference squared errors)))`` (std with
  ddof=0, ``n`` the chunk's rows); the confidence band is the estimate +- 3 sampling errors, the lower
  bound clipped at 0 (``dle.py``, ``DLE._estimate_chunk``).

What differs is the nuisance model. NannyML fits one ``LGBMRegressor()`` (default hyperparameters, 100
trees) per model and metric: measured ~0.05 s wall / 0.1 s CPU per model on 168 rows here, i.e. ~1,000 s
for 20,000 forecasters on 2 cores, far beyond an exporter cycle. Here it is a ridge regression per model,
fitted for every model at once with numpy:

1. Inputs ``u = features + [prediction]`` are standardised per model with the reference mean and std (a
   missing value is imputed with the model's reference mean, i.e. 0 after standardisation; NannyML hands
   NaN to LightGBM) and clipped to +-``clip`` standard deviations, so that one absurd value cannot make
   an absurd loss (trees saturate outside the reference range; a polynomial would not).
2. Design ``d = [z, z**2]`` (``squares=True``): the squares let the loss grow with the distance from the
   usual value in both directions (e.g. heating and cooling degree hours), which a linear term cannot.
3. One batched matmul per group of models gives each model's sufficient statistics ``A^T A`` with
   ``A = [1, d, |e|, e**2]`` (rows padded per model with zeros; models grouped by row count, so there is
   little padding, and by ``chunk_rows``, so the memory is bounded). From them, per model: the centred,
   unit-scaled covariance ``C`` of the design and ``c`` its covariance with the loss.
4. Ridge ``(C + lam I) b = c`` with an unpenalised intercept, so the mean fitted loss over the reference
   rows is the reference MAE: without a shift the estimate stays near the naive one. ``lam`` is chosen
   per model and loss from ``RIDGE_GRID`` by generalised cross-validation, in closed form from the
   eigendecomposition of ``C`` (batched ``np.linalg.eigh`` on (M, p, p)): with ``C = V diag(w) V^T`` and
   ``g = V^T c``, ``RSS/n = var(y) - sum g^2 (w + 2 lam) / (w + lam)^2`` and the effective degrees of
   freedom are ``1 + sum w / (w + lam)``, so no row is read again. A large ``lam`` is the intercept-only
   model: where the inputs do not explain the loss, GCV falls back to the reference MAE (a fixed small
   ``lam`` tracks a shift slightly better but invents changes where there are none).

Trade-offs against LightGBM: the loss must be smooth in the inputs (linear + quadratic per input, no
interactions between inputs); the shrinkage biases the estimate towards the reference MAE under a large
shift (synthetic fleet, error std growing with one feature moved by 1 sd: fleet total -5% against the
realised MAE, the naive estimate -24%; per model median |estimate / realised - 1| 0.13, naive 0.25; on a
single model with 2,000 reference rows ours and NannyML's stay within 2% of each other; see
``tests/test_estimation.py`` and ``benchmarks/estimation_bench.py``). A fit of 20,000 models x 168 rows
takes ~2.5 s, an estimate of their 960,000 pending rows ~0.35 s; the caller decides when to refit
(``fit`` / ``fit_reference``), estimates use the last fit.

``estimate_window`` gives, for a window of matured predictions (as in ``quality``), realised errors where
the actual is known and estimated losses for the rows still pending. Rows not matured yet (target in the
future) are not estimated. ``EstimateLog`` measures the estimate's own accuracy: it keeps the last
estimate of every pending row and, once the row's actual arrives, compares the estimated MAE of the rows
resolved with their realised MAE, per model (``estimation_abs_error``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fleetmon.outputs.records import FEATURE_PREFIX, FleetIndex
from fleetmon.outputs.store import Snapshot

# GCV grid for the ridge penalty, in units of the (unit-scaled) design covariance: 1e-3 is nearly least
# squares, 1e3 nearly the intercept-only model (the reference MAE).
RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3)
ABS, SQ = 0, 1  # index of the loss: absolute error (MAE), squared error (MSE / RMSE)


@dataclass
class EstimatedError:
    """Per model (indexed by model id, NaN where there is nothing to estimate), over one window of matured
    predictions (``now - window < target <= now``) of the forecasters."""

    rows: np.ndarray  # matured forecaster rows in the window with a prediction
    pending: np.ndarray  # ... of which still wait for their actual
    realised_mae: np.ndarray  # MAE of the rows with an actual (what ``quality`` reports)
    estimated_mae: np.ndarray  # realised errors where known, estimated losses where pending
    estimated_rmse: np.ndarray  # the same with squared errors, sqrt of the mean
    estimated_mae_pending: np.ndarray  # estimated MAE of the pending rows only
    estimated_rmse_pending: np.ndarray
    # NannyML's sampling errors of the pending rows' estimates (its band: +- 3 of them, lower bound >= 0)
    sampling_error_pending: np.ndarray  # MAE
    sampling_error_rmse_pending: np.ndarray
    reference_mae: np.ndarray  # MAE on the reference of the last fit: the naive estimate
    # Row level, for ``EstimateLog``: positions in ``snap.predictions`` of the pending rows and their
    # estimated absolute errors (NaN for models without a fit).
    pending_index: np.ndarray
    pending_loss: np.ndarray


class LossEstimator:
    """Per-model ridge regressions of the loss on the model's inputs, fitted for the whole fleet at once."""

    def __init__(
        self,
        n_models: int,
        features: Sequence[str],
        *,
        ridge: float | Sequence[float] = RIDGE_GRID,
        min_rows: int = 48,
        squares: bool = True,
        clip: float = 4.0,
        chunk_rows: int = 1 << 18,
    ) -> None:
        """``ridge``: one penalty for every model, or a grid to choose from per model by GCV.
        ``min_rows``: models with fewer reference rows get no fit (their estimates are NaN).
        ``chunk_rows``: padded rows per batched matmul (memory: chunk_rows * (p + 3) * 8 bytes)."""
        self.n_models = n_models
        self.features = list(features)
        grid = [float(ridge)] if isinstance(ridge, (int, float)) else [float(x) for x in ridge]
        if not grid or min(grid) <= 0:
            raise ValueError("ridge penalties must be positive")
        self.ridge_grid = np.asarray(grid)
        self.min_rows = max(int(min_rows), 2)
        self.squares = squares
        self.clip = clip
        self.chunk_rows = chunk_rows
        self.n_inputs = len(self.features) + 1  # features + prediction
        self.n_design = 2 * self.n_inputs if squares else self.n_inputs
        self._reset()

    def _reset(self) -> None:
        """No model fitted (a refit replaces every per-model array)."""
        m, n_in = self.n_models, self.n_inputs
        self.fitted = np.zeros(m, dtype=bool)
        self.n_reference = np.zeros(m, dtype=np.int64)
        self.input_mean = np.zeros((m, n_in))
        self.input_std = np.ones((m, n_in))
        self.coef = np.zeros((2, m, self.n_design))
        self.intercept = np.full((2, m), np.nan)
        self.ridge_chosen = np.full((2, m), np.nan)
        self.reference_mae = np.full(m, np.nan)
        self.reference_abs_std = np.full(m, np.nan)  # std of the reference absolute errors (ddof=0)
        self.reference_mse = np.full(m, np.nan)
        self.reference_sq_std = np.full(m, np.nan)

    # ---------------------------------------------------------------------------------------- fit
    def fit(self, model: np.ndarray, X: np.ndarray, prediction: np.ndarray, actual: np.ndarray) -> None:
        """Refit every model from its reference rows (all models at once; rows of models outside
        0..n_models-1, or without a finite prediction and actual, are ignored). Replaces the last fit: a
        model with fewer than ``min_rows`` rows has no fit afterwards."""
        model = np.asarray(model, dtype=np.int64)
        X = np.asarray(X, dtype=np.float64).reshape(len(model), len(self.features))
        prediction = np.asarray(prediction, dtype=np.float64)
        actual = np.asarray(actual, dtype=np.float64)
        m, k = self.n_models, len(self.features)
        ok = (model >= 0) & (model < m) & np.isfinite(prediction) & np.isfinite(actual)
        counts = np.bincount(model[ok], minlength=m)
        self._reset()
        self.n_reference = counts
        fit_ok = counts >= self.min_rows
        if not fit_ok.any():
            return
        # The rows of the models to fit, grouped by model, models ordered by row count: similar counts side
        # by side (little padding below) and every chunk of models a contiguous slice of rows.
        rows = np.flatnonzero(ok)
        rows = rows[fit_ok[model[rows]]]
        rows = rows[np.argsort(counts[model[rows]] * m + model[rows])]
        model = model[rows]
        U = np.empty((len(rows), self.n_inputs))  # inputs: features + prediction
        U[:, :k] = X[rows]
        U[:, k] = prediction[rows]
        U[~np.isfinite(U)] = np.nan  # an infinite feature is as unusable as a missing one
        err = prediction[rows] - actual[rows]
        mods = np.flatnonzero(fit_ok)
        mods = mods[np.argsort(counts[mods] * m + mods)]  # the order of the rows
        cnt = counts[mods]
        off = np.concatenate(([0], np.cumsum(cnt)))
        p = self.n_design
        q = p + 3
        gram = np.zeros((len(mods), q, q))
        i = 0
        while i < len(mods):
            # as many models as fit in chunk_rows padded rows (at least one)
            j = i + 1
            while j < len(mods) and (j + 1 - i) * int(cnt[j]) <= self.chunk_rows:
                j += 1
            r = slice(int(off[i]), int(off[j]))
            self._standardise(mods[i:j], U[r], cnt[i:j], off[i:j] - off[i])
            # Sufficient statistics A^T A per model, A = [1, design, |e|, e^2]: one batched matmul.
            A = np.empty((int(off[j] - off[i]), q))
            A[:, 0] = 1.0
            self._design(model[r], U[r], A[:, 1 : p + 1])
            A[:, p + 1] = np.abs(err[r])
            A[:, p + 2] = err[r] ** 2
            width = int(cnt[j - 1])
            if (cnt[i:j] == width).all():
                A3 = A.reshape(j - i, width, q)
            else:  # padded to the chunk's largest count: rows of zeros add nothing to A^T A
                local = np.repeat(np.arange(j - i), cnt[i:j])
                pos = np.arange(len(A)) - np.repeat(off[i:j] - off[i], cnt[i:j])
                A3 = np.zeros((j - i, width, q))
                A3[local, pos] = A
            gram[i:j] = np.matmul(A3.transpose(0, 2, 1), A3)
            i = j
        self._solve(mods, gram)

    def _standardise(self, mods: np.ndarray, U: np.ndarray, cnt: np.ndarray, off: np.ndarray) -> None:
        """Per-model mean (of the values present) and std (after imputing the mean) of each input, for
        models ``mods`` whose rows are the consecutive slices of ``U`` at ``off`` (``cnt`` rows each)."""
        missing = np.isnan(U)
        n_present = cnt[:, None] - np.add.reduceat(missing.astype(np.float64), off, axis=0)
        buf = np.where(missing, 0.0, U)
        mean = np.add.reduceat(buf, off, axis=0) / np.maximum(n_present, 1)
        np.subtract(U, np.repeat(mean, cnt, axis=0), out=buf)
        buf[missing] = 0.0
        std = np.sqrt(np.add.reduceat(buf * buf, off, axis=0) / cnt[:, None])
        self.input_mean[mods] = mean
        # constant (or absent) input: any scale works, the centred column is 0 and gets no weight
        self.input_std[mods] = np.where(std > 1e-12 * np.maximum(np.abs(mean), 1.0), std, 1.0)

    def _design(self, model: np.ndarray, U: np.ndarray, out: np.ndarray) -> None:
        """Into ``out`` (rows, n_design): standardised, imputed, clipped inputs (and their squares) of rows
        of fitted models."""
        k = self.n_inputs
        z = U - self.input_mean[model]
        z /= self.input_std[model]
        z[np.isnan(z)] = 0.0  # a missing value is the model's reference mean
        np.clip(z, -self.clip, self.clip, out=z)
        out[:, :k] = z
        if self.squares:
            np.multiply(z, z, out=out[:, k:])

    def _solve(self, mods: np.ndarray, gram: np.ndarray) -> None:
        p = self.n_design
        n = gram[:, 0, 0]
        mean_d = gram[:, 0, 1 : p + 1] / n[:, None]
        cov_dd = gram[:, 1 : p + 1, 1 : p + 1] / n[:, None, None] - mean_d[:, :, None] * mean_d[:, None, :]
        scale = np.sqrt(np.maximum(np.diagonal(cov_dd, axis1=1, axis2=2), 0.0))
        dead = scale <= 1e-9  # constant design column (e.g. an input absent for this model): no weight
        scale = np.where(dead, 1.0, scale)
        live = (~dead).astype(np.float64)
        corr = cov_dd / (scale[:, :, None] * scale[:, None, :]) * live[:, :, None] * live[:, None, :]
        w, V = np.linalg.eigh(corr)
        w = np.maximum(w, 0.0)  # round-off
        lam = self.ridge_grid
        for t in (ABS, SQ):
            col = p + 1 + t
            mean_y = gram[:, 0, col] / n
            var_y = np.maximum(gram[:, col, col] / n - mean_y**2, 0.0)
            cov_dy = (gram[:, 1 : p + 1, col] / n[:, None] - mean_d * mean_y[:, None]) / scale * live
            g = np.einsum("mij,mi->mj", V, cov_dy)  # V^T c
            # GCV per model and penalty, from the eigendecomposition alone (see the module docstring)
            wl = w[:, None, :] + lam[None, :, None]  # (M, L, p)
            rss = var_y[:, None] - np.sum(
                g[:, None, :] ** 2 * (w[:, None, :] + 2 * lam[None, :, None]) / wl**2, 2
            )
            rss = np.maximum(rss, 0.0)
            df = 1.0 + np.sum(w[:, None, :] / wl, axis=2)
            resid_df = 1.0 - df / n[:, None]
            gcv = np.where(resid_df > 0, rss / np.where(resid_df > 0, resid_df, 1.0) ** 2, np.inf)
            best = np.argmin(gcv, axis=1)
            b = np.einsum("mij,mj->mi", V, g / (w + lam[best][:, None]))
            beta = b / scale * live
            self.coef[t, mods] = beta
            self.intercept[t, mods] = mean_y - np.sum(mean_d * beta, axis=1)
            self.ridge_chosen[t, mods] = lam[best]
            if t == ABS:
                self.reference_mae[mods], self.reference_abs_std[mods] = mean_y, np.sqrt(var_y)
            else:
                self.reference_mse[mods], self.reference_sq_std[mods] = mean_y, np.sqrt(var_y)
        self.fitted[mods] = True

    # ------------------------------------------------------------------------------------ predict
    def predict_losses(self, model: np.ndarray, X: np.ndarray, prediction: np.ndarray) -> np.ndarray:
        """(2, rows): estimated absolute error and squared error of each row (never negative); NaN for
        rows of models without a fit or without a finite prediction."""
        model = np.asarray(model, dtype=np.int64)
        n = len(model)
        X = np.asarray(X, dtype=np.float64).reshape(n, len(self.features))
        prediction = np.asarray(prediction, dtype=np.float64)
        out = np.full((2, n), np.nan)
        inside = (model >= 0) & (model < self.n_models)
        ok = np.zeros(n, dtype=bool)
        ok[inside] = self.fitted[model[inside]]
        ok &= np.isfinite(prediction)
        idx = np.flatnonzero(ok)
        step = max(self.chunk_rows, 1)
        for s in range(0, len(idx), step):  # bounded memory: the gathered coefficients are (rows, p)
            r = idx[s : s + step]
            m = model[r]
            U = np.column_stack([X[r], prediction[r]])
            U[~np.isfinite(U)] = np.nan
            d = np.empty((len(r), self.n_design))
            self._design(m, U, d)
            for t in (ABS, SQ):
                out[t, r] = np.maximum(self.intercept[t, m] + np.einsum("ij,ij->i", d, self.coef[t, m]), 0.0)
        return out

    def predict_loss(
        self, model: np.ndarray, X: np.ndarray, prediction: np.ndarray, squared: bool = False
    ) -> np.ndarray:
        """Estimated absolute error (or squared error) per row; see ``predict_losses``."""
        return self.predict_losses(model, X, prediction)[SQ if squared else ABS]


# ------------------------------------------------------------------------------------ snapshots
def feature_matrix(pred: pd.DataFrame, features: Sequence[str], index: np.ndarray) -> np.ndarray:
    """The ``features.<name>`` columns of rows ``index`` as a float (rows, features) array (NaN = missing)."""
    out = np.empty((len(index), len(features)))
    for j, f in enumerate(features):
        col = FEATURE_PREFIX + f
        # a column absent from the frame is missing everywhere (imputed like any missing value)
        out[:, j] = pred[col].to_numpy(dtype=np.float64)[index] if col in pred else np.nan
    return out


def _forecaster_rows(snap: Snapshot, fleet: FleetIndex, now: float, seconds: float) -> np.ndarray:
    """Matured rows of forecasters (not anomaly detectors) with a prediction, ``now - seconds < target``."""
    pred = snap.predictions
    if pred.empty:
        return np.zeros(0, dtype=bool)
    model = pred["model"].to_numpy()
    target = pred["target"].to_numpy()
    is_fc = fleet.is_forecaster[model] & ~fleet.is_anomaly[model]
    return is_fc & (target <= now) & (target > now - seconds) & np.isfinite(pred["prediction"].to_numpy())


def fit_reference(
    estimator: LossEstimator,
    snap: Snapshot,
    actual: np.ndarray,
    fleet: FleetIndex,
    now: float,
    reference_seconds: float,
) -> None:
    """Refit ``estimator`` on the forecasters' matured rows with an actual of the last
    ``reference_seconds`` (``actual``: ``quality.join_actuals(snap)``)."""
    pred = snap.predictions
    sel = _forecaster_rows(snap, fleet, now, reference_seconds)
    if len(sel):
        sel &= np.isfinite(actual)
    rows = np.flatnonzero(sel)
    model, prediction = _column(pred, "model", rows), _column(pred, "prediction", rows)
    estimator.fit(model, feature_matrix(pred, estimator.features, rows), prediction, actual[rows])


def _column(pred: pd.DataFrame, name: str, index: np.ndarray) -> np.ndarray:
    # an empty snapshot may have no columns at all
    return pred[name].to_numpy()[index] if name in pred else np.zeros(len(index))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def estimate_window(
    snap: Snapshot,
    actual: np.ndarray,
    fleet: FleetIndex,
    now: float,
    window_seconds: float,
    estimator: LossEstimator,
) -> EstimatedError:
    """Estimated errors of the forecasters over ``now - window_seconds < target <= now``
    (``actual``: ``quality.join_actuals(snap)``). A model with pending rows and no fit has NaN estimates
    (its realised MAE is still reported)."""
    n = len(fleet.models)
    pred = snap.predictions
    sel = _forecaster_rows(snap, fleet, now, window_seconds)
    idx = np.flatnonzero(sel)
    model, prediction = _column(pred, "model", idx).astype(np.int64), _column(pred, "prediction", idx)
    act = np.asarray(actual, dtype=np.float64)[idx]
    known = ~np.isnan(act)
    pend = ~known
    p_idx = idx[pend]
    losses = estimator.predict_losses(
        model[pend], feature_matrix(pred, estimator.features, p_idx), prediction[pend]
    )
    err = prediction[known] - act[known]

    def per_model(m: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(m, weights=w, minlength=n).astype(np.float64)[:n]

    n_rows = per_model(model)
    n_known = per_model(model[known])
    n_pend = per_model(model[pend])
    abs_known = per_model(model[known], np.abs(err))
    sq_known = per_model(model[known], err * err)
    # a NaN row estimate (model without a fit) makes its model's sums NaN: nothing is estimated for it
    abs_pend = per_model(model[pend], losses[ABS])
    sq_pend = per_model(model[pend], losses[SQ])
    ref_mae = np.full(n, np.nan)
    ref_std = np.full(n, np.nan)
    k = min(n, estimator.n_models)
    ref_mae[:k], ref_std[:k] = estimator.reference_mae[:k], estimator.reference_abs_std[:k]
    ref_mse, ref_sq_std = np.full(n, np.nan), np.full(n, np.nan)
    ref_mse[:k], ref_sq_std[:k] = estimator.reference_mse[:k], estimator.reference_sq_std[:k]
    return EstimatedError(
        rows=n_rows,
        pending=n_pend,
        realised_mae=_ratio(abs_known, n_known),
        estimated_mae=_ratio(abs_known + abs_pend, n_rows),
        estimated_rmse=np.sqrt(_ratio(sq_known + sq_pend, n_rows)),
        estimated_mae_pending=_ratio(abs_pend, n_pend),
        estimated_rmse_pending=np.sqrt(_ratio(sq_pend, n_pend)),
        sampling_error_pending=_ratio(ref_std, np.sqrt(n_pend)),
        sampling_error_rmse_pending=np.sqrt(_ratio(ref_sq_std**2, 4 * n_pend * ref_mse)),
        reference_mae=ref_mae,
        pending_index=p_idx,
        pending_loss=losses[ABS],
    )


# ------------------------------------------------------------------------- accuracy of estimates
@dataclass
class EstimationAccuracy:
    """Per model, over the rows whose actual arrived since the last update (that had an estimate)."""

    resolved: np.ndarray  # rows resolved
    estimated_mae: np.ndarray  # mean of their last estimates while pending
    realised_mae: np.ndarray  # their realised MAE
    estimation_abs_error: np.ndarray  # |estimated_mae - realised_mae|


def estimation_accuracy(
    model: np.ndarray, estimated_loss: np.ndarray, realised_abs_error: np.ndarray, n_models: int
) -> EstimationAccuracy:
    """Compare, per model, the stored estimates of rows with their realised absolute errors (rows with a
    NaN estimate or error are left out)."""
    ok = ~(np.isnan(estimated_loss) | np.isnan(realised_abs_error))
    m = np.asarray(model, dtype=np.int64)[ok]
    count = np.bincount(m, minlength=n_models).astype(np.float64)
    est = _ratio(np.bincount(m, weights=estimated_loss[ok], minlength=n_models), count)
    real = _ratio(np.bincount(m, weights=realised_abs_error[ok], minlength=n_models), count)
    return EstimationAccuracy(count, est, real, np.abs(est - real))


def _row_keys(pred: pd.DataFrame, index: np.ndarray) -> pd.DataFrame:
    # A prediction row is (model, version, made_at, target): two exact int64 keys.
    if len(index) == 0:
        return pd.DataFrame({"k1": np.empty(0, np.int64), "k2": np.empty(0, np.int64)})
    model = pred["model"].to_numpy()[index].astype(np.int64)
    target = np.round(pred["target"].to_numpy()[index]).astype(np.int64)
    made = np.round(pred["made_at"].to_numpy()[index]).astype(np.int64)
    version = pred["version"].to_numpy()[index].astype(np.int64) if "version" in pred else 0
    return pd.DataFrame({"k1": (model << 33) + target, "k2": (made << 20) + (version & 0xFFFFF)})


class EstimateLog:
    """The last estimated absolute error of each pending row, until its actual arrives (or the row leaves
    the snapshot): then the estimate is compared with the realised error (``estimation_accuracy``).

    Call ``update`` once per cycle after ``estimate_window``. Memory: one entry per pending row."""

    def __init__(self, n_models: int) -> None:
        self.n_models = n_models
        self.log = pd.DataFrame(
            {
                "k1": np.empty(0, np.int64),
                "k2": np.empty(0, np.int64),
                "model": np.empty(0, np.int64),
                "est": [],
            }
        )

    def update(self, snap: Snapshot, actual: np.ndarray, est: EstimatedError) -> EstimationAccuracy:
        """Resolve the logged rows whose actual is now known, then log the current pending estimates
        (replacing older estimates of the same rows). Returns the accuracy over the rows resolved."""
        pred = snap.predictions
        has_est = ~np.isnan(est.pending_loss)
        new = _row_keys(pred, est.pending_index[has_est])
        new["model"] = _column(pred, "model", est.pending_index[has_est]).astype(np.int64)
        new["est"] = est.pending_loss[has_est]
        model = np.zeros(0, dtype=np.int64)
        est_loss = realised = np.zeros(0)
        keep = self.log.iloc[0:0]
        if len(self.log) and len(pred):
            # Only rows that can be logged: targets since the oldest logged one.
            lo = float((self.log["k1"].to_numpy() & ((1 << 33) - 1)).min())
            cand = np.flatnonzero(pred["target"].to_numpy() >= lo - 1)
            keys = _row_keys(pred, cand)
            keys["row"] = cand
            # rows gone from the snapshot drop out; "index": the position in the log
            hit = self.log.reset_index().merge(keys, on=["k1", "k2"], how="inner")
            pos = hit["index"].to_numpy()
            if len(pos) and np.bincount(pos).max() > 1:  # the same key twice in the snapshot: first row
                hit = hit.iloc[np.unique(pos, return_index=True)[1]]
            rows = hit["row"].to_numpy()
            a = actual[rows]
            done = ~np.isnan(a)
            model = hit["model"].to_numpy()[done]
            est_loss = hit["est"].to_numpy()[done]
            realised = np.abs(pred["prediction"].to_numpy()[rows[done]] - a[done])
            # still pending: replaced by this cycle's estimate where there is one, else kept
            renewed = np.zeros(len(pred), dtype=bool)
            renewed[est.pending_index[has_est]] = True
            keep = hit.loc[~done & ~renewed[rows], ["k1", "k2", "model", "est"]]
        self.log = pd.concat([keep, new], ignore_index=True) if len(keep) else new.reset_index(drop=True)
        return estimation_accuracy(model, est_loss, realised, self.n_models)


# ------------------------------------------------------------------------------ across exporter polls
class FleetEstimator:
    """What the model-outputs exporter keeps between polls: the loss model (refitted every
    ``refit_seconds`` on the forecasters' matured rows with an actual of the last ``reference_seconds``),
    this poll's estimates per quality window, and how good they turned out once the actuals were in.

    Accuracy, per forecaster, on the shortest window (a day): each poll's estimated MAE of the window is
    kept with the MAE of the rows whose actuals were known then (what one sees without an estimate) and the
    naive estimate (the model's reference MAE). ``settle_seconds`` later, when the window's late actuals
    have arrived, the same rows' realised MAE is computed, and each estimate's distance to it is added to
    running totals (from the start of the process): ``checked`` windows, ``realised`` (the sum of their
    realised MAEs) and ``deviation[estimator]`` (of |estimate - realised|), estimator ``dle``, ``known`` and
    ``naive``. ``deviation / realised`` is an estimator's relative error."""

    ESTIMATORS = ("dle", "known", "naive")

    def __init__(
        self,
        fleet: FleetIndex,
        features: Sequence[str],
        windows: dict[str, float],
        reference_seconds: float,
        refit_seconds: float,
        settle_seconds: float,
    ) -> None:
        n = len(fleet.models)
        self.fleet = fleet
        self.windows = dict(windows)
        self.reference_seconds = reference_seconds
        self.refit_seconds = refit_seconds
        self.settle_seconds = settle_seconds
        self.estimator = LossEstimator(n, features)
        self.fitted_at: float | None = None
        self.estimates: dict[str, EstimatedError] = {}
        # (time, window seconds, per model: the estimates of that window) waiting to be checked
        self._pending: list[tuple[float, float, dict[str, np.ndarray]]] = []
        self.checked = np.zeros(n)
        self.realised = np.zeros(n)
        self.deviation = {name: np.zeros(n) for name in self.ESTIMATORS}

    def update(self, snap: Snapshot, actual: np.ndarray, now: float) -> dict[str, EstimatedError]:
        if self.fitted_at is None or now - self.fitted_at >= self.refit_seconds:
            fit_reference(self.estimator, snap, actual, self.fleet, now, self.reference_seconds)
            self.fitted_at = now
        self.estimates = {
            name: estimate_window(snap, actual, self.fleet, now, seconds, self.estimator)
            for name, seconds in self.windows.items()
        }
        if self.estimates:
            self._check(snap, actual, now)
            shortest = min(self.windows, key=lambda w: self.windows[w])
            e = self.estimates[shortest]
            # only windows with something pending say anything about the estimate
            with_pending = e.pending > 0
            self._pending.append(
                (
                    now,
                    self.windows[shortest],
                    {
                        "dle": np.where(with_pending, e.estimated_mae, np.nan),
                        "known": np.where(with_pending, e.realised_mae, np.nan),
                        "naive": np.where(with_pending, e.reference_mae, np.nan),
                    },
                )
            )
        return self.estimates

    def _check(self, snap: Snapshot, actual: np.ndarray, now: float) -> None:
        """The estimates made ``settle_seconds`` ago against the realised MAE of the same window now."""
        due = [x for x in self._pending if x[0] <= now - self.settle_seconds]
        self._pending = [x for x in self._pending if x[0] > now - self.settle_seconds]
        pred = snap.predictions
        if not due or pred.empty:
            return
        model = pred["model"].to_numpy()
        target = pred["target"].to_numpy()
        err = np.abs(pred["prediction"].to_numpy() - np.asarray(actual, dtype=np.float64))
        fc = self.fleet.is_forecaster[model] & ~self.fleet.is_anomaly[model]
        n = len(self.fleet.models)
        for t, seconds, est in due:
            rows = fc & (target <= t) & (target > t - seconds) & np.isfinite(err)
            count = np.bincount(model[rows], minlength=n)[:n].astype(np.float64)
            real = _ratio(np.bincount(model[rows], weights=err[rows], minlength=n)[:n], count)
            ok = np.isfinite(real) & np.all([np.isfinite(v) for v in est.values()], axis=0)
            self.checked[ok] += 1
            self.realised[ok] += real[ok]
            for name, values in est.items():
                self.deviation[name][ok] += np.abs(values[ok] - real[ok])
