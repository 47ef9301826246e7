"""Multivariate drift benchmark: the batched data-reconstruction engine vs NannyML per model.

    .venv/bin/python -m benchmarks.multivariate_bench --models 40000 --json var/multivariate_bench.json
    .venv/bin/python -m benchmarks.multivariate_bench --models 4000     # quick

A generated fleet with the demo's 6 features (``benchmarks.drift_bench._features``: temperature at
0.1 degC, solar radiation, hour and day as int8, occupancy, humidity), 168 reference and 24 current rows
per model, as the model-outputs exporter builds its jobs (one float64 matrix per window block, each
job's windows a view of 6 feature rows plus the model's output row, ``prediction`` or
``anomaly_score``). drift_bench's features are almost uncorrelated (a linear method sees nothing to
break), so humidity is tied to temperature here (warmer air, lower relative humidity: r ~ -0.9); in
5 % of the models the current window's humidity values are shuffled among its rows: the same values,
so every marginal is unchanged, but the correlation is gone.

Printed and written (``--json``): the load average (2 cores, shared machine), one cold cycle of
``reconstruction_drift`` over the fleet (no cache: what a rolling reference costs every cycle; repeated
``--repeat`` times, each cold), a warm cycle (``FitCache``: references unchanged), models/s, peak RSS;
NannyML's ``DataReconstructionDriftCalculator`` per model (DataFrames, fit, calculate) timed on
``--sample`` models and extrapolated, the per-model cost ratio; a check that our numbers equal NannyML's
on those models (1e-9 relative); and how the broken models were seen: by the multivariate score, and by
a per-column KS test (scipy's ``ks_2samp``, any column p <= 0.05) on the sampled ones.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import time
import warnings

import numpy as np

from benchmarks.drift_bench import FEATURES, _features
from fleetmon.config import ModelKey
from fleetmon.drift.multivariate import FitCache, MultivariateResult, reconstruction_drift
from fleetmon.drift.types import DriftJob

os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")  # NannyML sends usage events to Segment otherwise

HUMIDITY = FEATURES.index("humidity")


def _window(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    """(m, 6, n) features of m models, humidity tied to temperature."""
    f = _features(rng, m, n, np.zeros(m))
    temp = f["outdoor_temperature"]
    f["humidity"] = np.round(np.clip(70 - 1.5 * (temp - 8) + 0.4 * (f["humidity"] - 70), 0, 100), 1)
    return np.stack([f[c].astype(np.float64) for c in FEATURES], axis=1)


def make_fleet(
    n_models: int, n_ref: int, n_cur: int, broken_share: float = 0.05, seed: int = 7, chunk: int = 2000
) -> tuple[list[DriftJob], np.ndarray]:
    """Exporter-like jobs and which models have a broken correlation in their current window."""
    rng = np.random.default_rng(seed)
    jobs: list[DriftJob] = []
    broken = np.zeros(n_models, bool)
    for start in range(0, n_models, chunk):
        m = min(chunk, n_models - start)
        windows = []
        for n in (n_ref, n_cur):
            x = _window(rng, m, n)
            out = np.einsum("mkn,k->mn", x, rng.normal(size=6)) + rng.normal(0, 1, (m, n))  # not a feature
            windows.append((x, out))
        is_broken = rng.random(m) < broken_share
        broken[start : start + m] = is_broken
        cur = windows[1][0]
        for b in np.flatnonzero(is_broken).tolist():
            cur[b, HUMIDITY] = rng.permutation(cur[b, HUMIDITY])
        # one matrix per window block, columns grouped by model, as drift_jobs.build_jobs builds it
        mats = []
        for (x, out), n in zip(windows, (n_ref, n_cur), strict=True):
            mat = np.empty((7, m * n), np.float64)
            mat[:6] = x.transpose(1, 0, 2).reshape(6, m * n)
            mat[6] = out.reshape(m * n)
            mats.append(mat)
        for j in range(m):
            i = start + j
            key = ModelKey(
                customer=f"c{i // 400:03d}",
                building=f"c{i // 400:03d}-b{(i // 4) % 100:03d}",
                energy=("electricity", "heating")[(i // 2) % 2],
                model=("forecast", "anomaly")[i % 2],
            )
            output = "prediction" if i % 2 == 0 else "anomaly_score"
            jobs.append(
                DriftJob(
                    key,
                    numerical=[*FEATURES, output],
                    reference_version=f"rolling:{i}:{n_ref}",
                    reference_values=mats[0][:, j * n_ref : (j + 1) * n_ref],
                    current_values=mats[1][:, j * n_cur : (j + 1) * n_cur],
                )
            )
    return jobs, broken


def _nannyml(job: DriftJob) -> tuple[dict, float]:
    """NannyML's numbers for one job (features only, reference chunks of the current window's size)."""
    import nannyml as nml
    import pandas as pd

    t0 = time.perf_counter()
    ref = pd.DataFrame({c: job.reference_values[k] for k, c in enumerate(FEATURES)})  # type: ignore[index]
    cur = pd.DataFrame({c: job.current_values[k] for k, c in enumerate(FEATURES)})  # type: ignore[index]
    calc = nml.DataReconstructionDriftCalculator(column_names=FEATURES, chunk_size=len(cur))
    calc.fit(ref)
    res = calc.calculate(cur).filter(period="analysis").to_df()
    seconds = time.perf_counter() - t0
    return {
        "value": float(res[("reconstruction_error", "value")].iloc[0]),
        "lower": calc.lower_threshold_value,
        "upper": calc.upper_threshold_value,
        "alert": bool(res[("reconstruction_error", "alert")].iloc[0]),
        "n_components": int(calc._pca.n_components_),
    }, seconds


def _same(r: MultivariateResult, nm: dict, rel: float = 1e-9) -> bool:
    if r.error is not None or r.drifted != nm["alert"] or r.n_components != nm["n_components"]:
        return False
    if (r.lower_threshold is None) != (nm["lower"] is None):
        return False
    pairs = [(r.reconstruction_error, nm["value"]), (r.upper_threshold, nm["upper"])]
    if nm["lower"] is not None:
        pairs.append((r.lower_threshold, nm["lower"]))  # type: ignore[arg-type]
    return all(math.isclose(a, b, rel_tol=rel, abs_tol=1e-12) for a, b in pairs)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(n_models: int, n_ref: int, n_cur: int, sample: int, repeat: int, threads: int | None) -> dict:
    out: dict = {"models": n_models, "features": len(FEATURES), "n_ref": n_ref, "n_cur": n_cur}
    out["cores"] = os.cpu_count()
    out["uptime_before"] = _uptime()
    t0 = time.perf_counter()
    jobs, broken = make_fleet(n_models, n_ref, n_cur)
    out["generate_s"] = time.perf_counter() - t0
    out["rss_after_generate_bytes"] = _peak_rss_bytes()
    out["broken_models"] = int(broken.sum())

    reconstruction_drift(jobs[:16], threads=threads)  # first call: imports, thread start-up
    cold = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        results = reconstruction_drift(jobs, threads=threads)
        cold.append(time.perf_counter() - t0)
    out["cold_cycle_s"] = cold
    out["cold_cycle_s_median"] = statistics.median(cold)
    out["models_per_s"] = n_models / out["cold_cycle_s_median"]
    out["uptime_after_cold"] = _uptime()
    cache = FitCache()
    reconstruction_drift(jobs, threads=threads, cache=cache)
    t0 = time.perf_counter()
    warm = reconstruction_drift(jobs, threads=threads, cache=cache)
    out["warm_cycle_s"] = time.perf_counter() - t0
    out["warm_equals_cold"] = all(
        a.drifted == b.drifted and math.isclose(a.reconstruction_error, b.reconstruction_error, rel_tol=1e-12)
        for a, b in zip(warm, results, strict=True)
    )
    del warm, cache
    out["peak_rss_bytes"] = _peak_rss_bytes()
    drifted = np.array([r.drifted for r in results])
    out["errors"] = sorted({r.error for r in results if r.error is not None})
    out["flagged_broken_share"] = float(drifted[broken].mean()) if broken.any() else math.nan
    out["flagged_intact_share"] = float(drifted[~broken].mean())

    # NannyML on a sample: half broken models, half intact
    rng = np.random.default_rng(0)
    b_idx, i_idx = np.flatnonzero(broken), np.flatnonzero(~broken)
    half = min(sample // 2, len(b_idx))
    idx = np.concatenate(
        [rng.choice(b_idx, half, replace=False), rng.choice(i_idx, sample - half, replace=False)]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # chunker and pandas warnings
        import logging

        logging.getLogger("nannyml").setLevel(logging.ERROR)  # "lower threshold overridden" per model
        _nannyml(jobs[int(idx[0])])  # first call pays imports
        timed = [_nannyml(jobs[int(i)]) for i in idx]
    out["nannyml_sample"] = len(idx)
    out["nannyml_per_model_s"] = sum(s for _, s in timed) / len(timed)
    out["nannyml_fleet_s_extrapolated"] = out["nannyml_per_model_s"] * n_models
    out["engine_per_model_s"] = out["cold_cycle_s_median"] / n_models
    out["cost_ratio_nannyml_vs_engine"] = out["nannyml_per_model_s"] / out["engine_per_model_s"]
    out["equal_to_nannyml"] = sum(
        int(_same(results[int(i)], nm)) for i, (nm, _) in zip(idx, timed, strict=True)
    )
    from scipy.stats import ks_2samp

    def ks_flags(rows: np.ndarray) -> int:  # any column with p <= 0.05
        flagged = 0
        for i in rows:
            job = jobs[int(i)]
            p = [ks_2samp(job.reference_values[k], job.current_values[k]).pvalue for k in range(6)]  # type: ignore[index]
            flagged += int(min(p) <= 0.05)
        return flagged

    out["broken_in_sample"] = int(half)
    out["broken_in_sample_flagged_by_ks"] = ks_flags(idx[:half])
    out["broken_in_sample_flagged_by_multivariate"] = int(sum(results[int(i)].drifted for i in idx[:half]))
    out["intact_in_sample"] = len(idx) - int(half)
    out["intact_in_sample_flagged_by_ks"] = ks_flags(idx[half:])
    out["intact_in_sample_flagged_by_multivariate"] = int(sum(results[int(i)].drifted for i in idx[half:]))
    out["uptime_after"] = _uptime()
    return out


def _print(r: dict) -> None:
    gib = 1024**3
    print(
        f"\n== {r['models']:,} models x {r['features']} features, reference {r['n_ref']} / current {r['n_cur']} rows"
    )
    print(f"   {r['cores']} cores; before: {r['uptime_before']}")
    print(f"   engine, cold cycle            {r['cold_cycle_s_median']:9.2f} s median of {', '.join(f'{x:.2f}' for x in r['cold_cycle_s'])}"
          f"  ({r['models_per_s']:,.0f} models/s)")  # fmt: skip
    print(f"   engine, warm cycle            {r['warm_cycle_s']:9.2f} s   (FitCache: references unchanged)")
    print(
        f"   NannyML per model             {r['nannyml_per_model_s'] * 1e3:9.1f} ms  (sample of {r['nannyml_sample']}) "
        f"-> fleet {r['nannyml_fleet_s_extrapolated']:,.0f} s extrapolated"
    )
    print(
        f"   per-model cost ratio          {r['cost_ratio_nannyml_vs_engine']:9,.0f} x (NannyML / engine, cold)"
    )
    print(
        f"   peak RSS                      {r['peak_rss_bytes'] / gib:9.2f} GiB (after generating the fleet: "
        f"{r['rss_after_generate_bytes'] / gib:.2f} GiB)"
    )
    print(f"   engine == NannyML on the sample: {r['equal_to_nannyml']}/{r['nannyml_sample']} models")
    print(
        f"   broken correlation ({r['broken_models']:,} models): {r['flagged_broken_share']:.1%} flagged; "
        f"intact models flagged: {r['flagged_intact_share']:.1%}"
    )
    print(
        f"   broken models in the sample: {r['broken_in_sample_flagged_by_multivariate']}/{r['broken_in_sample']} "
        f"flagged by the multivariate score, {r['broken_in_sample_flagged_by_ks']}/{r['broken_in_sample']} by per-column KS"
    )
    print(
        f"   intact models in the sample: {r['intact_in_sample_flagged_by_multivariate']}/{r['intact_in_sample']} "
        f"flagged by the multivariate score, {r['intact_in_sample_flagged_by_ks']}/{r['intact_in_sample']} by per-column KS"
    )
    print(f"   after: {r['uptime_after']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.multivariate_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--models", type=int, default=40000, help="fleet size (4000: quick)")
    ap.add_argument("--ref", type=int, default=168, help="reference rows per model")
    ap.add_argument("--cur", type=int, default=24, help="current rows per model")
    ap.add_argument("--sample", type=int, default=40, help="models timed with NannyML")
    ap.add_argument("--repeat", type=int, default=3, help="cold cycles timed")
    ap.add_argument("--threads", type=int, default=None, help="engine threads (default: up to 2)")
    ap.add_argument("--json", help="also write all figures to this file")
    a = ap.parse_args(argv)
    r = run(a.models, a.ref, a.cur, a.sample, a.repeat, a.threads)
    _print(r)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
