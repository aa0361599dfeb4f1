"""API latency on backfilled history in InfluxDB: p50/p95 of three calls, beside the store call alone.

    .venv/bin/python bench/bench_api.py [--days 30] [--step-s 60] [--runs 20] [--data DIR]

``--data DIR`` keeps influxd's data in DIR and reuses it on the next run with the same ``--days``/``--step-s``
(the backfill takes minutes); the history then ends when it was written, not now.

History: the demo park's ParkModel, every device every ``step_s`` for ``days`` (written in batches of 50,000
points). Calls, through the real served app (uvicorn, httpx keep-alive):
  series      24 h of 1-minute means of one meter's power        goal p95 < 100 ms
  overview    the overview page at / for an admin (every site)  goal p95 < 300 ms
  compliance  the month's emission compliance of the steel works goal p95 < 500 ms
Baseline: the same store call without the API (series; hour_sums with no hour cached, i.e. what a cold
compliance call costs), and "first": the first call of each. The API computes the emission hours of the last
31 days in the background at start (api/warm.py); the bench waits for that warm-up and prints how long it took.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

from smartpark.api.app import create_app
from smartpark.core.catalog import default_catalog
from smartpark.core.clock import now_ms
from smartpark.core.reference import default_reference
from smartpark.core.registry import Registry, read_park_file
from smartpark.core.settings import Settings
from smartpark.core.store.base import HourQuery, SeriesQuery
from smartpark.core.store.influx import InfluxStore
from smartpark.simulators.models import ParkModel

from harness import start_influxd

BATCH = 50_000
DEVICE, SITE = "steel-works-main-substation", "steel-works"


def backfill(store: InfluxStore, model: ParkModel, start: int, end: int, step_ms: int) -> int:
    from factories import model_points  # tests/ is on the path once harness is imported

    catalog, batch, total = default_catalog(), [], 0
    for ts in range(start, end, step_ms):
        batch += model_points(model, ts, catalog)
        if len(batch) >= BATCH:
            store.write(batch)
            total, batch = total + len(batch), []
    store.write(batch)
    return total + len(batch)


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float, float]:
    """(p50, p95, first call) in ms; the first call (cold caches) is not among the samples."""
    t = time.perf_counter()
    fn()
    first = (time.perf_counter() - t) * 1000
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))], first


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--step-s", type=int, default=60)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--data", type=Path, help="keep the backfilled history here and reuse it")
    args = ap.parse_args()
    tmp = args.data or Path(tempfile.mkdtemp(prefix="bench-api-"))
    tmp.mkdir(parents=True, exist_ok=True)
    influx = start_influxd(tmp / "influxd")
    try:
        run(influx.url, tmp, args)
    finally:
        influx.stop()


def run(url: str, tmp: Path, args: argparse.Namespace) -> None:
    from factories import ServedApp

    park = read_park_file(Path(str(resources.files("smartpark.core").joinpath("data/parks/demo.yaml"))))
    (tmp / "meta.sqlite").unlink(missing_ok=True)
    registry = Registry(f"sqlite:///{tmp / 'meta.sqlite'}")
    registry.init()
    registry.load_park(park)
    store = InfluxStore(url, "bench", default_catalog())
    store.init()
    marker = tmp / "backfill.json"
    done = json.loads(marker.read_text()) if args.data and marker.exists() else {}
    if done.get("days") == args.days and done.get("step_s") == args.step_s:
        now = done["now"]
        start = now - args.days * 86_400_000
        print(f"backfill: reusing {done['points']:,} points in {tmp} (written {iso_utc(now)})")
    else:
        now = now_ms() // 60_000 * 60_000
        start = now - args.days * 86_400_000
        t = time.perf_counter()
        n = backfill(store, ParkModel(park, seed=1, start_ms=start), start, now, args.step_s * 1000)
        print(f"backfill: {n:,} points ({args.days} d every {args.step_s} s) in {time.perf_counter() - t:.0f} s")
        if args.data:
            marker.write_text(json.dumps({"days": args.days, "step_s": args.step_s, "now": now, "points": n}))
    app = create_app(Settings(_env_file=None, data_dir=tmp), registry=registry, store=store,  # type: ignore[call-arg]
                     catalog=default_catalog())
    t = time.perf_counter()
    served = ServedApp(app)
    warmer = app.state.kpi_warmer  # computes every stacked site's last 31 days of emission hours at start
    while warmer is not None and warmer.rounds < 1:
        time.sleep(0.05)
    print(f"KPI warm-up after start: {time.perf_counter() - t:.1f} s (the API answers meanwhile)")
    key = registry.create_api_key("admin", [])
    client = served.client
    client.post("/login", content=f"api_key={key}", headers={"Content-Type": "application/x-www-form-urlencoded"})
    client.headers["Authorization"] = f"Bearer {key}"
    iso = lambda ms: datetime.fromtimestamp(ms / 1000, UTC).isoformat()  # noqa: E731
    day0 = (datetime.fromtimestamp(now / 1000, UTC) + timedelta(hours=8)).date()
    month = {"start": (day0 - timedelta(days=args.days - 1)).isoformat(), "end": (day0 + timedelta(days=1)).isoformat()}
    # the compliance KPI's store call, with no hour kept between calls (what every call cost before the cache)
    ref = default_reference()
    stacks = [d for d in registry.devices(SITE) if d.kind == "cems"]
    hours = HourQuery("emissions", tuple(ref.emissions.pollutants.values()), SITE, start, now,
                      tuple((d.id, ref.source_type(d.source_type).o2_ref_pct) for d in stacks),
                      o2_max_pct=ref.emissions.o2_correction_max_pct, valid_flags=tuple(ref.emissions.valid_flags))
    fresh_store = InfluxStore(url, "bench", default_catalog())  # no hour cache: every call computes
    calls = {
        "series": (lambda: _ok(client.get("/v1/series", params={
            "site": SITE, "device": DEVICE, "metric": "power_kw", "every": "1m",
            "start": iso(now - 86_400_000), "end": iso(now)})), 100,
            lambda: store.series(SeriesQuery("energy", "power_kw", now - 86_400_000, now, 60_000, "mean", SITE,
                                             DEVICE))),
        "overview": (lambda: _ok(client.get("/")), 300, None),
        "compliance": (lambda: _ok(client.get(f"/v1/sites/{SITE}/kpis/emissions", params=month)), 500,
                       lambda: fresh_store.hour_sums(hours)),
    }
    print(f"{'call':<12}{'p50 ms':>9}{'p95 ms':>9}{'goal':>8}{'first':>9}   baseline (store call alone, uncached) "
          "p50/p95 ms")
    for name, (call, goal, base) in calls.items():
        p50, p95, first = timed(call, args.runs)
        b = "{:.1f} / {:.1f}".format(*timed(base, args.runs)[:2]) if base else "-"
        print(f"{name:<12}{p50:>9.1f}{p95:>9.1f}{'<' + str(goal):>8}{first:>9.0f}   {b}")
    fresh_store.close()
    served.close()
    store.close()
    registry.close()


def iso_utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="minutes")


def _ok(resp: object) -> object:
    assert resp.status_code == 200, resp.text[:300]  # type: ignore[attr-defined]
    return resp


if __name__ == "__main__":
    main()
