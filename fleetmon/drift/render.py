"""Drift results as Prometheus text exposition, rendered (and gzipped) once per drift cycle.

A fleet of 4,000 models has about 70,000 drift series; encoding them on every scrape would make each
scrape cost what a cycle costs. ``render(results)`` builds the text once; the exporter keeps the
returned ``RenderedDrift`` and answers every scrape with ``body`` or, when the scraper accepts gzip
(Prometheus does), with ``gzipped``. ``RenderedDrift.for_request(accept_encoding)`` picks one.

Series (labels ``customer``, ``building``, ``energy``, ``model`` on all of them):

- ``fleetmon_drift_column_score{...,column,stattest}``: Evidently's drift score (p-value or distance);
- ``fleetmon_drift_column_drifted{...,column,stattest}``: 1 if the column drifted, else 0;
- ``fleetmon_drift_column_computable{...,column,reason}``: 0 for a column that could not be computed,
  with the reason (``fleetmon.drift.types.NOT_COMPUTABLE_REASONS``); computable columns have no series;
- ``fleetmon_drift_share``, ``fleetmon_drift_dataset_drifted``, ``fleetmon_drift_columns``,
  ``fleetmon_drift_reference_rows``, ``fleetmon_drift_current_rows``;
- multivariate drift (``fleetmon.drift.multivariate``, NannyML's data reconstruction):
  ``fleetmon_drift_multivariate_error`` and its band, ``fleetmon_drift_multivariate_upper_threshold`` and
  ``fleetmon_drift_multivariate_lower_threshold`` (no series where NannyML has no lower threshold); the
  model drifted where the error is outside the band. A model whose score cannot be computed has only
  ``fleetmon_drift_multivariate_computable{reason} 0``.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterable
from dataclasses import dataclass

from fleetmon.config import ModelKey
from fleetmon.drift.multivariate import MultivariateResult
from fleetmon.drift.types import DriftResult

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_FAMILIES = [
    ("fleetmon_drift_column_score", "Drift score of a column (p-value or distance, per the stattest label), as "
     "Evidently computes it; cached from the last drift cycle."),
    ("fleetmon_drift_column_drifted", "1 if the column drifted (score beyond the stattest's threshold), else 0; "
     "cached from the last drift cycle."),
    ("fleetmon_drift_column_computable", "0 for a column whose drift could not be computed, with the reason "
     "(computable columns have no series); cached from the last drift cycle."),
    ("fleetmon_drift_share", "Share of drifted columns among the computable ones (0..1); cached from the last "
     "drift cycle."),
    ("fleetmon_drift_dataset_drifted", "1 if the share of drifted columns reached the configured drift share "
     "(Evidently's dataset drift), else 0; cached from the last drift cycle."),
    ("fleetmon_drift_columns", "Number of columns tested for drift; cached from the last drift cycle."),
    ("fleetmon_drift_reference_rows", "Rows in the reference window of the last drift cycle."),
    ("fleetmon_drift_current_rows", "Rows in the current window of the last drift cycle."),
    ("fleetmon_drift_multivariate_error", "Multivariate drift of the input features: mean PCA reconstruction "
     "error of the current window (NannyML's data reconstruction); cached from the last drift cycle."),
    ("fleetmon_drift_multivariate_upper_threshold", "Upper end of the reconstruction error's band (reference "
     "chunks' mean + k standard deviations); cached from the last drift cycle."),
    ("fleetmon_drift_multivariate_lower_threshold", "Lower end of the band (absent where it would be <= 0, as "
     "NannyML drops it); cached from the last drift cycle."),
    ("fleetmon_drift_multivariate_computable", "0 for a model whose multivariate drift could not be computed, "
     "with the reason (computable models have no series); cached from the last drift cycle."),
]  # fmt: skip


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(x: float) -> str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x))


@dataclass(frozen=True)
class RenderedDrift:
    body: bytes
    gzipped: bytes
    series: int

    def for_request(self, accept_encoding: str | None) -> tuple[bytes, dict[str, str]]:
        """The bytes and headers to answer a scrape with."""
        headers = {"Content-Type": CONTENT_TYPE}
        if accept_encoding and "gzip" in accept_encoding.lower():
            headers["Content-Encoding"] = "gzip"
            return self.gzipped, headers
        return self.body, headers


def _base(k: ModelKey) -> str:
    return (
        f'customer="{_esc(k.customer)}",building="{_esc(k.building)}",'
        f'energy="{_esc(k.energy)}",model="{_esc(k.model)}"'
    )


def render_text(
    results: Iterable[DriftResult], multivariate: Iterable[MultivariateResult] = ()
) -> tuple[str, int]:
    """The exposition text of these results (families in a fixed order) and its number of series."""
    lines: dict[str, list[str]] = {name: [] for name, _ in _FAMILIES}
    for r in results:
        base = _base(r.key)
        for c in r.columns:
            col = _esc(c.column)
            if c.drifted is None or c.score is None:
                lines["fleetmon_drift_column_computable"].append(
                    f'fleetmon_drift_column_computable{{{base},column="{col}",reason="{_esc(c.error or "unknown")}"}} 0'
                )
                continue
            lab = f'{base},column="{col}",stattest="{_esc(c.stattest)}"'
            lines["fleetmon_drift_column_score"].append(
                f"fleetmon_drift_column_score{{{lab}}} {_num(c.score)}"
            )
            lines["fleetmon_drift_column_drifted"].append(
                f"fleetmon_drift_column_drifted{{{lab}}} {int(c.drifted)}"
            )
        lines["fleetmon_drift_share"].append(f"fleetmon_drift_share{{{base}}} {_num(r.share_drifted)}")
        lines["fleetmon_drift_dataset_drifted"].append(
            f"fleetmon_drift_dataset_drifted{{{base}}} {int(r.dataset_drift)}"
        )
        lines["fleetmon_drift_columns"].append(f"fleetmon_drift_columns{{{base}}} {len(r.columns)}")
        lines["fleetmon_drift_reference_rows"].append(
            f"fleetmon_drift_reference_rows{{{base}}} {r.n_reference}"
        )
        lines["fleetmon_drift_current_rows"].append(f"fleetmon_drift_current_rows{{{base}}} {r.n_current}")
    for mv in multivariate:
        base = _base(mv.key)
        if mv.error is not None:
            lines["fleetmon_drift_multivariate_computable"].append(
                f'fleetmon_drift_multivariate_computable{{{base},reason="{_esc(mv.error)}"}} 0'
            )
            continue
        lines["fleetmon_drift_multivariate_error"].append(
            f"fleetmon_drift_multivariate_error{{{base}}} {_num(mv.reconstruction_error)}"
        )
        lines["fleetmon_drift_multivariate_upper_threshold"].append(
            f"fleetmon_drift_multivariate_upper_threshold{{{base}}} {_num(mv.upper_threshold)}"
        )
        if mv.lower_threshold is not None:
            lines["fleetmon_drift_multivariate_lower_threshold"].append(
                f"fleetmon_drift_multivariate_lower_threshold{{{base}}} {_num(mv.lower_threshold)}"
            )
    out: list[str] = []
    n = 0
    for name, help_text in _FAMILIES:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} gauge")
        out.extend(lines[name])
        n += len(lines[name])
    return "\n".join(out) + "\n", n


def render(
    results: Iterable[DriftResult],
    compresslevel: int = 6,
    multivariate: Iterable[MultivariateResult] = (),
) -> RenderedDrift:
    """Render once per cycle: the exposition bytes and their gzip, ready for every scrape."""
    text, n = render_text(results, multivariate)
    body = text.encode("utf-8")
    # mtime=0: the same results give the same bytes
    return RenderedDrift(
        body=body, gzipped=gzip.compress(body, compresslevel=compresslevel, mtime=0), series=n
    )
