"""InfluxStore: line protocol and InfluxQL quoting (pure), then the store against a real influxd."""

from __future__ import annotations

import base64
import gzip
import time
import uuid

import httpx
import pytest

from smartpark.core.catalog import Catalog, Metric, default_catalog
from smartpark.core.clock import now_ms
from smartpark.core.errors import StoreRejected, StoreUnavailable
from smartpark.core.points import Point
from smartpark.core.store.base import DAY_MS, LatestValue, Series, SeriesQuery
from smartpark.core.store.influx import InfluxStore
from smartpark.core.store.line_protocol import (
    escape_measurement,
    escape_string_field,
    escape_tag,
    line,
    lines,
    quote_ident,
    quote_literal,
)

from servers import InfluxServer, free_port

MINUTE = 60_000
HOSTILE_SITE = "site one, \"two\"='3' back\\slash 钢铁 🌳"
HOSTILE_DEVICE = "dev=1,2 \"q\" 's' \\x 😀 a=b"
HOSTILE_TEXT = 'C "quoted" \\ back\\\\slash\nnew line\r\nCRLF, comma=eq 钢铁 🌳 \\n'
INJECTION = "x' OR site=~/.*/ --"


def _hour_ago() -> int:
    """A minute-aligned time an hour ago: inside the retention and the default lookback."""
    now = int(time.time() * 1000)
    return (now - 3_600_000) // MINUTE * MINUTE


# ------------------------------------------------------------------------------------------ pure functions


def test_escape_measurement() -> None:
    assert escape_measurement("emissions") == "emissions"
    assert escape_measurement("a b,c=d\"e'f") == "a\\ b\\,c=d\"e'f"


@pytest.mark.parametrize("bad", ["", "a\nb", "a\rb", "#comment", "tail\\", "a\\ b"])
def test_escape_measurement_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="measurement"):
        escape_measurement(bad)


def test_escape_tag() -> None:
    assert escape_tag("site-1") == "site-1"
    assert escape_tag("a b,c=d") == "a\\ b\\,c\\=d"
    assert escape_tag("\"q\" 's'") == "\"q\"\\ 's'"  # quotes need no escaping in tags
    assert escape_tag("back\\slash") == "back\\slash"  # a lone backslash is literal in 1.x tags
    assert escape_tag("钢铁 🌳") == "钢铁\\ 🌳"


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("", "empty"),
        ("a\nb", "newline"),
        ("a\rb", "newline"),
        ("tail\\", "backslash"),
        ("a\\ b", "backslash"),
        ("a\\,b", "backslash"),
        ("a\\=b", "backslash"),
        ("a\\\\b", "backslash"),
    ],
)
def test_escape_tag_refuses(bad: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        escape_tag(bad)


def test_escape_string_field() -> None:
    assert escape_string_field("C") == '"C"'
    assert escape_string_field('say "hi" \\ now\nnext') == '"say \\"hi\\" \\\\ now\nnext"'


def test_line_exact() -> None:
    p = Point(
        "emissions",
        "s,1",
        "d 1",
        1764324000000,
        {"nox_mg_m3": 41.0, "nox_mg_m3_flag": "C", "so2_mg_m3": 0.1, "flow_nm3_h": 512000},  # type: ignore[dict-item]
    )
    expected = (
        'emissions,device=d\\ 1,site=s\\,1 nox_mg_m3=41.0,nox_mg_m3_flag="C",so2_mg_m3=0.1,flow_nm3_h=512000.0'
        " 1764324000000"
    )
    assert line(p) == expected
    two = [p, Point("energy", "s", "d", 1, {"power_kw": -1e16})]
    assert lines(two) == (expected + "\nenergy,device=d,site=s power_kw=-1e+16 1").encode()


def test_line_floats_round_trip() -> None:
    for value in (0.1, 1 / 3, 1.0000000000000002, 5e-324, -0.0, 1e300):
        text = line(Point("m", "s", "d", 1, {"f": value}))
        assert float(text.split("f=")[1].split(" ")[0]) == value


@pytest.mark.parametrize(
    ("point", "error"),
    [
        (Point("energy", "a\nb", "d", 1, {"power_kw": 1.0}), ValueError),
        (Point("energy", "s", "d\r", 1, {"power_kw": 1.0}), ValueError),
        (Point("energy", "", "d", 1, {"power_kw": 1.0}), ValueError),
        (Point("energy", "s", "d", 1, {"power\nkw": 1.0}), ValueError),
        (Point("energy", "s", "d", 1, {"power_kw": float("nan")}), ValueError),
        (Point("energy", "s", "d", 1, {"power_kw": float("inf")}), ValueError),
        (Point("energy", "s", "d", 1, {}), ValueError),
        (Point("energy", "s", "d", 1, {"power_kw": True}), TypeError),
    ],
)
def test_line_refuses(point: Point, error: type[Exception]) -> None:
    with pytest.raises(error):
        line(point)


def test_newline_in_tag_names_the_tag() -> None:
    with pytest.raises(ValueError, match=r"tag site .*newline"):
        line(Point("energy", "a\nb", "d", 1, {"power_kw": 1.0}))


def test_quote_ident_and_literal() -> None:
    assert quote_ident("power_kw") == '"power_kw"'
    assert quote_ident('a"b\\c') == '"a\\"b\\\\c"'
    assert quote_literal("steel-works") == "'steel-works'"
    assert quote_literal(INJECTION) == "'x\\' OR site=~/.*/ --'"
    assert quote_literal('it\'s a \\ "x"\n') == "'it\\'s a \\\\ \"x\"\\n'"


# ------------------------------------------------------------------------------- HTTP, without a server


def _mock_store(handler: httpx.MockTransport, **kwargs: str) -> InfluxStore:
    return InfluxStore("http://influx.invalid:8086", "smartpark", default_catalog(), transport=handler, **kwargs)


@pytest.mark.parametrize("gzipped", [False, True])
def test_write_sends_line_protocol_with_token(gzipped: bool) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    with InfluxStore("http://influx.invalid:8086", "smartpark", default_catalog(), token="tok",
                     transport=httpx.MockTransport(handler), gzip_writes=gzipped) as store:
        p = Point("energy", "s", "d", now_ms(), {"power_kw": 1.5})  # on time: no rollup mark
        store.write([p])
        store.write([])  # nothing to send
    (req,) = seen
    assert req.url.path == "/write"
    assert dict(req.url.params) == {"db": "smartpark", "precision": "ms"}
    assert req.headers["Authorization"] == "Token tok"
    assert req.headers.get("Content-Encoding") == ("gzip" if gzipped else None)
    assert (gzip.decompress(req.content) if gzipped else req.content) == lines([p])


def test_gzipped_writes_reach_influxdb(influx_store: InfluxStore) -> None:
    with InfluxStore(influx_store.url, influx_store.database, default_catalog(), gzip_writes=True) as gz:
        gz.write([Point("energy", "s", "d", now_ms() - 60_000, {"power_kw": 4.5})])
    assert [v.value for v in influx_store.latest("s")] == [4.5]


def test_basic_auth_for_1x() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    with _mock_store(httpx.MockTransport(handler), username="u", password="p") as store:
        store.ping()
    assert seen[0].headers["Authorization"] == "Basic " + base64.b64encode(b"u:p").decode()


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, StoreUnavailable),
        (503, StoreUnavailable),
        (429, StoreUnavailable),
        (400, StoreRejected),
        (401, StoreRejected),
        (403, StoreRejected),
        (404, StoreRejected),
        (413, StoreRejected),
    ],
)
def test_http_status_mapping(status: int, error: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": f"boom {status}"})

    with _mock_store(httpx.MockTransport(handler)) as store, pytest.raises(error, match=f"boom {status}") as info:
        store.write([Point("energy", "s", "d", 5, {"power_kw": 1.5})])
    assert info.value.status == status  # type: ignore[attr-defined]
    assert info.value.retryable is (error is StoreUnavailable)  # type: ignore[attr-defined]


def test_timeout_is_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with _mock_store(httpx.MockTransport(handler)) as store, pytest.raises(StoreUnavailable, match="timed out"):
        store.series(SeriesQuery("energy", "power_kw", 0, MINUTE, MINUTE))


# ------------------------------------------------------------------------------------- real InfluxDB 1.6


def _rows(store: InfluxStore, statement: str) -> list[list[object]]:
    (result,) = store.query(statement)
    return [row for s in result.get("series", []) for row in s["values"]]


@pytest.mark.influx
def test_hostile_round_trip(influx_store: InfluxStore) -> None:
    t0 = _hour_ago()
    odd_field = 'odd key,="q" \\x'
    influx_store.write(
        [
            Point("emissions", HOSTILE_SITE, HOSTILE_DEVICE, t0 + 1, {"nox_mg_m3": 41.5, odd_field: 3.25}),
            Point(
                "emissions",
                HOSTILE_SITE,
                HOSTILE_DEVICE,
                t0 + MINUTE + 7,
                {"nox_mg_m3": 42.25, "nox_mg_m3_flag": HOSTILE_TEXT},
            ),
            # the same device id under another site, and another site: filters must keep them out
            Point("emissions", "other", HOSTILE_DEVICE, t0 + 2, {"nox_mg_m3": 999.0}),
            Point("emissions", "x", "d", t0 + 3, {"nox_mg_m3": 666.0}),
        ]
    )
    q = SeriesQuery(
        "emissions", "nox_mg_m3", t0, t0 + 2 * MINUTE, MINUTE, "last", site=HOSTILE_SITE, device=HOSTILE_DEVICE
    )
    assert influx_store.series(q) == [Series(HOSTILE_SITE, HOSTILE_DEVICE, [(t0, 41.5), (t0 + MINUTE, 42.25)])]
    odd = SeriesQuery("emissions", odd_field, t0, t0 + 2 * MINUTE, MINUTE, "sum", site=HOSTILE_SITE)
    assert influx_store.series(odd) == [Series(HOSTILE_SITE, HOSTILE_DEVICE, [(t0, 3.25)])]

    latest = [v for v in influx_store.latest(HOSTILE_SITE) if v.metric == "nox_mg_m3"]
    assert latest == [
        LatestValue(HOSTILE_SITE, HOSTILE_DEVICE, "emissions", "nox_mg_m3", t0 + MINUTE + 7, 42.25, HOSTILE_TEXT)
    ]
    # the string field and the exact ms timestamps, read back raw
    rows = _rows(
        influx_store,
        f'SELECT "nox_mg_m3", "nox_mg_m3_flag" FROM "emissions" WHERE "site" = {quote_literal(HOSTILE_SITE)}',  # noqa: S608
    )
    assert rows == [[t0 + 1, 41.5, None], [t0 + MINUTE + 7, 42.25, HOSTILE_TEXT]]


@pytest.mark.influx
def test_injection_like_site_matches_nothing(influx_store: InfluxStore) -> None:
    t0 = _hour_ago()
    influx_store.write([Point("emissions", s, "d", t0, {"nox_mg_m3": 1.0}) for s in ("x", "y", "z")])
    assert influx_store.latest(INJECTION) == []
    q = SeriesQuery("emissions", "nox_mg_m3", t0, t0 + MINUTE, MINUTE, "count", site=INJECTION)
    assert influx_store.series(q) == []
    assert influx_store.series(SeriesQuery("emissions", "nox_mg_m3", t0, t0 + MINUTE, MINUTE, "count", site="x"))


@pytest.mark.influx
def test_same_series_and_time_overwrites(influx_store: InfluxStore) -> None:
    t0 = _hour_ago()
    influx_store.write([Point("energy", "s", "d", t0, {"power_kw": 1.0, "power_kw_flag": "C"})])
    influx_store.write([Point("energy", "s", "d", t0, {"power_kw": 2.0})])
    assert _rows(influx_store, 'SELECT count("power_kw") FROM "energy"') == [[0, 1]]
    (v,) = influx_store.latest("s")
    assert (v.ts_ms, v.value) == (t0, 2.0)
    # InfluxDB merges the fields of the two writes: a flag is not removed by rewriting the point without it
    assert v.flag == "C"


@pytest.fixture
def aggregates_data(influx_store: InfluxStore) -> int:
    t0 = _hour_ago()
    s1d1 = [(0, 1.0), (10_000, 2.0), (50_000, 4.0), (MINUTE, 10.0), (MINUTE + 30_000, 20.0)]
    points = [Point("energy", "s1", "d1", t0 + dt, {"power_kw": v}) for dt, v in s1d1]
    points += [Point("energy", "s1", "d2", t0 + 5_000, {"power_kw": 100.0})]
    points += [Point("energy", "s2", "d3", t0 + 5_000, {"power_kw": 7.0})]
    # just outside the queried range on both sides
    points += [Point("energy", "s1", "d1", t, {"power_kw": 1e6}) for t in (t0 - 1, t0 + 2 * MINUTE)]
    influx_store.write(points)
    return t0


@pytest.mark.influx
@pytest.mark.parametrize(
    ("agg", "d1", "d2"),
    [
        ("mean", [7 / 3, 15.0], [100.0]),
        ("min", [1.0, 10.0], [100.0]),
        ("max", [4.0, 20.0], [100.0]),
        ("last", [4.0, 20.0], [100.0]),
        ("sum", [7.0, 30.0], [100.0]),
        ("count", [3.0, 2.0], [1.0]),
    ],
)
def test_series_aggregates_by_device(
    influx_store: InfluxStore, aggregates_data: int, agg: str, d1: list[float], d2: list[float]
) -> None:
    t0 = aggregates_data
    q = SeriesQuery("energy", "power_kw", t0, t0 + 2 * MINUTE, MINUTE, agg, site="s1")  # type: ignore[arg-type]
    assert influx_store.series(q) == [
        Series("s1", "d1", [(t0, pytest.approx(d1[0], rel=1e-15)), (t0 + MINUTE, d1[1])]),
        Series("s1", "d2", [(t0, d2[0])]),
    ]


@pytest.mark.influx
def test_series_group_by_site(influx_store: InfluxStore, aggregates_data: int) -> None:
    t0 = aggregates_data
    q = SeriesQuery("energy", "power_kw", t0, t0 + 2 * MINUTE, MINUTE, "mean", group_by="site")
    assert influx_store.series(q) == [
        Series("s1", None, [(t0, 26.75), (t0 + MINUTE, 15.0)]),
        Series("s2", None, [(t0, 7.0)]),
    ]
    one = SeriesQuery("energy", "power_kw", t0, t0 + MINUTE, MINUTE, "sum", device="d1", group_by="site")
    assert influx_store.series(one) == [Series("s1", None, [(t0, 7.0)])]  # end is exclusive


@pytest.mark.influx
def test_latest_per_metric_and_device(influx_store: InfluxStore) -> None:
    t0 = _hour_ago()
    influx_store.write(
        [
            Point(
                "energy",
                "s1",
                "d1",
                t0,
                {"power_kw": 10.0, "power_kw_flag": "C", "energy_kwh": 500.0, "energy_kwh_flag": "M"},
            ),
            Point("energy", "s1", "d1", t0 + MINUTE, {"power_kw": 11.0}),
            Point("energy", "s1", "d2", t0 + 30_000, {"power_kw": 5.0, "power_kw_flag": "D"}),
            Point("emissions", "s1", "d2", t0 + 40_000, {"o2_pct": 16.4}),
            Point("energy", "s1", "d3", t0 - 2 * DAY_MS, {"power_kw": 1.0}),  # outside a 1-day lookback
            Point("energy", "s2", "d9", t0 + MINUTE, {"power_kw": 99.0}),  # another site
        ]
    )
    assert influx_store.latest("s1", lookback_ms=DAY_MS) == [
        LatestValue("s1", "d1", "energy", "energy_kwh", t0, 500.0, "M"),
        LatestValue("s1", "d1", "energy", "power_kw", t0 + MINUTE, 11.0, None),
        LatestValue("s1", "d2", "emissions", "o2_pct", t0 + 40_000, 16.4, None),
        LatestValue("s1", "d2", "energy", "power_kw", t0 + 30_000, 5.0, "D"),
    ]
    assert [v.device for v in influx_store.latest("s1")] == ["d1", "d1", "d2", "d2", "d3"]


@pytest.mark.influx
def test_init_is_idempotent_and_lays_out_rollups(influxd: InfluxServer, influx_store: InfluxStore) -> None:
    influx_store.init()
    db = quote_ident(influx_store.database)
    rps = {row[0]: row for row in _rows(influx_store, f"SHOW RETENTION POLICIES ON {db}")}
    assert {"raw", "rp_1m", "rp_1h"} <= set(rps)
    assert rps["raw"][1] == "87600h0m0s"
    assert rps["raw"][4] is True  # DEFAULT
    assert rps["rp_1m"][1] == "175200h0m0s"
    assert rps["rp_1h"][1] == "0s"  # INF
    assert influx_store.rp == "raw"

    def cqs() -> dict[str, str]:
        (result,) = influx_store.query("SHOW CONTINUOUS QUERIES")
        series = [s for s in result["series"] if s["name"] == influx_store.database]
        return {name: text for s in series for name, text in s.get("values", [])}

    names = {f"cq_{d}_{r}" for d in ("energy", "emissions", "greening") for r in ("1m", "1h")}
    assert set(cqs()) == names
    before = cqs()
    energy_1m = before["cq_energy_1m"]
    assert "mean(power_kw) AS power_kw" in energy_1m
    assert "last(energy_kwh) AS energy_kwh" in energy_1m
    assert f"INTO {influx_store.database}.rp_1m.energy FROM {influx_store.database}.raw.energy" in energy_1m
    assert "GROUP BY time(1m), *" in energy_1m

    # another catalog and retention: init() replaces the CQs it makes and alters the policies; CQs of
    # measurements that catalog does not have are left alone
    power = Metric("power_kw", "energy", "kW", "gauge", -1e6, 1e6)
    with InfluxStore(influxd.url, influx_store.database, Catalog({"power_kw": power}), retention_days=30) as other:
        other.init()
        other.init()
    assert set(cqs()) == names
    assert "SELECT mean(power_kw) AS power_kw INTO" in cqs()["cq_energy_1m"]
    assert "last(energy_kwh)" not in cqs()["cq_energy_1h"]
    assert cqs()["cq_emissions_1m"] == before["cq_emissions_1m"]
    assert {row[0]: row[1] for row in _rows(influx_store, f"SHOW RETENTION POLICIES ON {db}")}["raw"] == "720h0m0s"


@pytest.mark.influx
def test_ping(influx_store: InfluxStore) -> None:
    influx_store.ping()
    assert influx_store.server_version().startswith("1.")


def test_closed_port_is_unavailable() -> None:
    with InfluxStore(f"http://127.0.0.1:{free_port()}", "x", default_catalog(), timeout_s=2) as store:
        with pytest.raises(StoreUnavailable) as info:
            store.write([Point("energy", "s", "d", 1, {"power_kw": 1.0})])
        assert info.value.retryable is True
        with pytest.raises(StoreUnavailable):
            store.ping()


@pytest.mark.influx
def test_field_type_conflict_is_rejected(influx_store: InfluxStore) -> None:
    t0 = _hour_ago()
    influx_store.write([Point("energy", "s", "d", t0, {"power_kw": 1.0})])
    with pytest.raises(StoreRejected, match="field type conflict") as info:
        influx_store.write([Point("energy", "s", "d", t0 + 1, {"power_kw": "high"})])
    assert info.value.retryable is False
    assert info.value.status == 400


@pytest.mark.influx
def test_unknown_database_is_retryable_on_write_and_rejected_on_query(influxd: InfluxServer) -> None:
    with InfluxStore(influxd.url, f"missing_{uuid.uuid4().hex}", default_catalog()) as store:
        # The ingest spools instead of dead-lettering good data until `smartpark db init` has run.
        with pytest.raises(StoreUnavailable, match=r"database not found.*smartpark db init") as info:
            store.write([Point("energy", "s", "d", 1, {"power_kw": 1.0})])
        assert info.value.status == 404
        assert info.value.retryable
        with pytest.raises(StoreRejected, match="database not found"):
            store.latest("s")
