"""Compiled (numba, ``nogil``) kernels of the fleet drift engine.

Each kernel works on a block of rows (one row = one numerical column of one model; a block holds
hundreds of models) and releases the GIL, so the engine's two worker threads run them on both cores. Sorting itself is numpy's (``np.sort``, SIMD-accelerated and
also GIL-free; numba's quicksort is several times slower on data with many repeated values). The arithmetic follows scipy's and Evidently's formulas term by
term (same divisions, same order inside a term), so a statistic differs from Evidently's only by the
order of a final sum (scipy uses a BLAS dot product / pairwise sums): a few ulps, far below 1e-9.
The KS statistic is bit-identical (a max of identical quotients).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Columns of the numerical kernel's output row.
CUR_N = 0  # finite values in the current window
N_UNION = 1  # distinct values in reference + current (Evidently's n_values)
KS_D = 2  # two-sample KS statistic (reference = data1)
WD = 3  # first Wasserstein distance, not yet normed
Z_STAT = 4  # proportions Z statistic (NaN when n_values > 2)
Z_CONST = 5  # 1.0: both windows hold the same single value (Evidently: p = 1)
CHI_STAT = 6  # Pearson chi-square of current counts against scaled reference counts (n_values <= 5)
CHI_DF = 7
JS = 8  # Jensen-Shannon distance of value frequencies (reference nunique <= 20)
CUR_NUNIQUE = 9
N_OUT = 10


@njit(nogil=True, cache=True, error_model="numpy")
def reference_kernel(raw, nrows, vals, cnts, offs, stats):  # pragma: no cover - compiled
    """Per column of ``raw[:, :nrows]`` (each row sorted by ``np.sort``): drop non-finite values, keep
    distinct values and counts.

    Writes the distinct values to ``vals[offs[i]:offs[i] + k]`` (``offs`` filled here, capacity
    ``raw.shape[0] * nrows``), counts to ``cnts`` and ``stats[i] = (n, nunique, std)``, where std is the
    population standard deviation (``np.std`` of the finite values, as Evidently's normed Wasserstein).
    """
    ncols = raw.shape[0]
    pos = 0
    for i in range(ncols):
        s = _finite(raw[i, :nrows])
        m = s.shape[0]
        offs[i] = pos
        k = 0
        j = 0
        while j < m:
            v = s[j]
            c = 0
            while j < m and s[j] == v:
                c += 1
                j += 1
            vals[pos + k] = v
            cnts[pos + k] = c
            k += 1
        pos += k
        std = np.nan
        if m > 0:
            total = 0.0
            for r in range(m):
                total += s[r]
            mean = total / m
            sq = 0.0
            for r in range(m):
                d = s[r] - mean
                sq += d * d
            std = np.sqrt(sq / m)
        stats[i, 0] = m
        stats[i, 1] = k
        stats[i, 2] = std
    offs[ncols] = pos


@njit(nogil=True, cache=True, error_model="numpy")
def numeric_kernel(ref_vals, ref_cnts, ref_lo, ref_hi, ref_n, cur, ncur, out):  # pragma: no cover - compiled
    """For each row of ``cur`` (one numerical column of one model, sorted by ``np.sort``; many models in
    one block): merge its finite values with the cached reference column, the distinct values and
    counts ``ref_vals[ref_lo[i]:ref_hi[i]]`` / ``ref_cnts[...]`` of ``ref_n[i]`` finite values, and compute
    every statistic Evidently's rule may pick for it into ``out[i]``."""
    ncols = cur.shape[0]
    for i in range(ncols):
        cs = _finite(cur[i, :ncur])
        m = cs.shape[0]
        a = ref_lo[i]
        nr_u = ref_hi[i] - a
        n_r = int(ref_n[i])
        out[i, CUR_N] = m
        for k in range(1, N_OUT):
            out[i, k] = np.nan
        if m == 0 or n_r == 0:
            continue
        # union of distinct values with both counts, in ascending order
        rc = np.empty(nr_u + m, np.int64)
        cc = np.empty(nr_u + m, np.int64)
        uv = np.empty(nr_u + m)
        p = 0
        q = 0
        k = 0
        cur_u = 0
        while p < nr_u or q < m:
            if q >= m or (p < nr_u and ref_vals[a + p] <= cs[q]):
                v = ref_vals[a + p]
            else:
                v = cs[q]
            r_c = 0
            if p < nr_u and ref_vals[a + p] == v:
                r_c = ref_cnts[a + p]
                p += 1
            c_c = 0
            while q < m and cs[q] == v:
                c_c += 1
                q += 1
            if c_c > 0:
                cur_u += 1
            uv[k] = v
            rc[k] = r_c
            cc[k] = c_c
            k += 1
        out[i, N_UNION] = k
        out[i, CUR_NUNIQUE] = cur_u
        # KS (scipy ks_2samp: cdf1 - cdf2 at every value, side='right') and Wasserstein (_cdf_distance)
        cum_r = 0
        cum_c = 0
        dmax = -np.inf
        dmin = np.inf
        wd = 0.0
        for t in range(k):
            cum_r += rc[t]
            cum_c += cc[t]
            diff = cum_r / n_r - cum_c / m
            if diff > dmax:
                dmax = diff
            if diff < dmin:
                dmin = diff
            if t + 1 < k:
                wd += abs(diff) * (uv[t + 1] - uv[t])
        min_s = -dmin
        if min_s < 0.0:
            min_s = 0.0
        if min_s > 1.0:
            min_s = 1.0
        out[i, KS_D] = min_s if min_s > dmax else dmax
        out[i, WD] = wd
        # Z-test (Evidently z_stattest): share of values other than the smallest key
        if k <= 2:
            if nr_u == 1 and cur_u == 1 and k == 1:
                out[i, Z_CONST] = 1.0
            else:
                x1 = n_r - rc[0]
                x2 = m - cc[0]
                p1 = float(x1) / n_r
                p2 = float(x2) / m
                pp = float(p1 * n_r + p2 * m) / (n_r + m)
                out[i, Z_STAT] = (p1 - p2) / np.sqrt(pp * (1 - pp) * (1.0 / n_r + 1.0 / m))
        # chi-square (Evidently chisquare_stattest -> scipy.stats.chisquare)
        if k <= 5:
            k_norm = m / n_r
            stat = 0.0
            for t in range(k):
                f_exp = rc[t] * k_norm
                d = cc[t] - f_exp
                stat += d * d / f_exp
            out[i, CHI_STAT] = stat
            out[i, CHI_DF] = k - 1
        # Jensen-Shannon on value frequencies (Evidently get_binned_data, value-count branch)
        if nr_u <= 20:
            out[i, JS] = js_counts(rc[:k], cc[:k], n_r, m)


@njit(nogil=True, cache=True)
def _finite(row):  # pragma: no cover - compiled
    """The finite part of a row sorted by np.sort: -inf sort first, then numbers, +inf, NaN last."""
    lo = 0
    hi = row.shape[0]
    while lo < hi and not np.isfinite(row[lo]):
        lo += 1
    while hi > lo and not np.isfinite(row[hi - 1]):
        hi -= 1
    return row[lo:hi]


@njit(nogil=True, cache=True, error_model="numpy")
def js_counts(rc, cc, n_r, n_c):  # pragma: no cover - compiled
    """scipy.spatial.distance.jensenshannon(rc / n_r, cc / n_c), base e."""
    k = rc.shape[0]
    pr = np.empty(k)
    pc = np.empty(k)
    sr = 0.0
    sc = 0.0
    for t in range(k):
        pr[t] = rc[t] / n_r
        pc[t] = cc[t] / n_c
        sr += pr[t]
        sc += pc[t]
    js = 0.0
    for t in range(k):
        x = pr[t] / sr
        y = pc[t] / sc
        mm = (x + y) / 2.0
        js += _rel_entr(x, mm) + _rel_entr(y, mm)
    return np.sqrt(js / 2.0)


@njit(nogil=True, cache=True)
def _rel_entr(x, y):  # pragma: no cover - compiled
    if x > 0.0 and y > 0.0:
        return x * np.log(x / y)
    if x == 0.0 and y >= 0.0:
        return 0.0
    return np.inf
