"""HJ 212 end to end against a real InfluxDB: data acquisition units over real TCP sockets send a sinter
stack's minute data with an O2-corrected NOx exceedance; it reaches the store, the emission KPIs and a signed
webhook. And the 9014 answer comes only once the data is durable: a gateway killed between receipt and
storage never answered, the unit's resend is stored, once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from test_alerts import Receiver, auth, settings_for, verify_standard_webhook
from test_hj212_gateway import HJ_PARK, stored

from smartpark.alerts.evaluate import hour_start
from smartpark.api.app import create_app
from smartpark.core.catalog import default_catalog
from smartpark.core.registry import Registry, parse_park_file
from smartpark.core.store.influx import InfluxStore, quote_ident
from smartpark.ingest.service import IngestService
from smartpark.platform import alert_engine, hj212_gateway

from factories import ServedApp, endpoint_of, forget_session, now_ms, wait_for
from hj212_packets import TZ, Unit, minute_frame, qn
from servers import InfluxServer, MosquittoServer, free_port

pytestmark = pytest.mark.influx
O2 = 17.0  # sinter: reference O2 16 %, so corrected = measured x 5 / 4


@pytest.mark.mosquitto
def test_minute_data_with_a_nox_exceedance_reaches_store_kpis_and_webhook(
        tmp_path: Path, influx_store: InfluxStore, mosquitto: MosquittoServer) -> None:
    settings = settings_for(tmp_path, hj212_port=0, ingest_batch_age_s=0.1, alerts_eval_interval_s=3600)
    registry = Registry(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    registry.init()
    registry.load_park(parse_park_file(HJ_PARK))
    catalog = default_catalog()
    writer = IngestService(settings, influx_store, registry, catalog, endpoint=None)
    writer.start()
    gateway = hj212_gateway(settings, registry, catalog, writer)
    gateway.start()
    served = ServedApp(create_app(settings, registry=registry, store=influx_store, catalog=catalog))
    engine = alert_engine(settings, registry, influx_store, catalog, endpoint=endpoint_of(mosquitto), mqtt5=True)
    engine.start()
    gateway.observers.append(engine.offer)  # as `smartpark up` wires them
    receiver = Receiver()
    unit = Unit(gateway.port)
    try:
        admin = registry.create_api_key("admin", [])
        hook = served.client.post("/v1/alerts/webhooks", headers=auth(admin),
                                  json={"url": receiver.url, "rules": ["nox-hourly-mean"]})
        assert hook.status_code == 201, hook.text
        engine.reload()
        this_hour = hour_start(now_ms(), TZ)
        last_hour = this_hour - 3_600_000
        minutes = [last_hour + m * 60_000 for m in range(60)]
        for ts in minutes:  # measured 48 at 17 % O2: 60 corrected, over the sinter limit of 50; pipelined
            unit.send(minute_frame(ts, nox=48.0, o2=O2, nox_zs=60.0))
        answers = [unit.answer() for _ in minutes]
        assert [a.split(b";")[0] for a in answers] == [f"QN={qn(ts)}".encode() for ts in minutes]
        # durable when answered: the store already has every minute
        assert stored(influx_store, last_hour, agg="count") == 1
        assert [stored(influx_store, ts) for ts in minutes] == [48.0] * 60
        assert stored(influx_store, minutes[-1], field="nox_zs_mg_m3") == 60.0

        day = datetime.fromtimestamp(last_hour / 1000, TZ).date()  # KPI periods are the park's local days
        start, end = day.isoformat(), (day + timedelta(days=1)).isoformat()
        kpi = served.client.get("/v1/sites/steel/kpis/emissions", headers=auth(admin),
                                params={"start": start, "end": end, "hours": "true"}).json()
        (stack,) = kpi["stacks"]
        nox = next(p for p in stack["pollutants"] if p["pollutant"] == "nox")
        ((hour_status, mean, valid),) = [(h["status"], h["mean_mg_m3"], h["valid_minutes"]) for h in nox["hours"]]
        assert (hour_status, valid) == ("exceeding", 60)
        assert mean == pytest.approx(60.0)

        wait_for(lambda: engine.processed >= 60)  # the engine was offered each reading once durable
        engine.tick(now=this_hour + 30 * 60_000)  # the hour has closed: judge it
        fired = wait_for(lambda: receiver.ok("alert.firing"))
        assert len(fired) == 1
        body = fired[0].json
        assert (body["rule"], body["device"], body["limit"]) == ("nox-hourly-mean", "sinter-cems", 50)
        assert body["value"] == pytest.approx(60.0)
        assert verify_standard_webhook(hook.json()["secret"], fired[0].headers, fired[0].body)
    finally:
        unit.close()
        receiver.close()
        engine.stop()
        served.close()
        gateway.stop()
        writer.stop()
        registry.close()
        forget_session(mosquitto.host, mosquitto.port, settings.alerts_client_id)


# ------------------------------------------------------------------------------------------------ kill test
@pytest.fixture
def influx_db(influxd: InfluxServer) -> Iterator[InfluxStore]:
    store = InfluxStore(influxd.url, f"t_{uuid.uuid4().hex}", default_catalog())
    store.init()
    yield store
    store.query(f"DROP DATABASE {quote_ident(store.database)}", with_db=False)
    store.close()


def start_gateway(tmp_path: Path, influx: InfluxStore, port: int, batch_age_s: float) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTPARK_")}
    env |= {"SMARTPARK_DATA_DIR": str(tmp_path / "data"), "SMARTPARK_INFLUX_URL": influx.url,
            "SMARTPARK_INFLUX_DB": influx.database, "SMARTPARK_HJ212_PORT": str(port),
            "SMARTPARK_HJ212_METRICS_PORT": "0", "SMARTPARK_INGEST_BATCH_AGE_S": str(batch_age_s),
            "SMARTPARK_HJ212_FLUSH_QUIET_S": "0" if batch_age_s > 1 else "0.02", "SMARTPARK_RETENTION_DAYS": "30"}
    log = (tmp_path / "gateway.log").open("a")
    proc = subprocess.Popen([sys.executable, "-m", "smartpark", "hj212"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    log.close()

    def listening() -> bool:
        assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
        try:
            Unit(port).close()
        except OSError:
            return False
        return True

    wait_for(listening, timeout=60, every=0.2)
    return proc


def test_killed_between_receipt_and_storage_the_resend_is_stored_once(tmp_path: Path,
                                                                      influx_db: InfluxStore) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'data' / 'meta.sqlite'}")
    registry.init()
    registry.load_park(parse_park_file(HJ_PARK))
    registry.close()
    port = free_port()
    ts = (now_ms() // 60_000 - 5) * 60_000
    frame = minute_frame(ts, nox=49.5)
    # A batch that waits 30 s before its write (no quiet flush): the gateway holds the packet, not yet durable.
    proc = start_gateway(tmp_path, influx_db, port, batch_age_s=30)
    try:
        unit = Unit(port)
        unit.send(frame)
        with pytest.raises(TimeoutError):
            unit.answer(timeout=1.0)  # no answer before the data is durable
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        unit.close()
        assert stored(influx_db, ts, agg="count") is None  # lost with the process: and never answered
        proc = start_gateway(tmp_path, influx_db, port, batch_age_s=0.1)
        unit = Unit(port)
        for _ in range(2):  # the unit resends what was never answered (and once more, as units do)
            unit.send(frame)
            assert unit.answer() == (f"QN={qn(ts)};ST=91;CN=9014;PW=123456;MN=88888880000001;Flag=4;"
                                     f"CP=&&&&").encode()
        unit.close()
        assert stored(influx_db, ts, agg="count") == 1
        assert stored(influx_db, ts) == 49.5
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    assert "Traceback" not in (tmp_path / "gateway.log").read_text()
