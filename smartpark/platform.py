"""`smartpark up`: broker, ingest, API and the demo-park simulator in one process, stopped in reverse order.

On embedded defaults (no SMARTPARK_MQTT_URL / SMARTPARK_INFLUX_URL) it needs nothing but Python: an
in-process broker and a SQLite store under the data dir. Where the settings name servers, it uses them.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from datetime import date, timedelta
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from smartpark.api.app import create_app
from smartpark.api.summary import summarise
from smartpark.core.catalog import Catalog, load_catalog
from smartpark.core.errors import ConfigError, StoreError
from smartpark.core.registry import ParkFile, Registry, read_park_file
from smartpark.core.settings import Settings
from smartpark.core.store import TimeSeriesStore, open_store
from smartpark.ingest.service import IngestService

if TYPE_CHECKING:
    from smartpark.alerts import AlertEngine

__all__ = ["Platform", "admin_key", "alert_engine", "demo_park_path", "open_core"]

log = logging.getLogger("smartpark")
INGEST_USER = "smartpark-ingest"
ALERTS_USER = "smartpark-alerts"


def demo_park_path() -> Path:
    return Path(str(resources.files("smartpark.core").joinpath("data/parks/demo.yaml")))


def open_core(settings: Settings, *, create: bool = False) -> tuple[Catalog, Registry, TimeSeriesStore]:
    """Catalog, registry and store: what every service starts from.

    ``create`` also creates the InfluxDB database, retention policies and continuous queries, which needs
    admin rights: `smartpark db init` and `smartpark up` do it; the services only check the server, so in
    production they run with a write/read user. The embedded store's schema is always created (it is local).
    """
    catalog = load_catalog(settings.catalog_file)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry(settings.metadata_url)
    registry.init()
    store = open_store(settings, catalog)
    if create or not settings.influx_url:
        store.init()
    else:
        try:
            store.ping()
        except StoreError as exc:  # the ingest spools until it is back; the API answers 503
            log.warning("time-series store not reachable yet: %s", exc)
    return catalog, registry, store


def alert_engine(settings: Settings, registry: Registry, store: TimeSeriesStore, catalog: Catalog, *, host: str,
                 port: int, username: str | None, password: str | None, mqtt5: bool) -> AlertEngine:
    """The alert engine on its own MQTT client and client id (MQTT 5 session, or paho for 3.1.1)."""
    from smartpark.alerts import AlertEngine
    from smartpark.core.reference import load_reference
    from smartpark.ingest.session import Mqtt5Session
    from smartpark.ingest.source import MqttSource

    def source(on_message: Callable[[str, bytes, int, int], None]) -> Mqtt5Session | MqttSource:
        kind = Mqtt5Session if mqtt5 else MqttSource
        return kind(host=host, port=port, client_id=settings.alerts_client_id, username=username,
                    password=password, mqtt5=mqtt5, receive_maximum=10_000, shared="", on_message=on_message)

    reference = load_reference(settings.reference_file)

    def daily(day: date) -> list[dict[str, Any]]:  # the feed's figures: the API's, for every site
        rows = summarise(registry, store, reference, settings, day, day + timedelta(days=1), registry.sites())
        return [r.model_dump(mode="json") for r in rows.sites]

    return AlertEngine(settings, registry, store, catalog, reference=reference, source_factory=source, daily=daily)


def admin_key(settings: Settings, registry: Registry) -> str:
    """The development admin key, created once and kept in the data dir (mode 600) for `up`."""
    path = settings.data_dir / "admin.key"
    if path.exists():
        key = path.read_text().strip()
        parts = key.split("_")
        if len(parts) >= 3 and registry.api_key(parts[1]) is not None:
            return key
    key = registry.create_api_key("admin", [])
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


class Platform:
    """Starts the parts in dependency order; `stop()` undoes them in reverse."""

    def __init__(self, settings: Settings, *, park_file: Path | None = None, simulate: bool = True,
                 sim_interval_s: float = 5.0) -> None:
        self.settings = settings
        self.park_file = park_file or demo_park_path()
        self.simulate = simulate
        self.sim_interval_s = sim_interval_s
        self._stops: list[Callable[[], None]] = []
        self.api_server: uvicorn.Server | None = None
        self.ingest: IngestService | None = None
        self.alerts: AlertEngine | None = None
        self._alerts_login: tuple[str | None, str | None] = (None, None)

    def start(self) -> None:
        catalog, registry, store = open_core(self.settings, create=True)
        self._stops += [store.close, registry.close]
        from smartpark.core.reference import load_reference

        park = read_park_file(self.park_file, load_reference(self.settings.reference_file))
        sites, devices = registry.load_park(park)
        log.info("park %s: %d sites, %d devices", park.park.id, sites, devices)
        host, port, user, password, mqtt5 = self._start_broker(registry)
        self.ingest = IngestService(self.settings, store, registry, catalog, mqtt_host=host, mqtt_port=port,
                                    username=user, password=password, mqtt5=mqtt5)
        self.ingest.start()
        self._stops.append(self.ingest.stop)
        self.alerts = alert_engine(self.settings, registry, store, catalog, host=host, port=port,
                                   username=self._alerts_login[0], password=self._alerts_login[1], mqtt5=mqtt5)
        self.alerts.start()
        self._stops.append(self.alerts.stop)
        self._start_api(registry, store, catalog)
        if self.simulate:
            self._start_simulator(park, registry, host, port, mqtt5, store=store, catalog=catalog)

    def _start_broker(self, registry: Registry) -> tuple[str, int, str | None, str | None, bool]:
        target = self.settings.mqtt
        if target is not None:
            self._alerts_login = (target.username, target.password)
            return target.host, target.port, target.username, target.password, self.settings.mqtt_v5
        from smartpark.broker import EmbeddedBroker

        password = secrets.token_urlsafe(18)  # lives only as long as this process
        host, port = self.settings.mqtt_embedded_host, self.settings.mqtt_embedded_port
        self._alerts_login = (ALERTS_USER, secrets.token_urlsafe(18))
        broker = EmbeddedBroker(registry, host, port, {INGEST_USER: password, ALERTS_USER: self._alerts_login[1]})
        broker.start()
        self._stops.append(broker.stop)
        log.info("embedded MQTT broker on %s:%d (MQTT 3.1.1)", host, port)
        return host, port, INGEST_USER, password, False

    def _start_api(self, registry: Registry, store: TimeSeriesStore, catalog: Catalog) -> None:
        metrics = [self.ingest.stats.registry] if self.ingest else []
        app = create_app(self.settings, registry=registry, store=store, catalog=catalog, metrics=metrics)
        config = uvicorn.Config(app, host=self.settings.api_host, port=self.settings.api_port,
                                log_level="warning", lifespan="on")
        server = self.api_server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="api", daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"the API could not listen on {config.host}:{config.port} (port taken?); "
                                  "set SMARTPARK_API_PORT to another port")
            time.sleep(0.05)

        def stop() -> None:
            server.should_exit = True
            thread.join(timeout=10)

        self._stops.append(stop)

    def _start_simulator(self, park: ParkFile, registry: Registry, host: str, port: int, mqtt5: bool, *,
                         store: TimeSeriesStore, catalog: Catalog) -> None:
        from smartpark.simulators import LiveSimulator
        from smartpark.simulators.resume import stored_counters
        from smartpark.simulators.scenario import default_scenario

        # Simulated devices get fresh credentials at each start: the plaintext exists only in this process.
        credentials = {d.id: registry.provision_device(d.id) for s in park.sites for d in s.devices}
        scenario = default_scenario() if self.park_file == demo_park_path() else None  # it names demo devices
        counters = stored_counters(store, park, catalog, time.time_ns() // 1_000_000)  # continue, never restart
        sim = LiveSimulator(park, credentials, host, port, interval_s=self.sim_interval_s, mqtt5=mqtt5,
                            scenario=scenario, counters=counters)
        sim.start()
        self._stops.append(sim.stop)

    def stop(self) -> None:
        # While clients drain and disconnect, amqtt warns about every late PUBACK of a message it has
        # already given up on (it waits 5 s); the clients still have the data, so this is noise.
        logging.getLogger("amqtt").setLevel(logging.ERROR)
        while self._stops:
            stop = self._stops.pop()
            try:
                stop()
            except Exception:  # a failing part must not keep the others running
                log.exception("error while stopping")
