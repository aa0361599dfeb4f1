"""Late data end to end: one scenario through the real ingest, alert engine and InfluxDB, once as is and once
with a three-hour outage of the gateway carrying a sinter stack and its site's meters (store-and-forward flush
when the link returns). After the flush both runs give the same hourly episodes, the same KPIs for the day and
the same rollup rows; the ground truth (``--truth``) decides what the hourly episodes must be.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from smartpark.alerts import AlertEngine
from smartpark.api import kpis
from smartpark.core.catalog import default_catalog
from smartpark.core.emissions import o2_correct
from smartpark.core.reference import Reference, load_reference
from smartpark.core.registry import Registry, parse_park_file
from smartpark.core.settings import Settings
from smartpark.core.store.base import SeriesQuery
from smartpark.core.store.influx import InfluxStore, quote_ident
from smartpark.core.store.rollups import RollupRepairer
from smartpark.ingest.service import IngestService
from smartpark.platform import alert_engine
from smartpark.simulators.runner import PublishRun
from smartpark.simulators.scenario import parse_scenario
from smartpark.simulators.truth import TruthWriter, read_truth

from factories import clear_retained, endpoint_of, forget_session, now_ms, park_yaml, wait_for
from servers import InfluxServer, MosquittoServer

pytestmark = [pytest.mark.mosquitto, pytest.mark.influx]
HOUR, MINUTE = 3_600_000, 60_000
TZ = ZoneInfo("Asia/Shanghai")
PARK = park_yaml("late-park", ["id: steel-gateway, kind: gateway", "id: sinter-cems, kind: cems, source_type: sinter",
                              "id: steel-main-substation, kind: energy_meter",
                              "id: steel-meter-01, kind: energy_meter"], steel_area=500000)
# NOx at 1.6x its limit (O2-corrected) for two hours, inside a three-hour outage in run B
SCENARIO = """
seed: 5
upsets: false
network: {duplicate_rate: 0, reorder_rate: 0}
events:
  - {kind: exceedance, device: sinter-cems, start_min: 150, duration_min: 120, pollutant: nox, magnitude: 1.6}
{outage}
"""
OUTAGE = "  - {kind: outage, device: steel-gateway, start_min: 120, duration_min: 180}"
RUN_MIN = 7 * 60


@dataclass
class Result:
    episodes: list[tuple[int, int | None, float]]
    emissions: list[tuple[int, float | None, int, str]]
    energy: list[tuple[int, float]]  # the site's kWh per hour (reset-aware counter deltas)
    rollups: dict[str, list[list[object]]]
    stored: int
    truth: list[dict]


def hourly_truth(truth: list[dict], ref: Reference, need: int) -> set[int]:
    """Local hours whose mean of valid O2-corrected NOx minute values exceeds the sinter limit (ground truth)."""
    source = ref.source_type("sinter")
    by_hour: dict[int, list[float]] = {}
    for r in truth:
        m = r["metrics"]
        if r["device"] != "sinter-cems" or r["flags"] or "nox_mg_m3" not in m:
            continue
        value = o2_correct(m["nox_mg_m3"], m["o2_pct"], source, ref.emissions.o2_correction_max_pct)
        if value is not None:
            by_hour.setdefault(kpis.period(TZ, None, None).hour_of()(r["ts"]), []).append(value)
    limit = source.limits_mg_m3["nox"]
    return {h for h, v in by_hour.items() if len(v) >= need and sum(v) / len(v) > limit}


@contextmanager
def pipeline(tmp: Path, influxd: InfluxServer, mosquitto: MosquittoServer
             ) -> Iterator[tuple[Settings, Registry, InfluxStore, AlertEngine]]:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(_env_file=None, data_dir=tmp, ingest_client_id=f"smartpark-ingest-{tag}",  # type: ignore[call-arg]
                        alerts_client_id=f"smartpark-alerts-{tag}", ingest_batch_age_s=0.2, alerts_eval_interval_s=0.2)
    registry = Registry(f"sqlite:///{tmp / 'meta.sqlite'}")
    registry.init()
    registry.load_park(parse_park_file(PARK))
    store = InfluxStore(influxd.url, f"late_{tag}", default_catalog())
    store.init()
    ingest = IngestService(settings, store, registry, default_catalog(), endpoint=endpoint_of(mosquitto), mqtt5=True)
    engine = alert_engine(settings, registry, store, default_catalog(), endpoint=endpoint_of(mosquitto), mqtt5=True)
    ingest.start()
    engine.start()
    try:
        yield settings, registry, store, engine
    finally:
        engine.stop()
        ingest.stop()
        for client in (settings.ingest_client_id, settings.alerts_client_id):
            forget_session(mosquitto.host, mosquitto.port, client)
        store.query(f"DROP DATABASE {quote_ident(store.database)}", with_db=False)
        store.close()
        registry.close()


def _count(store: InfluxStore) -> int:
    series = store.query('SELECT count("o2_pct") FROM "emissions"')[0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def run(tmp: Path, influxd: InfluxServer, mosquitto: MosquittoServer, start: int, outage: bool) -> Result:
    tmp.mkdir()
    ref = load_reference(None)
    with pipeline(tmp, influxd, mosquitto) as (_settings, registry, store, engine), \
            TruthWriter(tmp / "truth.jsonl") as truth:
        scenario = parse_scenario(SCENARIO.replace("{outage}", OUTAGE if outage else ""))
        park = parse_park_file(PARK)
        stats = PublishRun(park, scenario, endpoint_of(mosquitto), start_ms=start,
                           end_ms=start + RUN_MIN * MINUTE, speed=0, truth=truth).run()
        truth.close()
        wait_for(lambda: _count(store) >= stats.readings // 3, 60)  # each device as many readings
        stored = _count(store)
        wait_for(lambda: engine.processed >= stats.messages and engine.repo.pending_count() == 0, 60)
        engine.tick()  # the schedule runs every 0.2 s anyway; one more after the last message
        RollupRepairer(store, 60).run_once()
        site = registry.site("steel")
        stacks = [d for d in registry.devices() if d.kind == "cems"]
        day = kpis.Period(start, start + RUN_MIN * MINUTE, TZ)
        emissions = kpis.emissions_kpi(store, ref, site, stacks, day, min_minutes=45, hours=True)  # type: ignore[arg-type]
        eps, _ = engine.repo.episodes(sites=None, active=None)
        rollups = {rp: store.query(f'SELECT * FROM "{rp}"."emissions"')[0]  # noqa: S608 (constant names)
                   .get("series", [{}])[0].get("values", []) for rp in ("rp_1m", "rp_1h")}
        energy = store.series(SeriesQuery("energy", "energy_kwh", start, start + RUN_MIN * MINUTE, HOUR, "delta",
                                          site="steel", group_by="site"))
        return Result(
            episodes=sorted((e.started_ms, e.ended_ms, round(e.value or 0, 6)) for e in eps
                            if e.rule_id == "nox-hourly-mean"),
            emissions=[(int(h.start.timestamp() * 1000), h.mean_mg_m3, h.valid_minutes, h.status)
                       for s in emissions.stacks for p in s.pollutants if p.pollutant == "nox" for h in p.hours or []],
            energy=energy[0].points if energy else [],
            rollups=rollups,
            stored=stored,
            truth=[r for r in read_truth(tmp / "truth.jsonl") if r["type"] == "reading"])


def test_an_outage_flushed_late_gives_the_same_episodes_kpis_and_rollups(
        tmp_path: Path, influxd: InfluxServer, mosquitto: MosquittoServer) -> None:
    start = (now_ms() - 10 * HOUR) // HOUR * HOUR
    try:
        on_time = run(tmp_path / "on-time", influxd, mosquitto, start, outage=False)
        flushed = run(tmp_path / "outage", influxd, mosquitto, start, outage=True)
    finally:  # the simulated devices' retained statuses and wills must not reach later tests on this broker
        clear_retained(mosquitto.host, mosquitto.port, [f"smartpark/v1/steel/{d.id}/status"
                                                        for s in parse_park_file(PARK).sites for d in s.devices])
    assert flushed.truth == on_time.truth  # the same readings, only delivered later
    assert on_time.stored == flushed.stored == sum(1 for r in on_time.truth if r["device"] == "sinter-cems")
    exceeding = hourly_truth(on_time.truth, load_reference(None), 45)
    assert exceeding  # the ground truth's exceeding hours: the KPIs and the episodes must find exactly them
    assert {h for h, _, _, status in on_time.emissions if status == "exceeding"} == exceeding
    first, last = min(exceeding), max(exceeding)
    assert [(s, e) for s, e, _ in on_time.episodes] == [(first, last + HOUR)]  # one run, resolved after it
    assert flushed.episodes == on_time.episodes
    assert flushed.emissions == on_time.emissions
    assert flushed.energy == on_time.energy
    assert len(on_time.energy) == RUN_MIN // 60
    assert flushed.rollups == on_time.rollups
    assert on_time.rollups["rp_1h"]
