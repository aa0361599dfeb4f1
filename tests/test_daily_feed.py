"""The daily feed (issue 15, acceptance 4): after a local midnight, one signed `kpi.daily` event per site
reaches a real receiver through the webhook outbox, its figures equal the KPI endpoints' for that day, the
CSV carries the same; it is not sent again on the next rounds nor after a restart (a persisted mark)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from test_alerts import MANUAL_SCHEDULE, Env, Received, auth, start_env, verify_standard_webhook

from smartpark.alerts.models import Delivery
from smartpark.core.catalog import default_catalog
from smartpark.core.mqtt import Endpoint
from smartpark.core.points import Point
from smartpark.core.store.embedded import EmbeddedStore
from smartpark.platform import alert_engine

from factories import wait_for
from servers import MosquittoServer

pytestmark = pytest.mark.mosquitto
TZ = ZoneInfo("Asia/Shanghai")
MIN = 60_000


def day_points(day: date) -> list[Point]:
    """A day of minute meter readings (10 kWh a minute), two hours of a sinter stack (one exceeding), green."""
    t0 = int(datetime(day.year, day.month, day.day, tzinfo=TZ).timestamp() * 1000)
    meter = [Point("energy", "steel", "steel-meter", t0 + i * MIN, {"energy_kwh": 5000.0 + 10 * i, "coal_t": 0.01 * i})
             for i in range(-1, 1440)]
    stack = [Point("emissions", "steel", "sinter-cems", t0 + h * 3_600_000 + m * MIN,
                   {"nox_mg_m3": nox, "o2_pct": 16.0}) for h, nox in ((8, 40.0), (9, 70.0)) for m in range(60)]
    green = [Point("greening", "park-green", "green-1", t0 + h * 3_600_000, {"green_area_m2": 9000.0})
             for h in range(24)]
    return meter + stack + green


@pytest.fixture
def feed_env(tmp_path: Path, mosquitto: MosquittoServer) -> Iterator[Env]:
    store = EmbeddedStore(tmp_path / "ts.sqlite", default_catalog())
    store.init()
    gen = start_env(tmp_path, mosquitto, store, **MANUAL_SCHEDULE)
    yield next(gen)
    next(gen, None)
    store.close()


def midnight_after(day: date) -> int:
    nxt = day + timedelta(days=1)
    return int(datetime(nxt.year, nxt.month, nxt.day, tzinfo=TZ).timestamp() * 1000)


def test_kpi_daily_reaches_receiver_once_per_site_signed_and_equal_to_api(feed_env: Env, tmp_path: Path) -> None:
    e = feed_env
    day = datetime.now(TZ).date() - timedelta(days=1)
    e.store.write(day_points(day))
    city = e.api.post("/v1/alerts/webhooks", json={"url": e.receiver.url, "rules": ["kpi.daily"]},
                      headers=auth(e.admin)).json()
    e.api.post("/v1/alerts/webhooks", json={"url": e.receiver.url + "?alerts", "rules": ["sinter-nox-test"]},
               headers=auth(e.admin))  # an alerts-only subscription: no feed
    e.engine.reload()
    e.engine.tick(now=midnight_after(day) - 60_000)  # the first round sends the last closed day: the day before
    wait_for(lambda: e.repo.pending_count() == 0)
    assert {r.json["date"] for r in e.receiver.ok("kpi.daily")} == {(day - timedelta(days=1)).isoformat()}
    e.engine.tick(now=midnight_after(day) + 600_000)  # ten minutes past local midnight: the day has closed

    def of_day() -> list[Received]:
        return [r for r in e.receiver.ok("kpi.daily") if r.json["date"] == day.isoformat()]

    got = wait_for(lambda: len(of_day()) >= 2 and of_day())
    assert sorted(r.json["site"] for r in got) == ["park-green", "steel"]
    assert all(verify_standard_webhook(city["secret"], r.headers, r.body) for r in got)
    check_against_api(e, day, {r.json["site"]: r.json for r in got})

    e.engine.tick(now=midnight_after(day) + 700_000)  # the next rounds: not again
    e.engine.tick(now=midnight_after(day) + 3_600_000)
    e.engine.stop()
    again = alert_engine(e.settings, e.registry, e.store, default_catalog(), endpoint=Endpoint("127.0.0.1", 1),
                         mqtt5=True)  # a restart (never started: tick only)
    again.tick(now=midnight_after(day) + 7_200_000)
    with again.repo.session() as s:
        assert s.scalar(select(func.count()).where(Delivery.event_type == "kpi.daily")) == 4  # 2 days x 2 sites
    assert len(of_day()) == 2


def check_against_api(e: Env, day: date, sent: dict[str, dict[str, object]]) -> None:
    span = {"start": day.isoformat(), "end": (day + timedelta(days=1)).isoformat()}
    steel = sent["steel"]
    energy = e.api.get("/v1/sites/steel/kpis/energy", params=span, headers=auth(e.admin)).json()
    emissions = e.api.get("/v1/sites/steel/kpis/emissions", params=span, headers=auth(e.admin)).json()
    assert steel["energy_tce"] == pytest.approx(energy["total_tce"], rel=1e-12)
    assert steel["energy_tce"] > 0
    assert steel["carriers"]["electricity"] == pytest.approx(14_400.0)  # 1440 minutes x 10 kWh
    assert steel["compliance_pct"] == emissions["compliance_pct"] == pytest.approx(50.0)
    assert steel["hours_exceeding"] == 1
    assert steel["exceeding"][0]["hour"].startswith(f"{day.isoformat()}T09:00:00+08:00")
    green = e.api.get("/v1/sites/park-green/kpis/greening", params=span, headers=auth(e.admin)).json()
    assert sent["park-green"]["coverage_pct"] == green["coverage_pct"] == pytest.approx(18.0)
    table = e.api.get("/v1/kpis/daily", params={"date": day.isoformat(), "format": "csv"}, headers=auth(e.admin))
    assert table.headers["content-type"].startswith("text/csv")
    rows = {r["site"]: r for r in csv.DictReader(io.StringIO(table.text))}
    assert float(rows["steel"]["energy_tce"]) == steel["energy_tce"]
    assert float(rows["steel"]["compliance_pct"]) == steel["compliance_pct"]
    assert float(rows["park-green"]["coverage_pct"]) == sent["park-green"]["coverage_pct"]
    assert float(rows["steel"]["electricity_kWh"]) == pytest.approx(14_400.0)


def test_daily_csv_is_scoped_to_a_site_key(feed_env: Env) -> None:
    day = datetime.now(TZ).date() - timedelta(days=1)
    key = feed_env.registry.create_api_key("site", ["park-green"])
    rows = feed_env.api.get("/v1/kpis/daily", params={"date": day.isoformat()}, headers=auth(key)).json()
    assert [r["site"] for r in rows] == ["park-green"]
    future = feed_env.api.get("/v1/kpis/daily", params={"date": (day + timedelta(days=5)).isoformat()},
                              headers=auth(key))
    assert future.status_code == 422
