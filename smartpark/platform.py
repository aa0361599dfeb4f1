"""`smartpark up`: broker, ingest, API and the demo-park simulator in one process, stopped in reverse order.

On embedded defaults (no SMARTPARK_MQTT_URL / SMARTPARK_INFLUX_URL) it needs nothing but Python: an
in-process broker and a SQLite store under the data dir. Where the settings name servers, it uses them.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from datetime import date, timedelta
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smartpark.core.catalog import Catalog, load_catalog
from smartpark.core.clock import DEFAULT_TIMEZONE, now_ms
from smartpark.core.errors import ConfigError, StoreError
from smartpark.core.mqtt import Endpoint, MessageSource, OnMessage, open_source, platform_filters
from smartpark.core.registry import ParkFile, Registry, read_park_file
from smartpark.core.settings import Settings
from smartpark.core.store import TimeSeriesStore, open_store
from smartpark.core.store.influx import InfluxStore
from smartpark.ingest.service import IngestService

if TYPE_CHECKING:
    import uvicorn

    from smartpark.alerts import AlertEngine
    from smartpark.core.store.rollups import RollupRepairer
    from smartpark.hj212.server import Gateway
    from smartpark.simulators.live import Hj212Target

__all__ = ["INFLUX_PRIVILEGES", "DataDirLock", "Platform", "admin_key", "alert_engine", "demo_park_path",
           "hj212_gateway", "init_databases", "open_core", "private_data_dir", "rollup_repairer", "write_private"]

log = logging.getLogger("smartpark")
# Least privilege on InfluxDB 1.x: what each service's own user may do on the database (`smartpark db init`).
# The ingest reads too: stored values to audit rewrites, raw windows to repair rollups (SELECT ... INTO).
INFLUX_PRIVILEGES = {"ingest": "ALL", "alerts": "ALL", "api": "READ", "grafana": "READ"}
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
    private_data_dir(settings.data_dir)
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


def init_databases(settings: Settings) -> list[str]:
    """`smartpark db init`: metadata schema at the head, the time-series database, the per-service users.

    Runs as the InfluxDB admin (SMARTPARK_INFLUX_ADMIN_*, else the process's own credentials); the services
    then log in with their own users. Returns the users set up, as ``name (PRIVILEGE)``.
    """
    admin = settings
    if settings.influx_admin_username:
        admin = settings.model_copy(update={"influx_username": settings.influx_admin_username,
                                            "influx_password": settings.influx_admin_password})
    _, registry, store = open_core(admin, create=True)
    try:
        users = settings.influx_users() if settings.influx_url else {}
        if not users:
            return []
        if not isinstance(store, InfluxStore) or not store.is_v1():
            raise ConfigError("SMARTPARK_INFLUX_*_USERNAME are InfluxDB 1.x users; on 2.x/3.x give each service "
                              "its own token (SMARTPARK_INFLUX_TOKEN) instead")
        done = []
        for service, (user, password) in users.items():
            store.ensure_user(user, password, INFLUX_PRIVILEGES[service])
            done.append(f"{user} ({INFLUX_PRIVILEGES[service]})")
        return done
    finally:
        store.close()
        registry.close()


def private_data_dir(path: Path) -> None:
    """Create the data dir for this user alone (0700), or narrow an existing one of ours to it: it holds the
    webhook secrets, key hashes and the admin key. Files in it are created 0600 (the CLI sets umask 077)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
        if st.st_uid == os.getuid() and st.st_mode & 0o077:
            path.chmod(0o700)
    except OSError as exc:
        raise ConfigError(f"data dir {path}: {exc.strerror or exc}; set SMARTPARK_DATA_DIR") from exc


class DataDirLock:
    """An exclusive lock on the data dir for the life of the process: one `smartpark up` per data dir (two
    would share the spool, the dead letters and the embedded store). The kernel drops it when the process
    ends, however it ends."""

    def __init__(self, data_dir: Path) -> None:
        private_data_dir(data_dir)
        self.path = data_dir / "up.lock"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"data dir {data_dir} is in use by another `smartpark up` (pid {holder}); stop it "
                              "or set SMARTPARK_DATA_DIR to another directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None


def alert_engine(settings: Settings, registry: Registry, store: TimeSeriesStore, catalog: Catalog, *,
                 endpoint: Endpoint, mqtt5: bool) -> AlertEngine:
    """The alert engine on its own MQTT client and client id (MQTT 5 session, or paho for 3.1.1)."""
    from smartpark.alerts import AlertEngine
    from smartpark.core.reference import load_reference

    def source(on_message: OnMessage) -> MessageSource:
        return open_source(endpoint, client_id=settings.alerts_client_id, on_message=on_message, mqtt5=mqtt5,
                           receive_maximum=10_000, filters=platform_filters())

    reference = load_reference(settings.reference_file)

    def daily(day: date) -> list[dict[str, Any]]:  # the feed's figures: the API's, for every site
        from smartpark.api.summary import summarise  # here: the standalone alert engine loads the API on use

        rows = summarise(registry, store, reference, settings, day, day + timedelta(days=1), registry.sites())
        return [r.model_dump(mode="json") for r in rows.sites]

    return AlertEngine(settings, registry, store, catalog, reference=reference, source_factory=source, daily=daily)


def rollup_repairer(settings: Settings, store: TimeSeriesStore) -> RollupRepairer | None:
    """The scheduled repair of rollup windows that got late points, started; None where there are no rollups
    (the embedded store aggregates raw points, InfluxDB 2.x/3.x has no CQs) or it is switched off."""
    from smartpark.core.store.influx import InfluxStore
    from smartpark.core.store.rollups import RollupRepairer

    if not isinstance(store, InfluxStore) or settings.rollup_repair_interval_s <= 0:
        return None
    try:
        if not store.is_v1():
            return None
    except StoreError:
        pass  # not reachable yet: assume 1.x (the repairer logs and retries each round)
    repairer = RollupRepairer(store, settings.rollup_repair_interval_s)
    repairer.start()
    return repairer


def hj212_gateway(settings: Settings, registry: Registry, catalog: Catalog, ingest: IngestService) -> Gateway:
    """The HJ 212 gateway, feeding ``ingest``'s writer (the same durable hand-off as MQTT); with its upstream
    relay when SMARTPARK_HJ212_FORWARD names any (its `stop` stops the relay too)."""
    from smartpark.core.reference import load_reference
    from smartpark.hj212.codes import load_codes
    from smartpark.hj212.forward import Forwarder, parse_targets
    from smartpark.hj212.identities import Identities
    from smartpark.hj212.server import Gateway, GatewayConfig

    park = registry.park()
    config = GatewayConfig(host=settings.hj212_host, port=settings.hj212_port,
                           max_connections=settings.hj212_max_connections,
                           idle_timeout_s=settings.hj212_idle_timeout_s, max_segment=settings.hj212_max_segment,
                           split_timeout_s=settings.hj212_split_timeout_s,
                           stats_interval_s=settings.ingest_stats_interval_s,
                           timezone=park.timezone if park else DEFAULT_TIMEZONE, retention_ms=settings.retention_ms)
    gateway = Gateway(config, ingest.batcher, Identities(registry.hj212_identities), catalog,
                      codes=load_codes(catalog, settings.hj212_codes_file),
                      reference=load_reference(settings.reference_file))
    targets = parse_targets(settings.hj212_forward)
    if targets:
        forwarder = Forwarder(settings.data_dir / "hj212-forward.sqlite", targets, gateway.stats)
        gateway.forward = forwarder.enqueue
        gateway.closers.append(forwarder.stop)
        forwarder.start()
    return gateway


def admin_key(settings: Settings, registry: Registry) -> str:
    """The development admin key, created once and kept in the data dir (mode 600) for `up`."""
    path = settings.data_dir / "admin.key"
    if path.exists():
        key = path.read_text().strip()
        parts = key.split("_")
        if len(parts) >= 3 and registry.api_key(parts[1]) is not None:
            return key
    key = registry.create_api_key("admin", [])
    write_private(path, key + "\n")
    return key


def write_private(path: Path, text: str) -> None:
    """Write a secret file: mode 0600 from its creation (never readable by others, not even for a moment),
    complete or not at all (written beside it, then renamed over it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
        self.hj212: Gateway | None = None
        self._alerts_login: tuple[str | None, str | None] = (None, None)

    def start(self) -> None:
        catalog, registry, store = open_core(self.settings, create=True)
        self._stops += [store.close, registry.close]
        from smartpark.core.reference import load_reference
        from smartpark.core.screening import load_screening

        park = read_park_file(self.park_file, load_reference(self.settings.reference_file),
                              screening=load_screening(self.settings.screening_file))
        sites, devices = registry.load_park(park)
        log.info("park %s: %d sites, %d devices", park.park.id, sites, devices)
        endpoint, mqtt5 = self._start_broker(registry)
        self.ingest = IngestService(self.settings, store, registry, catalog, endpoint=endpoint, mqtt5=mqtt5)
        self.ingest.start()
        self._stops.append(self.ingest.stop)
        repairer = rollup_repairer(self.settings, store)
        if repairer is not None:
            self._stops.append(repairer.stop)
        if self.settings.hj212_enabled:
            self.hj212 = hj212_gateway(self.settings, registry, catalog, self.ingest)
            self.hj212.start()
            self._stops.append(self.hj212.stop)
            log.info("HJ 212 gateway on %s:%d", self.settings.hj212_host, self.hj212.port)
        alerts_endpoint = endpoint.login(*self._alerts_login)
        self.alerts = alert_engine(self.settings, registry, store, catalog, endpoint=alerts_endpoint, mqtt5=mqtt5)
        self.alerts.start()
        self._stops.append(self.alerts.stop)
        if self.hj212 is not None:
            self.hj212.observers.append(self.alerts.offer)
        self._start_api(registry, store, catalog)
        if self.simulate:
            self._start_simulator(park, registry, endpoint, mqtt5, store=store, catalog=catalog)

    def _start_broker(self, registry: Registry) -> tuple[Endpoint, bool]:
        """The broker's endpoint (logged in as the ingest) and whether it speaks MQTT 5."""
        endpoint = Endpoint.from_settings(self.settings)
        if endpoint is not None:
            self._alerts_login = (endpoint.username, endpoint.password)
            return endpoint, self.settings.mqtt_v5
        from smartpark.broker import EmbeddedBroker

        password = secrets.token_urlsafe(18)  # lives only as long as this process
        host, port = self.settings.mqtt_embedded_host, self.settings.mqtt_embedded_port
        self._alerts_login = (ALERTS_USER, secrets.token_urlsafe(18))
        broker = EmbeddedBroker(registry, host, port, {INGEST_USER: password, ALERTS_USER: self._alerts_login[1]})
        broker.start()
        self._stops.append(broker.stop)
        log.info("embedded MQTT broker on %s:%d (MQTT 3.1.1)", host, port)
        return Endpoint(host, port, INGEST_USER, password), False

    def _start_api(self, registry: Registry, store: TimeSeriesStore, catalog: Catalog) -> None:
        import uvicorn  # here, not at the top: `smartpark ingest` and `alerts` import this module, not the API

        from smartpark.api.app import create_app

        metrics = [self.ingest.stats.registry] if self.ingest else []
        metrics += [self.hj212.stats.registry] if self.hj212 else []
        app = create_app(self.settings, registry=registry, store=store, catalog=catalog, metrics=metrics)
        config = uvicorn.Config(app, host=self.settings.api_host, port=self.settings.api_port,
                                log_level="warning", lifespan="on",
                                forwarded_allow_ips=self.settings.api_forwarded_allow_ips)
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

    def _start_simulator(self, park: ParkFile, registry: Registry, endpoint: Endpoint, mqtt5: bool, *,
                         store: TimeSeriesStore, catalog: Catalog) -> None:
        from smartpark.simulators import LiveSimulator
        from smartpark.simulators.resume import stored_counters
        from smartpark.simulators.scenario import default_scenario

        devices = [d.id for s in park.sites for d in s.devices]
        if self.settings.mqtt is None:
            # Embedded broker: fresh credentials at each start, the plaintext only in this process (the broker
            # reads the registry at once).
            credentials = {d: registry.provision_device(d) for d in devices}
        else:
            # An external broker knows only exported credentials: keep them between runs (the simulate command's).
            from smartpark.simulators.credentials import FILE_NAME, simulator_credentials

            credentials = simulator_credentials(registry, devices, self.settings.data_dir / FILE_NAME).passwords
        scenario = default_scenario() if self.park_file == demo_park_path() else None  # it names demo devices
        counters = stored_counters(store, park, catalog, now_ms())  # continue, never restart
        sim = LiveSimulator(park, credentials, endpoint, interval_s=self.sim_interval_s, mqtt5=mqtt5,
                            scenario=scenario, counters=counters, hj212=self._hj212_target(park))
        sim.start()
        self._stops.append(sim.stop)

    def _hj212_target(self, park: ParkFile) -> Hj212Target | None:
        """Where the scenario's HJ 212 stack monitors connect, with their MN and PW from the park file."""
        from smartpark.simulators.live import Hj212Target

        if self.hj212 is None:
            return None
        identities = {d.id: (d.hj212.mn, d.hj212.pw) for s in park.sites for d in s.devices if d.hj212}
        host = "127.0.0.1" if self.settings.hj212_host in ("0.0.0.0", "::", "") else self.settings.hj212_host  # noqa: S104
        return Hj212Target(host, self.hj212.port, identities, self.settings.hj212_codes_file)

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
