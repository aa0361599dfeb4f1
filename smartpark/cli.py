"""The `smartpark` command line (contract "Command line"). Each command validates settings before any I/O."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

from smartpark.core.clock import now_ms
from smartpark.core.errors import SmartparkError
from smartpark.core.mqtt.endpoint import Endpoint
from smartpark.core.settings import Settings, load_settings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from smartpark.alerts.engine import AlertEngine
    from smartpark.core.catalog import Catalog
    from smartpark.core.registry import ParkFile, Registry
    from smartpark.core.store.base import TimeSeriesStore
    from smartpark.hj212.server import Gateway
    from smartpark.simulators.backfill import BackfillResult
    from smartpark.simulators.credentials import SimulatorCredentials

app = typer.Typer(help="smartpark: IoT telemetry for industrial parks (energy, emissions, greening).",
                  no_args_is_help=True, pretty_exceptions_enable=False)
db_app = typer.Typer(help="Databases: metadata and time series.", no_args_is_help=True)
park_app = typer.Typer(help="Park files: sites and devices.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
broker_app = typer.Typer(help="The production MQTT broker (Mosquitto).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(park_app, name="park")
app.add_typer(keys_app, name="keys")
app.add_typer(broker_app, name="broker")

# Plain text: messages carry paths, URLs and user input, where [brackets] are text, not markup. soft_wrap:
# keys and URLs must stay on one line to be copied.
err = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)
out = Console()


def _settings(verbose: bool = False) -> Settings:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False)])
    for noisy in ("amqtt", "transitions", "httpx", "uvicorn.error", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return load_settings()
    except SmartparkError as exc:
        _fail(str(exc))


def _fail(message: str, code: int = 1) -> NoReturn:
    _error(message)
    raise typer.Exit(code)


def _error(message: str) -> None:
    err.print(Text.assemble(("error: ", "bold red"), message))


def _stop_on_signals() -> threading.Event:
    """SIGINT and SIGTERM stop a long-running command (`up`, `ingest`, `alerts`) at any moment: the first
    interrupts whatever runs (start-up included) with KeyboardInterrupt and asks for an orderly stop; a second
    one, during the stop, quits at once.

    Installed explicitly: a shell starts a background job with SIGINT ignored, and Python keeps that."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        stop.set()
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    return stop


def _until_stopped(stop: threading.Event) -> None:
    """Wait for SIGINT or SIGTERM (handled as `_stop_on_signals` installed them)."""
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass


def _serve_metrics(port: int, host: str, registry: CollectorRegistry, settings_named: str,
                   stop_service: Callable[[], None]) -> None:
    """Prometheus /metrics of a standalone service (port 0: off); a port that cannot be had stops the service
    and is a clear error naming the settings."""
    if not port:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        stop_service()
        _fail(f"metrics on {host}:{port}: {exc}; set {settings_named} (0: off)")


def _stopped_during_start_up() -> NoReturn:
    """A signal during start-up: what has started runs on daemon threads and ends with the process; the broker
    redelivers anything left unacked."""
    err.print("stopped.")
    raise typer.Exit(0)


T = TypeVar("T")


def _started(settings: Settings, start: Callable[[Catalog, Registry, TimeSeriesStore], T]) -> T:
    """``start(catalog, registry, store)`` on the opened core: bad configuration fails with its message, a
    signal during start-up stops cleanly."""
    from smartpark.platform import open_core

    try:
        return start(*open_core(settings))
    except SmartparkError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _stopped_during_start_up()


def _endpoint(settings: Settings) -> Endpoint:
    """The broker of SMARTPARK_MQTT_URL (the commands that need one check it is set first)."""
    endpoint = Endpoint.from_settings(settings)
    if endpoint is None:
        _fail("set SMARTPARK_MQTT_URL")
    return endpoint


def _subscriber_settings(verbose: bool, up_also: str = "") -> tuple[Settings, threading.Event]:
    """Settings of a standalone service that subscribes to SMARTPARK_MQTT_URL (which must be set), and the
    signal handling that stops it."""
    settings = _settings(verbose)
    if settings.mqtt is None:
        _fail(f"set SMARTPARK_MQTT_URL (the embedded broker only runs inside `smartpark up`{up_also})")
    return settings, _stop_on_signals()


def _announce_subscribed(service: str, settings: Settings, client_id: str) -> None:
    err.print(f"{service} subscribed to {_endpoint(settings).url} as {client_id}; Ctrl-C stops.", highlight=False)


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]


@app.command()
def up(
    park: Annotated[Path | None, typer.Option(help="Park file to load and simulate (default: the demo park).")] = None,
    simulate: Annotated[bool, typer.Option(help="Run the park simulator.")] = True,
    interval: Annotated[float, typer.Option(help="Seconds between simulated readings.")] = 5.0,
    verbose: Verbose = False,
) -> None:
    """Run everything in one go: broker (embedded unless SMARTPARK_MQTT_URL), ingest, API, simulator."""
    stop = _stop_on_signals()
    platform = None
    try:
        from smartpark.platform import DataDirLock, Platform, admin_key

        settings = _settings(verbose)
        lock = DataDirLock(settings.data_dir)  # held until the process ends
        platform = Platform(settings, park_file=park, simulate=simulate, sim_interval_s=interval)
        platform.start()
        key = admin_key(settings, platform.ingest.registry)  # type: ignore[union-attr]
        base = f"http://{settings.api_host}:{settings.api_port}"
        err.print(Text.assemble(("smartpark is up.", "bold green"), f" API {base}  docs {base}/docs\n"
                                f"admin key (kept in {settings.data_dir / 'admin.key'}): {key}\n"
                                f"try: curl -H 'Authorization: Bearer {key}' {base}/v1/sites\nCtrl-C stops."))
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass  # SIGINT or SIGTERM, whenever it came: stop what has started
    except SmartparkError as exc:
        if platform is not None:
            platform.stop()
        _fail(str(exc))
    if platform is not None:
        err.print("stopping... (Ctrl-C again quits at once)")
        platform.stop()
        lock.release()
    err.print("stopped.")


@app.command()
def ingest(verbose: Verbose = False) -> None:
    """Run the ingest alone against SMARTPARK_MQTT_URL and the configured store."""
    from smartpark.ingest.service import IngestService
    from smartpark.platform import rollup_repairer

    settings, stop = _subscriber_settings(verbose)

    def start(catalog: Catalog, registry: Registry, store: TimeSeriesStore) -> IngestService:
        service = IngestService(settings, store, registry, catalog, endpoint=_endpoint(settings),
                                mqtt5=settings.mqtt_v5)
        service.start()
        return service

    service = _started(settings, start)
    _serve_metrics(settings.ingest_metrics_port, settings.ingest_metrics_host, service.stats.registry,
                   "SMARTPARK_INGEST_METRICS_HOST / SMARTPARK_INGEST_METRICS_PORT", service.stop)
    _announce_subscribed("ingest", settings, settings.ingest_client_id)
    repairer = rollup_repairer(settings, service.store)
    _until_stopped(stop)
    if repairer is not None:
        repairer.stop()
    service.stop()


@app.command()
def hj212(verbose: Verbose = False) -> None:
    """Run the HJ 212 gateway alone: stack monitors' data acquisition units over TCP on
    SMARTPARK_HJ212_HOST:SMARTPARK_HJ212_PORT, into the configured store (its own writer, spool and metrics)."""
    from smartpark.ingest.service import IngestService
    from smartpark.platform import hj212_gateway

    settings = _settings(verbose)
    stop = _stop_on_signals()

    def start(catalog: Catalog, registry: Registry, store: TimeSeriesStore) -> tuple[IngestService, Gateway]:
        writer = IngestService(settings, store, registry, catalog, endpoint=None, spool_dir="hj212-spool",
                               instance="smartpark-hj212-writer", quiet_s=settings.hj212_flush_quiet_s)
        writer.start()
        gateway = hj212_gateway(settings, registry, catalog, writer)
        gateway.start()
        return writer, gateway

    writer, gateway = _started(settings, start)
    def stop_both() -> None:
        gateway.stop()
        writer.stop()

    _serve_metrics(settings.hj212_metrics_port, settings.ingest_metrics_host, gateway.stats.registry,
                   "SMARTPARK_INGEST_METRICS_HOST / SMARTPARK_HJ212_METRICS_PORT", stop_both)
    err.print(f"HJ 212 gateway on {settings.hj212_host}:{gateway.port}; Ctrl-C stops.", highlight=False)
    _until_stopped(stop)
    gateway.stop()
    writer.stop()


@app.command()
def api(verbose: Verbose = False) -> None:
    """Serve the HTTP API on SMARTPARK_API_HOST:SMARTPARK_API_PORT."""
    import uvicorn

    from smartpark.api.app import create_app

    settings = _settings(verbose)
    app_ = _started(settings, lambda catalog, registry, store: create_app(settings, registry=registry, store=store,
                                                                         catalog=catalog))
    # proxy headers (X-Forwarded-Proto/-For) only from SMARTPARK_API_FORWARDED_ALLOW_IPS: the cookie's Secure
    # flag follows the scheme the client used at the TLS proxy
    uvicorn.run(app_, host=settings.api_host, port=settings.api_port, log_level="info", proxy_headers=True,
                forwarded_allow_ips=settings.api_forwarded_allow_ips)


@app.command()
def alerts(verbose: Verbose = False) -> None:
    """Run the alert engine: rules on its own subscription to SMARTPARK_MQTT_URL, webhooks from its outbox."""
    from smartpark.platform import alert_engine

    settings, stop = _subscriber_settings(verbose, ", which runs alerts too")

    def start(catalog: Catalog, registry: Registry, store: TimeSeriesStore) -> AlertEngine:
        engine = alert_engine(settings, registry, store, catalog, endpoint=_endpoint(settings), mqtt5=settings.mqtt_v5)
        engine.start()
        return engine

    engine = _started(settings, start)
    _announce_subscribed("alert engine", settings, settings.alerts_client_id)
    _until_stopped(stop)
    engine.stop()


@app.command()
def report(
    month: Annotated[str, typer.Option(help="The month, YYYY-MM (local days of the park)")],
    output: Annotated[Path, typer.Option(help="The file to write")],
    site: Annotated[str | None, typer.Option(help="One site's report; default: the park's")] = None,
    fmt: Annotated[str, typer.Option("--format", help="pdf or html")] = "pdf",
    verbose: Verbose = False,
) -> None:
    """Write the monthly report (energy vs quota, emission compliance, greening, availability, screening)."""
    import re

    from smartpark.api.reports import build_report, render_html, render_pdf
    from smartpark.core.reference import load_reference
    from smartpark.core.screening import load_screening
    from smartpark.platform import open_core

    if not re.fullmatch(r"20\d{2}-(0[1-9]|1[0-2])", month):
        _fail(f"--month {month!r} is not YYYY-MM")
    if fmt not in ("pdf", "html"):
        _fail(f"--format {fmt!r} is not pdf or html")
    settings = _settings(verbose)
    try:
        _, registry, store = open_core(settings)
        target = registry.site(site) if site else None
        if site and target is None:
            _fail(f"no site {site!r} in the registry")
        html = render_html(build_report(registry, store, load_reference(settings.reference_file), settings,
                                        load_screening(settings.screening_file), month, target))
        output.write_bytes(render_pdf(html) if fmt == "pdf" else html.encode())
    except SmartparkError as exc:
        _fail(str(exc))
    err.print(f"wrote {output} ({output.stat().st_size} bytes)", highlight=False)


ScenarioFile = Annotated[Path | None, typer.Option(help="Scenario YAML (default: the demo scenario).")]
Mode = Annotated[str, typer.Option(help="live (real time), accelerated (a day per minute) or backfill.")]
Days = Annotated[float, typer.Option(help="Days of history (accelerated and backfill end now).")]
TruthFile = Annotated[Path | None, typer.Option(help="Write the ground truth (JSON lines) here.")]
Seed = Annotated[int | None, typer.Option(help="Random seed (default: the scenario's).")]
ScenarioPark = Annotated[Path | None, typer.Option(help="Park file (default: the scenario's, else the demo park).")]
PlantInterval = Annotated[float | None, typer.Option(help="Seconds of plant time between readings.")]
Speed = Annotated[float, typer.Option(help="Accelerated: plant seconds per real second.")]
Publish = Annotated[bool, typer.Option(help="Backfill over MQTT instead of straight into the store.")]
Duration = Annotated[float, typer.Option(
    help="Stop publishing after this many seconds (0: until the run ends, or Ctrl-C).", min=0)]
CredentialsOnly = Annotated[bool, typer.Option(
    help="Only give the park's devices their MQTT credentials (kept in DATA_DIR), then exit: run it before "
         "`smartpark broker export`.")]


@app.command()
def simulate(  # noqa: PLR0917 (typer options)
    scenario: ScenarioFile = None, mode: Mode = "live", days: Days = 1.0, truth: TruthFile = None,
    seed: Seed = None, park: ScenarioPark = None, interval: PlantInterval = None, speed: Speed = 1440.0,
    publish: Publish = False, duration: Duration = 0.0, credentials_only: CredentialsOnly = False,
    verbose: Verbose = False,
) -> None:
    """Run a scenario: publish to SMARTPARK_MQTT_URL (live, accelerated) or backfill the configured store.

    Devices keep their MQTT credentials between runs (DATA_DIR/simulator-credentials.json, mode 600); only
    devices without valid ones get new ones, which a production broker must learn (broker export, reload)
    before they can connect.
    """
    from smartpark.core.reference import load_reference
    from smartpark.core.screening import load_screening
    from smartpark.platform import demo_park_path, open_core
    from smartpark.simulators import modes
    from smartpark.simulators.resume import stored_counters

    settings = _settings(verbose)
    direct = _check_simulate_mode(settings, mode, publish=publish, credentials_only=credentials_only)
    creds = None
    try:
        parsed, scen = modes.load_run(scenario, park, demo_park_path(), seed=seed, interval_s=interval,
                                      reference=load_reference(settings.reference_file),
                                      screening=load_screening(settings.screening_file))
        catalog, registry, store = open_core(settings)
        registry.load_park(parsed)
        win = modes.window(scen, mode, days, speed=speed)  # type: ignore[arg-type]
        if direct:
            _report_backfill(modes.run_backfill(store, parsed, scen, win, catalog, truth_path=truth))
            return
        modes.check_publish_window(win, settings.window_ms)
        creds = _simulator_credentials(settings, registry, parsed, announce=credentials_only)
        if credentials_only:
            return
        stop = _stop_event(duration)  # before the counters' queries: Ctrl-C during them stops cleanly too
        counters = stored_counters(store, parsed, catalog, win.start_ms)  # every mode continues stored counters
        stats = modes.run_publish(parsed, scen, _endpoint(settings), win, credentials=creds.passwords,
                                  truth_path=truth, stop=stop, counters=counters)
    except SmartparkError as exc:
        _fail(str(exc))
    except (OSError, ConnectionError) as exc:
        _fail(f"MQTT {_endpoint(settings).url}: {exc}{_new_credentials_hint(exc, creds)}")
    err.print(f"published {stats.messages:,} messages ({stats.readings:,} readings) in {stats.seconds:.1f} s.",
              highlight=False)


def _check_simulate_mode(settings: Settings, mode: str, *, publish: bool, credentials_only: bool) -> bool:
    """Whether the run writes straight into the store (a backfill not over MQTT); fails on a bad mode, or on
    a run that publishes without a broker to publish to."""
    if mode not in ("live", "accelerated", "backfill"):
        _fail(f"--mode must be live, accelerated or backfill, not {mode!r}")
    direct = mode == "backfill" and not publish and not credentials_only
    if not direct and not credentials_only and settings.mqtt is None:
        _fail("set SMARTPARK_MQTT_URL (or use `smartpark up`, which simulates on the embedded broker)")
    return direct


def _report_backfill(done: BackfillResult) -> None:
    err.print(f"backfilled {done.readings:,} readings in {done.seconds:.1f} s ({done.rate:,.0f}/s).",
              highlight=False)


def _simulator_credentials(settings: Settings, registry: Registry, parsed: ParkFile, *,
                           announce: bool) -> SimulatorCredentials:
    """The simulated devices' MQTT credentials, new ones only for devices without valid ones."""
    from smartpark.simulators.credentials import FILE_NAME, simulator_credentials

    devices = [d.id for s in parsed.sites for d in s.devices]
    creds = simulator_credentials(registry, devices, settings.data_dir / FILE_NAME)
    if announce:
        err.print(f"{len(devices)} simulated devices have credentials ({len(creds.provisioned)} new).",
                  highlight=False)
    return creds


def _stop_event(duration_s: float) -> threading.Event:
    """Set by Ctrl-C or SIGTERM, or after ``duration_s`` (0: never)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if duration_s:
        timer = threading.Timer(duration_s, stop.set)
        timer.daemon = True
        timer.start()
    return stop


def _new_credentials_hint(exc: BaseException, creds: SimulatorCredentials | None) -> str:
    """What to do when the broker refused devices that were just given credentials it cannot know yet."""
    if creds is None or not creds.provisioned or "NOT_AUTHORIZED" not in str(exc).upper().replace(" ", "_"):
        return ""
    return (f"; {len(creds.provisioned)} simulated devices just got credentials the broker does not know: "
            "run `smartpark broker export` (and --apply on a running broker), reload it, start again "
            "(or `smartpark simulate --credentials-only` before the export)")


@db_app.command("init")
def db_init(verbose: Verbose = False) -> None:
    """Upgrade the metadata schema, create the time-series database (InfluxDB: RPs, rollup CQs) and the
    per-service InfluxDB users (SMARTPARK_INFLUX_*_USERNAME) as the admin. Idempotent."""
    from smartpark.core.migrations import head_revision
    from smartpark.platform import init_databases

    settings = _settings(verbose)
    try:
        users = init_databases(settings)
    except SmartparkError as exc:
        _fail(str(exc))
    where = settings.influx_url or str(settings.data_dir / "timeseries.sqlite")
    err.print(f"metadata: {_safe_url(settings.metadata_url)} at revision {head_revision()}\ntime series: {where}"
              + (f"\nInfluxDB users: {', '.join(users)}" if users else "") + "\nready.", highlight=False)


@db_app.command("upgrade")
def db_upgrade(verbose: Verbose = False) -> None:
    """Apply the metadata database's migrations up to this version (after installing a new smartpark)."""
    from smartpark.core.migrations import head_revision, schema_revision
    from smartpark.core.registry import Registry

    settings = _settings(verbose)
    try:
        registry = Registry(settings.metadata_url)
        before = schema_revision(registry.engine)
        registry.init()
        registry.close()
    except SmartparkError as exc:
        _fail(str(exc))
    err.print(f"metadata: {_safe_url(settings.metadata_url)} at revision {head_revision()} "
              f"(was {before or 'unversioned'}).", highlight=False)


@db_app.command("revision")
def db_revision(message: Annotated[str, typer.Option("--message", "-m", help="What the migration does.")]) -> None:
    """Development: write a new migration into core/migrations/versions from the models' changes."""
    import tempfile

    from smartpark.schema import new_revision

    _settings()
    with tempfile.TemporaryDirectory() as scratch:
        try:
            paths = new_revision(message, Path(scratch))
        except SmartparkError as exc:
            _fail(str(exc))
    err.print("\n".join(f"wrote {p}: review it, then run the tests (test_migrations)" for p in paths),
              highlight=False)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@db_app.command("repair-rollups")
def db_repair_rollups(
    hours: Annotated[float, typer.Option(help="Look at the late marks of this many past hours.")] = 24.0,
    verbose: Verbose = False,
) -> None:
    """Recompute now the InfluxDB rollup windows that received late points (the ingest does it every minute)."""
    from smartpark.core.store.influx import InfluxStore
    from smartpark.core.store.rollups import repair
    from smartpark.platform import open_core

    settings = _settings(verbose)
    try:
        _catalog, _registry, store = open_core(settings)
        if not isinstance(store, InfluxStore):
            _fail("the embedded store has no rollups (it aggregates raw points); nothing to repair")
        now = now_ms()
        report = repair(store, now - int(hours * 3_600_000))
    except SmartparkError as exc:
        _fail(str(exc))
    err.print(f"{report.marks} late marks, {report.spans} spans, {report.statements} SELECT ... INTO run.",
              highlight=False)


@park_app.command("load")
def park_load(file: Annotated[Path, typer.Argument(help="Park YAML file.")], verbose: Verbose = False) -> None:
    """Upsert a park file's sites and devices into the registry (idempotent)."""
    from smartpark.core.reference import load_reference
    from smartpark.core.registry import Registry, read_park_file
    from smartpark.core.screening import load_screening

    settings = _settings(verbose)
    try:
        parsed = read_park_file(file, load_reference(settings.reference_file),
                                screening=load_screening(settings.screening_file))
        registry = Registry(settings.metadata_url)
        registry.init()
        sites, devices = registry.load_park(parsed)
    except SmartparkError as exc:
        _fail(str(exc))
    err.print(f"park {parsed.park.id}: {sites} sites, {devices} devices loaded.")


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="admin (whole park) or site (read-only, its sites).")],
    site: Annotated[list[str] | None, typer.Option(help="Site id (repeat for several); site keys only.")] = None,
) -> None:
    """Create an API key; prints the key alone on standard output (it is shown only once)."""
    from smartpark.core.registry import Registry

    settings = _settings()
    try:
        registry = Registry(settings.metadata_url)
        registry.init()
        key = registry.create_api_key(role, list(site or []))
    except SmartparkError as exc:
        _fail(str(exc))
    sys.stdout.write(key + "\n")


@keys_app.command("list")
def keys_list() -> None:
    """List the API keys (id, role, sites, created, state); never a secret, which is stored only as a hash."""
    from smartpark.core.registry import Registry

    settings = _settings()
    try:
        registry = Registry(settings.metadata_url)
        registry.init()
        keys = registry.api_keys()
    except SmartparkError as exc:
        _fail(str(exc))
    rows = [("ID", "ROLE", "SITES", "CREATED", "STATE")] + [
        (k.id, k.role, ",".join(k.sites) or "-", k.created_at.strftime("%Y-%m-%d %H:%M"),
         "revoked" if k.revoked else "active") for k in keys]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    sys.stdout.writelines("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[4]]) + "\n"
                          for row in rows)  # plain text: ids and site names never pass through markup


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (`keys list`), or the key itself.")]) -> None:
    """Revoke an API key: the API refuses it from the next request on (the row stays, marked revoked)."""
    from smartpark.core.registry import Registry
    from smartpark.core.registry.secrets import split_api_key

    parts = split_api_key(key_id.strip())
    key_id = parts[0] if parts else key_id.strip()
    settings = _settings()
    try:
        registry = Registry(settings.metadata_url)
        registry.init()
        found = registry.revoke_api_key(key_id)
    except SmartparkError as exc:
        _fail(str(exc))
    if not found:
        sys.stderr.write(f"no API key with id {key_id!r} (see `smartpark keys list`)\n")
        raise typer.Exit(1)
    sys.stderr.write(f"key {key_id} revoked.\n")


ExportDir = Annotated[Path, typer.Argument(help="Where to write the files (a directory of their own).")]
ServicesFile = Annotated[Path | None, typer.Option(
    help="Service accounts, `name:password` per line (names begin with smartpark-; smartpark-admin may use "
         "the dynamic-security control topic).")]
BrokerDir = Annotated[Path | None, typer.Option(
    help="DIR as the broker sees it, when it mounts it elsewhere (paths in smartpark.conf).")]
DynsecPlugin = Annotated[str | None, typer.Option(
    help="Path of mosquitto_dynamic_security.so as the broker sees it (default: found here, else the "
         "eclipse-mosquitto image's).")]
ApplyToBroker = Annotated[bool, typer.Option(
    help="Also update a running broker's identities over the control topic (as smartpark-admin); then "
         "send it SIGHUP to reload passwords.")]


@broker_app.command("export")
def broker_export(
    directory: ExportDir, services_file: ServicesFile = None, broker_dir: BrokerDir = None,
    plugin: DynsecPlugin = None, apply: ApplyToBroker = False,
) -> None:
    """Write what Mosquitto 2 needs to enforce the registry: passwd, acl, dynamic-security.json, smartpark.conf.

    A Mosquitto config includes them with `include_dir DIR`. The account in SMARTPARK_MQTT_URL is exported as a
    service account. A running broker: `--apply`, then SIGHUP (see README, "The production broker").
    """
    from smartpark.core.registry import Registry
    from smartpark.mosquitto import write_export

    settings = _settings()
    services = _service_accounts(settings, services_file)
    try:
        registry = Registry(settings.metadata_url)
        registry.init()
        done = write_export(registry, directory, services, broker_dir=broker_dir, plugin=plugin)
        err.print(f"wrote {directory}/smartpark.conf, passwd, acl, dynamic-security.json: {done.devices} devices "
                  f"with credentials, {done.services} service account(s).", highlight=False)
        if apply:
            _apply_to_broker(settings, registry, services)
    except SmartparkError as exc:
        _fail(str(exc))
    err.print("Reload passwords: kill -HUP <mosquitto pid> (compose: docker compose kill -s HUP mosquitto).",
              highlight=False)


def _apply_to_broker(settings: Settings, registry: Registry, services: dict[str, str]) -> None:
    """Bring a running broker's dynamic-security identities in line with the registry, as smartpark-admin."""
    from smartpark.mosquitto import ADMIN_USER, apply_dynsec

    if settings.mqtt is None or ADMIN_USER not in services:
        _fail(f"--apply needs SMARTPARK_MQTT_URL and {ADMIN_USER} in --services-file")
    changed = apply_dynsec(settings.mqtt.host, settings.mqtt.port, services[ADMIN_USER], registry, services)
    err.print(f"applied to {settings.mqtt.host}:{settings.mqtt.port}: {changed['created']} identities "
              f"added, {changed['disabled']} disabled.", highlight=False)


def _service_accounts(settings: Settings, services_file: Path | None) -> dict[str, str]:
    services: dict[str, str] = {}
    if settings.mqtt is not None and settings.mqtt.username:
        services[settings.mqtt.username] = settings.mqtt.password or ""
    if services_file is None:
        return services
    try:
        rows = services_file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        _fail(f"cannot read the services file {services_file}: {exc.strerror or exc}")
    for row in rows:
        name, sep, password = row.strip().partition(":")
        if sep and name and not name.startswith("#"):
            services[name] = password
    return services


def _forget_handled_interrupt() -> None:
    """CPython marks a KeyboardInterrupt that passes through code run from a string (``exec``/``eval`` of text:
    dataclasses build their methods that way while a module is imported) as unhandled, and then ends the process
    by SIGINT at exit, even though `up` caught it and stopped cleanly (exit status -2 instead of 0). Evaluating
    a string once more clears that mark."""
    eval("None")  # noqa: S307 (a constant: clears CPython's unhandled-interrupt mark, see the docstring)


def main() -> None:
    """The `smartpark` command: files private to the user from their creation (umask 077: the data dir holds
    secrets), and an expected failure reported in one plain line, not a traceback."""
    os.umask(0o077)
    try:
        app()
    except SystemExit:
        _forget_handled_interrupt()
        raise
    except SmartparkError as exc:
        _error(str(exc))
        sys.exit(1)
    except OSError as exc:  # a bad path, a full disk, a permission: the file and the reason say it all
        _error(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc))
        sys.exit(1)
