"""A second simulator run continues every counter from what the first one stored (issue 12: a run that
started each counter at its seeded value again put 26 GWh into one minute of one meter), and the demo park's
energy stays within its main meters' rated power."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from smartpark.api import kpis
from smartpark.core.catalog import default_catalog
from smartpark.core.reference import default_reference
from smartpark.core.registry import Device, read_park_file
from smartpark.core.registry.parkfile import DeviceSpec
from smartpark.core.settings import Settings
from smartpark.core.store.base import TimeSeriesStore
from smartpark.platform import demo_park_path
from smartpark.simulators.modes import Window, run_backfill
from smartpark.simulators.resume import stored_counters
from smartpark.simulators.scenario import default_scenario

from factories import now_ms

HOUR = 3_600_000


def test_a_second_run_continues_the_stored_counters(store: TimeSeriesStore) -> None:
    park, scenario, catalog = read_park_file(demo_park_path()), default_scenario(), default_catalog()
    start = (now_ms() - 4 * HOUR) // HOUR * HOUR
    run_backfill(store, park, scenario, Window(start, start + 2 * HOUR, 0.0), catalog)
    before = stored_counters(store, park, catalog, start + 2 * HOUR)
    assert before["steel-works-main-substation"]["coal_t"] > 0
    run_backfill(store, park, scenario, Window(start + 2 * HOUR, start + 3 * HOUR, 0.0), catalog)  # a new run

    devices = [d for s in park.sites for d in s.devices if d.kind == "energy_meter"]
    p = kpis.Period(start, start + 3 * HOUR, ZoneInfo(park.park.timezone))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    rules = kpis.CounterRules.of(settings.counter_max_gap_s, settings.counter_max_per_h)
    meters = [_device(site.id, d) for site in park.sites for d in site.devices if d in devices]
    usage = kpis.energy_usage(store, default_reference(), meters, None, p, rules=rules)
    # no reset, no implausible step, no gap where the second run took over (the old simulator restarted
    # every counter at its seeded value: a decrease of hours of consumption on every meter)
    assert usage.events == []
    for site in park.sites:
        mains = [d for d in meters if d.site_id == site.id and d.role == "main"]
        kwh = sum(usage.total("energy_kwh", d.id) for d in mains)
        assert 0 < kwh <= sum(d.rated_kw or 0.0 for d in mains) * 3, site.id  # 3 hours at rated power at most


def _device(site: str, spec: DeviceSpec) -> Device:
    """A registry row of a park-file device, not stored anywhere."""
    return Device(id=spec.id, site_id=site, kind=spec.kind, role=spec.role, parent_id=spec.parent,
                  rated_kw=spec.rated_kw)
