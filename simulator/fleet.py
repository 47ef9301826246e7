"""The demo fleet: customers and buildings generated deterministically from a seed.

``generate_fleet(seed, customers, buildings)`` returns validated ``Customer`` objects (the same model the
config uses); ``fleet_yaml`` renders them as the ``customers:`` file the main config includes
(``fleet.include``). The same seed and size always give the same fleet, on any machine: only Python's
``random.Random`` (a stable, documented generator) is used here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fleetmon.config import Building, Customer


@dataclass(frozen=True)
class Town:
    name: str
    latitude: float
    longitude: float
    # FMI-style observation station id (an fmisid-like number, as the FMI open data API uses)
    station: str
    region: str


TOWNS: tuple[Town, ...] = (
    Town("Helsinki", 60.1699, 24.9384, "100971", "south"),
    Town("Espoo", 60.2055, 24.6559, "874863", "south"),
    Town("Vantaa", 60.2934, 25.0378, "100968", "south"),
    Town("Turku", 60.4518, 22.2666, "100949", "west"),
    Town("Tampere", 61.4978, 23.7610, "101124", "west"),
    Town("Pori", 61.4851, 21.7974, "101064", "west"),
    Town("Vaasa", 63.0951, 21.6165, "101462", "west"),
    Town("Seinäjoki", 62.7903, 22.8403, "101486", "west"),
    Town("Lahti", 60.9827, 25.6612, "101152", "south"),
    Town("Hämeenlinna", 60.9959, 24.4643, "101150", "south"),
    Town("Kotka", 60.4664, 26.9458, "101030", "east"),
    Town("Lappeenranta", 61.0587, 28.1887, "101237", "east"),
    Town("Jyväskylä", 62.2426, 25.7473, "101339", "east"),
    Town("Kuopio", 62.8924, 27.6770, "101580", "east"),
    Town("Joensuu", 62.6010, 29.7636, "101608", "east"),
    Town("Oulu", 65.0121, 25.4651, "101786", "north"),
    Town("Rovaniemi", 66.5039, 25.7294, "101920", "north"),
)

# building type -> (relative frequency, volume range in m³)
BUILDING_TYPES: dict[str, tuple[float, tuple[int, int]]] = {
    "office": (0.25, (8_000, 60_000)),
    "school": (0.15, (6_000, 35_000)),
    "hospital": (0.07, (40_000, 200_000)),
    "retail": (0.15, (3_000, 45_000)),
    "residential": (0.28, (2_500, 25_000)),
    "station": (0.10, (800, 6_000)),
}

CUSTOMER_NAMES = (
    "Aalto Kiinteistöt Oy",
    "Kaleva Facilities Oy",
    "Pohjola Asunnot Oy",
    "Sampo Kiinteistöhallinta Oy",
    "Revontuli Health Properties",
    "Saimaa Schools Consortium",
    "Lumi Retail Oy",
    "Tapiola Housing Foundation",
    "Rautatie Asemat Oy",
    "Kallio Office Parks Oy",
    "Väinö Public Buildings",
    "Kuura Logistics Oy",
)
STREETS = (
    "Mannerheimintie",
    "Hämeenkatu",
    "Kauppakatu",
    "Rantatie",
    "Koulukatu",
    "Asemakatu",
    "Puistokatu",
    "Teollisuuskatu",
    "Sairaalakatu",
    "Kirkkokatu",
)


def _ids_width(n: int) -> int:
    return max(3, len(str(n)))


def generate_fleet(
    seed: int = 42, customers: int = 4, buildings: int = 20, customer_prefix: str = "c"
) -> list[Customer]:
    """A deterministic fleet: ``customers`` customers sharing ``buildings`` buildings as evenly as possible.

    Customer ids are ``{prefix}01``..; building ids ``{customer}-b001``.. (numbered within the customer).
    """
    if customers < 1 or buildings < 1:
        raise ValueError("a fleet needs at least one customer and one building")
    rng = random.Random(f"fleetmon-demo-fleet:{seed}")
    types = list(BUILDING_TYPES)
    weights = [BUILDING_TYPES[t][0] for t in types]
    names = list(CUSTOMER_NAMES)
    rng.shuffle(names)
    cwidth = max(2, len(str(customers)))
    out: list[Customer] = []
    for ci in range(customers):
        cid = f"{customer_prefix}{ci + 1:0{cwidth}d}"
        n_b = buildings // customers + (1 if ci < buildings % customers else 0)
        # A customer owns buildings in one to three towns.
        towns = rng.sample(TOWNS, k=rng.randint(1, 3))
        base_name = names[ci % len(names)]
        name = base_name if ci < len(names) else f"{base_name} {ci // len(names) + 1}"
        bwidth = _ids_width(n_b)
        blds: list[Building] = []
        for bi in range(n_b):
            town = rng.choice(towns)
            btype = rng.choices(types, weights)[0]
            lo, hi = BUILDING_TYPES[btype][1]
            volume = round(rng.uniform(lo, hi), -1)
            blds.append(
                Building(
                    id=f"{cid}-b{bi + 1:0{bwidth}d}",
                    name=f"{rng.choice(STREETS)} {rng.randint(1, 120)}, {town.name} ({btype})",
                    building_type=btype,
                    volume_m3=volume,
                    weather_station=town.station,
                    latitude=round(town.latitude + rng.uniform(-0.04, 0.04), 5),
                    longitude=round(town.longitude + rng.uniform(-0.08, 0.08), 5),
                )
            )
        out.append(Customer(id=cid, name=name, team=f"team-{towns[0].region}", buildings=blds))
    return out


def fleet_dict(customers: list[Customer]) -> dict[str, Any]:
    """The ``customers:`` document (only the fields the generator sets)."""
    return {
        "customers": [
            {
                "id": c.id,
                "name": c.name,
                "team": c.team,
                "buildings": [
                    b.model_dump(
                        include={
                            "id",
                            "name",
                            "building_type",
                            "volume_m3",
                            "weather_station",
                            "latitude",
                            "longitude",
                        }
                    )
                    for b in c.buildings
                ],
            }
            for c in customers
        ]
    }


def fleet_yaml(customers: list[Customer], seed: int) -> str:
    header = (
        "# The demo fleet, generated by `fleetmon demo fleet` -- do not edit by hand.\n"
        f"# seed={seed} customers={len(customers)} buildings={sum(len(c.buildings) for c in customers)}\n"
    )
    body = yaml.safe_dump(fleet_dict(customers), sort_keys=False, allow_unicode=True, width=110)
    return header + body


def write_fleet(path: Path, customers: list[Customer], seed: int) -> None:
    """Write the fleet file atomically (temp name + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(fleet_yaml(customers, seed), encoding="utf-8")
    tmp.replace(path)
