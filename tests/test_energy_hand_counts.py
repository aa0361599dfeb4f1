"""Energy and greening KPIs against hand counts, through the real ingest (MQTT in, store) and the API, on
Mosquitto + InfluxDB and on the embedded broker + SQLite store (issue 12, acceptance 1).

Every expected figure below is written out by hand from the readings the test publishes; the comments
show the arithmetic. Site "works" (Asia/Shanghai), November 2026:

- ``m1`` main meter (rated 1,000 kW), a reading every minute on Nov 1 and 2 (and one at Oct 31 23:59):
  +10 kWh a minute; on Nov 1 at 06:00 its counter jumps by 500,000 kWh (implausible: excluded, reported);
  on Nov 2 at 12:00 the meter is replaced and its first reading is 7 kWh (a reset: 7 counted). Also gas
  +2 Nm3, coal +0.5 t and steam +0.25 t a minute.
- ``s15`` sub-meter under m1, a reading every 15 minutes (30 s past), +25 kWh each, all month.
- ``s60`` sub-meter under m1, a reading every hour, +50 kWh each, all month.
- ``g1`` green-area sensor, hourly on Nov 1 local: 40,000 m2 from 00:00 to 07:00, 44,500 m2 from 08:00.

Site "plant" of a park in Europe/Berlin: a 15-minute main meter over 24-26 October 2026, whose 25th is
25 hours long (daylight saving ends), and a green sensor on that day.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from smartpark.api.app import create_app
from smartpark.core.catalog import default_catalog
from smartpark.core.mqtt import Endpoint
from smartpark.core.registry import Registry, parse_park_file
from smartpark.core.settings import Settings
from smartpark.core.store.base import TimeSeriesStore
from smartpark.core.store.embedded import EmbeddedStore
from smartpark.core.store.influx import InfluxStore, quote_ident
from smartpark.ingest.service import IngestService

from factories import Publisher, ServedApp, forget_session, payload, wait_for
from servers import free_port

MIN, HOUR = 60_000, 3_600_000

WORKS_PARK = """
park: {id: hand-park, name: Hand-counted park, region: northeast, timezone: Asia/Shanghai}
sites:
  - id: works
    name: Works
    enterprise: Works Co.
    industry: steel
    area_m2: 250000
    devices:
      - {id: m1, kind: energy_meter, role: main, rated_kw: 1000}
      - {id: s15, kind: energy_meter, role: sub, parent: m1, rated_kw: 200}
      - {id: s60, kind: energy_meter, parent: m1}
      - {id: g1, kind: greening}
"""

BERLIN_PARK = """
park: {id: dst-park, name: A park with daylight saving, region: national, timezone: Europe/Berlin}
sites:
  - id: plant
    name: Plant
    enterprise: Plant GmbH
    industry: electrical
    area_m2: 10000
    devices:
      - {id: q15, kind: energy_meter}
      - {id: lawn, kind: greening}
"""

SHANGHAI, BERLIN = ZoneInfo("Asia/Shanghai"), ZoneInfo("Europe/Berlin")
NOV1 = int(datetime(2026, 11, 1, tzinfo=SHANGHAI).timestamp() * 1000)  # = 2026-10-31T16:00Z


def m1_readings() -> list[tuple[int, dict[str, float]]]:
    out = []
    for i in range(-1, 2880):  # Oct 31 23:59 .. Nov 2 23:59, local
        if i < 360:
            kwh = 5000.0 + 10 * (i + 1)
        elif i < 2160:
            kwh = 505_000.0 + 10 * (i + 1)  # the jump of 500,000 at Nov 1 06:00
        else:
            kwh = 7.0 + 10 * (i - 2160)  # replaced at Nov 2 12:00: first reading 7
        out.append((NOV1 + i * MIN, {"energy_kwh": kwh, "gas_nm3": 100.0 + 2 * (i + 1), "coal_t": 0.5 * (i + 1),
                                     "steam_t": 0.25 * (i + 1)}))
    return out


def works_readings() -> dict[str, list[tuple[int, dict[str, float]]]]:
    return {
        "m1": m1_readings(),
        "s15": [(NOV1 + k * 15 * MIN + 30_000, {"energy_kwh": 100.0 + 25 * (k + 1)}) for k in range(-1, 2880)],
        "s60": [(NOV1 + h * HOUR, {"energy_kwh": 1000.0 + 50 * (h + 1)}) for h in range(-1, 720)],
        "g1": [(NOV1 + h * HOUR, {"green_area_m2": 40_000.0 if h < 8 else 44_500.0}) for h in range(24)],
    }


def berlin_readings() -> dict[str, list[tuple[int, dict[str, float]]]]:
    start = int(datetime(2026, 10, 24, tzinfo=BERLIN).timestamp() * 1000)
    end = int(datetime(2026, 10, 27, tzinfo=BERLIN).timestamp() * 1000)
    oct25 = int(datetime(2026, 10, 25, tzinfo=BERLIN).timestamp() * 1000)
    steps = (end - start) // (15 * MIN)  # 24 + 25 + 24 hours of quarter hours = 292
    return {
        "q15": [(start + k * 15 * MIN, {"energy_kwh": 2000.0 + 25 * (k + 1)}) for k in range(-1, steps)],
        "lawn": [(oct25 + h * HOUR, {"green_area_m2": 1000.0 if h < 3 else 2000.0}) for h in range(25)],
    }


# ------------------------------------------------------------------------------------------------ pipeline


class Platform:
    """The ingest on a broker, a store, a registry with a park, and the API served over HTTP."""

    def __init__(self, kind: str, park_yaml: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.registry = Registry(f"sqlite:///{tmp_path / 'meta.sqlite'}")
        self.registry.init()
        self.registry.load_park(parse_park_file(park_yaml))
        client = f"smartpark-ingest-{uuid.uuid4().hex[:8]}"
        self.settings = Settings(_env_file=None, data_dir=tmp_path, ingest_client_id=client,  # type: ignore[call-arg]
                                 ingest_batch_age_s=0.1, retention_days=3650, store_forward_days=3650)
        creds: dict[str, Any]
        if kind == "embedded":
            from smartpark.broker import EmbeddedBroker

            ingest_pw, tester_pw = secrets.token_hex(8), secrets.token_hex(8)
            self.host, self.port = "127.0.0.1", free_port()
            logins = {"smartpark-ingest": ingest_pw, "smartpark-tester": tester_pw}  # service accounts
            broker = EmbeddedBroker(self.registry, self.host, self.port, logins)
            broker.start()
            request.addfinalizer(broker.stop)
            self.store: TimeSeriesStore = EmbeddedStore(tmp_path / "ts.sqlite", default_catalog())
            self.store.init()
            creds = {"username": "smartpark-ingest", "password": ingest_pw, "mqtt5": False}
            pub = {"username": "smartpark-tester", "password": tester_pw}
        else:
            server = request.getfixturevalue("mosquitto")
            self.store = _influx_store(request)
            self.host, self.port = server.host, server.port
            creds, pub = {"username": None, "password": None, "mqtt5": True}, {"mqtt5": True}
        self.kind = kind
        login = Endpoint(self.host, self.port, creds["username"], creds["password"])
        self.ingest = IngestService(self.settings, self.store, self.registry, default_catalog(), endpoint=login,
                                    mqtt5=creds["mqtt5"])
        self.ingest.start()
        self.publisher = Publisher(self.host, self.port, **pub)
        self.served = ServedApp(create_app(self.settings, registry=self.registry, store=self.store,
                                           catalog=default_catalog()))
        self.api = self.served.client
        self.api.headers["Authorization"] = f"Bearer {self.registry.create_api_key('admin', [])}"

    def publish(self, site: str, readings: dict[str, list[tuple[int, dict[str, float]]]]) -> None:
        """Store-and-forward batches of 250 readings per device, then wait for the ingest to commit them all."""
        sent = 0
        for device, rows in readings.items():
            for at in range(0, len(rows), 250):
                batch = {"readings": [{"ts": ts, "metrics": m} for ts, m in rows[at:at + 250]]}
                self.publisher.publish(f"smartpark/v1/{site}/{device}/telemetry", payload(batch))
                sent += 1
        wait_for(lambda: self.ingest.stats.counters["messages_committed"] >= sent, timeout=60)
        assert self.ingest.dead_letters.counts() == {}

    def get(self, path: str, **params: str) -> Any:
        resp = self.api.get(path, params=params)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def close(self) -> None:
        self.served.close()
        self.publisher.close()
        self.ingest.stop()
        self.registry.close()
        if self.kind != "embedded":
            forget_session(self.host, self.port, self.settings.ingest_client_id)


def _influx_store(request: pytest.FixtureRequest) -> InfluxStore:
    """A store on a database of its own in the session's influxd (a module's fixture cannot take the
    function-scoped influx_store), dropped at the end."""
    store = InfluxStore(request.getfixturevalue("influxd").url, f"t_{uuid.uuid4().hex}", default_catalog())
    store.init()

    def drop() -> None:
        store.query(f"DROP DATABASE {quote_ident(store.database)}", with_db=False)
        store.close()

    request.addfinalizer(drop)
    return store


KINDS = ["embedded", pytest.param("mosquitto-influx", marks=[pytest.mark.influx, pytest.mark.mosquitto])]


@pytest.fixture(scope="module", params=KINDS)
def works(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    platform = Platform(request.param, WORKS_PARK, tmp_path_factory.mktemp("works"), request)
    platform.publish("works", works_readings())
    yield platform
    platform.close()


@pytest.fixture(params=KINDS)
def berlin(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Platform]:
    platform = Platform(request.param, BERLIN_PARK, tmp_path, request)
    platform.publish("plant", berlin_readings())
    yield platform
    platform.close()


def energy(platform: Platform, site: str, start: str, end: str) -> dict[str, Any]:
    return platform.get(f"/v1/sites/{site}/kpis/energy", start=start, end=end)  # type: ignore[no-any-return]


def amounts(kpi: dict[str, Any]) -> dict[str, float]:
    return {c["carrier"]: c["amount"] for c in kpi["carriers"]}


def meters(kpi: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["device"]: m for m in kpi["meters"]}


# --------------------------------------------------------------------------------------------------- tests


def test_day_totals_are_the_main_meter_with_breakdown_and_unmetered(works: Platform) -> None:
    kpi = energy(works, "works", "2026-11-01", "2026-11-02")
    # m1 on Nov 1: 1,440 steps of the day; 1,439 of 10 kWh and the 06:00 jump of 500,010 left out
    assert amounts(kpi) == {"electricity": 14_390.0, "natural_gas": 2_880.0, "steam": 360.0, "coal": 720.0}
    by = meters(kpi)
    assert by["s15"]["amounts"] == {"energy_kwh": 2_400.0}  # 96 quarter hours x 25 (the old query: 2,375)
    assert by["s60"]["amounts"] == {"energy_kwh": 1_200.0}  # 24 hours x 50
    assert (by["s15"]["role"], by["s15"]["parent"], by["s60"]["role"]) == ("sub", "m1", "sub")  # s60: default
    # unmetered under m1: 14,390 - 2,400 - 1,200
    assert by["m1"]["unmetered"]["energy_kwh"] == 10_790.0
    assert by["m1"]["role"] == "main"
    # 14,390 x 0.1229 + 2,880 x 1.33 + 360 x 128.6 + 720 x 714.3 = 566,190.931 kgce
    assert kpi["total_tce"] == pytest.approx(566.190931)
    assert [(d["day"], d["amounts"]["energy_kwh"]) for d in kpi["days"]] == [("2026-11-01", 14_390.0)]


def test_implausible_jump_is_excluded_and_reported(works: Platform) -> None:
    kpi = energy(works, "works", "2026-11-01", "2026-11-02")
    (event,) = kpi["counter_events"]
    assert (event["device"], event["metric"], event["kind"], event["at"]) == (
        "m1", "energy_kwh", "implausible", "2026-11-01T06:00:00+08:00")
    assert (event["step"], event["excluded"], event["counted"]) == (500_010.0, 500_010.0, 0.0)
    assert kpi["excluded"] == {"energy_kwh": 500_010.0}


def test_reset_counts_the_first_reading_of_the_new_meter(works: Platform) -> None:
    kpi = energy(works, "works", "2026-11-02", "2026-11-03")
    # 720 steps of 10 before 12:00, the new meter's first reading 7, then 719 steps of 10
    assert amounts(kpi)["electricity"] == 14_397.0
    (event,) = kpi["counter_events"]
    # the old meter read 505,000 + 10 x 2,160 = 526,600 at 11:59
    assert (event["kind"], event["at"], event["reading"], event["step"], event["counted"]) == (
        "reset", "2026-11-02T12:00:00+08:00", 7.0, -526_593.0, 7.0)
    assert kpi["excluded"] == {}


def test_days_add_up_to_the_month_for_meters_every_1_15_and_60_minutes(works: Platform) -> None:
    month = energy(works, "works", "2026-11-01", "2026-12-01")
    by = meters(month)
    assert by["m1"]["amounts"]["energy_kwh"] == 28_787.0  # 14,390 + 14,397
    assert by["s15"]["amounts"]["energy_kwh"] == 72_000.0  # 30 days x 2,400
    assert by["s60"]["amounts"]["energy_kwh"] == 36_000.0  # 30 days x 1,200
    assert amounts(month)["electricity"] == 28_787.0  # main meters only: not 28,787 + 72,000 + 36,000
    days: dict[str, float] = {"m1": 0.0, "s15": 0.0, "s60": 0.0}
    for day in range(1, 31):
        end = f"2026-11-{day + 1:02d}" if day < 30 else "2026-12-01"
        kpi = meters(energy(works, "works", f"2026-11-{day:02d}", end))
        for device in days:
            days[device] += kpi[device]["amounts"].get("energy_kwh", 0.0) if device in kpi else 0.0
    assert days == {"m1": 28_787.0, "s15": 72_000.0, "s60": 36_000.0}  # exactly


def test_co2_by_scope(works: Platform) -> None:
    kpi = energy(works, "works", "2026-11-01", "2026-11-02")
    co2 = {c["carrier"]: (c["scope"], c["co2_t"]) for c in kpi["co2"]}
    assert co2 == {
        "electricity": (2, pytest.approx(7.370558)),  # 14,390 kWh x 0.5122 (northeast grid, 2023)
        "natural_gas": (1, pytest.approx(6.227136)),  # 2,880 Nm3 x 2.1622
        "steam": (2, pytest.approx(106.56)),  # 360 t x 296 (purchased steam)
        "coal": (1, pytest.approx(1_368.0)),  # 720 t x 1,900
    }
    assert kpi["co2_scope1_t"] == pytest.approx(1_374.227136)  # 6.227136 + 1,368
    assert kpi["co2_scope2_t"] == pytest.approx(113.930558)  # 7.370558 + 106.56
    assert kpi["co2_total_t"] == pytest.approx(1_488.157694)
    assert kpi["co2_electricity_t"] == kpi["co2_t"] == pytest.approx(7.370558)


def test_greening_on_local_days(works: Platform) -> None:
    green = works.get("/v1/sites/works/kpis/greening", start="2026-11-01", end="2026-11-02")
    # (8 x 40,000 + 16 x 44,500) / 24 = 43,000 (UTC days would give (40,000 + 44,500) / 2 = 42,250)
    assert green["green_area_m2"] == 43_000.0
    assert green["coverage_pct"] == pytest.approx(17.2)  # 43,000 / 250,000


def test_park_and_data_quality_record(works: Platform) -> None:
    park = works.get("/v1/kpis", start="2026-11-01", end="2026-12-01")
    assert amounts(park["energy"])["electricity"] == 28_787.0
    assert park["energy"]["excluded"] == {"energy_kwh": 500_010.0}
    record = works.get("/v1/data-quality", start="2026-11-01", end="2026-12-01")
    assert [(e["device"], e["kind"], e["at"], e["excluded"], e["counted"]) for e in record] == [
        ("m1", "implausible", "2026-11-01T06:00:00+08:00", 500_010.0, 0.0),
        ("m1", "reset", "2026-11-02T12:00:00+08:00", 0.0, 7.0)]
    assert works.get("/v1/data-quality", start="2026-11-01", end="2026-12-01", kind="reset")[0]["counted"] == 7.0


def test_daylight_saving_day_has_25_hours(berlin: Platform) -> None:
    kpi = energy(berlin, "plant", "2026-10-24", "2026-10-27")
    # quarter hours x 25 kWh: 96 on the 24th, 100 on the 25th (clocks go back at 03:00), 96 on the 26th
    assert [(d["day"], d["amounts"]["energy_kwh"]) for d in kpi["days"]] == [
        ("2026-10-24", 2_400.0), ("2026-10-25", 2_500.0), ("2026-10-26", 2_400.0)]
    assert amounts(kpi)["electricity"] == 7_300.0
    day = energy(berlin, "plant", "2026-10-25", "2026-10-26")
    assert amounts(day)["electricity"] == 2_500.0
    assert day["co2_electricity_t"] == pytest.approx(1.3265)  # 2,500 x 0.5306 (national grid, 2023)
    green = berlin.get("/v1/sites/plant/kpis/greening", start="2026-10-25", end="2026-10-26")
    # 25 local hours: (3 x 1,000 + 22 x 2,000) / 25 = 1,880
    assert green["green_area_m2"] == pytest.approx(1_880.0)
