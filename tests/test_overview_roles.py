"""The overview's site power is its main meters' (registry roles), not every meter's: issue 12 saw the steel
works at 202,559 kW while its substation read 117.5 MW."""

from __future__ import annotations

from pathlib import Path

from smartpark.api.overview import site_cards
from smartpark.core.catalog import default_catalog
from smartpark.core.points import Point
from smartpark.core.store.base import TimeSeriesStore

from factories import now_ms, park_registry, park_yaml

PARK = park_yaml("p-park", ["id: incomer, kind: energy_meter, role: main",
                            "id: rolling-mill, kind: energy_meter, role: sub, parent: incomer",
                            "id: furnace, kind: energy_meter, parent: incomer"], steel_area=1000)


def test_site_power_is_the_main_meters(store: TimeSeriesStore, tmp_path: Path) -> None:
    registry = park_registry(tmp_path, PARK)
    ts = now_ms() - 5_000
    store.write([Point("energy", "steel", d, ts - i * 3_600_000, {"power_kw": kw})
                 for d, kw in (("incomer", 100.0), ("rolling-mill", 60.0), ("furnace", 30.0)) for i in range(3)])
    (card,) = site_cards(store, registry, registry.sites(), default_catalog(), stale_s=300)
    assert {label: value for label, value, _ in card.figures}["power"] == 100.0  # not 190
    assert "<polyline" in card.power_24h
    registry.close()
