"""The InfluxDB write path (core/store/influx_http.py, WriteConnections): against a real InfluxDB and a real
HTTP server that answers what the test wants (statuses, closed connections), over real sockets."""

from __future__ import annotations

import base64
import gc
import gzip
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from smartpark.core.catalog import default_catalog
from smartpark.core.clock import now_ms
from smartpark.core.errors import ConfigError, StoreRejected, StoreUnavailable
from smartpark.core.points import Point
from smartpark.core.store.influx import InfluxStore, lines


@dataclass
class Answers:
    """What the test server answers: ``status`` and ``body``; ``close_after`` closes each connection after
    its answer without saying so (as an idle timeout or a restart would); every request is kept."""

    status: int = 204
    body: bytes = b""
    close_after: bool = False
    seen: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    connections: set[tuple[str, int]] = field(default_factory=set)


@pytest.fixture
def server() -> Iterator[tuple[str, Answers]]:
    answers = Answers()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            answers.seen.append((self.path, dict(self.headers.items()), body))
            answers.connections.add(self.client_address)
            self.send_response(answers.status)
            self.send_header("Content-Length", str(len(answers.body)))
            self.end_headers()
            try:
                self.wfile.write(answers.body)
            except (ConnectionResetError, BrokenPipeError):
                self.close_connection = True  # the client read what it wanted of a huge answer and hung up
                return
            self.close_connection = answers.close_after

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", answers
    httpd.shutdown()
    httpd.server_close()


def _point(value: float = 1.5) -> Point:
    return Point("energy", "s", "d", now_ms(), {"power_kw": value})  # on time: no rollup mark


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_write_carries_the_line_protocol_credentials_and_encoding(server: tuple[str, Answers],
                                                                     gzipped: bool) -> None:
    url, answers = server
    p = _point()
    with InfluxStore(url, "smartpark", default_catalog(), username="u", password="p", gzip_writes=gzipped) as store:
        store.write([p])
    ((path, headers, body),) = answers.seen
    assert path == "/write?db=smartpark&precision=ms"
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
    assert headers.get("Content-Encoding") == ("gzip" if gzipped else None)
    assert (gzip.decompress(body) if gzipped else body) == lines([p])


def test_a_token_goes_as_the_token_header(server: tuple[str, Answers]) -> None:
    url, answers = server
    with InfluxStore(url, "smartpark", default_catalog(), token="tok") as store:
        store.write([_point()])
    assert answers.seen[0][1]["Authorization"] == "Token tok"


@pytest.mark.parametrize(("status", "error"), [(500, StoreUnavailable), (503, StoreUnavailable),
                                               (429, StoreUnavailable), (400, StoreRejected),
                                               (401, StoreRejected), (413, StoreRejected)])
def test_a_refused_write_is_typed_with_influxdbs_message(server: tuple[str, Answers], status: int,
                                                          error: type[Exception]) -> None:
    url, answers = server
    answers.status, answers.body = status, b'{"error": "boom"}'
    with InfluxStore(url, "smartpark", default_catalog()) as store, \
            pytest.raises(error, match=f"{status}: boom") as info:
        store.write([_point()])
    assert info.value.status == status  # type: ignore[attr-defined]
    assert info.value.retryable is (error is StoreUnavailable)  # type: ignore[attr-defined]


def test_a_missing_database_is_retryable(server: tuple[str, Answers]) -> None:
    url, answers = server
    answers.status, answers.body = 404, b'{"error": "database not found: \\"smartpark\\""}'
    with InfluxStore(url, "smartpark", default_catalog()) as store, pytest.raises(StoreUnavailable, match="db init"):
        store.write([_point()])


def test_writes_reuse_one_connection_and_reopen_one_the_server_closed(server: tuple[str, Answers]) -> None:
    url, answers = server
    with InfluxStore(url, "smartpark", default_catalog()) as store:
        for i in range(3):
            store.write([_point(i)])
        assert len(answers.connections) == 1  # keep-alive
        answers.close_after = True  # from now on the server drops each connection after answering
        for i in range(3):
            store.write([_point(i)])  # each reuse finds it closed: once more on a fresh one, no error
    assert len(answers.seen) == 6


def test_a_closed_port_is_unavailable() -> None:
    with InfluxStore("http://127.0.0.1:9", "smartpark", default_catalog(), timeout_s=2) as store, \
            pytest.raises(StoreUnavailable, match="/write: ConnectionRefusedError"):
        store.write([_point()])


def test_a_write_leaves_no_garbage_cycle_holding_its_body(influx_store: InfluxStore) -> None:
    """httpx's request objects sit in reference cycles holding the body until a full collection, which the
    ingest makes rare (gc.freeze, a high young threshold): its memory grew ~20 MiB per 100k messages."""
    points = [Point("energy", "s", f"d{i % 50}", now_ms() - i, {"power_kw": float(i)})
              for i in range(6_000)]  # more than one request's worth (WRITE_CHUNK)
    influx_store.write(points[:10])  # connections open
    gc.collect()
    gc.disable()
    try:
        influx_store.write(points)
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_a_connection_idle_too_long_is_opened_anew(server: tuple[str, Answers],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A NAT or load balancer may drop an idle connection silently: past IDLE_S a write does not trust it."""
    from smartpark.core.store import influx_http

    url, answers = server
    monkeypatch.setattr(influx_http, "IDLE_S", 0.0)
    with InfluxStore(url, "smartpark", default_catalog()) as store:
        for i in range(3):
            store.write([_point(i)])
    assert len(answers.connections) == 3


def test_a_credential_with_a_line_break_is_a_config_error_that_does_not_show_it(server: tuple[str, Answers]) -> None:
    url, _ = server
    with pytest.raises(ConfigError) as info:
        InfluxStore(url, "smartpark", default_catalog(), token="s3cr3t-token\n")
    assert "s3cr3t" not in str(info.value)


def test_a_closed_store_does_not_write(server: tuple[str, Answers]) -> None:
    url, answers = server
    store = InfluxStore(url, "smartpark", default_catalog())
    store.write([_point()])
    store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        store.write([_point()])
    assert len(answers.seen) == 1


def test_a_huge_answer_is_not_read_whole(server: tuple[str, Answers]) -> None:
    """The network is not trusted: an error answer of 8 MiB costs a bounded read and a new connection."""
    url, answers = server
    answers.status, answers.body = 400, b'{"error": "' + b"x" * (8 << 20) + b'"}'
    with InfluxStore(url, "smartpark", default_catalog()) as store:
        with pytest.raises(StoreRejected, match="400") as info:
            store.write([_point()])
        assert len(str(info.value)) < 1_000
        answers.status, answers.body = 204, b""
        store.write([_point()])  # on a fresh connection: the rest of the big answer is never read
    assert len(answers.connections) == 2
