"""Model outputs: reading prediction and actual records, validating them, keeping a window in memory,
and computing per-model quality (see docs/formats.md "Model outputs" and docs/metrics.md).

Modules:
  - ``records``: read JSON lines / CSV / Parquet / SQL rows into raw batches; validate them against the
    fleet (accepted typed rows + rejections with a reason).
  - ``store``: the in-memory window of predictions and actuals (dedup, eviction, the join).
  - ``quality``: vectorised per-model quality over the configured windows.
  - ``sources``: file globs and SQL queries, read incrementally; ``state`` remembers what was read.
  - ``quarantine``: rejected rows, kept in a JSON lines file with the reason.
  - ``drift_jobs``: the per-model ``DriftJob``s (rolling or fixed reference) for a drift backend.
"""
