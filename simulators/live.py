"""Live simulator: the park model's readings published over MQTT, one client per device, as devices would.

Each device has its own connection, credentials and last will, so the broker's per-device ACLs, the ingest's
topic binding and the status topics are exercised exactly as in the field. One thread drives every client:
paho's external-event-loop hooks (``on_socket_open`` / ``on_socket_close`` / ``on_socket_register_write``)
put all sockets in one selector, so 200 devices cost one thread and a few wake-ups per second, not 200 threads.
Clients come from the platform's MQTT transport (``core/mqtt/paho_source.paho_client``): the device's login
and, for mqtts://, the one verifying TLS context of the process.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import selectors
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from smartpark.core.clock import now_ms, park_zone
from smartpark.core.contract import TOPIC_PREFIX, telemetry_topic
from smartpark.core.mqtt.endpoint import Endpoint
from smartpark.core.mqtt.paho_source import connect_error, paho_client
from smartpark.core.registry.parkfile import ParkFile
from smartpark.simulators.models import DeviceRef, ParkModel

if TYPE_CHECKING:
    from smartpark.simulators.delivery import Delivery, Message
    from smartpark.simulators.hj212 import Hj212Unit
    from smartpark.simulators.scenario import Scenario

__all__ = ["Hj212Target", "LiveSimulator", "status_topic"]

log = logging.getLogger("smartpark.simulators")

State = Literal["idle", "connecting", "online", "refused", "closing"]
OFFLINE_WILL = b'{"state":"offline"}'
POLL_S = 0.2  # longest selector wait: bounds stop() latency
MISC_EVERY_S = 1.0  # keepalive bookkeeping (loop_misc) cadence
CONNECTS_PER_PASS = 50  # spreads the start-up burst of CONNECTs over several passes
REFUSED_RETRY_S = 60.0  # credentials may be fixed meanwhile; retry slowly
MAX_BACKOFF_S = 30.0
CONNECT_TIMEOUT_S = 3.0
FLUSH_TIMEOUT_S = 3.0
LOST_LOG_EVERY_S = 10.0


def status_topic(site: str, device: str) -> str:
    return f"{TOPIC_PREFIX}/{site}/{device}/status"




@dataclass(frozen=True)
class Hj212Target:
    """The gateway the scenario's HJ 212 units talk to, and their identities (device -> (MN, PW))."""

    host: str
    port: int
    identities: dict[str, tuple[str, str]]
    codes_file: Path | None = None


@dataclass(eq=False)
class _Device:
    """One simulated device's connection and counters; touched only by the driver thread."""

    site: str
    id: str
    client: mqtt.Client = field(init=False)
    state: State = "idle"
    seq: int = 0
    next_attempt: float = 0.0  # time.monotonic() of the next CONNECT attempt
    backoff_s: float = 1.0
    refusals: int = 0
    pending: set[int] = field(default_factory=set)  # mids of status messages awaiting their PUBACK

    @property
    def telemetry(self) -> str:
        return telemetry_topic(self.site, self.id)

    @property
    def status(self) -> str:
        return status_topic(self.site, self.id)


def _check_scenario(park: ParkFile, scenario: Scenario | None) -> None:
    """A scenario's devices and metrics checked against the park now, not later in the driver thread."""
    if scenario is not None:
        from smartpark.simulators.timeline import Timeline

        Timeline(park, scenario, 0)


def _log_uncredentialed(devices: list[str], credentials: dict[str, str]) -> None:
    """One error naming (the first few of) the devices that cannot be simulated for want of a password."""
    missing = [d for d in devices if d not in credentials]
    if missing:
        log.error("%d devices have no MQTT credentials and are not simulated: %s%s", len(missing),
                  ", ".join(missing[:5]), ", ..." if len(missing) > 5 else "")


class LiveSimulator:
    """Publishes a reading per device every ``interval_s`` to a broker; ``start()`` returns at once.

    ``credentials`` maps device id to MQTT password (the username is the device id); devices without one
    are not simulated (one error logged naming them). ``published`` counts telemetry messages handed to the connection,
    ``acked`` those the broker acknowledged, ``errors`` failed connects, refusals and failed publishes.

    With a ``scenario`` the readings follow it (its seed, events and network behaviour, event times counted from
    the first tick); without one, the park model's plain readings with ``seed``.
    """

    def __init__(
        self,
        park: ParkFile,
        credentials: dict[str, str],
        endpoint: Endpoint,
        *,
        seed: int = 1,
        interval_s: float = 5.0,
        mqtt5: bool = False,
        keepalive_s: int = 30,
        scenario: Scenario | None = None,
        counters: dict[str, dict[str, float]] | None = None,
        hj212: Hj212Target | None = None,
    ) -> None:
        """``counters``: device -> metric -> the value to continue from (simulators/resume.py)."""
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, not {interval_s}")
        self.model = ParkModel(park, scenario.seed if scenario is not None else seed)
        self._counters = counters or {}
        self.model.resume(self._counters)
        self.park, self.scenario = park, scenario
        self._delivery: Delivery | None = None
        _check_scenario(park, scenario)
        self.endpoint = endpoint
        self.host, self.port = endpoint.host, endpoint.port
        self.interval_s = interval_s
        self.published = 0
        self.acked = 0
        self.errors = 0
        self._mqtt5 = mqtt5
        self._keepalive_s = keepalive_s
        self._selector = selectors.DefaultSelector()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._broker_retry_at = 0.0
        self._broker_backoff_s = 1.0
        self._lost_logged_at = -math.inf
        refs = self.model.devices
        _log_uncredentialed([r.device.id for r in refs], credentials)
        self._units = self._hj212_units(hj212)
        self._devices = {r.device.id: self._device(r, credentials[r.device.id])
                         for r in refs if r.device.id in credentials and r.device.id not in self._units}

    # ------------------------------------------------------------------------------------ public face

    @property
    def connected(self) -> int:
        return sum(d.state == "online" for d in self._devices.values())

    @property
    def device_count(self) -> int:
        return len(self._devices)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("LiveSimulator already started")
        for unit in self._units.values():
            unit.start()
        self._thread = threading.Thread(target=self._run, name="smartpark-simulator", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Publish offline status, disconnect every device cleanly and end the driver thread."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        for unit in self._units.values():
            unit.stop()

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        """True once every device is online, False if not within ``timeout_s`` (refused ones never are)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.connected == self.device_count:
                return True
            time.sleep(0.05)
        return self.connected == self.device_count

    def __enter__(self) -> LiveSimulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def hj212_units(self) -> dict[str, Hj212Unit]:
        return dict(self._units)

    # ---------------------------------------------------------------------------------- client set-up

    def _hj212_units(self, target: Hj212Target | None) -> dict[str, Hj212Unit]:
        """The scenario's HJ 212 stack monitors that have an identity and a gateway to talk to."""
        links = [t for t in (self.scenario.transports if self.scenario else []) if t.transport == "hj212"]
        if not links:
            return {}
        if target is None:
            log.error("the scenario has HJ 212 devices but no gateway runs: they are not simulated")
            return {}

        from smartpark.simulators.hj212 import Hj212Unit, metric_codes

        codes = metric_codes(target.codes_file)
        units = {}
        for link in links:
            identity = target.identities.get(link.device)
            if identity is None:
                log.error("HJ 212 device %s has no hj212 identity in the park file: not simulated", link.device)
                continue
            units[link.device] = Hj212Unit(link.device, *identity, target.host, target.port, link=link,
                                           codes=codes, tz=park_zone(self.park.park),
                                           seed=self.scenario.seed if self.scenario else 1)
        return units


    def _device(self, ref: DeviceRef, password: str) -> _Device:
        dev = _Device(ref.site.id, ref.device.id)
        client = paho_client(self.endpoint.login(dev.id, password), dev.id, mqtt5=self._mqtt5, clean=True,
                             userdata=dev)
        client.will_set(dev.status, OFFLINE_WILL, qos=1, retain=True)
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.connect_async(self.host, self.port, keepalive=self._keepalive_s)
        self._hook(client)
        dev.client = client
        return dev

    def _hook(self, client: mqtt.Client) -> None:
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write

    # ------------------------------------------------------------------------------ selector plumbing

    def _on_socket_open(self, client: mqtt.Client, dev: _Device, sock: Any) -> None:
        self._selector.register(sock, selectors.EVENT_READ, dev)

    def _on_socket_close(self, client: mqtt.Client, dev: _Device, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)

    def _on_register_write(self, client: mqtt.Client, dev: _Device, sock: Any) -> None:
        self._selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, dev)

    def _on_unregister_write(self, client: mqtt.Client, dev: _Device, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):  # already closed
            self._selector.modify(sock, selectors.EVENT_READ, dev)

    def _poll(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for socket events and let each client handle its own."""
        if not self._selector.get_map():
            time.sleep(timeout_s)
            return
        events = self._selector.select(timeout_s)
        if self.endpoint.tls is not None:  # bytes TLS already decrypted wake no selector: read them too
            ready = {key.fileobj for key, _ in events}
            events += [(key, selectors.EVENT_READ) for key in self._selector.get_map().values()
                       if key.fileobj not in ready and isinstance(key.fileobj, ssl.SSLSocket) and key.fileobj.pending()]
        for key, mask in events:
            dev: _Device = key.data
            try:
                if mask & selectors.EVENT_READ:
                    dev.client.loop_read()
                if mask & selectors.EVENT_WRITE:
                    dev.client.loop_write()
            except Exception:
                self.errors += 1
                log.exception("device %s: MQTT I/O failed", dev.id)

    def _misc(self) -> None:
        for dev in self._devices.values():
            if dev.state in ("connecting", "online"):
                dev.client.loop_misc()

    # -------------------------------------------------------------------------------- MQTT callbacks

    def _on_connect(
        self, client: mqtt.Client, dev: _Device, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self._refused(dev, reason)
            return
        if dev.refusals:
            log.info("device %s: CONNECT accepted after %d refusals", dev.id, dev.refusals)
        dev.state, dev.backoff_s, dev.refusals = "online", 1.0, 0
        online = msgspec.json.encode({"state": "online", "ts": now_ms()})
        dev.pending.add(client.publish(dev.status, online, qos=1, retain=True).mid)

    def _refused(self, dev: _Device, reason: ReasonCode) -> None:
        self.errors += 1
        dev.refusals += 1
        dev.state = "refused"
        dev.next_attempt = time.monotonic() + REFUSED_RETRY_S
        level = logging.ERROR if dev.refusals == 1 else logging.DEBUG
        log.log(level, "device %s/%s: the broker refused its CONNECT (%s): check its MQTT username and "
                "password; the other devices carry on, this one retries every %.0f s",
                dev.site, dev.id, reason, REFUSED_RETRY_S)

    def _on_disconnect(
        self, client: mqtt.Client, dev: _Device, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        dev.pending.clear()
        if dev.state in ("refused", "closing"):
            return
        if dev.state == "online":
            quiet = time.monotonic() - self._lost_logged_at < LOST_LOG_EVERY_S  # a broker restart drops all
            log.log(logging.DEBUG if quiet else logging.WARNING,
                    "device %s: connection lost (%s), reconnecting (others may follow)", dev.id, reason)
            self._lost_logged_at = self._lost_logged_at if quiet else time.monotonic()
        self._retry_later(dev)

    def _on_publish(self, client: mqtt.Client, dev: _Device, mid: int, reason: ReasonCode, props: Any) -> None:
        if mid in dev.pending:
            dev.pending.discard(mid)
        else:
            self.acked += 1

    def _retry_later(self, dev: _Device) -> None:
        dev.state = "idle"
        dev.next_attempt = time.monotonic() + dev.backoff_s * random.uniform(0.5, 1.0)
        dev.backoff_s = min(dev.backoff_s * 2.0, MAX_BACKOFF_S)

    # ------------------------------------------------------------------------------------ the driver

    def _run(self) -> None:
        next_tick = math.ceil(time.time() / self.interval_s) * self.interval_s
        next_misc = time.monotonic()
        try:
            while not self._stopping.is_set():
                self._connect_due()
                if time.time() >= next_tick:
                    self._publish_all(round(next_tick * 1000))
                    next_tick = max(next_tick + self.interval_s,
                                    math.ceil(time.time() / self.interval_s) * self.interval_s)
                if time.monotonic() >= next_misc:
                    self._misc()
                    next_misc = time.monotonic() + MISC_EVERY_S
                self._poll(min(POLL_S, max(0.0, next_tick - time.time())))
        finally:
            self._shutdown()

    def _connect_due(self) -> None:
        """CONNECT the devices whose (re)try time has come, a bounded number per pass."""
        now = time.monotonic()
        if now < self._broker_retry_at:
            return
        due = [d for d in self._devices.values() if d.state in ("idle", "refused") and d.next_attempt <= now]
        for dev in due[:CONNECTS_PER_PASS]:
            if not self._connect(dev):
                return  # the broker is unreachable for everyone: back off as a whole

    def _connect(self, dev: _Device) -> bool:
        dev.state = "connecting"
        try:
            dev.client.reconnect()
        except OSError as exc:
            self.errors += 1
            self._retry_later(dev)
            self._broker_retry_at = time.monotonic() + self._broker_backoff_s
            log.log(logging.WARNING if self._broker_backoff_s == 1.0 else logging.DEBUG,
                    "cannot connect (%s); retrying", connect_error(self.endpoint, exc))
            self._broker_backoff_s = min(self._broker_backoff_s * 2.0, MAX_BACKOFF_S)
            return False
        self._broker_backoff_s = 1.0
        return True

    def _publish_all(self, ts_ms: int) -> None:
        """One reading per online device, all taken at the same tick."""
        if self.scenario is not None:
            self._publish_messages(self._scenario_messages(ts_ms))
            return
        for _site, device, metrics in self.model.readings(ts_ms):
            dev = self._devices.get(device)
            if dev is None or dev.state != "online" or not metrics:
                continue
            payload = msgspec.json.encode({"ts": ts_ms, "seq": dev.seq, "metrics": metrics})
            dev.seq += 1
            if dev.client.publish(dev.telemetry, payload, qos=1).rc == mqtt.MQTT_ERR_SUCCESS:
                self.published += 1
            else:
                self.errors += 1

    def _scenario_messages(self, ts_ms: int) -> list[Message]:
        """The scenario's messages of this tick (the timeline starts at the first tick)."""
        from smartpark.simulators.delivery import Delivery
        from smartpark.simulators.timeline import Timeline

        assert self.scenario is not None
        if self._delivery is None:
            self._timeline = Timeline(self.park, self.scenario, ts_ms)
            self._timeline.resume(self._counters)
            self._delivery = Delivery(self._timeline, self.scenario)
        frame = self._timeline.frame(np.array([ts_ms], dtype=np.int64))
        return self._delivery.tick(ts_ms / 1000.0, list(frame.readings()))

    def _publish_messages(self, messages: list[Message]) -> None:
        for msg in messages:
            unit = self._units.get(msg.device)
            if unit is not None:
                unit.deliver(msg.payload)
                continue
            dev = self._devices.get(msg.device)
            if dev is None or dev.state != "online":
                continue  # a device that is not connected measures but cannot send
            if dev.client.publish(dev.telemetry, msg.payload, qos=1).rc == mqtt.MQTT_ERR_SUCCESS:
                self.published += 1
            else:
                self.errors += 1

    def _shutdown(self) -> None:
        """Offline status (acknowledged, or until a timeout), then DISCONNECT: a clean exit fires no will."""
        online = [d for d in self._devices.values() if d.state == "online"]
        offline = msgspec.json.encode({"state": "offline", "ts": now_ms()})
        for dev in online:
            info = dev.client.publish(dev.status, offline, qos=1, retain=True)
            dev.pending.add(info.mid)
        self._drain(lambda: any(d.pending for d in online))
        for dev in self._devices.values():
            if dev.state in ("online", "connecting"):
                dev.state = "closing"
                dev.client.disconnect()
        self._drain(lambda: bool(self._selector.get_map()))
        self._selector.close()

    def _drain(self, busy: Callable[[], bool]) -> None:
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while busy() and time.monotonic() < deadline:
            self._poll(0.05)
