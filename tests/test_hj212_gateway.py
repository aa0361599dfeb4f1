"""The HJ 212 gateway over real TCP sockets into the ingest's writer and the embedded store: answers only after
the data is durable, each malformation counted by reason and dead-lettered, one unit never disturbing another,
split packets, idle connections, the registry binding (park file, API), /metrics and the upstream relay."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from smartpark.core.catalog import default_catalog
from smartpark.core.registry import Registry, parse_park_file
from smartpark.core.settings import Settings
from smartpark.core.store.base import SeriesQuery, TimeSeriesStore
from smartpark.core.store.embedded import EmbeddedStore
from smartpark.hj212.frame import FrameReader, build_frame
from smartpark.hj212.server import Gateway
from smartpark.ingest.service import IngestService
from smartpark.platform import hj212_gateway
from smartpark.simulators.hj212 import with_bad_crc

from factories import PARK_YAML, now_ms, wait_for
from hj212_packets import MN, PW, Unit, data_time, minute_cp, minute_frame, qn, segment

HJ_PARK = PARK_YAML.replace("{id: sinter-cems, kind: cems, source_type: sinter}",
                            f"{{id: sinter-cems, kind: cems, source_type: sinter, hj212: {{mn: '{MN}', pw: '{PW}'}}}}")


@dataclass
class Env:
    settings: Settings
    registry: Registry
    store: EmbeddedStore
    writer: IngestService
    gateway: Gateway

    units: list[Unit]

    def unit(self) -> Unit:
        self.units.append(Unit(self.gateway.port))
        return self.units[-1]

    def rejected(self) -> dict[str, float]:
        return dict(self.gateway.stats.snapshot()["rejected"])  # type: ignore[call-overload]

    def dead(self) -> dict[str, int]:
        return self.writer.dead_letters.counts()


def start(tmp_path: Path, **extra: Any) -> Iterator[Env]:
    base: dict[str, Any] = {"data_dir": tmp_path, "hj212_port": 0, "ingest_batch_age_s": 0.05,
                            "retention_days": 30, "ingest_stats_interval_s": 0.5}
    settings = Settings(_env_file=None, **(base | extra))  # type: ignore[call-arg]
    registry = Registry(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    registry.init()
    registry.load_park(parse_park_file(HJ_PARK))
    store = EmbeddedStore(tmp_path / "ts.sqlite", default_catalog())
    store.init()
    writer = IngestService(settings, store, registry, default_catalog(), endpoint=None, spool_dir="hj212-spool")
    writer.start()
    gateway = hj212_gateway(settings, registry, default_catalog(), writer)
    gateway.start()
    env = Env(settings, registry, store, writer, gateway, [])
    try:
        yield env
    finally:
        for unit in env.units:
            unit.close()
        gateway.stop()
        writer.stop()
        store.close()
        registry.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from start(tmp_path)


def stored(store: TimeSeriesStore, ts: int, agg: str = "last", field: str = "nox_mg_m3") -> float | None:
    """The stack's value (or count of values) at exactly ``ts``."""
    query = SeriesQuery("emissions", field, ts, ts + 1, 60_000, agg, site="steel",  # type: ignore[arg-type]
                        device="sinter-cems")
    rows = [p for s in store.series(query) for p in s.points]
    return rows[0][1] if rows else None


def stored_nox(env: Env, ts: int) -> float | None:
    return stored(env.store, ts)


# ------------------------------------------------------------------------------------------ the happy path
def test_minute_data_is_stored_then_answered_with_the_same_qn(env: Env) -> None:
    ts = (now_ms() // 60_000 - 2) * 60_000
    unit = env.unit()
    unit.send(minute_frame(ts, nox=42.0, nox_zs=52.5))
    answer = unit.answer()
    assert answer == f"QN={qn(ts)};ST=91;CN=9014;PW={PW};MN={MN};Flag=4;CP=&&&&".encode()
    latest = {v.metric: v for v in env.store.latest("steel") if v.device == "sinter-cems"}
    assert latest["nox_mg_m3"].value == 42.0  # durable before the answer: no wait needed
    assert latest["nox_zs_mg_m3"].value == 52.5
    assert latest["o2_pct"].ts_ms == ts
    wait_for(lambda: env.gateway.stats.snapshot().get("answers_sent") == 1)  # counted once written
    stats = env.gateway.stats.snapshot()
    assert (stats["packets_accepted"], stats["readings"]) == (1, 1)
    unit.close()


def test_no_answer_requested_means_none_sent_but_data_stored(env: Env) -> None:
    ts = (now_ms() // 60_000 - 3) * 60_000
    unit = env.unit()
    unit.send(minute_frame(ts, flag=4, nox=41.0))
    wait_for(lambda: any(v.metric == "nox_mg_m3" and v.value == 41.0 for v in env.store.latest("steel")))
    unit.send(minute_frame(ts + 60_000, nox=43.0))
    assert qn(ts + 60_000).encode() in unit.answer()  # the first one had no answer queued before it
    unit.close()


# ------------------------------------------------------------------------------------------ malformations
def test_each_malformation_is_counted_dead_lettered_and_refused_where_the_standard_says(env: Env) -> None:
    ts = (now_ms() // 60_000 - 5) * 60_000
    unit = env.unit()
    unit.send(b"\x00garbage\xff")
    unit.send(with_bad_crc(minute_frame(ts)))
    assert unit.answer().endswith(b"CN=9011;PW=123456;MN=88888880000001;Flag=4;CP=&&QnRtn=9&&")
    unit.send(minute_frame(ts, mn="99999990000009"))
    assert unit.answer().endswith(b"CP=&&QnRtn=4&&")
    unit.send(minute_frame(ts, pw="654321"))
    assert unit.answer().endswith(b"CP=&&QnRtn=3&&")
    unit.send(build_frame(segment(minute_cp(ts), st="32", qn_text=qn(ts))))
    assert unit.answer().endswith(b"CP=&&QnRtn=5&&")
    unit.send(build_frame(segment("SystemTime=20250101000000", cn="1011", qn_text=qn(ts))))
    assert unit.answer().endswith(b"CP=&&QnRtn=8&&")
    unit.send(build_frame(segment(minute_cp(ts), flag=1, qn_text=qn(ts))))  # HJ/T 212-2005
    unit.send(b"##12x4QN=1")
    unit.send(b"##9000" + b"y" * 100)
    unit.send(build_frame(segment("a21002-Avg=1", qn_text=qn(ts))))  # no DataTime
    unit.send(build_frame(segment(f"DataTime={data_time(ts)};a21002-Avg=1e9", qn_text=qn(ts))))  # out of range
    unit.send(minute_frame(ts, nox=44.0))
    assert unit.answer() == f"QN={qn(ts)};ST=91;CN=9014;PW={PW};MN={MN};Flag=4;CP=&&&&".encode()
    expected = {"garbage", "bad_crc", "unknown_mn", "wrong_pw", "bad_st", "bad_cn", "unsupported_version",
                "bad_length", "too_large", "bad_datatime", "out_of_range"}
    assert set(env.rejected()) == expected
    wait_for(lambda: set(env.dead()) == expected)
    letters = env.writer.dead_letters.recent(100)
    wrong = next(d for d in letters if d.reason == "wrong_pw")
    assert b"654321" not in wrong.payload  # a PW never lands in the dead letters
    assert b"PW=***" in wrong.payload
    assert stored_nox(env, ts) == 44.0  # the good packet after all that went through
    unit.close()


def test_a_heartbeat_is_counted_not_refused(env: Env) -> None:
    ts = (now_ms() // 60_000 - 6) * 60_000
    unit = env.unit()
    unit.send(build_frame(segment("", cn="9015", st="91", flag=8, qn_text=qn(ts))))  # HJ 212-2025 [S]
    unit.send(minute_frame(ts, flag=9))
    assert unit.answer() == f"QN={qn(ts)};ST=91;CN=9014;PW={PW};MN={MN};Flag=8;CP=&&&&".encode()
    assert env.gateway.stats.snapshot()["heartbeats"] == 1
    assert env.rejected() == {}


def test_repeated_wrong_pw_closes_the_connection(env: Env) -> None:
    unit = env.unit()
    for _ in range(3):
        unit.send(minute_frame(now_ms(), pw="000000"))
        assert unit.answer().endswith(b"QnRtn=3&&")
    assert unit.closed_by_gateway()
    assert env.gateway.stats.snapshot()["closed_wrong_pw"] == 1


def test_a_misbehaving_unit_never_disturbs_another(env: Env) -> None:
    ts = (now_ms() // 60_000 - 10) * 60_000
    bad, slow, good = env.unit(), env.unit(), env.unit()
    bad.send(b"##0999" + b"z" * 500)  # a frame that never completes
    bad.send(b"\xff" * 100_000)  # then a flood of garbage
    frame = minute_frame(ts + 60_000, nox=45.0)
    slow.send(frame[:10])  # a slow sender: a third of a frame, then nothing for a while
    for i in range(5):
        good.send(minute_frame(ts + (i + 2) * 60_000, nox=46.0 + i))
        assert qn(ts + (i + 2) * 60_000).encode() in good.answer()
    slow.send(frame[10:])
    assert qn(ts + 60_000).encode() in slow.answer()
    assert stored_nox(env, ts + 60_000) == 45.0
    for c in (bad, slow, good):
        c.close()


def test_split_packet_is_reassembled_and_answered_part_by_part(env: Env) -> None:
    ts = (now_ms() // 60_000 - 20) * 60_000
    q = qn(ts)
    parts = [f"DataTime={data_time(ts)};a21002-Avg=47.0,a21002-Flag=N",
             f"DataTime={data_time(ts)};a19001-Avg=17.0,a19001-Flag=N",
             f"DataTime={data_time(ts)};a21026-Avg=12.0,a21026-Flag=N"]
    unit = env.unit()
    for n, cp in enumerate(parts, 1):
        unit.send(build_frame(segment(cp, flag=7, qn_text=q, extra=f"PNUM=3;PNO={n};")))
    assert [unit.answer() for _ in range(3)] == [f"QN={q};ST=91;CN=9014;PW={PW};MN={MN};Flag=4;CP=&&&&".encode()] * 3
    latest = {v.metric: v.value for v in env.store.latest("steel") if v.device == "sinter-cems"}
    assert (latest["nox_mg_m3"], latest["o2_pct"], latest["so2_mg_m3"]) == (47.0, 17.0, 12.0)
    assert env.gateway.stats.snapshot()["split_parts"] == 3
    unit.close()


def test_incomplete_split_packet_is_dead_lettered(tmp_path: Path) -> None:
    for env in start(tmp_path, hj212_split_timeout_s=0.3):
        unit = env.unit()
        unit.send(build_frame(segment(f"DataTime={data_time(now_ms())};a21002-Avg=1", flag=7,
                                      qn_text=qn(now_ms()), extra="PNUM=2;PNO=1;")))
        wait_for(lambda: env.dead().get("split_incomplete") == 1)  # noqa: B023 (env is used at once)
        assert env.rejected()["split_incomplete"] == 1
        unit.close()


def test_idle_and_half_open_connections_are_closed(tmp_path: Path) -> None:
    for env in start(tmp_path, hj212_idle_timeout_s=0.5):
        idle = env.unit()
        assert idle.closed_by_gateway()
        half = env.unit()
        half.sock.shutdown(socket.SHUT_WR)  # the unit half-closed: nothing more will come
        assert half.closed_by_gateway()
        wait_for(lambda: env.gateway.stats.snapshot().get("connections") == 0)  # noqa: B023
        assert env.gateway.stats.snapshot()["closed_idle"] >= 1


def test_too_many_connections_are_refused_and_counted(tmp_path: Path) -> None:
    for env in start(tmp_path, hj212_max_connections=2):
        units = [env.unit(), env.unit()]
        wait_for(lambda: env.gateway.stats.snapshot().get("connections") == 2)  # noqa: B023
        extra = env.unit()
        extra.closed_by_gateway()  # aborted: a reset or an EOF, either ends it
        assert env.rejected()["too_many_connections"] == 1
        for u in [*units, extra]:
            u.close()


# ------------------------------------------------------------------------------------------ binding and auth
def test_pw_is_stored_hashed_and_rebinding_through_the_api_works(env: Env) -> None:
    from smartpark.api.app import create_app

    from factories import ServedApp

    dev = env.registry.device("sinter-cems")
    assert dev is not None
    assert dev.hj212_mn == MN
    assert dev.hj212_pw_hash.startswith("$7$")
    assert PW not in dev.hj212_pw_hash
    served = ServedApp(create_app(env.settings, registry=env.registry, store=env.store, catalog=default_catalog()))
    try:
        admin = {"Authorization": f"Bearer {env.registry.create_api_key('admin', [])}"}
        resp = served.client.patch("/v1/devices/sinter-cems", headers=admin,
                                   json={"hj212": {"mn": "NEWMN0001", "pw": "abcdef"}})
        assert resp.status_code == 200, resp.text
        assert resp.json()["hj212_mn"] == "NEWMN0001"
        assert "abcdef" not in resp.text
        assert "pw" not in resp.json()
        conflict = served.client.patch("/v1/devices/steel-meter", headers=admin,
                                       json={"hj212": {"mn": "NEWMN0001", "pw": "x"}})
        assert conflict.status_code == 409
    finally:
        served.close()
    unit = env.unit()
    ts = (now_ms() // 60_000 - 30) * 60_000
    unit.send(minute_frame(ts, mn="NEWMN0001", pw="abcdef"))  # picked up without a restart (unknown MN reload)
    assert qn(ts).encode() in unit.answer()
    env.gateway.identities.reload()  # the old MN stops working at the next refresh (at most a minute)
    unit.send(minute_frame(ts, mn=MN, pw=PW))
    assert unit.answer().endswith(b"QnRtn=4&&")
    unit.close()


def test_loading_the_park_file_twice_keeps_the_hash() -> None:
    registry = Registry("sqlite://")
    registry.init()
    registry.load_park(parse_park_file(HJ_PARK))
    first = registry.device("sinter-cems").hj212_pw_hash  # type: ignore[union-attr]
    registry.load_park(parse_park_file(HJ_PARK))
    assert registry.device("sinter-cems").hj212_pw_hash == first  # type: ignore[union-attr]
    registry.close()


# ------------------------------------------------------------------------------------------ metrics and relay
def test_metrics_and_platform_points(env: Env) -> None:
    unit = env.unit()
    unit.send(with_bad_crc(minute_frame(now_ms())))
    unit.answer()
    text = generate_latest(env.gateway.stats.registry).decode()
    assert 'smartpark_hj212_rejected_total{reason="bad_crc"} 1.0' in text
    assert "smartpark_hj212_connections 1.0" in text
    sql = ("SELECT MAX(p.value) FROM points p JOIN series s ON s.id = p.series_id WHERE s.measurement = 'platform'"
           " AND s.device = 'smartpark-hj212' AND p.field = 'rejected_bad_crc_total'")
    assert wait_for(lambda: env.store._conn().execute(sql).fetchone()[0]) == 1.0
    unit.close()


class Upstream:
    """The authority's platform: a TCP server that records what it receives; can be started late."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.data = b""
        self.sock.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            while chunk := conn.recv(65536):
                self.data += chunk

    def close(self) -> None:
        self.sock.close()

    def frames(self) -> list[bytes]:
        return [f.raw for f in FrameReader().feed(self.data)]


def test_relay_stores_and_forwards_while_the_upstream_is_down(tmp_path: Path) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nobody listens there yet: the upstream is down
    for env in start(tmp_path, hj212_forward=f"127.0.0.1:{port}"):
        unit = env.unit()
        frames = [minute_frame((now_ms() // 60_000 - 40 + i) * 60_000) for i in range(3)]
        for f in frames:
            unit.send(f)
            unit.answer()
        unit.send(minute_frame(now_ms(), pw="bad000"))  # refused packets are not relayed
        unit.answer()
        wait_for(lambda: env.gateway.stats.snapshot().get("forward_failures", 0) >= 1)  # noqa: B023
        assert (tmp_path / "hj212-forward.sqlite").stat().st_mode & 0o077 == 0  # packets carry PWs
        upstream = Upstream(port)
        try:
            wait_for(lambda: upstream.frames() == frames, timeout=60)  # noqa: B023
        finally:
            upstream.close()


def test_a_slow_pw_check_never_holds_up_other_units(env: Env) -> None:
    """A first login costs a PBKDF2; while one runs (held here until released), other units are answered."""
    ts = (now_ms() // 60_000 - 50) * 60_000
    first = env.unit()
    first.send(minute_frame(ts))
    assert qn(ts).encode() in first.answer()  # logged in: its PW check is remembered
    release = threading.Event()
    verify = env.gateway.identities.verify

    def held(*args: Any) -> bool:
        release.wait(30)
        return verify(*args)

    env.gateway.identities.verify = held  # type: ignore[method-assign]
    newcomer = env.unit()
    newcomer.send(minute_frame(ts + 60_000, pw="another") + minute_frame(ts + 120_000, pw="another"))
    for i in range(3):  # answered while the newcomer's check is still running
        first.send(minute_frame(ts + (i + 3) * 60_000))
        assert qn(ts + (i + 3) * 60_000).encode() in first.answer()
    release.set()
    assert newcomer.answer().endswith(b"QnRtn=3&&")  # then the newcomer's frames, in order
    assert newcomer.answer().endswith(b"QnRtn=3&&")
