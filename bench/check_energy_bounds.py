"""Each site's daily electricity (main meters) against its main meters' rated power x 24 h (issue 12, acceptance 2).

    SMARTPARK_DATA_DIR=d smartpark up            # a while, then Ctrl-C
    SMARTPARK_DATA_DIR=d smartpark simulate --mode backfill --days 1
    SMARTPARK_DATA_DIR=d smartpark up            # a while, then Ctrl-C
    SMARTPARK_DATA_DIR=d .venv/bin/python bench/check_energy_bounds.py [--days 2]

Reads the configured registry and store (embedded or InfluxDB) and prints, per local day and site, the main
meters' electricity as the KPIs count it, the bound, and beside them every meter's raw counter difference
with no bounds (what a naive sum would report) and what the counter rules excluded. Exits 1 if a site is over.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta

from smartpark.api import kpis
from smartpark.core.clock import park_zone
from smartpark.core.reference import load_reference
from smartpark.core.settings import load_settings
from smartpark.core.store.base import DAY_MS, SeriesQuery
from smartpark.platform import open_core


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=2, help="local days up to today")
    args = parser.parse_args()
    settings = load_settings()
    _, registry, store = open_core(settings)
    ref = load_reference(settings.reference_file)
    rules = kpis.CounterRules.of(settings.counter_max_gap_s, settings.counter_max_per_h)
    park = registry.park()
    tz = park_zone(park)
    today = datetime.now(tz).date()
    meters = kpis.energy_meters(registry.devices())
    over = 0
    for day in (today - timedelta(days=n) for n in range(args.days - 1, -1, -1)):
        p = kpis.period(tz, day, day + timedelta(days=1))
        usage = kpis.energy_usage(store, ref, meters, None, p, rules=rules)
        print(f"--- {day} (local)")
        for site in registry.sites():
            kpi = kpis.energy_kpi(usage, ref, park.region if park else "national", [site], meters, p=p)
            mains = [d for d in meters if d.site_id == site.id and kpis.role_of(d) == "main"]
            bound = sum(d.rated_kw or 0.0 for d in mains) * 24
            kwh = next(c.amount for c in kpi.carriers if c.metric == "energy_kwh")
            naive = SeriesQuery("energy", "energy_kwh", p.start_ms, p.end_ms, DAY_MS, "delta", site=site.id,
                                group_by="site", max_gap_ms=10**12)
            raw = sum(v for s in store.series(naive) for _, v in s.points)
            ok = not bound or kwh <= bound
            over += not ok
            print(f"{site.id:18s} {kwh:14,.0f} kWh  bound {bound:14,.0f}  {'ok' if ok else 'OVER'}  every meter, "
                  f"unbounded {raw:16,.0f}  excluded {kpi.excluded.get('energy_kwh', 0.0):16,.0f}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
