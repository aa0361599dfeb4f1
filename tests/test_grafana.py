"""Grafana as code, proven against a real InfluxDB holding simulated park history.

Every panel query, annotation and template-variable query of every dashboard is expanded the way Grafana 11
expands it (template variables in the frontend with the InfluxQL data source's escaping and multi-value
joining; ``$timeFilter``, ``$__interval``, ``$interval``, ``$__interval_ms`` by the backend) and executed
against influxd holding 30 hours of the demo park (every device, one reading per 2 minutes), the rollups filled
by running the continuous queries that ``InfluxStore.init`` installed, plus representative ``platform`` and
``alerts`` points. A query that errors or returns nothing fails. The dashboards are also checked against JSON
schemas generated from Grafana's own TypeScript types (grafana/schema/generate.sh, @grafana/schema 11.6.7),
and the provisioning YAML against its documented keys.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

import jsonschema
import pytest
import yaml

from smartpark.core.catalog import default_catalog
from smartpark.core.points import Point
from smartpark.core.registry import read_park_file
from smartpark.core.store.influx import RESAMPLE_FOR, ROLLUPS, InfluxStore, quote_ident
from smartpark.platform import demo_park_path
from smartpark.simulators.models import ParkModel

from factories import park_yaml
from servers import InfluxServer

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "grafana"


def _load_builder() -> ModuleType:
    """grafana/build.py is a script, not a package module: loaded under a name of its own, which neither
    shadows nor is shadowed by PyPA's `build` package."""
    spec = importlib.util.spec_from_file_location("smartpark_grafana_build", GRAFANA / "build.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


build = _load_builder()

HISTORY_H = 30
STEP_MS = 120_000
MIN_MS = 60_000
HOUR_MS = 3_600_000
MAX_DATA_POINTS = 1000  # what a panel about 1000 px wide asks for
Json = dict[str, Any]

pytestmark = pytest.mark.influx


def _dashboards() -> dict[str, Json]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted((GRAFANA / "dashboards").glob("*.json"))}


DASHBOARDS = _dashboards()


def _panels(board: Json) -> Iterator[Json]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


PANELS = [(uid, panel) for uid, board in DASHBOARDS.items() for panel in _panels(board) if panel.get("targets")]


# ----------------------------------------------------------------------------------------- the park's history


def _readings_to_points(park_model: ParkModel, ts_ms: int) -> list[Point]:
    catalog = default_catalog()
    out = []
    for site, device, metrics in park_model.readings(ts_ms):
        by_domain: dict[str, dict[str, float | str]] = {}
        for name, value in metrics.items():
            by_domain.setdefault(catalog.metrics[name].domain, {})[name] = value
        out += [Point(domain, site, device, ts_ms, fields) for domain, fields in by_domain.items()]
    return out


def _platform_points(start_ms: int, end_ms: int) -> list[Point]:
    """Two ingest instances' figures every minute, shaped like ingest/stats.py writes them."""
    out = []
    for k, instance in enumerate(["smartpark-ingest-a", "smartpark-ingest-b"]):
        for i, ts in enumerate(range(start_ms, end_ms, MIN_MS)):
            n = i + 1
            fields: dict[str, float | str] = {
                "messages_received_total": 100.0 * n + k, "messages_committed_total": 100.0 * n,
                "readings_stored_total": 400.0 * n, "points_written_total": 450.0 * n, "batches_total": 6.0 * n,
                "write_failures_total": float(n // 300), "rejected_bad_json_total": float(n // 30),
                "rejected_out_of_range_total": float(n // 45 + k), "spool_bytes": float((n % 50) * 4096),
                "last_write_seconds": 0.02 + (n % 7) / 100, "last_batch_points": 450.0,
                "in_flight_messages": float(n % 13)}
            out.append(Point("platform", "_platform", instance, ts, fields))
    return out


def _alert_points(end_ms: int) -> list[Point]:
    """Alert events shaped as alerts/engine.py writes them: one resolved episode and one still firing."""
    def event(device: str, ts: int, state: str, value: float) -> Point:
        fields: dict[str, float | str] = {"episode": f"ep-{device}", "rule": "so2-hourly-limit", "state": state,
                                          "severity": "critical", "metric": "so2_mg_m3", "value": value,
                                          "limit": 35.0, "text": f"{state}: SO2 hourly mean {value} > 35"}
        return Point("alerts", "steel-works", device, ts, fields)
    return [event("sinter-1-cems", end_ms - 10 * HOUR_MS, "firing", 41.2),
            event("sinter-1-cems", end_ms - 8 * HOUR_MS, "resolved", 30.1),
            event("sinter-2-cems", end_ms - 3 * HOUR_MS, "firing", 44.0)]


def _fill_rollups(store: InfluxStore, start_ms: int) -> int:
    """Run each continuous query the server holds over the history (what the CQs do as time passes)."""
    cqs = [row for result in store.query("SHOW CONTINUOUS QUERIES") for s in result.get("series", [])
           if s.get("name") == store.database for row in s.get("values", [])]
    for _, text in cqs:
        select = re.search(r"BEGIN (.*) END$", text).group(1)  # type: ignore[union-attr]
        where = f" WHERE time >= {start_ms}ms AND time < now() GROUP BY "
        store.query(select.replace(" GROUP BY ", where, 1))
    return len(cqs)


@pytest.fixture(scope="session")
def park_db(influxd: InfluxServer) -> Iterator[InfluxStore]:
    """An initialised database with the demo park's last 30 hours, its rollups, platform and alert points."""
    store = InfluxStore(influxd.url, f"g_{uuid.uuid4().hex[:12]}", default_catalog(), timeout_s=60)
    store.init()
    end_ms = int(time.time() * 1000) // STEP_MS * STEP_MS
    start_ms = end_ms - HISTORY_H * HOUR_MS
    park_model = ParkModel(read_park_file(demo_park_path()), seed=1, start_ms=start_ms)
    batch: list[Point] = []
    for ts in range(start_ms, end_ms + 1, STEP_MS):
        batch += _readings_to_points(park_model, ts)
        if len(batch) >= 50_000:
            store.write(batch)
            batch = []
    store.write(batch + _platform_points(start_ms, end_ms) + _alert_points(end_ms))
    store.cq_count = _fill_rollups(store, start_ms)  # type: ignore[attr-defined]
    yield store
    store.query(f"DROP DATABASE {quote_ident(store.database)}", with_db=False)
    store.close()


# ------------------------------------------------------------------------------- Grafana's expansion rules

_ROUND_MS = [(15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000), (3500, 2000),
             (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000), (45000, 30000), (90000, 60000),
             (210000, 120000), (450000, 300000), (1050000, 600000), (2100000, 1800000), (5400000, 3600000),
             (9000000, 7200000), (16200000, 10800000), (32400000, 21600000), (86400000, 43200000),
             (604800000, 86400000)]


def round_interval(ms: float) -> int:
    """Grafana's rangeutil.roundInterval: the raw interval snapped to a readable one."""
    return next((out for bound, out in _ROUND_MS if ms < bound), 604800000)


def interval_text(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", HOUR_MS), ("m", MIN_MS), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _min_interval_ms() -> int:
    """The data source's min interval (jsonData.timeInterval) from the provisioning file."""
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/smartpark.yaml").read_text())["datasources"][0]
    m = re.fullmatch(r"(\d+)([smh])", ds["jsonData"]["timeInterval"])
    assert m, ds["jsonData"]["timeInterval"]
    return int(m.group(1)) * {"s": 1000, "m": MIN_MS, "h": HOUR_MS}[m.group(2)]


def time_range(board: Json, panel: Json, now_ms: int) -> tuple[int, int]:
    """The absolute range Grafana sends for the dashboard's relative time, or the panel's timeFrom."""
    if panel.get("timeFrom") == "now/d":
        tz = ZoneInfo(board["timezone"]) if board["timezone"] not in ("browser", "utc") else ZoneInfo("UTC")
        now = datetime.fromtimestamp(now_ms / 1000, tz)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        if now - midnight < timedelta(hours=2):  # too early in the day for a daily figure: take yesterday
            return int((midnight - timedelta(days=1)).timestamp() * 1000), int(midnight.timestamp() * 1000)
        return int(midnight.timestamp() * 1000), now_ms
    m = re.fullmatch(r"now-(\d+)h", board["time"]["from"])
    assert m, board["time"]
    assert board["time"]["to"] == "now", board["time"]
    return now_ms - int(m.group(1)) * HOUR_MS, now_ms


def influx_regex_escape(value: str) -> str:
    """Grafana's influxSpecialRegexEscape (multi-value and include-all variables)."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


def influx_regular_escape(value: str) -> str:
    """Grafana's influxRegularEscape (single-value variables): escapeRegex unless it parses as a number."""
    try:
        float(value)
    except ValueError:
        return re.sub(r"[\\^$*+?.()|{}\[\]/-]", lambda m: "\\" + m.group(0), value)
    return value


def format_variable(variable: Json, values: list[str]) -> str:
    """InfluxDatasource.interpolateQueryExpr: multi/include-all values escaped and joined by `|`."""
    if not variable.get("multi") and not variable.get("includeAll"):
        return influx_regular_escape(values[0])
    escaped = [influx_regex_escape(v) for v in values]
    return escaped[0] if len(escaped) == 1 else "|".join(escaped)


def replace_variables(text: str, variables: dict[str, str]) -> str:
    """templateSrv.replace for $name, ${name} and [[name]]; unknown names (macros) are left alone."""
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return variables.get(name, m.group(0))
    return re.sub(r"\$(\w+)|\$\{(\w+)\}|\[\[(\w+)\]\]", sub, text)


def apply_macros(text: str, start_ms: int, end_ms: int) -> str:
    """The InfluxQL backend's macros, in its order."""
    interval = max(round_interval((end_ms - start_ms) / MAX_DATA_POINTS), _min_interval_ms())
    text = text.replace("$timeFilter", f"time >= {start_ms}ms and time <= {end_ms}ms")
    text = text.replace("$interval", interval_text(interval))
    text = text.replace("$__interval_ms", str(interval))
    return text.replace("$__interval", interval_text(interval))


def tag_values(store: InfluxStore, statement: str) -> list[str]:
    """A SHOW TAG VALUES result as Grafana's response parser reads it: the value column, de-duplicated."""
    values: list[str] = []
    for result in store.query(statement):
        for series in result.get("series", []):
            values += [row[1] for row in series["values"] if row[1] not in values]
    return values


def resolve_variables(store: InfluxStore, board: Json, now_ms: int, **picks: list[str]) -> dict[str, str]:
    """Every template variable's interpolated value, in dashboard order (later ones may use earlier ones).

    Query variables take all their values ("All") unless ``picks`` names a selection; custom ones their
    ``current`` value unless picked.
    """
    resolved: dict[str, str] = {}
    start, end = now_ms - 24 * HOUR_MS, now_ms
    for variable in board["templating"]["list"]:
        name = variable["name"]
        if variable["type"] == "custom":
            values = picks.get(name) or [variable["current"]["value"]]
        else:
            query = apply_macros(replace_variables(variable["query"], resolved), start, end)
            options = tag_values(store, query)
            assert options, f"variable {name}: {query} returned no values"
            values = picks.get(name) or options
        resolved[name] = format_variable(variable, values)
    return resolved


def run(store: InfluxStore, query: str) -> int:
    """Rows with at least one non-null value besides time; raises on any InfluxDB error."""
    rows = 0
    for result in store.query(query):
        for series in result.get("series", []):
            rows += sum(1 for row in series.get("values", []) if any(v is not None for v in row[1:]))
    return rows


def expand(board: Json, panel: Json, query: str, variables: dict[str, str], now_ms: int) -> str:
    start, end = time_range(board, panel, now_ms)
    return apply_macros(replace_variables(query, variables), start, end)


# ---------------------------------------------------------------------------------------------------- tests


def test_escaping_follows_grafana() -> None:
    """The expansion rules themselves: join without parentheses, regex escaping, numbers left alone."""
    multi = {"multi": True, "includeAll": True}
    assert format_variable(multi, ["a", "b.c"]) == "a|b\\\\.c"
    assert format_variable(multi, ["only"]) == "only"
    assert format_variable({"multi": False}, ["rp_1m"]) == "rp_1m"
    assert format_variable({"multi": False}, ["1.5"]) == "1.5"
    assert replace_variables('"$rp"."x" ${site} [[device]] $timeFilter', {"rp": "raw", "site": "s", "device": "d"}) \
        == '"raw"."x" s d $timeFilter'
    assert round_interval(24 * HOUR_MS / MAX_DATA_POINTS) == MIN_MS


@pytest.mark.parametrize(("uid", "panel"), PANELS, ids=[f"{u}:{p['title'][:40]}" for u, p in PANELS])
def test_panel_queries_return_data(park_db: InfluxStore, uid: str, panel: Json) -> None:
    """Each target of the panel, at every resolution its dashboard offers, returns data without error."""
    board = DASHBOARDS[uid]
    now_ms = int(time.time() * 1000)
    rp = next((v for v in board["templating"]["list"] if v["name"] == "rp"), None)
    resolutions = [o["value"] for o in rp["options"]] if rp else [None]
    for resolution in resolutions:
        picks = {"rp": [resolution]} if resolution else {}
        variables = resolve_variables(park_db, board, now_ms, **picks)
        for t in panel["targets"]:
            query = expand(board, panel, t["query"], variables, now_ms)
            assert not re.search(r"\$\{?\w", query), f"unexpanded variable in {query}"
            assert run(park_db, query) > 0, f"{uid} / {panel['title']} / {t['refId']} at {resolution}: no data\n{query}"


@pytest.mark.parametrize("uid", [u for u, b in DASHBOARDS.items() if len(b["annotations"]["list"]) > 1])
def test_alert_annotations_return_firing_events(park_db: InfluxStore, uid: str) -> None:
    board = DASHBOARDS[uid]
    now_ms = int(time.time() * 1000)
    variables = resolve_variables(park_db, board, now_ms)
    for annotation in board["annotations"]["list"][1:]:
        query = expand(board, {}, annotation["target"]["query"], variables, now_ms)
        rows = [row for r in park_db.query(query) for s in r.get("series", []) for row in s["values"]]
        assert len(rows) == 2, query  # the two firing events; the resolved one is not an annotation
        columns = park_db.query(query)[0]["series"][0]["columns"]
        assert annotation["target"]["textColumn"] in columns


def test_multi_value_site_selection_matches_exactly_those_sites(park_db: InfluxStore) -> None:
    """Two sites picked: the `/^($site)$/` form keeps exactly them (Grafana joins values without parentheses)."""
    board = DASHBOARDS["smartpark-overview"]
    panel = next(p for p in board["panels"] if p["title"].startswith("Site power"))
    now_ms = int(time.time() * 1000)
    picked = ["steel-works", "truck-assembly"]
    variables = resolve_variables(park_db, board, now_ms, site=picked)
    query = expand(board, panel, panel["targets"][0]["query"], variables, now_ms)
    sites = {s["tags"]["site"] for r in park_db.query(query) for s in r.get("series", [])}
    assert sites == set(picked)


def test_emission_panels_cover_every_stack_with_its_limit() -> None:
    """Each CEMS source type of the park has its hourly-mean panels, with the reference data's limit as threshold."""
    ref = build.default_reference()
    stacks = build.stacks_by_type(read_park_file(demo_park_path()))
    panels = list(_panels(DASHBOARDS["smartpark-emissions"]))
    for source_type, devices in stacks.items():
        spec = ref.source_type(source_type)
        for pollutant, label in build.POLLUTANTS.items():
            limit = spec.limits_mg_m3[pollutant]
            match = [p for p in panels if p["title"].startswith(f"{label} hourly mean")
                     and all(d in p["targets"][0]["query"] for d in devices)]
            assert len(match) == 1, (source_type, pollutant)
            steps = match[0]["fieldConfig"]["defaults"]["thresholds"]["steps"]
            assert steps[-1]["value"] == limit


def test_rollups_hold_the_raw_field_names(park_db: InfluxStore) -> None:
    """The CQs write every domain into each rollup RP under the raw field names, and resample late data."""
    assert park_db.cq_count == 3 * len(ROLLUPS)  # type: ignore[attr-defined]
    texts = [row[1] for r in park_db.query("SHOW CONTINUOUS QUERIES") for s in r.get("series", [])
             if s["name"] == park_db.database for row in s["values"]]
    for rp, *_ in ROLLUPS:
        assert sum(f"RESAMPLE FOR {RESAMPLE_FOR[rp]} " in t and f".{rp}." in t for t in texts) == 3
        for measurement, field in (("energy", "energy_kwh"), ("emissions", "so2_mg_m3"), ("greening", "ndvi")):
            statement = f'SELECT count("{field}") FROM "{rp}"."{measurement}"'  # noqa: S608 (test names)
            rows = park_db.query(statement)[0]["series"][0]["values"]
            assert rows[0][1] > 0, (rp, measurement)
    hourly = park_db.query('SELECT count("power_kw") FROM "rp_1h"."energy" GROUP BY "device"')[0]["series"]
    assert all(s["values"][0][1] <= HISTORY_H + 1 for s in hourly)  # one point per hour and device


# ----------------------------------------------------------------------------------------- schema and files


def _schema(name: str) -> Json:
    schema = json.loads((GRAFANA / "schema" / name).read_text(encoding="utf-8"))
    # The TS type of an annotation's `target` is the built-in Grafana one; data sources keep their own query
    # there (Grafana migrates InfluxDB annotations into it), so it must stay open for their keys.
    if "AnnotationTarget" in schema.get("definitions", {}):
        schema["definitions"]["AnnotationTarget"]["additionalProperties"] = True
    return schema


@pytest.mark.parametrize("uid", DASHBOARDS)
def test_dashboard_matches_grafana_schema(uid: str) -> None:
    board = DASHBOARDS[uid]
    jsonschema.validate(board, _schema("dashboard.schema.json"))
    assert board["uid"] == uid
    assert len(uid) <= 40
    for panel in _panels(board):
        kind = panel["type"]
        if kind == "row":
            continue
        jsonschema.validate(panel["options"], _schema(f"panel-{kind}-options.schema.json"))
        custom = GRAFANA / "schema" / f"panel-{kind}-fieldconfig.schema.json"
        if custom.exists():
            jsonschema.validate(panel["fieldConfig"]["defaults"]["custom"], _schema(custom.name))
        assert panel["datasource"] == build.DATASOURCE
        assert all(t["datasource"] == build.DATASOURCE for t in panel["targets"])


def test_schema_rejects_what_grafana_would() -> None:
    """The generated schema is strict: an unknown dashboard key or a misspelt panel option fails."""
    board = json.loads(json.dumps(DASHBOARDS["smartpark-overview"]))
    board["refreshh"] = "1m"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(board, _schema("dashboard.schema.json"))
    options = dict(next(p for p in board["panels"] if p["type"] == "timeseries")["options"], legend={"show": 1})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(options, _schema("panel-timeseries-options.schema.json"))


def test_committed_dashboards_are_what_the_builder_builds() -> None:
    built = build.build_all()
    assert sorted(built) == sorted(DASHBOARDS)
    for uid, board in built.items():
        assert build.render(board) == (GRAFANA / "dashboards" / f"{uid}.json").read_text(encoding="utf-8"), (
            f"{uid}.json is stale: run `python grafana/build.py`")


def test_panel_ids_and_grid_do_not_overlap() -> None:
    for uid, board in DASHBOARDS.items():
        ids = [p["id"] for p in _panels(board)]
        assert len(ids) == len(set(ids)), uid
        cells: set[tuple[int, int]] = set()
        for p in _panels(board):
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24, (uid, p["title"])
            own = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not own & cells, (uid, p["title"])
            cells |= own


_PROVISIONING_SCHEMAS: dict[str, Json] = {
    # keys as documented in Grafana's "Provision Grafana" page (data sources and dashboard providers)
    "datasources": {
        "type": "object", "additionalProperties": False, "required": ["apiVersion", "datasources"],
        "properties": {
            "apiVersion": {"const": 1},
            "deleteDatasources": {"type": "array"},
            "prune": {"type": "boolean"},
            "datasources": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "type", "uid", "access", "url"],
                "properties": {
                    "name": {"type": "string"}, "type": {"const": "influxdb"}, "uid": {"type": "string"},
                    "access": {"enum": ["proxy", "direct"]}, "orgId": {"type": "integer"},
                    "url": {"type": "string"}, "user": {"type": "string"}, "database": {"type": "string"},
                    "basicAuth": {"type": "boolean"}, "basicAuthUser": {"type": "string"},
                    "withCredentials": {"type": "boolean"}, "isDefault": {"type": "boolean"},
                    "version": {"type": "integer"}, "editable": {"type": "boolean"},
                    "jsonData": {"type": "object", "additionalProperties": False, "properties": {
                        "dbName": {"type": "string"}, "httpMode": {"enum": ["GET", "POST"]},
                        "timeInterval": {"type": "string"}, "version": {"enum": ["InfluxQL", "Flux", "SQL"]},
                        "httpHeaderName1": {"type": "string"}, "tlsSkipVerify": {"type": "boolean"}}},
                    "secureJsonData": {"type": "object", "additionalProperties": False, "properties": {
                        "password": {"type": "string"}, "basicAuthPassword": {"type": "string"},
                        "httpHeaderValue1": {"type": "string"}, "token": {"type": "string"}}}}}}}},
    "dashboards": {
        "type": "object", "additionalProperties": False, "required": ["apiVersion", "providers"],
        "properties": {
            "apiVersion": {"const": 1},
            "providers": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "type", "options"],
                "properties": {
                    "name": {"type": "string"}, "orgId": {"type": "integer"}, "folder": {"type": "string"},
                    "folderUid": {"type": "string"}, "type": {"const": "file"},
                    "disableDeletion": {"type": "boolean"}, "updateIntervalSeconds": {"type": "integer"},
                    "allowUiUpdates": {"type": "boolean"},
                    "options": {"type": "object", "additionalProperties": False, "required": ["path"],
                                "properties": {"path": {"type": "string"},
                                               "foldersFromFilesStructure": {"type": "boolean"}}}}}}}},
}


@pytest.mark.parametrize("kind", sorted(_PROVISIONING_SCHEMAS))
def test_provisioning_yaml_keys(kind: str) -> None:
    files = sorted((GRAFANA / "provisioning" / kind).glob("*.yaml"))
    assert files
    for path in files:
        jsonschema.validate(yaml.safe_load(path.read_text()), _PROVISIONING_SCHEMAS[kind])


def test_provisioning_wires_datasource_and_dashboards() -> None:
    """Fixed uid the dashboards use, InfluxQL, secrets only from the environment; read-only dashboards."""
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/smartpark.yaml").read_text())["datasources"][0]
    assert ds["uid"] == build.DATASOURCE["uid"]
    assert ds["jsonData"]["version"] == "InfluxQL"
    assert all(re.fullmatch(r"\$\{[A-Z0-9_]+\}", v) for v in ds["secureJsonData"].values())
    assert "password" not in ds
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/smartpark.yaml").read_text())["providers"][0]
    assert provider["allowUiUpdates"] is False
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert any(m.startswith("./grafana/dashboards:") and m.split(":")[1] == provider["options"]["path"]
               for m in mounts if isinstance(m, str)), mounts
    assert math.isfinite(_min_interval_ms())


ROLES_PARK = park_yaml("roles-park", ["id: incomer-a, kind: energy_meter, role: main",
                                      "id: line-main-substation, kind: energy_meter, role: sub, parent: incomer-a",
                                      "id: solar, kind: energy_meter, role: generation"], steel_area=1000)


def test_site_totals_come_from_the_park_files_roles_not_device_names() -> None:
    """A main meter is whatever the park file says (issue 12: dashboards matched `*main-substation` names)."""
    from smartpark.core.registry import parse_park_file

    boards = build.build_all(park=parse_park_file(ROLES_PARK))
    queries = {p["title"]: [t["query"] for t in p["targets"]] for uid in ("smartpark-overview", "smartpark-energy")
               for p in boards[uid]["panels"] if p.get("targets")}
    totals = [q for title, qs in queries.items() for q in qs
              if title.startswith(("Site power", "Electricity over", "Energy quota")) or "per day by site" in title]
    assert totals
    assert all('"device" =~ /^(incomer-a)$/' in q for q in totals)
    (subs,) = queries["Electricity per day by sub-meter (kWh)"]
    assert '"device" =~ /^(line-main-substation)$/' in subs
    assert not any("main-substation$/" in q for qs in queries.values() for q in qs)
