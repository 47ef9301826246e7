"""Which buildings a shard owns (issue 14, scale-out): shard ``index`` of ``count`` owns a building when a
stable hash of its customer and building ids, modulo ``count``, is ``index``.

The hash is over customer and building only, so the four models of a building (electricity and heating,
forecaster and anomaly detector) always land on the same shard; it is CRC-32 of the ids (not Python's
``hash``, which is salted per process), so every process, restart and machine agrees. A fleet of many
buildings spreads evenly: each shard's share is within a few percent of ``1 / count`` from a few thousand
buildings on (tests/test_sharding.py measures it).

What names no building (a malformed row, a run without fleet tags, a registered model no pattern maps) is
shard 0's, so it is counted and quarantined exactly once over all shards. The platform exporter shards by
app instead (``owns_name``): an app's files and Log Analytics rows all go to one shard.

Where it is applied: ``FleetConfig.models(shard)`` / ``buildings(shard)`` (what a shard exports),
``fleetmon.outputs.records.own_rows`` (prediction and actual rows), the MLflow collector (runs and
registered models) and the platform logs collector (apps). Configured as ``shard: i/N`` or ``--shard i/N``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass


def stable_hash(*parts: object) -> int:
    """A 32-bit hash that is the same in every process (Python's ``hash`` of str is salted)."""
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode())


def building_hash(customer: str, building: str) -> int:
    """The same 32-bit value in every process for a (customer, building)."""
    return stable_hash(customer, building)


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``; the default, 0 of 1, owns everything."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"a shard count must be 1 or more, not {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index {self.index} is outside 0..{self.count - 1}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/N"``, as the ``--shard`` flag takes it (``"0/2"``: the first of two)."""
        index, sep, count = text.partition("/")
        try:
            if not sep:
                raise ValueError
            return cls(int(index), int(count))
        except ValueError as e:
            detail = f": {e}" if str(e) else ""
            raise ValueError(f"a shard is written i/N (e.g. 0/2), not {text!r}{detail}") from None

    def owns(self, customer: object, building: object) -> bool:
        """Whether this shard owns the building; a record without both ids is shard 0's."""
        if self.count == 1:
            return True
        if not customer or not building:
            return self.index == 0
        return building_hash(str(customer), str(building)) % self.count == self.index

    def owns_name(self, name: object) -> bool:
        """Whether this shard owns a thing that is not a building's, e.g. a platform app, by its name; a
        thing without a name is shard 0's."""
        if self.count == 1:
            return True
        if not name:
            return self.index == 0
        return stable_hash(str(name)) % self.count == self.index

    def select(self, buildings: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The (customer, building) pairs this shard owns, in the given order."""
        return [(c, b) for c, b in buildings if self.owns(c, b)]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
