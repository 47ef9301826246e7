"""The series budget per model (docs/metrics.md, "Series budget per model") holds on the demo fleet: the
model-outputs exporter's series per model on average and at most, and every per-model family is in the
budget's table with who reads it."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from simulator.core import Simulator
from tests.demo_outputs import demo_config, exposition

ROOT = Path(__file__).resolve().parent.parent
BUDGET_AVERAGE, BUDGET_MAX = 50, 60  # docs/metrics.md states the same


@pytest.fixture(scope="module")
def per_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Counter[tuple[str, ...]]]]:
    tmp = tmp_path_factory.mktemp("budget")
    now = time.time()
    cfg = demo_config(tmp / "demo", tmp)
    sim = Simulator(cfg, start=now - 2 * 3600 / cfg.demo.time_scale, mlflow=False)
    try:
        sim.fast_forward(2)
    finally:
        sim.close()
    body = exposition(tmp / "demo", tmp, now).decode()
    families: dict[str, Counter[tuple[str, ...]]] = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            if "building" in s.labels and "model" in s.labels:
                key = tuple(s.labels[k] for k in ("customer", "building", "energy", "model"))
                families.setdefault(s.name, Counter())[key] += 1
    yield families


def test_outputs_series_per_model_within_the_budget(per_model: dict[str, Counter[tuple[str, ...]]]) -> None:
    total: Counter[tuple[str, ...]] = Counter()
    for counts in per_model.values():
        total.update(counts)
    assert len(total) == 80  # every model of the demo fleet
    average = sum(total.values()) / len(total)
    assert average <= BUDGET_AVERAGE, f"{average:.1f} series per model on average"
    assert max(total.values()) <= BUDGET_MAX, f"a model has {max(total.values())} series"
    assert average >= 0.7 * BUDGET_AVERAGE  # the budget is a measurement, not a guess far above it


def test_every_per_model_family_is_in_the_budget_table(
    per_model: dict[str, Counter[tuple[str, ...]]],
) -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text()
    section = doc[doc.index("## Series budget per model") :]
    section = section[: section.index("\n## ", 1)]
    assert f"{BUDGET_AVERAGE} on average and {BUDGET_MAX} at most" in section
    first_cells = re.findall(r"^\| (`[^|]+) \|", section, flags=re.M)
    rows = [name for cell in first_cells for name in re.findall(r"`([a-z_*]+)`", cell)]
    prefixes = [r[:-1] for r in rows if r.endswith("*")]
    for name in per_model:
        assert name in rows or any(name.startswith(p) for p in prefixes), f"{name} is not in the budget table"
