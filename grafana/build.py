"""Build smartpark's Grafana dashboards from code: ``python grafana/build.py`` writes grafana/dashboards/*.json.

Why code and not hand-edited JSON: every panel is one small function, the house defaults live in one place
(``HOUSE``), limits, reference O2 and coal/CO2 factors come from the reference data and sites, quotas and stacks
from the park file, so a corrected figure or a new stack is a rebuild, never a hunt through JSON. The JSON is
committed (Grafana provisions it read-only) and a test checks it equals what this module builds.

Queries are raw InfluxQL against the v1 layout (contract "InfluxDB layout"): measurements energy, emissions,
greening, platform, alerts; tags site and device. ``$rp`` picks the resolution: ``raw`` or the rollups
``rp_1m``/``rp_1h`` that ``smartpark db init`` fills with continuous queries keeping the field names.
Multi-value variables are matched as ``/^($var)$/``: Grafana joins the values with ``|`` without parentheses.
"""

# ruff: noqa: S608 (this module writes InfluxQL for Grafana: names are catalog metrics and contract-validated ids)
from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from smartpark.core.reference import Reference, default_reference
from smartpark.core.registry import ParkFile, read_park_file
from smartpark.core.registry.hierarchy import effective_role
from smartpark.platform import demo_park_path

__all__ = ["DATASOURCE", "HOUSE", "build_all", "main", "meters_of_role", "write_all"]

Json = dict[str, Any]

DATASOURCE: Json = {"type": "influxdb", "uid": "smartpark-influxdb"}
HOUSE: Json = {  # house defaults, in one place
    "schemaVersion": 41,
    "time": {"from": "now-24h", "to": "now"},
    "refresh": "1m",
    "graphTooltip": 1,
    "editable": False,
    "panel_height": 8,
    "columns": 24,
    "rp_default": "rp_1m",
    "line_width": 1,
    "fill_opacity": 10,
}
OUT_DIR = Path(__file__).resolve().parent / "dashboards"
SITE = '"site" =~ /^($site)$/'
DEVICE = '"device" =~ /^($device)$/'
POLLUTANTS = {"so2": "SO2", "nox": "NOx", "pm": "PM"}


# ------------------------------------------------------------------------------------------- building blocks


def target(query: str, ref: str = "A", fmt: str = "time_series", alias: str = "") -> Json:
    """A raw InfluxQL query of the panel (Grafana's `rawQuery` form, the one a reviewer can read)."""
    out: Json = {"refId": ref, "datasource": DATASOURCE, "query": query, "rawQuery": True, "resultFormat": fmt}
    if alias:
        out["alias"] = alias
    return out


def _thresholds(steps: Iterable[tuple[float | None, str]], mode: str = "absolute") -> Json:
    return {"mode": mode, "steps": [{"color": color, "value": value} for value, color in steps]}


def _field_config(unit: str, custom: Json | None = None, **extra: Any) -> Json:
    defaults: Json = {"unit": unit, "color": {"mode": "palette-classic"}, **extra}
    if custom is not None:
        defaults["custom"] = custom
    return {"defaults": defaults, "overrides": []}


def _panel(kind: str, title: str, targets: list[Json], field_config: Json, options: Json, **extra: Any) -> Json:
    return {"type": kind, "title": title, "datasource": DATASOURCE, "targets": targets,
            "fieldConfig": field_config, "options": options, **extra}


def timeseries(title: str, targets: list[Json], unit: str, *, bars: bool = False, stack: bool = False,
               limit: float | None = None, description: str = "") -> Json:
    """A time series panel; ``limit`` draws a red threshold line (emission limits)."""
    custom: Json = {"drawStyle": "bars" if bars else "line", "lineWidth": HOUSE["line_width"],
                    "fillOpacity": 80 if bars else HOUSE["fill_opacity"], "spanNulls": False,
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                    "thresholdsStyle": {"mode": "line" if limit is not None else "off"}}
    extra: Json = {}
    if limit is not None:
        extra["thresholds"] = _thresholds([(None, "green"), (limit, "red")])
    options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
               "tooltip": {"mode": "multi", "sort": "desc"}}
    return _panel("timeseries", title, targets, _field_config(unit, custom, **extra), options,
                  description=description)


def _reduce(calc: str = "lastNotNull") -> Json:
    return {"calcs": [calc], "fields": "", "values": False}


def stat(title: str, targets: list[Json], unit: str, description: str = "") -> Json:
    options = {"reduceOptions": _reduce(), "colorMode": "value", "graphMode": "area", "justifyMode": "auto",
               "orientation": "auto", "textMode": "auto", "showPercentChange": False, "wideLayout": True,
               "percentChangeColorMode": "standard"}
    return _panel("stat", title, targets, _field_config(unit), options, description=description)


def bargauge(title: str, targets: list[Json], unit: str, *, thresholds: Json | None = None,
             overrides: list[Json] | None = None, description: str = "", time_from: str | None = None,
             **limits: float) -> Json:
    """A horizontal bar per series; ``limits`` (min, max) bound the bars, ``time_from`` overrides the range."""
    options = {"reduceOptions": _reduce(), "orientation": "horizontal", "displayMode": "basic",
               "showUnfilled": True, "valueMode": "color", "namePlacement": "auto", "sizing": "auto",
               "minVizHeight": 16, "minVizWidth": 8, "maxVizHeight": 300,
               "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False, "calcs": []}}
    config = _field_config(unit, thresholds=thresholds or _thresholds([(None, "green")]), **limits)
    config["defaults"]["color"] = {"mode": "thresholds"}
    config["overrides"] = overrides or []
    extra = {"timeFrom": time_from} if time_from else {}
    return _panel("bargauge", title, targets, config, options, description=description, **extra)


def table(title: str, targets: list[Json], *, transformations: list[Json] | None = None,
          overrides: list[Json] | None = None, description: str = "") -> Json:
    options = {"showHeader": True, "cellHeight": "sm", "frameIndex": 0,
               "footer": {"show": False, "reducer": ["sum"], "fields": []}}
    config = _field_config("none", {"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False})
    config["overrides"] = overrides or []
    return _panel("table", title, targets, config, options, description=description,
                  transformations=transformations or [])


def row(title: str) -> Json:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def _layout(panels: list[Json], width: int = 8) -> list[Json]:
    """Ids and grid positions, left to right; a row starts a new line across the full width."""
    x = y = 0
    height = HOUSE["panel_height"]
    for i, panel in enumerate(panels, start=1):
        panel["id"] = i
        if panel["type"] == "row":
            y += height if x else 0
            panel["gridPos"] = {"h": 1, "w": HOUSE["columns"], "x": 0, "y": y}
            x, y = 0, y + 1
            continue
        w = panel.pop("width", width)
        if x + w > HOUSE["columns"]:
            x, y = 0, y + height
        panel["gridPos"] = {"h": height, "w": w, "x": x, "y": y}
        x += w
    return panels


# ------------------------------------------------------------------------------------------------ variables


def query_variable(name: str, label: str, query: str, *, multi: bool = True) -> Json:
    """A variable filled by an InfluxQL SHOW TAG VALUES query, refreshed with the time range."""
    return {"type": "query", "name": name, "label": label, "datasource": DATASOURCE, "query": query,
            "refresh": 1, "multi": multi, "includeAll": multi, "sort": 1, "hide": 0, "regex": "",
            "current": {"text": ["All"], "value": ["$__all"]} if multi else {}, "options": []}


def site_variable() -> Json:
    return query_variable("site", "Site", 'SHOW TAG VALUES FROM /^(energy|emissions|greening)$/ WITH KEY = "site"')


def device_variable(measurement: str, label: str = "Device") -> Json:
    return query_variable("device", label,
                          f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "device" WHERE {SITE}')


def rp_variable() -> Json:
    """Resolution: the raw readings or a rollup; the rollups keep field names, so only FROM changes."""
    values = ["raw", "rp_1m", "rp_1h"]
    default = HOUSE["rp_default"]
    return {"type": "custom", "name": "rp", "label": "Resolution (raw, 1 min, 1 h)", "query": ",".join(values),
            "multi": False, "includeAll": False, "hide": 0, "current": {"text": default, "value": default},
            "options": [{"text": v, "value": v, "selected": v == default} for v in values]}


def dashboard(uid: str, title: str, description: str, panels: list[Json], variables: list[Json], *,
              timezone: str, annotations: list[Json] | None = None) -> Json:
    builtin = {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
               "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
               "type": "dashboard"}
    return {"uid": uid, "title": title, "description": description, "tags": ["smartpark"],
            "timezone": timezone, "schemaVersion": HOUSE["schemaVersion"], "version": 1,
            "editable": HOUSE["editable"], "graphTooltip": HOUSE["graphTooltip"], "refresh": HOUSE["refresh"],
            "time": dict(HOUSE["time"]), "fiscalYearStartMonth": 0, "liveNow": False, "links": [],
            "annotations": {"list": [builtin, *(annotations or [])]},
            "templating": {"list": variables}, "panels": _layout(panels)}


def alerts_annotation() -> Json:
    """Exceedance episodes from the alert engine's `alerts` measurement, as Grafana annotations."""
    query = (f'SELECT "text", "rule", "severity", "value" FROM "alerts" WHERE $timeFilter AND {SITE} '
             "AND \"state\" = 'firing'")
    return {"name": "Alerts (firing)", "datasource": DATASOURCE, "enable": True, "hide": False,
            "iconColor": "red",
            "target": {"refId": "Anno", "query": query, "queryType": "tags", "fromAnnotations": True,
                       "textColumn": "text", "tagsColumn": "rule,severity", "titleColumn": "", "timeEndColumn": "",
                       "limit": 100, "matchAny": False, "tags": [], "type": "tags"}}


# ----------------------------------------------------------------------------------------------- queries


def meters_of_role(park: ParkFile, role: str) -> str:
    """InfluxQL condition matching the park's energy meters of ``role`` (its registry roles, as the API counts
    them: site totals from main meters only, sub-meters for the breakdown). Grafana reads InfluxDB alone, which
    carries no roles (tags are site and device only, contract "InfluxDB layout"), so the dashboards are built
    from the park file: rebuild them (`python grafana/build.py --park FILE`) when its meters change."""
    ids = [d.id for s in park.sites for d in s.devices if effective_role(d.kind, d.role, d.parent) == role]
    return f'"device" =~ /^({"|".join(ids)})$/' if ids else '"device" =~ /^$/'  # ids need no escaping: ID_PATTERN


def _counter_delta(metric: str, where: str, bucket: str = "1h") -> str:
    """Consumption of a counter per bucket and device: differences of the bucket's last value, resets skipped."""
    return (f'SELECT non_negative_difference(last("{metric}")) AS "d" FROM "$rp"."energy" '
            f'WHERE $timeFilter AND {where} GROUP BY time({bucket}), "site", "device"')


def _per_day(inner: str, expression: str, tz: str, by_site: bool = True) -> str:
    group = 'time(1d), "site"' if by_site else "time(1d)"
    return f"SELECT {expression} FROM ({inner}) WHERE $timeFilter GROUP BY {group} fill(none) tz('{tz}')"


def _carrier_sum(ref: Reference, tz: str, where: str) -> str:
    """Standard coal (tce) of all carriers per day and site, from the main meters (fill(0): a site lacking
    a carrier adds nothing instead of voiding the sum)."""
    carriers = ref.energy.carriers
    inner = ", ".join(f'non_negative_difference(last("{c.metric}")) AS "{name}"' for name, c in carriers.items())
    total = " + ".join(f'sum("{name}") * {c.kgce_per_unit / 1000!r}' for name, c in carriers.items())
    sub = (f'SELECT {inner} FROM "$rp"."energy" WHERE $timeFilter AND {where} '
           f'GROUP BY time(1h), "site", "device"')
    return f"SELECT {total} FROM ({sub}) WHERE $timeFilter GROUP BY time(1d), \"site\" fill(0) tz('{tz}')"


# ------------------------------------------------------------------------------------------- park overview


def site_power(mains: str) -> Json:
    q = (f'SELECT mean("power_kw") FROM "$rp"."energy" WHERE $timeFilter AND {SITE} AND {mains} '
         'GROUP BY time($__interval), "site" fill(none)')
    return timeseries("Site power (main meters)", [target(q, alias="$tag_site")], "kwatt",
                      description="Active power at each site's main meters (role main).") | {"width": 12}


def energy_by_site(mains: str) -> Json:
    inner = _counter_delta("energy_kwh", f"{SITE} AND {mains}")
    q = f'SELECT sum("d") FROM ({inner}) GROUP BY "site"'
    return bargauge("Electricity over the range by site", [target(q, alias="$tag_site")], "kwatth",
                    description="Sum of hourly meter differences at the main meters (role main in the park "
                                "file; resets skipped). The signed figure is the API's energy KPI.")


def active_alerts() -> Json:
    inner = ('SELECT last("state") AS "state", last("rule") AS "rule", last("severity") AS "severity", '
             'last("value") AS "value", last("limit") AS "limit", last("text") AS "text" FROM "alerts" '
             f'WHERE $timeFilter AND {SITE} GROUP BY "site", "device"')
    q = (f'SELECT "rule", "severity", "value", "limit", "text" FROM ({inner}) '
         'WHERE "state" = \'firing\' GROUP BY "site", "device"')
    return table("Active alerts (last state per device: firing)", [target(q, fmt="table")], description=(
        "Devices whose latest alert event in the range is `firing`.")) | {"width": 12}


def freshness() -> Json:
    probes = {"energy": "power_kw", "emissions": "o2_pct", "greening": "soil_moisture_pct"}
    targets = [target(f'SELECT last("{field}") AS "{m}" FROM "raw"."{m}" WHERE time > now() - 7d AND {SITE} '
                      'GROUP BY "site"', ref=chr(65 + i), fmt="table") for i, (m, field) in enumerate(probes.items())]
    overrides = [{"matcher": {"id": "byName", "options": "Time"},
                  "properties": [{"id": "unit", "value": "dateTimeFromNow"},
                                 {"id": "displayName", "value": "last reading"}]}]
    return table("Data freshness by site and domain", targets, overrides=overrides,
                 transformations=[{"id": "merge", "options": {}}],
                 description="Time of the latest raw reading of each site, per domain (last 7 days).")


def devices_reporting(window: str = "10m") -> Json:
    probes = {"energy meters": ("energy", "power_kw"), "CEMS": ("emissions", "o2_pct"),
              "greening sensors": ("greening", "soil_moisture_pct")}
    targets = [
        target(f'SELECT count("n") AS "{label}" FROM (SELECT count("{field}") AS "n" FROM "raw"."{m}" '
               f'WHERE time > now() - {window} AND {SITE} GROUP BY "device")', ref=chr(65 + i))
        for i, (label, (m, field)) in enumerate(probes.items())]
    return stat(f"Devices reporting (last {window})", targets, "none",
                description="Devices with at least one raw reading in the window, by kind.")


def overview(park: ParkFile, ref: Reference) -> Json:
    mains = meters_of_role(park, "main")
    panels = [site_power(mains), active_alerts(), energy_by_site(mains), freshness(), devices_reporting()]
    return dashboard("smartpark-overview", "smartpark / Park overview",
                     "Sites on one screen: power, electricity, active alerts, data freshness.", panels,
                     [site_variable(), rp_variable()], timezone=park.park.timezone)


# ------------------------------------------------------------------------------------------- energy and carbon


def power_by_device() -> Json:
    q = (f'SELECT mean("power_kw") FROM "$rp"."energy" WHERE $timeFilter AND {SITE} AND {DEVICE} '
         'GROUP BY time($__interval), "device" fill(none)')
    return timeseries("Power by meter", [target(q, alias="$tag_device")], "kwatt") | {"width": 12}


def carrier_per_day(name: str, metric: str, unit: str, tz: str, mains: str) -> Json:
    q = _per_day(_counter_delta(metric, f"{SITE} AND {mains}"), 'sum("d")', tz)
    return timeseries(f"{name.replace('_', ' ').capitalize()} per day by site ({unit})",
                      [target(q, alias="$tag_site")], "short", bars=True, stack=True)


def sub_meters_per_day(tz: str, subs: str) -> Json:
    q = (f"SELECT sum(\"d\") FROM ({_counter_delta('energy_kwh', f'{SITE} AND {subs}')}) WHERE $timeFilter "
         f"GROUP BY time(1d), \"device\" fill(none) tz('{tz}')")
    return timeseries("Electricity per day by sub-meter (kWh)", [target(q, alias="$tag_device")], "short",
                      bars=True, description="The breakdown per line: sub-meters (role sub), never added to the "
                                             "site totals; the unmetered remainder is in the API's energy KPI.")


def tce_per_day(ref: Reference, tz: str, mains: str) -> Json:
    targets = []
    for i, (name, carrier) in enumerate(ref.energy.carriers.items()):
        inner = _counter_delta(carrier.metric, f"{SITE} AND {mains}")
        expr = f'sum("d") * {carrier.kgce_per_unit / 1000!r} AS "{name}"'
        targets.append(target(_per_day(inner, expr, tz, by_site=False), ref=chr(65 + i), alias=name))
    return timeseries("Standard coal per day by carrier (tce)", targets, "short", bars=True, stack=True,
                      description="Carriers times their kgce factors from the reference data (GB/T 2589-2020).")


def co2_per_day(park: ParkFile, ref: Reference, tz: str, year: int) -> Json:
    factor, used_year, region = ref.grid_factor(park.park.region, year)
    inner = _counter_delta("energy_kwh", f"{SITE} AND {meters_of_role(park, 'main')}")
    q = _per_day(inner, f'sum("d") * {factor / 1000!r}', tz)
    return timeseries(f"CO2 from grid electricity per day (t, {region} {used_year} factor)",
                      [target(q, alias="$tag_site")], "short", bars=True, stack=True,
                      description=f"Scope 2 of purchased electricity: times the grid factor {factor} kgCO2/kWh. "
                                  "Scope 1 (fuels) and purchased steam: the API's energy KPI.")


def intensity_per_day(ref: Reference, tz: str, mains: str) -> Json:
    carriers = ref.energy.carriers
    out = ref.energy.output_metric
    fields = [*(f'non_negative_difference(last("{c.metric}")) AS "{n}"' for n, c in carriers.items()),
              f'non_negative_difference(last("{out}")) AS "output"']
    total = " + ".join(f'sum("{n}") * {c.kgce_per_unit / 1000!r}' for n, c in carriers.items())
    inner = (f'SELECT {", ".join(fields)} FROM "$rp"."energy" WHERE $timeFilter AND {SITE} AND {mains} '
             'GROUP BY time(1h), "site", "device"')
    q = (f'SELECT ({total}) / sum("output") FROM ({inner}) WHERE $timeFilter '
         f"GROUP BY time(1d), \"site\" fill(0) tz('{tz}')")
    return timeseries("Energy intensity per day (tce per t output)", [target(q, alias="$tag_site")], "short",
                      description="All carriers in tce over product output, per site and local day.")


def quota_use(park: ParkFile, ref: Reference, tz: str) -> Json:
    """Today's tce against each site's daily quota (a yearly quota counts as 1/365 a day)."""
    overrides = []
    for site in park.sites:
        quota = site.energy_quota_tce_day or (site.energy_quota_tce_year or 0) / 365 or None
        if quota:
            overrides.append({"matcher": {"id": "byName", "options": site.id},
                              "properties": [{"id": "max", "value": round(quota, 3)}]})
    steps = _thresholds([(None, "green"), (80, "orange"), (100, "red")], mode="percentage")
    return bargauge("Energy quota use today (tce of the daily quota)",
                    [target(_carrier_sum(ref, tz, f"{SITE} AND {meters_of_role(park, 'main')}"), alias="$tag_site")],
                    "short",
                    thresholds=steps, overrides=overrides, time_from="now/d", min=0) | {"width": 12}


def energy(park: ParkFile, ref: Reference, year: int) -> Json:
    tz = park.park.timezone
    mains = meters_of_role(park, "main")
    panels: list[Json] = [power_by_device(), quota_use(park, ref, tz)]
    panels += [carrier_per_day(n, c.metric, c.unit, tz, mains) for n, c in ref.energy.carriers.items()]
    panels += [sub_meters_per_day(tz, meters_of_role(park, "sub"))]
    panels += [tce_per_day(ref, tz, mains), co2_per_day(park, ref, tz, year), intensity_per_day(ref, tz, mains)]
    return dashboard("smartpark-energy", "smartpark / Energy and carbon",
                     "Consumption by carrier and site, standard coal and CO2 per day, intensity, quota use.",
                     panels, [site_variable(), device_variable("energy", "Meter"), rp_variable()], timezone=tz)


# ------------------------------------------------------------------------------------------- emissions


def measured(pollutant: str, metric: str) -> Json:
    q = (f'SELECT mean("{metric}") FROM "$rp"."emissions" WHERE $timeFilter AND {SITE} AND {DEVICE} '
         'GROUP BY time($__interval), "device" fill(none)')
    return timeseries(f"{pollutant} measured (mg/m³)", [target(q, alias="$tag_device")], "short")


def o2_measured() -> Json:
    q = (f'SELECT mean("o2_pct") FROM "$rp"."emissions" WHERE $timeFilter AND {SITE} AND {DEVICE} '
         'GROUP BY time($__interval), "device" fill(none)')
    return timeseries("O2 in flue gas (%)", [target(q, alias="$tag_device")], "percent")


def hourly_mean(label: str, metric: str, *, limit: float, devices: list[str], o2_ref: float | None,
                ref: Reference, tz: str) -> Json:
    """Hourly means of one source type's stacks against its limit, O2-corrected where the type has a
    reference O2: C_ref = C × (21 − O2_ref) / (21 − O2), readings with O2 at the guard excluded."""
    where = f'$timeFilter AND "device" =~ /^({"|".join(devices)})$/ AND {SITE} AND {DEVICE}'
    if o2_ref is None:
        value, kind = f'"{metric}"', "measured"
    else:
        value, kind = f'"{metric}" * {21 - o2_ref!r} / (21 - "o2_pct")', f"at {o2_ref:g} % O2"
        where += f' AND "o2_pct" < {ref.emissions.o2_correction_max_pct!r}'
    inner = f'SELECT {value} AS "c" FROM "$rp"."emissions" WHERE {where} GROUP BY "device"'
    q = f"SELECT mean(\"c\") FROM ({inner}) WHERE $timeFilter GROUP BY time(1h), \"device\" fill(none) tz('{tz}')"
    return timeseries(f"{label} hourly mean, {kind} (limit {limit:g} mg/m³)", [target(q, alias="$tag_device")],
                      "short", limit=limit)


def stacks_by_type(park: ParkFile) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for site in park.sites:
        for device in site.devices:
            if device.kind == "cems":
                out.setdefault(device.source_type or "other", []).append(device.id)
    return dict(sorted(out.items()))


def emissions(park: ParkFile, ref: Reference) -> Json:
    tz = park.park.timezone
    panels: list[Json] = [row("Measured concentrations")]
    panels += [measured(label, ref.emissions.pollutants[p]) | {"width": 6} for p, label in POLLUTANTS.items()]
    panels.append(o2_measured() | {"width": 6})
    for source_type, devices in stacks_by_type(park).items():
        spec = ref.source_type(source_type)
        panels.append(row(f"{spec.description} ({source_type}): hourly means against the ultra-low limits"))
        panels += [hourly_mean(label, ref.emissions.pollutants[p], limit=spec.limits_mg_m3[p], devices=devices,
                               o2_ref=spec.o2_ref_pct, ref=ref, tz=tz) for p, label in POLLUTANTS.items()]
    return dashboard("smartpark-emissions", "smartpark / Emissions compliance",
                     "Per stack: measured and O2-corrected concentrations, hourly means against the limits of the "
                     "reference data; firing alerts as annotations.", panels,
                     [site_variable(), device_variable("emissions", "Stack"), rp_variable()], timezone=tz,
                     annotations=[alerts_annotation()])


# ------------------------------------------------------------------------------------------- greening


def coverage_by_site(park: ParkFile, ref: Reference) -> Json:
    """Green cover of each site as a share of its area, against its band (the site's or the default)."""
    targets, overrides = [], []
    band = ref.greening.default_band_pct
    for i, site in enumerate(park.sites):
        inner = (f'SELECT last("green_area_m2") AS "a" FROM "$rp"."greening" WHERE $timeFilter '
                 f"AND \"site\" = '{site.id}' AND {SITE} GROUP BY \"device\"")
        targets.append(target(f'SELECT sum("a") * 100 / {site.area_m2!r} AS "{site.id}" FROM ({inner})',
                              ref=f"S{i}", alias=site.id))
        low, high = site.greening_min_pct or band.min, site.greening_max_pct or band.max
        steps = _thresholds([(None, "red"), (low, "green"), (high, "orange")])
        overrides.append({"matcher": {"id": "byName", "options": site.id},
                          "properties": [{"id": "thresholds", "value": steps}]})
    return bargauge("Green cover by site (% of site area) against its band", targets, "percent",
                    thresholds=_thresholds([(None, "red"), (band.min, "green"), (band.max, "orange")]),
                    overrides=overrides, min=0, max=30) | {"width": 12}


def greening_gauge(title: str, metric: str, unit: str, by: str = "device") -> Json:
    q = (f'SELECT mean("{metric}") FROM "$rp"."greening" WHERE $timeFilter AND {SITE} AND {DEVICE} '
         f'GROUP BY time($__interval), "{by}" fill(none)')
    return timeseries(title, [target(q, alias=f"$tag_{by}")], unit)


def irrigation_per_day(tz: str) -> Json:
    inner = (f'SELECT non_negative_difference(last("irrigation_m3")) AS "d" FROM "$rp"."greening" '
             f'WHERE $timeFilter AND {SITE} AND {DEVICE} GROUP BY time(1h), "site", "device"')
    return timeseries("Irrigation water per day (m³)", [target(_per_day(inner, 'sum("d")', tz), alias="$tag_site")],
                      "short", bars=True, stack=True)


def greening(park: ParkFile, ref: Reference) -> Json:
    tz = park.park.timezone
    panels = [coverage_by_site(park, ref), greening_gauge("Soil moisture (%)", "soil_moisture_pct", "percent")
              | {"width": 12}, greening_gauge("NDVI by site", "ndvi", "none", by="site"), irrigation_per_day(tz)]
    return dashboard("smartpark-greening", "smartpark / Greening",
                     "Green cover by site against its band, soil moisture, NDVI and irrigation.", panels,
                     [site_variable(), device_variable("greening", "Zone sensor"), rp_variable()], timezone=tz)


# ------------------------------------------------------------------------------------------- platform health

INSTANCE = '"site" = \'_platform\' AND "device" =~ /^($instance)$/'


def _platform(select: str) -> str:
    return (f'SELECT {select} FROM "platform" WHERE $timeFilter AND {INSTANCE} '
            'GROUP BY time($__interval), "device" fill(none)')


def ingest_rate() -> Json:
    targets = [target(_platform(f'non_negative_derivative(last("{f}_total"), 1s) AS "{f}"'), ref=chr(65 + i),
                      alias=f"$tag_device {f}") for i, f in enumerate(["messages_committed", "readings_stored"])]
    return timeseries("Ingest rate (per second)", targets, "short") | {"width": 12}


def rejections() -> Json:
    q = _platform('non_negative_difference(last(/^rejected_.+_total$/))')
    return timeseries("Rejections by reason (per interval)", [target(q, alias="$tag_device $col")], "short",
                      bars=True, stack=True, description="Dead-lettered messages or readings by contract reason.")


def platform_gauge(title: str, field: str, unit: str, agg: str = "max") -> Json:
    return timeseries(title, [target(_platform(f'{agg}("{field}")'), alias="$tag_device")], unit)


def device_online_count() -> Json:
    probes = {"energy meters": ("energy", "power_kw"), "CEMS": ("emissions", "o2_pct"),
              "greening sensors": ("greening", "soil_moisture_pct")}
    targets = [target(f'SELECT count("n") AS "{label}" FROM (SELECT count("{field}") AS "n" FROM "raw"."{m}" '
                      'WHERE $timeFilter GROUP BY time(5m), "device") WHERE $timeFilter GROUP BY time(5m) fill(0)',
                      ref=chr(65 + i), alias=label) for i, (label, (m, field)) in enumerate(probes.items())]
    return timeseries("Devices online (reporting per 5 min)", targets, "none", stack=True)


def platform() -> Json:
    panels = [ingest_rate(), rejections(), platform_gauge("Write latency (last batch)", "last_write_seconds", "s"),
              platform_gauge("Spool size", "spool_bytes", "bytes"),
              platform_gauge("Messages in flight (unacked)", "in_flight_messages", "none"),
              timeseries("Store write failures (per interval)",
                         [target(_platform('non_negative_difference(last("write_failures_total"))'),
                                 alias="$tag_device")], "short", bars=True),
              device_online_count() | {"width": 16}]
    instance = query_variable("instance", "Ingest instance",
                              'SHOW TAG VALUES FROM "platform" WITH KEY = "device"')
    return dashboard("smartpark-platform", "smartpark / Platform health",
                     "The ingest's own figures (measurement platform) and how many devices report.", panels,
                     [instance], timezone="browser")


# ------------------------------------------------------------------------------------------------ output


def build_all(park: ParkFile | None = None, ref: Reference | None = None, year: int = 2025) -> dict[str, Json]:
    """Every dashboard by uid. ``year`` picks the grid CO2 factor (the latest published up to it)."""
    park = park or read_park_file(demo_park_path())
    ref = ref or default_reference()
    boards = [overview(park, ref), energy(park, ref, year), emissions(park, ref), greening(park, ref), platform()]
    return {b["uid"]: b for b in boards}


def render(board: Json) -> str:
    return json.dumps(board, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def write_all(out_dir: Path = OUT_DIR, **kwargs: Any) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for uid, board in build_all(**kwargs).items():
        path = out_dir / f"{uid}.json"
        path.write_text(render(board), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--park", type=Path, help="park file (default: the demo park)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory")
    args = parser.parse_args(argv)
    park = read_park_file(args.park) if args.park else None
    for path in write_all(args.out, park=park):
        print(path)


if __name__ == "__main__":
    main()
