"""Direct Loss Estimation for the whole fleet (``fleetmon.outputs.estimation``) against NannyML's DLE per model.

    .venv/bin/python -m benchmarks.estimation_bench --models 20000 --json /tmp/estimation.json
    .venv/bin/python -m benchmarks.estimation_bench --models 2000 --nannyml-sample 5     # quick

A synthetic fleet of ``--models`` forecasters (``--models / 2`` buildings x electricity/heating x
forecast/anomaly: as many anomaly detectors, which have no rows here), each with ``--ref`` hourly rows with
their actual (the reference) and then ``--pending`` matured hours still waiting for theirs, six features.
Each forecaster's error is Gaussian with a std growing with one of its features (|z| or exp(0.4 z)), and
that feature moves by ``--shift`` standard deviations in the pending hours, so the realised MAE of the
pending rows differs from the reference MAE; the expected MAE of every row is known too.

Timed, in one process on the same data (a ``Snapshot`` as the store gives it):

- ``join_actuals`` (done by ``quality`` anyway: shown apart), ``fit_reference`` (all models at once) and
  ``estimate_window`` (predictions of every pending row) and ``EstimateLog.update``; the bare ``fit`` /
  ``predict_losses`` on arrays as well;
- NannyML's ``DLE(metrics=['mae'])`` (LightGBM nuisance model, default hyperparameters) fitted and run
  per model on ``--nannyml-sample`` models, extrapolated to the fleet (so says the output).

Accuracy: per model ``|estimate / realised - 1|`` of the pending rows' MAE, for ours over the fleet and on
the sample for both (and the naive estimate, the reference MAE). The machine's load is printed with them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import time
import warnings
from typing import Any

import numpy as np
import pandas as pd

H = 3600.0
NOW = 1_800_000_000.0
FEATURES = ["outdoor_temperature", "solar_radiation", "hour_of_day", "day_of_week", "occupancy", "humidity"]


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _reset_peak() -> None:
    """Reset the peak RSS (VmHWM) to the current RSS (Linux >= 4.0), to see the peak of one part alone."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_mb() -> float:
    return _status_mb("VmHWM")


def _fleet(n_forecasters: int) -> Any:
    from fleetmon.config import FleetConfig
    from fleetmon.outputs.records import FleetIndex

    buildings = [{"id": f"b{i}"} for i in range((n_forecasters + 1) // 2)]
    return FleetIndex(FleetConfig.model_validate({"customers": [{"id": "c1", "buildings": buildings}]}))


def _rows(
    rng: np.random.Generator, models: np.ndarray, n_rows: int, shift: float, par: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``n_rows`` rows per model (grouped by model, hours ascending)."""
    k = len(FEATURES)
    pos = np.repeat(np.arange(len(models)), n_rows)
    z = rng.normal(0.0, 1.0, (len(pos), k))
    drv = par["driver"][pos]
    z[np.arange(len(pos)), drv] += shift
    zd = z[np.arange(len(pos)), drv]
    sigma = np.where(
        par["form"][pos] == 0, par["a"][pos] + par["b"][pos] * np.abs(zd), par["a"][pos] * np.exp(0.4 * zd)
    )
    X = par["loc"][pos] + par["scale"][pos] * z
    prediction = par["level"][pos] * (1 + 0.2 * z[:, 0])
    actual = prediction - sigma * rng.normal(0.0, 1.0, len(pos))
    return {
        "model": models[pos],
        "X": X,
        "prediction": prediction,
        "actual": actual,
        "expected": sigma * math.sqrt(2 / math.pi),
    }


def _snapshot(
    fleet: Any, ref: dict[str, np.ndarray], pend: dict[str, np.ndarray], n_ref: int, n_pend: int
) -> Any:
    from fleetmon.outputs.records import FEATURE_PREFIX
    from fleetmon.outputs.store import Snapshot

    n_fc = len(ref["model"]) // n_ref
    ref_t = np.tile(NOW - n_pend * H - H * np.arange(n_ref)[::-1], n_fc)
    pend_t = np.tile(NOW - H * np.arange(n_pend)[::-1], n_fc)
    model = np.concatenate([ref["model"], pend["model"]]).astype(np.int64)
    target = np.concatenate([ref_t, pend_t])
    cols: dict[str, Any] = {
        "model": model,
        "be": fleet.be_of_model[model],
        "made_at": target - 24 * H,
        "target": target,
        "prediction": np.concatenate([ref["prediction"], pend["prediction"]]),
        "score": np.nan,
        "flag": np.nan,
        "version": 0,
        "alias": 0,
        "shadow": False,
    }
    X = np.concatenate([ref["X"], pend["X"]])
    for j, f in enumerate(FEATURES):
        cols[FEATURE_PREFIX + f] = X[:, j]
    # in arrival order, as the store holds them: hour by hour, every model of the fleet in each hour
    pred = pd.DataFrame(cols).sort_values("target", kind="stable", ignore_index=True)
    acts = pd.DataFrame(
        {"be": fleet.be_of_model[ref["model"]], "target": ref_t, "actual": ref["actual"], "observed_at": NOW}
    ).assign(label=np.nan)
    return Snapshot(pred, acts.sort_values("target", kind="stable", ignore_index=True))


def _timed(fn: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _best(fn: Any, repeat: int, cpu: dict[str, float], name: str) -> tuple[Any, float]:
    """The fastest of ``repeat`` runs (the machine is shared: the others waited for a core); its CPU
    seconds (all threads) go to ``cpu[name]``."""
    best, out = math.inf, None
    for _ in range(repeat):
        c = time.process_time()
        out, t = _timed(fn)
        if t < best:
            best, cpu[name] = t, time.process_time() - c
    return out, best


def _rel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a / b - 1)


def run(
    n_fc: int, n_ref: int, n_pend: int, shift: float, sample: int, seed: int, repeat: int
) -> dict[str, Any]:
    from fleetmon.outputs.estimation import EstimateLog, LossEstimator, estimate_window, fit_reference
    from fleetmon.outputs.quality import join_actuals

    rng = np.random.default_rng(seed)
    fleet, t_fleet = _timed(lambda: _fleet(n_fc))
    fc = np.flatnonzero(fleet.is_forecaster)[:n_fc]
    n = len(fleet.models)
    k = len(FEATURES)
    par = {
        "loc": rng.normal(0, 20, (n_fc, k)),
        "scale": rng.uniform(0.5, 10, (n_fc, k)),
        "driver": rng.integers(0, k, n_fc),
        "form": rng.integers(0, 2, n_fc),
        "a": rng.uniform(0.5, 2.0, n_fc),
        "b": rng.uniform(0.5, 2.0, n_fc),
        "level": rng.uniform(50, 500, n_fc),
    }
    ref = _rows(rng, fc, n_ref, 0.0, par)
    pend = _rows(rng, fc, n_pend, shift, par)
    snap = _snapshot(fleet, ref, pend, n_ref, n_pend)
    rss_data = _rss_mb()
    print(
        f"fleet: {n_fc} forecasters ({n} models, index built in {t_fleet:.1f} s), {len(snap.predictions):,} "
        f"prediction rows, {len(snap.actuals):,} actuals; RSS with the data {rss_data:.0f} MB",
        flush=True,
    )

    cpu: dict[str, float] = {}
    actual, t_join = _best(lambda: join_actuals(snap), 1, cpu, "join_actuals")
    rss_before = _rss_mb()
    _reset_peak()  # the peak below is that of the estimation alone (on top of the data)
    est = LossEstimator(n, FEATURES)
    ref_s = (n_ref + n_pend) * H
    _, t_fit = _best(
        lambda: fit_reference(est, snap, actual, fleet, NOW, ref_s), repeat, cpu, "fit_reference"
    )
    out, t_est = _best(
        lambda: estimate_window(snap, actual, fleet, NOW, n_pend * H, est), repeat, cpu, "estimate"
    )
    log = EstimateLog(n)
    _, t_log = _best(lambda: log.update(snap, actual, out), 1, cpu, "log_first")
    # steady state: every pending row logged (and logged again)
    _, t_log2 = _best(lambda: log.update(snap, actual, out), repeat, cpu, "log_steady")
    peak_ours = _peak_mb()
    # The bare numerical work on arrays (what fit_reference / estimate_window wrap).
    bare = LossEstimator(n, FEATURES)
    fit_args = (ref["model"], ref["X"], ref["prediction"], ref["actual"])
    _, t_bare_fit = _best(lambda: bare.fit(*fit_args), repeat, cpu, "bare_fit")
    losses, t_bare_pred = _best(
        lambda: bare.predict_losses(pend["model"], pend["X"], pend["prediction"]), repeat, cpu, "bare_predict"
    )
    assert np.allclose(bare.coef, est.coef, rtol=1e-6, atol=1e-9)  # the same fit (rows in another order)

    def per_model(v: np.ndarray) -> np.ndarray:
        return (np.bincount(pend["model"], v, n) / np.maximum(np.bincount(pend["model"], minlength=n), 1))[fc]

    realised = per_model(np.abs(pend["prediction"] - pend["actual"]))
    expected = per_model(pend["expected"])
    ours, naive = out.estimated_mae_pending[fc], out.reference_mae[fc]
    fleet_acc = {
        "ours_median_rel_err_vs_realised": float(np.median(_rel(ours, realised))),
        "ours_mean_rel_err_vs_realised": float(np.mean(_rel(ours, realised))),
        "naive_median_rel_err_vs_realised": float(np.median(_rel(naive, realised))),
        "naive_mean_rel_err_vs_realised": float(np.mean(_rel(naive, realised))),
        "ours_median_rel_err_vs_expected": float(np.median(_rel(ours, expected))),
        "naive_median_rel_err_vs_expected": float(np.median(_rel(naive, expected))),
        "ours_fleet_total_vs_realised": float(ours.sum() / realised.sum() - 1),
        "naive_fleet_total_vs_realised": float(naive.sum() / realised.sum() - 1),
    }

    # NannyML per model, on a sample.
    os.environ["NML_DISABLE_USAGE_LOGGING"] = "1"  # no usage telemetry
    logging.getLogger("nannyml").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    _, t_import = _timed(lambda: __import__("nannyml"))
    import nannyml as nml

    cols = [f"f{j}" for j in range(k)]
    picks = rng.choice(n_fc, size=min(sample, n_fc), replace=False)
    nml_est, nml_times, nml_cpu = [], [], []
    for i in picks:
        r, a = slice(i * n_ref, (i + 1) * n_ref), slice(i * n_pend, (i + 1) * n_pend)
        ref_df = pd.DataFrame(ref["X"][r], columns=cols).assign(
            y_pred=ref["prediction"][r], y_true=ref["actual"][r]
        )
        ana_df = pd.DataFrame(pend["X"][a], columns=cols).assign(y_pred=pend["prediction"][a])
        t, c = time.perf_counter(), time.process_time()
        dle = nml.DLE(
            feature_column_names=cols,
            y_pred="y_pred",
            y_true="y_true",
            metrics=["mae"],
            chunk_number=1,
            hyperparameters={"verbose": -1},  # LGBMRegressor's defaults, quiet
        )
        dle.fit(ref_df)
        value = dle.estimate(ana_df).filter(period="analysis").data[("mae", "value")].iloc[0]
        nml_times.append(time.perf_counter() - t)
        nml_cpu.append(time.process_time() - c)
        nml_est.append(value)
    nml_arr = np.asarray(nml_est)
    per_model_nml = float(np.median(nml_times))
    ours_total = t_fit + t_est
    sample_acc = {
        "models": [int(fc[i]) for i in picks],
        "nannyml_mean_rel_err_vs_realised": float(np.mean(_rel(nml_arr, realised[picks]))),
        "ours_mean_rel_err_vs_realised": float(np.mean(_rel(ours[picks], realised[picks]))),
        "naive_mean_rel_err_vs_realised": float(np.mean(_rel(naive[picks], realised[picks]))),
        "nannyml_mean_rel_err_vs_expected": float(np.mean(_rel(nml_arr, expected[picks]))),
        "ours_mean_rel_err_vs_expected": float(np.mean(_rel(ours[picks], expected[picks]))),
        "ours_vs_nannyml_mean_rel_diff": float(np.mean(_rel(ours[picks], nml_arr))),
    }
    return {
        "forecasters": n_fc,
        "models": n,
        "reference_rows": n_ref,
        "pending_rows": n_pend,
        "shift_sd": shift,
        "seconds": {
            "join_actuals": t_join,
            "fit_reference": t_fit,
            "estimate_window": t_est,
            "estimate_log_update_first": t_log,
            "estimate_log_update_steady": t_log2,
            "bare_fit": t_bare_fit,
            "bare_predict": t_bare_pred,
            "ours_fit_plus_estimate": ours_total,
            "nannyml_import": t_import,
            "nannyml_per_model_median": per_model_nml,
            "nannyml_per_model_min": float(np.min(nml_times)),
            "nannyml_per_model_all": nml_times,
            "nannyml_per_model_cpu_median": float(np.median(nml_cpu)),
            "nannyml_fleet_extrapolated": per_model_nml * n_fc,
        },
        "cpu_seconds_of_best_run": cpu,
        "repeat": repeat,
        "ratio_nannyml_vs_ours_fleet": per_model_nml * n_fc / ours_total,
        "ratio_nannyml_vs_ours_fleet_cpu": float(np.median(nml_cpu))
        * n_fc
        / (cpu["fit_reference"] + cpu["estimate"]),
        "ours_per_model_us": ours_total / n_fc * 1e6,
        "rss_mb": {
            "with_data": rss_data,
            "before_estimation": rss_before,
            "peak_estimation": peak_ours,
            "process_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        },
        "pending_rows_estimated": int(np.isfinite(losses[0]).sum()),
        "ridge_chosen_share": {
            str(lam): float(np.mean(est.ridge_chosen[0, fc] == lam))
            for lam in np.unique(est.ridge_chosen[0, fc])
        },
        "accuracy_fleet": fleet_acc,
        "accuracy_sample": sample_acc,
    }


def _print(r: dict[str, Any]) -> None:
    s, c = r["seconds"], r["cpu_seconds_of_best_run"]
    print(
        f"\n== {r['forecasters']} forecasters, {r['reference_rows']} reference + {r['pending_rows']} pending rows each"
    )
    print(f"  join_actuals        {s['join_actuals']:7.2f} s  (quality does it anyway)")
    print(f"  fit_reference       {s['fit_reference']:7.2f} s  (bare fit on arrays {s['bare_fit']:.2f} s)")
    print(f"  estimate_window     {s['estimate_window']:7.2f} s  (bare predict {s['bare_predict']:.2f} s)")
    print(
        f"  EstimateLog.update  {s['estimate_log_update_steady']:7.2f} s  (with every pending row logged; "
        f"first, empty log: {s['estimate_log_update_first']:.2f} s)"
    )
    print(
        f"  ours fit + estimate {s['ours_fit_plus_estimate']:7.2f} s  = {r['ours_per_model_us']:.0f} us per model "
        f"(CPU {c['fit_reference'] + c['estimate']:.2f} s; fastest of {r['repeat']} runs each)"
    )
    print(
        f"  NannyML DLE         {s['nannyml_per_model_median']:7.3f} s per model (median of "
        f"{len(s['nannyml_per_model_all'])}, min {s['nannyml_per_model_min']:.3f} s, CPU "
        f"{s['nannyml_per_model_cpu_median']:.3f} s; import {s['nannyml_import']:.1f} s) -> "
        f"{s['nannyml_fleet_extrapolated']:.0f} s for the fleet (extrapolated) = "
        f"{r['ratio_nannyml_vs_ours_fleet']:.0f}x ours (CPU: {r['ratio_nannyml_vs_ours_fleet_cpu']:.0f}x)"
    )
    m = r["rss_mb"]
    print(f"  RSS: {m['with_data']:.0f} MB with the data, {m['before_estimation']:.0f} MB after join_actuals, "
          f"peak {m['peak_estimation']:.0f} MB during fit + estimate + log "
          f"(+{m['peak_estimation'] - m['before_estimation']:.0f} MB); process peak {m['process_peak']:.0f} MB")  # fmt: skip
    f, p = r["accuracy_fleet"], r["accuracy_sample"]
    print(
        f"  fleet accuracy (|estimate/realised - 1| per model): ours median {f['ours_median_rel_err_vs_realised']:.3f} "
        f"mean {f['ours_mean_rel_err_vs_realised']:.3f}; naive median {f['naive_median_rel_err_vs_realised']:.3f} "
        f"mean {f['naive_mean_rel_err_vs_realised']:.3f}; fleet total ours {f['ours_fleet_total_vs_realised']:+.3f} "
        f"naive {f['naive_fleet_total_vs_realised']:+.3f}; vs expected MAE ours {f['ours_median_rel_err_vs_expected']:.3f} "
        f"naive {f['naive_median_rel_err_vs_expected']:.3f}"
    )
    print(
        f"  sample ({len(p['models'])} models, mean |estimate/realised - 1|): NannyML "
        f"{p['nannyml_mean_rel_err_vs_realised']:.3f}, ours {p['ours_mean_rel_err_vs_realised']:.3f}, naive "
        f"{p['naive_mean_rel_err_vs_realised']:.3f}; vs expected NannyML {p['nannyml_mean_rel_err_vs_expected']:.3f} "
        f"ours {p['ours_mean_rel_err_vs_expected']:.3f}; ours vs NannyML {p['ours_vs_nannyml_mean_rel_diff']:.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.estimation_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--models", type=int, default=20000, help="forecasters")
    ap.add_argument("--ref", type=int, default=168, help="reference rows (with actuals) per forecaster")
    ap.add_argument("--pending", type=int, default=48, help="pending rows per forecaster")
    ap.add_argument("--shift", type=float, default=1.0, help="shift of the error's driver feature (in sd)")
    ap.add_argument("--nannyml-sample", type=int, default=10, help="models run with NannyML's DLE")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each of our steps (the fastest is shown)")
    ap.add_argument("--json", help="also write all figures to this file")
    a = ap.parse_args(argv)
    load = os.getloadavg()
    print(f"cores: {os.cpu_count()}, load average before: {' '.join(f'{x:.2f}' for x in load)}", flush=True)
    r = run(a.models, a.ref, a.pending, a.shift, a.nannyml_sample, a.seed, a.repeat)
    r["load_before"] = list(load)
    r["load_after"] = list(os.getloadavg())
    _print(r)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in r['load_after'])}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
