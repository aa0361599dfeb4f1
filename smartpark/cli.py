"""The `smartpark` command line (contract "Command line"). Each command validates settings before any I/O."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler

from smartpark.core.errors import SmartparkError
from smartpark.core.settings import Settings, load_settings

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

err = Console(stderr=True, soft_wrap=True)  # keys and URLs must stay on one line to be copied
out = Console()


def _settings(verbose: bool = False) -> Settings:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False)])
    for noisy in ("amqtt", "transitions", "httpx", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return load_settings()
    except SmartparkError as exc:
        _fail(str(exc))


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]


@app.command()
def up(
    park: Annotated[Path | None, typer.Option(help="Park file to load and simulate (default: the demo park).")] = None,
    simulate: Annotated[bool, typer.Option(help="Run the park simulator.")] = True,
    interval: Annotated[float, typer.Option(help="Seconds between simulated readings.")] = 5.0,
    verbose: Verbose = False,
) -> None:
    """Run everything in one go: broker (embedded unless SMARTPARK_MQTT_URL), ingest, API, simulator."""
    from smartpark.platform import Platform, admin_key

    settings = _settings(verbose)
    platform = Platform(settings, park_file=park, simulate=simulate, sim_interval_s=interval)
    try:
        platform.start()
        key = admin_key(settings, platform.ingest.registry)  # type: ignore[union-attr]
        base = f"http://{settings.api_host}:{settings.api_port}"
        err.print(f"[bold green]smartpark is up.[/] API {base}  docs {base}/docs\n"
                  f"admin key (kept in {settings.data_dir / 'admin.key'}): {key}\n"
                  f"try: curl -H 'Authorization: Bearer {key}' {base}/v1/sites\nCtrl-C stops.", highlight=False)
        _wait_for_signal()
    except SmartparkError as exc:
        platform.stop()
        _fail(str(exc))
    err.print("stopping...")
    platform.stop()
    err.print("stopped.")


@app.command()
def ingest(verbose: Verbose = False) -> None:
    """Run the ingest alone against SMARTPARK_MQTT_URL and the configured store."""
    from prometheus_client import start_http_server

    from smartpark.ingest.service import IngestService
    from smartpark.platform import open_core

    settings = _settings(verbose)
    if settings.mqtt is None:
        _fail("set SMARTPARK_MQTT_URL (the embedded broker only runs inside `smartpark up`)")
    try:
        catalog, registry, store = open_core(settings)
        service = IngestService(settings, store, registry, catalog, mqtt_host=settings.mqtt.host,
                                mqtt_port=settings.mqtt.port, username=settings.mqtt.username,
                                password=settings.mqtt.password, mqtt5=settings.mqtt_v5)
        service.start()
    except SmartparkError as exc:
        _fail(str(exc))
    try:
        if settings.ingest_metrics_port:
            start_http_server(settings.ingest_metrics_port, registry=service.stats.registry)
    except OSError as exc:
        service.stop()
        _fail(f"metrics port {settings.ingest_metrics_port}: {exc}; set SMARTPARK_INGEST_METRICS_PORT (0: off)")
    err.print(f"ingest subscribed to {settings.mqtt.host}:{settings.mqtt.port} as {settings.ingest_client_id}; "
              "Ctrl-C stops.", highlight=False)
    _wait_for_signal()
    service.stop()


@app.command()
def api(verbose: Verbose = False) -> None:
    """Serve the HTTP API on SMARTPARK_API_HOST:SMARTPARK_API_PORT."""
    import uvicorn

    from smartpark.api.app import create_app
    from smartpark.platform import open_core

    settings = _settings(verbose)
    try:
        catalog, registry, store = open_core(settings)
    except SmartparkError as exc:
        _fail(str(exc))
    uvicorn.run(create_app(settings, registry=registry, store=store, catalog=catalog),
                host=settings.api_host, port=settings.api_port, log_level="info")


@app.command()
def alerts(verbose: Verbose = False) -> None:
    """Run the alert engine: rules on its own subscription to SMARTPARK_MQTT_URL, webhooks from its outbox."""
    from smartpark.platform import alert_engine, open_core

    settings = _settings(verbose)
    if settings.mqtt is None:
        _fail("set SMARTPARK_MQTT_URL (the embedded broker only runs inside `smartpark up`, which runs alerts too)")
    try:
        catalog, registry, store = open_core(settings)
        engine = alert_engine(settings, registry, store, catalog, host=settings.mqtt.host, port=settings.mqtt.port,
                              username=settings.mqtt.username, password=settings.mqtt.password,
                              mqtt5=settings.mqtt_v5)
        engine.start()
    except SmartparkError as exc:
        _fail(str(exc))
    err.print(f"alert engine subscribed to {settings.mqtt.host}:{settings.mqtt.port} as "
              f"{settings.alerts_client_id}; Ctrl-C stops.", highlight=False)
    _wait_for_signal()
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


@app.command()
def simulate(  # noqa: PLR0917 (typer options)
    scenario: Annotated[Path | None, typer.Option(help="Scenario YAML (default: the demo scenario).")] = None,
    mode: Annotated[str, typer.Option(help="live (real time), accelerated (a day per minute) or backfill.")
                    ] = "live",
    days: Annotated[float, typer.Option(help="Days of history (accelerated and backfill end now).")] = 1.0,
    truth: Annotated[Path | None, typer.Option(help="Write the ground truth (JSON lines) here.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: the scenario's).")] = None,
    park: Annotated[Path | None, typer.Option(help="Park file (default: the scenario's, else the demo park).")
                    ] = None,
    interval: Annotated[float | None, typer.Option(help="Seconds of plant time between readings.")] = None,
    speed: Annotated[float, typer.Option(help="Accelerated: plant seconds per real second.")] = 1440.0,
    publish: Annotated[bool, typer.Option(help="Backfill over MQTT instead of straight into the store.")
                       ] = False,
    verbose: Verbose = False,
) -> None:
    """Run a scenario: publish to SMARTPARK_MQTT_URL (live, accelerated) or backfill the configured store.

    Publishing devices get fresh MQTT credentials in the registry for this run.
    """
    from smartpark.platform import demo_park_path, open_core
    from smartpark.simulators import modes
    from smartpark.simulators.resume import stored_counters

    settings = _settings(verbose)
    if mode not in ("live", "accelerated", "backfill"):
        _fail(f"--mode must be live, accelerated or backfill, not {mode!r}")
    direct = mode == "backfill" and not publish
    if not direct and settings.mqtt is None:
        _fail("set SMARTPARK_MQTT_URL (or use `smartpark up`, which simulates on the embedded broker)")
    try:
        parsed, scen = modes.load_run(scenario, park, demo_park_path(), seed=seed, interval_s=interval)
        catalog, registry, store = open_core(settings)
        registry.load_park(parsed)
        win = modes.window(scen, mode, days, speed=speed)  # type: ignore[arg-type]
        if direct:
            done = modes.run_backfill(store, parsed, scen, win, catalog, truth_path=truth)
            err.print(f"backfilled {done.readings:,} readings in {done.seconds:.1f} s "
                      f"({done.rate:,.0f}/s).", highlight=False)
            return
        creds = {d.id: registry.provision_device(d.id) for s in parsed.sites for d in s.devices}
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        counters = stored_counters(store, parsed, catalog, win.start_ms)  # every mode continues stored counters
        stats = modes.run_publish(parsed, scen, settings.mqtt.host, settings.mqtt.port, win,  # type: ignore[union-attr]
                                  credentials=creds, truth_path=truth, stop=stop, counters=counters)
    except SmartparkError as exc:
        _fail(str(exc))
    except (OSError, ConnectionError) as exc:
        _fail(f"MQTT {settings.mqtt.host}:{settings.mqtt.port}: {exc}")  # type: ignore[union-attr]
    err.print(f"published {stats.messages:,} messages ({stats.readings:,} readings) in {stats.seconds:.1f} s.",
              highlight=False)


@db_app.command("init")
def db_init(verbose: Verbose = False) -> None:
    """Create the metadata schema and the time-series database (InfluxDB: RPs and rollup CQs). Idempotent."""
    from smartpark.platform import open_core

    settings = _settings(verbose)
    try:
        open_core(settings, create=True)
    except SmartparkError as exc:
        _fail(str(exc))
    where = settings.influx_url or str(settings.data_dir / "timeseries.sqlite")
    err.print(f"metadata: {settings.metadata_url}\ntime series: {where}\nready.", highlight=False)


@park_app.command("load")
def park_load(file: Annotated[Path, typer.Argument(help="Park YAML file.")], verbose: Verbose = False) -> None:
    """Upsert a park file's sites and devices into the registry (idempotent)."""
    from smartpark.core.reference import load_reference
    from smartpark.core.registry import Registry, read_park_file

    settings = _settings(verbose)
    try:
        parsed = read_park_file(file, load_reference(settings.reference_file))
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


@broker_app.command("export")
def broker_export(
    directory: Annotated[Path, typer.Argument(help="Where to write `passwd` and `acl` (Mosquitto's config dir).")],
    services_file: Annotated[Path | None, typer.Option(help="Service accounts, `name:password` per line.")] = None,
) -> None:
    """Write Mosquitto's password and ACL files from the registry; then send mosquitto a SIGHUP.

    The account in SMARTPARK_MQTT_URL (the ingest's) is included as a service account that reads all telemetry.
    """
    from smartpark.core.registry import Registry
    from smartpark.mosquitto import write_auth_files

    settings = _settings()
    services: dict[str, str] = {}
    if settings.mqtt is not None and settings.mqtt.username:
        services[settings.mqtt.username] = settings.mqtt.password or ""
    if services_file is not None:
        for row in services_file.read_text().splitlines():
            name, sep, password = row.strip().partition(":")
            if sep and name and not name.startswith("#"):
                services[name] = password
    try:
        registry = Registry(settings.metadata_url)
        registry.init()
        passwd, acl = write_auth_files(registry, directory, services)
    except (SmartparkError, ValueError) as exc:
        _fail(str(exc))
    err.print(f"wrote {passwd} and {acl}: {len(registry.password_hashes())} devices with credentials, "
              f"{len(services)} service account(s). Reload: kill -HUP <mosquitto pid>", highlight=False)


def main() -> None:  # pragma: no cover - console entry
    app()
