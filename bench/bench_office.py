"""The park office's figures and the overview page on bench_api.py's history in InfluxDB.

    .venv/bin/python bench/bench_api.py --days 30 --data DIR   # once: backfills DIR (minutes)
    .venv/bin/python bench/bench_office.py DIR

Prints the month's and today's figures (api/summary.py, cold then warm), the month's counter deltas of every
meter alone, and the overview page once its figures are computed (first view, then p50/p95 of 20 views).
The store's timeout is raised so that a loaded machine gives slow figures rather than errors.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from smartpark.api import kpis
from smartpark.api.app import create_app
from smartpark.api.summary import summarise
from smartpark.core.catalog import default_catalog
from smartpark.core.clock import zone
from smartpark.core.reference import default_reference
from smartpark.core.registry import Registry
from smartpark.core.settings import Settings
from smartpark.core.store.influx import InfluxStore

from harness import start_influxd

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def seconds(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(tmp: Path) -> None:
    influx = start_influxd(tmp / "influxd")
    try:
        run(tmp, influx.url)
    finally:
        influx.stop()


def run(tmp: Path, url: str) -> None:
    from factories import ServedApp  # tests/ is on the path once harness is imported

    registry = Registry(f"sqlite:///{tmp / 'meta.sqlite'}")
    store = InfluxStore(url, "bench", default_catalog(), timeout_s=600)
    ref, settings = default_reference(), Settings(_env_file=None, data_dir=tmp)  # type: ignore[call-arg]
    today = datetime.now(zone()).date()
    tomorrow = today + timedelta(days=1)
    sites = registry.sites()
    for label in ("cold", "warm"):
        month = seconds(lambda: summarise(registry, store, ref, settings, today.replace(day=1), tomorrow, sites))
        day = seconds(lambda: summarise(registry, store, ref, settings, today, tomorrow, sites))
        print(f"{label}: month figures {month:.1f} s, today's {day:.1f} s", flush=True)
    p = kpis.period(zone(), today.replace(day=1), tomorrow)
    rules = kpis.CounterRules.of(settings.counter_max_gap_s, settings.counter_max_per_h)
    usage = seconds(lambda: kpis.energy_usage(store, ref, kpis.energy_meters(registry.devices()), None, p,
                                              rules=rules))
    print(f"energy usage of every meter, month: {usage:.1f} s", flush=True)
    app = create_app(Settings(_env_file=None, data_dir=tmp, api_warm_kpis=False), registry=registry,  # type: ignore[call-arg]
                     store=store, catalog=default_catalog())
    served = ServedApp(app)
    client = served.client
    client.post("/login", content=f"api_key={registry.create_api_key('admin', [])}", headers=FORM)
    first = seconds(lambda: client.get("/", timeout=600))
    while 'data-kpi="pending"' in client.get("/", timeout=600).text:
        time.sleep(2)
    samples = sorted(seconds(lambda: client.get("/", timeout=600)) * 1000 for _ in range(20))
    print(f"overview with figures: first view {first:.1f} s, p50 {statistics.median(samples):.0f} ms, "
          f"p95 {samples[round(0.95 * 19)]:.0f} ms", flush=True)
    served.close()
    store.close()
    registry.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
