"""The shard ownership rule: stable, total, disjoint, balanced, a building's models together."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from fleetmon.sharding import Shard, building_hash

BUILDINGS = [(f"c{c:03d}", f"b{b:04d}") for c in range(100) for b in range(100)]  # 10,000 buildings


@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_every_building_has_exactly_one_owner_and_shares_are_even(count: int) -> None:
    owners: Counter[int] = Counter()
    for c, b in BUILDINGS:
        mine = [i for i in range(count) if Shard(i, count).owns(c, b)]
        assert len(mine) == 1, (c, b, mine)
        owners[mine[0]] += 1
    assert sum(owners.values()) == len(BUILDINGS)
    for i in range(count):
        assert abs(owners[i] / len(BUILDINGS) - 1 / count) < 0.02, owners


def test_the_hash_is_the_same_in_another_process() -> None:
    # Python's own hash() of str is salted per process: ownership must not depend on it.
    code = "from fleetmon.sharding import building_hash; print(building_hash('acme', 'b0042'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) == building_hash("acme", "b0042")
    # and it depends on both ids, in order
    assert building_hash("acme", "b0042") != building_hash("b0042", "acme")
    assert building_hash("a", "bc") != building_hash("ab", "c")


def test_select_keeps_order_and_the_shards_partition_the_fleet() -> None:
    parts = [Shard(i, 3).select(BUILDINGS) for i in range(3)]
    assert sorted(x for p in parts for x in p) == sorted(BUILDINGS)
    assert all(p == sorted(p, key=BUILDINGS.index) for p in parts)
    assert Shard().select(BUILDINGS) == BUILDINGS


def test_parse_and_bad_shards_have_clear_errors() -> None:
    assert Shard.parse("1/4") == Shard(1, 4) and str(Shard(1, 4)) == "1/4"
    for bad, msg in [
        ("2/2", "outside 0..1"),
        ("0/0", "1 or more"),
        ("x", "i/N"),
        ("1-2", "i/N"),
        ("a/2", "i/N"),
    ]:
        with pytest.raises(ValueError, match=msg):
            Shard.parse(bad)
