"""The embedded MQTT broker of `smartpark up` (no SMARTPARK_MQTT_URL): amqtt on its own thread and event loop.

It enforces the contract's MQTT rules like the production Mosquitto does (README, "Trusted MQTT"): every client
authenticates (devices with their registry credentials, platform services with in-memory accounts); a device
connects only with its own id as client id, publishes only under its own ``smartpark/v1/{site}/{device}/`` and
subscribes to nothing; services take client ids in the reserved ``smartpark-`` namespace. Connections and packets are
bounded, a CONNECT must come within seconds, and failed logins are throttled.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import logging
import resource
import socket
import threading
import time
from dataclasses import dataclass
from types import TracebackType

from amqtt.adapters import ReaderAdapter, StreamReaderAdapter, StreamWriterAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action, BrokerConfig, ListenerConfig, ListenerType
from amqtt.errors import AMQTTError, BrokerError, MQTTError, NoDataError
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from smartpark.core.errors import SmartparkError
from smartpark.core.ids import SERVICE_PREFIX, is_service_id
from smartpark.core.registry import Registry
from smartpark.core.registry.secrets import verify_password

__all__ = ["Authority", "BrokerStartError", "EmbeddedBroker", "PortInUse", "connection_bound"]

log = logging.getLogger(__name__)

TOPIC_ROOT = "smartpark/"
SERVICE_FILTER_ROOT = "smartpark/v1/"
DEVICE_TOPICS = ("telemetry", "status")
HASH_TTL_S = 5.0  # how long a re-provisioned device's old password keeps working; a miss reloads at once
THROTTLE_BASE_S = 0.5  # a first failed login refuses that user from that address this long; each failure doubles it
THROTTLE_MAX_S = 30.0
THROTTLE_MAX_KEYS = 100_000
CONNECT_TIMEOUT_S = 10.0  # a connection that sends no CONNECT within this is closed (half-open, slowloris)
MAX_CONNECTIONS = 4096  # connections beyond this are closed at once
MAX_PACKET_BYTES = 256 * 1024  # a packet announcing more closes the connection (Mosquitto: max_packet_size)
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0


class PacketTooLarge(ValueError):
    """A client announced a packet beyond MAX_PACKET_BYTES (amqtt would read and keep it whole)."""


class BrokerStartError(SmartparkError):
    """The embedded broker could not start."""


class PortInUse(BrokerStartError):
    """Another process already listens on the embedded broker's port."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(
            f"MQTT port {host}:{port} is already taken (another broker?). "
            "Set SMARTPARK_MQTT_EMBEDDED_PORT to another port, or stop the other broker."
        )
        self.host, self.port = host, port


class Authority:
    """Who may connect, as which client id, and where they may publish; used by the plugins from worker threads.

    A device logs in with its device id as user name AND client id; a service (the ingest, the alert engine)
    logs in as its own account with a client id in the reserved ``smartpark-`` namespace, which no device id
    may take: so no device can take over a service's session, or another device's.
    """

    def __init__(self, registry: Registry, service_accounts: dict[str, str], ttl_s: float = HASH_TTL_S) -> None:
        for name in service_accounts:
            if not is_service_id(name):
                raise ValueError(f"service account {name!r} must begin with {SERVICE_PREFIX!r}")
        self._registry = registry
        self._services = dict(service_accounts)
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._hashes: dict[str, tuple[str, str]] = {}
        self._loaded_at = -1e9
        self._logins: dict[str, tuple[str, str]] = {}  # device id -> (site, password hash) of its last login
        self.throttle = LoginThrottle()

    def check(self, username: str, password: str, client_id: str | None = None, address: str | None = None) -> bool:
        """Verify a login (blocking: a registry query and PBKDF2); refused at once while ``address`` is throttled."""
        key = f"{address}|{username}" if address is not None else None
        if not self.throttle.allowed(key):
            return False
        ok = self.may_use_client_id(username, client_id) and self._verify(username, password)
        self.throttle.record(key, ok)
        return ok

    def may_use_client_id(self, username: str, client_id: str | None) -> bool:
        """A service takes client ids of its namespace only; a device exactly its own id (None: not checked)."""
        if client_id is None:
            return True
        if username in self._services:
            return is_service_id(client_id)
        return client_id == username

    def _verify(self, username: str, password: str) -> bool:
        if username in self._services:
            return hmac.compare_digest(password.encode(), self._services[username].encode())
        entry = self._device(username, fresh=False)
        if entry is not None and verify_password(password, entry[1]):
            return self._bind(username, entry)
        fresh = self._device(username, fresh=True)  # re-provisioned or new since the cache was filled
        if fresh is not None and fresh != entry and verify_password(password, fresh[1]):
            return self._bind(username, fresh)
        return False

    def may_publish(self, username: str | None, topic: str) -> bool:
        if username in self._services:
            return topic.startswith(TOPIC_ROOT)
        login = self._logins.get(username or "")
        if login is None or topic not in _device_topics(login[0], username or ""):
            return False
        # still the registry's credentials (cached HASH_TTL_S): a device deleted, or whose password was renewed
        # (a stolen one), publishes nothing more on the session it opened before
        return self._device(username or "", fresh=False) == login

    def may_subscribe(self, username: str | None, topic_filter: str) -> bool:
        # Devices subscribe to nothing: no contract topic flows platform -> device, and none reads another's.
        return username in self._services and topic_filter.startswith(SERVICE_FILTER_ROOT)

    def may_receive(self, username: str | None, topic: str) -> bool:
        """Checked per delivered message, retained ones included: only services read the park's topics."""
        return username in self._services and topic.startswith(TOPIC_ROOT)

    def _bind(self, device_id: str, entry: tuple[str, str]) -> bool:
        self._logins[device_id] = entry
        return True

    def _device(self, device_id: str, *, fresh: bool) -> tuple[str, str] | None:
        if fresh:  # one primary-key lookup, not the whole table: an unknown name costs little
            device = self._registry.device(device_id)
            entry = (device.site_id, device.mqtt_password_hash) if device and device.mqtt_password_hash else None
            with self._lock:
                if entry is None:
                    self._hashes.pop(device_id, None)
                else:
                    self._hashes[device_id] = entry
            return entry
        with self._lock:
            if time.monotonic() - self._loaded_at > self._ttl_s:
                self._hashes = self._registry.password_hashes()
                self._loaded_at = time.monotonic()
            return self._hashes.get(device_id)


class LoginThrottle:
    """After a failed login, refuse the same user name from the same address without checking anything for a
    delay that doubles with each further failure (up to THROTTLE_MAX_S); a success clears it. Password guessing
    then costs the broker no PBKDF2 and no registry query per attempt; keyed by address AND user name, so an
    attacker slows only its own attempts (devices behind one carrier NAT share an address, not a name)."""

    def __init__(self, base_s: float = THROTTLE_BASE_S, max_s: float = THROTTLE_MAX_S) -> None:
        self.base_s, self.max_s = base_s, max_s
        self._lock = threading.Lock()
        self._state: dict[str, tuple[int, float]] = {}  # address|user -> (consecutive failures, refused until)
        self.refused = 0

    def allowed(self, key: str | None) -> bool:
        if key is None:
            return True
        with self._lock:
            until = self._state.get(key, (0, 0.0))[1]
            if time.monotonic() < until:
                self.refused += 1
                return False
            return True

    def record(self, key: str | None, ok: bool) -> None:
        if key is None:
            return
        with self._lock:
            if ok:
                self._state.pop(key, None)
                return
            if len(self._state) >= THROTTLE_MAX_KEYS:  # bounded memory under a spray from many addresses
                self._state.clear()
            failures = self._state.get(key, (0, 0.0))[0] + 1
            delay = min(self.max_s, self.base_s * 2 ** (failures - 1))
            self._state[key] = (failures, time.monotonic() + delay)


def _device_topics(site_id: str, device_id: str) -> tuple[str, ...]:
    return tuple(f"smartpark/v1/{site_id}/{device_id}/{leaf}" for leaf in DEVICE_TOPICS)


class SmartparkAuthPlugin(BaseAuthPlugin):
    """Refuses anonymous clients and bad credentials, and a will the client could not publish itself."""

    @dataclass
    class Config:
        authority: Authority | None = None

    async def authenticate(self, *, session: Session) -> bool:
        authority, username = self.config.authority, session.username
        if authority is None or not username or session.password is None:
            return False
        try:
            ok = await asyncio.to_thread(authority.check, username, session.password, session.client_id,
                                         session.remote_address)
        except Exception:
            self.context.logger.exception("login check of %r failed", username)
            return False
        # amqtt sends the will without any topic check, so it is checked here, as Mosquitto does at CONNECT.
        if ok and session.will_flag:
            return authority.may_publish(username, session.will_topic or "")
        return ok


class SmartparkTopicPlugin(BaseTopicPlugin):
    """The per-client publish/subscribe/receive ACL (receive is checked for retained messages too)."""

    @dataclass
    class Config:
        authority: Authority | None = None

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        authority = self.config.authority
        if authority is None or session is None or not topic:
            return False
        match action:
            case Action.PUBLISH:
                return authority.may_publish(session.username, topic)
            case Action.SUBSCRIBE:
                return authority.may_subscribe(session.username, topic)
            case Action.RECEIVE:
                return authority.may_receive(session.username, topic)
        return False


def broker_config(host: str, port: int, authority: Authority, *, debug: bool = False) -> BrokerConfig:
    """Our two plugins only; amqtt's $SYS, anonymous and packet/event loggers stay off unless debugging."""
    plugins: dict[str, dict[str, object]] = {
        f"{__name__}.SmartparkAuthPlugin": {"authority": authority},
        f"{__name__}.SmartparkTopicPlugin": {"authority": authority},
    }
    if debug:
        plugins["amqtt.plugins.logging_amqtt.EventLoggerPlugin"] = {}
        plugins["amqtt.plugins.logging_amqtt.PacketLoggerPlugin"] = {}
    listener = ListenerConfig(type=ListenerType.TCP, bind=f"{host}:{port}")
    return BrokerConfig(listeners={"default": listener}, plugins=plugins)


def connection_bound(requested: int) -> int:
    """``requested``, within half of the process's open-file limit (raised to its hard limit first): the broker
    shares the process with the API, the ingest and their databases, and at a common soft limit of 1,024 a
    thousand idle connections made every file open fail (the API answered 500) long before 4,096."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return requested if soft == resource.RLIM_INFINITY else max(1, min(requested, soft // 2))


def _check_port_free(host: str, port: int) -> None:
    """Bind like asyncio will (SO_REUSEADDR) so a taken port gives a clear error, not amqtt's traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(host, port) from exc
            raise BrokerStartError(f"cannot listen on {host}:{port}: {exc}") from exc


def _start_error(exc: BaseException, host: str, port: int) -> BrokerStartError:
    cause = exc.__cause__ if isinstance(exc, BrokerError) else exc
    if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
        return PortInUse(host, port)
    return BrokerStartError(f"the embedded MQTT broker failed to start on {host}:{port}: {exc}")


class _BoundedReader(StreamReaderAdapter):
    """Follows the MQTT framing of what amqtt reads and refuses a packet whose fixed header announces more than
    ``max_bytes``, before its body is read: amqtt has no packet size limit, so one device could park a 256 MB
    retained message in the broker's memory. amqtt gives up on some bad packets mid-body (a wildcard in a
    PUBLISH topic) and parses the rest as packets; a read that then crosses the end of the real packet closes
    the connection, so the bound holds whatever the client sends."""

    def __init__(self, reader: asyncio.StreamReader, max_bytes: int) -> None:
        super().__init__(reader)
        self._max_bytes = max_bytes
        self._body_left = 0
        self._length: tuple[int, int] | None = None  # (value, multiplier) while in a remaining-length field

    async def read(self, n: int = -1) -> bytes:
        if (n > self._body_left) if self._body_left else (n != 1):  # amqtt reads a fixed header byte by byte
            raise PacketTooLarge(f"a read of {n} bytes out of step with the packet framing")
        data = await super().read(n)
        self._follow(data)
        return data

    def _follow(self, data: bytes) -> None:
        if self._body_left:
            self._body_left -= len(data)
            return
        for byte in data:
            if self._length is None:  # the packet type byte; its remaining length follows
                self._length = (0, 1)
                continue
            value, multiplier = self._length
            value += (byte & 0x7F) * multiplier
            if byte & 0x80:
                self._length = (value, multiplier * 128)
                continue
            self._length = None
            if value > self._max_bytes:
                raise PacketTooLarge(f"packet of {value} bytes, limit {self._max_bytes}")
            self._body_left = value


class _Broker(Broker):
    """amqtt's Broker with what it lacks for untrusted clients.

    - a login is checked BEFORE amqtt looks the client id up: amqtt resumes (and kicks the owner of) an existing
      session first and authenticates after, so a refused CONNECT with the ingest's client id still took the
      ingest's session over;
    - retained messages go only to a session's own subscriptions, each checked by the ACL (amqtt sends a new
      session the retained messages matching every subscription of every client);
    - bounded connections, and a connection that sends no CONNECT is closed after CONNECT_TIMEOUT_S;
    - bounded packets (MAX_PACKET_BYTES): a larger one closes the connection before its body is read.
    """

    def __init__(self, config: BrokerConfig, *, max_connections: int = MAX_CONNECTIONS,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        super().__init__(config)
        self._max_connections, self._connect_timeout_s = max_connections, connect_timeout_s
        self._open = 0
        self.refused_connections = 0

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        if self._open >= self._max_connections:
            self.refused_connections += 1
            writer.close()
            return
        self._open += 1
        try:
            await self._client_connected(listener_name, _BoundedReader(reader, MAX_PACKET_BYTES),
                                         StreamWriterAdapter(writer))
        finally:
            self._open -= 1
            # amqtt's writer close drains first; when the peer already vanished that raises, the socket
            # stays open, and the loop closes on a leaked transport (ResourceWarning).
            writer.close()

    async def _initialize_client_session(
        self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        try:
            handler, incoming = await asyncio.wait_for(
                BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager),
                self._connect_timeout_s)
        except TimeoutError as exc:
            await writer.close()
            raise AMQTTError(f"no CONNECT from {remote_address}:{remote_port} within "
                             f"{self._connect_timeout_s:.0f} s") from exc
        except (AMQTTError, MQTTError, NoDataError, ValueError) as exc:
            await writer.close()
            raise AMQTTError(f"bad CONNECT from {remote_address}:{remote_port}: {exc}") from exc
        if not await super()._authenticate(incoming, self.listeners_config.get("default")):
            await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
            await writer.close()
            raise AMQTTError(f"login of {incoming.username!r} as {incoming.client_id!r} refused")
        return handler, await self._attach_session(incoming)

    async def _attach_session(self, incoming: Session) -> Session:
        """amqtt's session lookup (clean start, or resume), run only once the login is accepted."""
        session = incoming
        if incoming.clean_session:
            await self._delete_session(incoming.client_id)
            incoming.parent = 0
        elif incoming.client_id in self._sessions:
            session, _ = self._sessions[incoming.client_id]
            for name in ("will_flag", "will_message", "will_topic", "will_qos", "will_retain", "keep_alive",
                         "username", "password", "remote_address", "remote_port"):
                setattr(session, name, getattr(incoming, name))
            session.parent = 1
        else:
            incoming.parent = 0
        session.smartpark_login = (session.username, session.password)
        return session

    async def _authenticate(self, session: Session, listener: ListenerConfig) -> bool:
        # accepted in _initialize_client_session just before: not a second PBKDF2
        return getattr(session, "smartpark_login", None) == (session.username, session.password)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        topic_filter, qos = subscription
        if not any(s is session for s, _qos in self._subscriptions.get(topic_filter, ())):
            return  # amqtt calls this at connect with every client's filters
        handler = self._get_handler(session)
        if handler is None:
            return
        for topic, retained in list(self._retained_messages.items()):
            if self._matches(topic, topic_filter) and await self._topic_filtering(
                    session, topic=topic, action=Action.RECEIVE):
                await handler.mqtt_publish(retained.topic, retained.data, min(qos, retained.qos or qos), retain=True)


class EmbeddedBroker:
    """amqtt in a daemon thread: the sync CLI starts it, waits until it listens, and stops it cleanly."""

    def __init__(
        self,
        registry: Registry,
        host: str,
        port: int,
        service_accounts: dict[str, str],
        *,
        debug: bool = False,
        max_connections: int = MAX_CONNECTIONS,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.host, self.port, self.debug = host, port, debug
        self.limits = {"max_connections": connection_bound(max_connections), "connect_timeout_s": connect_timeout_s}
        self.authority = Authority(registry, service_accounts)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BrokerStartError | None = None

    def start(self) -> None:
        """Return once the broker listens; raise PortInUse or BrokerStartError otherwise."""
        if self._thread is not None:
            raise BrokerStartError("the embedded MQTT broker is already started")
        _set_amqtt_logging(self.debug)
        _check_port_free(self.host, self.port)
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="smartpark-mqtt-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            self.stop()
            raise BrokerStartError(f"the embedded MQTT broker did not start within {START_TIMEOUT_S:.0f} s")
        if self._error is not None:
            self._join()
            raise self._error

    def stop(self) -> None:
        """Shut the broker down (clients disconnected, listener closed) and join its thread; idempotent."""
        loop, stop_event = self._loop, self._stop_event
        if loop is not None and stop_event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between: the thread is ending anyway
                loop.call_soon_threadsafe(stop_event.set)
        self._join()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("the embedded MQTT broker did not stop within %.0f s", STOP_TIMEOUT_S)
        self._thread, self._loop, self._stop_event = None, None, None

    def _run(self) -> None:
        # asyncio.run also cancels what amqtt leaves behind and shuts the to_thread executor down.
        try:
            asyncio.run(self._serve())
        except Exception as exc:
            log.exception("the embedded MQTT broker crashed")
            if not self._ready.is_set():
                self._error = _start_error(exc, self.host, self.port)
                self._ready.set()

    async def _serve(self) -> None:
        try:
            broker = _Broker(broker_config(self.host, self.port, self.authority, debug=self.debug),
                             **self.limits)  # type: ignore[arg-type]
            await broker.start()
        except Exception as exc:
            self._error = _start_error(exc, self.host, self.port)
            self._ready.set()
            return
        self._loop, self._stop_event = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await broker.shutdown()


def _set_amqtt_logging(debug: bool) -> None:
    """amqtt logs each connection at INFO: too loud for `smartpark up`; transitions' state log never helps."""
    logging.getLogger("amqtt").setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)
