"""Test data and small clients shared by the tests: park files, readings, an MQTT publisher."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from smartpark.core.clock import now_ms  # noqa: F401 - the tests import it from here: their clock is the platform's


def park_yaml(park_id: str, steel: list[str], green: list[str] | None = None, *, steel_area: int = 100000,
              quotas: dict[str, float] | None = None) -> str:
    """A test park: the site `steel` (Steel works) with the ``steel`` device lines, and `park-green` (Green) with
    the ``green`` ones if any; ``quotas`` are the sites' daily energy quotas (tce)."""
    quotas = quotas or {}
    name = park_id.split("-", maxsplit=1)[0].capitalize()

    def site(site_id: str, head: str, area: int, devices: list[str]) -> str:
        quota = f"    energy_quota_tce_day: {quotas[site_id]:g}\n" if site_id in quotas else ""
        rows = "".join(f"      - {{{d}}}\n" for d in devices)
        return f"  - id: {site_id}\n{head}    area_m2: {area}\n{quota}    devices:\n{rows}"

    text = f"\npark: {{id: {park_id}, name: {name} park, region: northeast}}\nsites:\n"
    text += site("steel", "    name: Steel works\n    enterprise: Steel Co.\n    industry: steel\n", steel_area, steel)
    if green:
        text += site("park-green", "    name: Green\n    enterprise: Green Co.\n    industry: logistics\n", 50000,
                     green)
    return text


PARK_YAML = park_yaml("test-park", ["id: sinter-cems, kind: cems, source_type: sinter",
                                   "id: steel-meter, kind: energy_meter"], ["id: green-1, kind: greening"])
# a metered park: a sub-meter under the main meter (a process), a stack, and a meter at the green site
METERED_STEEL = ["id: steel-main, kind: energy_meter",
                 "id: sinter-line, kind: energy_meter, parent: steel-main, process: sintering",
                 "id: sinter-cems, kind: cems, source_type: sinter"]
METERED_GREEN = ["id: green-1, kind: greening", "id: green-meter, kind: energy_meter"]


def park_registry(tmp_path: Path, park: str = PARK_YAML) -> Any:
    """A Registry in ``tmp_path`` (SQLite) holding the park file ``park``."""
    from smartpark.core.registry import Registry, parse_park_file

    registry = Registry(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    registry.init()
    registry.load_park(parse_park_file(park))
    return registry


def park_store(tmp_path: Path, park: str, points: list[Any]) -> tuple[Any, Any]:
    """A registry of ``park`` and an embedded store holding ``points``, both in ``tmp_path``."""
    from smartpark.core.catalog import default_catalog
    from smartpark.core.store.embedded import EmbeddedStore

    store = EmbeddedStore(tmp_path / "ts.sqlite", default_catalog())
    store.init()
    store.write(points)
    return park_registry(tmp_path, park), store


def endpoint_of(server: Any, username: str | None = None, password: str | None = None,
                tls: Any = None) -> Any:
    """The transport's Endpoint of a test broker (a MosquittoServer, or anything with host and port)."""
    from smartpark.core.mqtt import Endpoint

    return Endpoint(server.host, server.port, username, password, tls)


def reading(ts: int | str | None = None, seq: int | None = None, flags: dict[str, str] | None = None,
            **metrics: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"metrics": metrics}
    if ts is not None:
        out["ts"] = ts
    if seq is not None:
        out["seq"] = seq
    if flags:
        out["flags"] = flags
    return out


def payload(obj: Any) -> bytes:
    return json.dumps(obj).encode()


class Publisher:
    """A real MQTT client that publishes at QoS 1 and waits for every PUBACK."""

    def __init__(self, host: str, port: int, *, username: str | None = None, password: str | None = None,
                 mqtt5: bool = False) -> None:
        protocol = mqtt.MQTTv5 if mqtt5 else mqtt.MQTTv311
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"smartpark-pub-{uuid.uuid4().hex[:8]}",
                                  protocol=protocol)
        if username:
            self.client.username_pw_set(username, password)
        self.client.max_inflight_messages_set(100)
        self.connected = threading.Event()
        self.client.on_connect = lambda *_: self.connected.set()
        self.client.connect(host, port)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise TimeoutError("publisher could not connect")

    def publish(self, topic: str, body: bytes | dict[str, Any]) -> None:
        data = body if isinstance(body, bytes) else payload(body)
        self.client.publish(topic, data, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def wait_for(check: Any, timeout: float = 20.0, every: float = 0.05) -> Any:
    """Poll ``check()`` until it returns something truthy; fail with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s (last: {value!r})")


class ServedApp:
    """An ASGI app served by a real uvicorn on a free port, in a thread; `client` is an httpx client for it."""

    def __init__(self, app: Any) -> None:
        import httpx
        import uvicorn

        from servers import free_port

        port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=15)
        self.base_url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.base_url, timeout=30)

    def close(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=10)


class HookServer:
    """A webhook receiver on 127.0.0.1 (a ThreadingHTTPServer in a thread): subclasses answer in `post`."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.post(self)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def post(self, request: Any) -> None:
        """Read the request and answer it (``request`` is the BaseHTTPRequestHandler)."""
        raise NotImplementedError

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def accept_forever(sock: Any, handle: Any) -> threading.Thread:
    """Call ``handle(conn)`` for each connection ``sock`` accepts, in a daemon thread, until ``sock`` is closed."""

    def loop() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            handle(conn)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


class ServiceProcess:
    """`python -m smartpark <command>` as a child process on ``env``, killed and restarted at will; each run logs
    to ``<command>-<run>.log`` in ``tmp_path``, and a start waits for the ``ready`` line."""

    def __init__(self, command: str, ready: str, tmp_path: Path, env: dict[str, str]) -> None:
        self.command, self.ready, self.tmp_path, self.env, self.runs = command, ready, tmp_path, env, 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.runs += 1
        log = self.tmp_path / f"{self.command}-{self.runs}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "smartpark", self.command], env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=self.tmp_path)
        self.proc = proc
        wait_for(lambda: self.ready in log.read_text(errors="replace") or proc.poll() is not None, timeout=30)
        assert proc.poll() is None, log.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM (if it still runs) and its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def load_park_yaml(site: str, devices: int) -> str:
    """A park with one site of ``devices`` energy meters named m000, m001, ..."""
    rows = "\n".join(f"      - {{id: m{i:03d}, kind: energy_meter}}" for i in range(devices))
    return (f"park: {{id: load-park, name: Load}}\nsites:\n  - id: {site}\n    name: Load\n"
            f"    enterprise: Load Co.\n    industry: steel\n    area_m2: 1000\n    devices:\n{rows}\n")


def load_messages(site: str, devices: int, per_device: int, t0: int) -> list[tuple[str, bytes]]:
    """Unique (device, ts) readings, interleaved across devices like a real park."""
    return [(f"smartpark/v1/{site}/m{d:03d}/telemetry",
             b'{"ts": %d, "seq": %d, "metrics": {"power_kw": %d.5, "energy_kwh": %d}}' % (t0 + s * 1000, s, d, s))
            for s in range(per_device) for d in range(devices)]


def publish_many(host: str, port: int, messages: list[tuple[str, bytes]], *, window: int = 1000,
                 timeout: float = 300.0) -> None:
    """Publish at QoS 1 with at most ``window`` unacked, and return when the broker has acked every one."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"load-{uuid.uuid4().hex[:8]}")
    slots = threading.BoundedSemaphore(window)
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(0)
    client.on_publish = lambda *_: slots.release()
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(host, port)
    client.loop_start()
    try:
        if not connected.wait(10):
            raise TimeoutError("load publisher could not connect")
        deadline = time.monotonic() + timeout
        for topic, body in messages:
            if not slots.acquire(timeout=max(deadline - time.monotonic(), 0.1)):
                raise TimeoutError("broker stopped acking")
            client.publish(topic, body, qos=1)
        for _ in range(window):  # every slot back: every PUBACK received
            if not slots.acquire(timeout=max(deadline - time.monotonic(), 0.1)):
                raise TimeoutError("broker did not ack the last messages")
    finally:
        client.disconnect()
        client.loop_stop()


def forget_session(host: str, port: int, client_id: str) -> None:
    """Delete a persistent session on the broker (connect with clean start and no expiry, disconnect), so a
    test's ingest does not keep collecting the next tests' messages on a shared broker."""
    import socket
    from contextlib import suppress

    import mqtt5

    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(mqtt5.ConnectPacket(client_id, clean_start=True).write() + mqtt5.DisconnectPacket().write())
        with suppress(OSError):
            while sock.recv(64):  # CONNACK, then the broker closes
                pass


def clear_retained(host: str, port: int, topics: list[str]) -> None:
    """Remove retained messages (an empty retained payload each), so a shared broker hands them to no later test."""
    import socket
    from contextlib import suppress

    import mqtt5

    packets = [mqtt5.ConnectPacket(f"clear-{uuid.uuid4().hex[:8]}", clean_start=True).write()]
    packets += [mqtt5.PublishPacket(t, b"", qos=mqtt5.QoS.AT_MOST_ONCE, retain=True).write() for t in topics]
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"".join(packets) + mqtt5.DisconnectPacket().write())
        with suppress(OSError):
            while sock.recv(64):
                pass


def model_points(model: Any, ts_ms: int, catalog: Any, skip: frozenset[str] = frozenset()) -> list[Any]:
    """The points a ParkModel's readings at ``ts_ms`` become (one per device and domain), as the ingest writes."""
    from smartpark.core.points import Point

    out = []
    for site, device, metrics in model.readings(ts_ms):
        if device in skip:
            continue
        by_domain: dict[str, dict[str, float]] = {}
        for name, value in metrics.items():
            by_domain.setdefault(catalog.domain_of[name], {})[name] = value
        out += [Point(domain, site, device, ts_ms, fields) for domain, fields in by_domain.items()]
    return out
