"""The byte stream to a broker: a TCP socket, or TLS over it; opened here for every mqtt5-codec client.

``open_link`` returns the plain socket itself for ``mqtt://`` (the hot path pays nothing) and a ``TlsLink``
for ``mqtts://``. A TLS link never falls back to plain text: a failed handshake closes the socket and raises
``TlsHandshakeError`` naming the broker and the reason.

Why a memory-BIO ``SSLObject`` and not ``SSLContext.wrap_socket``: the ingest's session reads on one thread
while acks are written from another, and an OpenSSL connection must not be used by two threads at once. Here
the raw socket is read and written concurrently (which is safe) and every operation on the TLS state is a
short, non-blocking call under a lock.
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Literal, Protocol, cast

from smartpark.core.mqtt.endpoint import Endpoint
from smartpark.core.mqtt.errors import BrokerUnreachable, TlsHandshakeError

__all__ = ["CLOSED_AFTER_HANDSHAKE", "Link", "TlsLink", "broker_error", "handshake_reason", "open_link"]

RAW_BYTES = 64 * 1024  # one raw recv of TLS records: 4 full records, or ~400 of the small ones Mosquitto sends
Stage = Literal["tcp", "handshake", "connect"]  # where a connect failed: TCP, TLS handshake, CONNECT/CONNACK
CLOSED = (EOFError, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
CLOSED_AFTER_HANDSHAKE = ("the broker closed the connection after the handshake, before answering CONNECT (a broker "
                          "that requires a client certificate does this without one: set SMARTPARK_MQTT_CERT_FILE "
                          "and SMARTPARK_MQTT_KEY_FILE)")


class Link(Protocol):
    """The socket methods the clients use; ``socket.socket`` and ``TlsLink`` both fit."""

    def recv_into(self, buffer: memoryview | bytearray, nbytes: int = 0, /) -> int: ...
    def recv(self, bufsize: int, /) -> bytes: ...
    def sendall(self, data: bytes, /) -> None: ...
    def settimeout(self, value: float | None, /) -> None: ...
    def setblocking(self, flag: bool, /) -> None: ...
    def shutdown(self, how: int, /) -> None: ...
    def close(self) -> None: ...


def open_link(endpoint: Endpoint, timeout_s: float) -> socket.socket | TlsLink:
    """TCP connect (no Nagle), then the TLS handshake when the endpoint has TLS; typed errors naming the broker."""
    try:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout_s)
    except OSError as exc:
        raise BrokerUnreachable(endpoint.host, endpoint.port, str(exc) or type(exc).__name__,
                                tls=endpoint.tls is not None) from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    context = endpoint.context()
    if context is None:
        return sock
    link = TlsLink(sock, context, endpoint.host)
    try:
        link.handshake()
    except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
        sock.close()
        raise broker_error(endpoint, exc, stage="handshake") from exc
    return link


def broker_error(endpoint: Endpoint, exc: BaseException, *, stage: Stage = "tcp") -> BrokerUnreachable:
    """The typed error for a failed connect: ``TlsHandshakeError`` for a failed handshake, and for a TLS link
    refused before CONNACK (under TLS 1.3 a broker refuses a client certificate only after the handshake:
    an alert or a reset at the first read)."""
    tls = endpoint.tls is not None
    if tls and stage == "handshake":
        return _tls_error(endpoint, handshake_reason(exc))
    if tls and stage == "connect" and isinstance(exc, (ssl.SSLError, *CLOSED)):
        return _tls_error(endpoint, handshake_reason(exc) if isinstance(exc, ssl.SSLError) else CLOSED_AFTER_HANDSHAKE)
    return BrokerUnreachable(endpoint.host, endpoint.port, str(exc) or type(exc).__name__, tls=tls)


def _tls_error(endpoint: Endpoint, reason: str) -> TlsHandshakeError:
    return TlsHandshakeError(endpoint.host, endpoint.port, f"TLS handshake failed: {reason}", tls=True)


def handshake_reason(exc: BaseException) -> str:
    """What went wrong, in words: the verification message, OpenSSL's reason, or a hint for a closed socket."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, (EOFError, ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError)):
        return ("the broker closed the connection during the handshake (is this a TLS listener? mqtts:// needs "
                "one, usually port 8883)")
    if isinstance(exc, ssl.SSLError):
        return _alert_reason(str(exc.reason or exc))
    if isinstance(exc, TimeoutError):
        return "no answer to the TLS ClientHello (timed out)"
    return str(exc) or type(exc).__name__


def _alert_reason(reason: str) -> str:
    """OpenSSL's reason, with what to do when it is the broker refusing (or missing) our client certificate."""
    if "CERTIFICATE_REQUIRED" in reason:
        return f"the broker requires a client certificate ({reason}): set SMARTPARK_MQTT_CERT_FILE and _KEY_FILE"
    if reason in ("SSLV3_ALERT_BAD_CERTIFICATE", "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_CERTIFICATE_EXPIRED"):
        return f"the broker refused the client certificate ({reason})"
    return reason


class TlsLink:
    """TLS over a connected socket; one reader thread and any number of (locked) writers may use it at once."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_hostname: str) -> None:
        self.sock = sock
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_hostname=server_hostname)
        self._lock = threading.Lock()  # the TLS state: one call at a time
        self._send_lock = threading.Lock()  # encrypt-and-send as one step, so records leave in order
        self._raw = memoryview(bytearray(RAW_BYTES))

    def handshake(self) -> None:
        """Drive the handshake over the (blocking) socket; raises ssl errors, or EOFError if the peer closes."""
        while True:
            try:
                with self._lock:
                    self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    raise EOFError("connection closed during the TLS handshake") from None
        self._flush()

    def recv_into(self, buffer: memoryview | bytearray, nbytes: int = 0, /) -> int:
        """Decrypted bytes into ``buffer``; 0 once the broker closed. Blocks (or times out) like the socket.

        Every record already received is decrypted in one call: Mosquitto sends each packet as its own TLS
        record, and returning one record per call would cost the caller a parse-and-recv round per message.
        It stops when the input is used up rather than on SSLWantReadError: on a quiet line each wake-up brings
        a record or two, and an exception per wake-up would cost more than their decryption."""
        view = buffer if type(buffer) is memoryview else memoryview(buffer)
        want = nbytes or len(view)
        tls, raw, lock = self._tls, self._in, self._lock
        while True:
            if raw.pending or tls.pending():
                n = 0
                with lock:
                    try:
                        while n < want:
                            got = cast(int, tls.read(want - n, view[n:] if n else view))  # into the buffer
                            n += got
                            if not got or not (raw.pending or tls.pending()):
                                break
                    except ssl.SSLWantReadError:  # the input ends inside a record: the rest comes next recv
                        pass
                    except ssl.SSLZeroReturnError:  # close_notify
                        return 0
                    answer = self._out.pending  # e.g. a KeyUpdate answer
                if answer:
                    self._flush()
                if n:
                    return n
            if not self._fill():
                return 0

    def recv(self, bufsize: int, /) -> bytes:
        buf = bytearray(bufsize)
        n = self.recv_into(buf)
        return bytes(buf[:n])

    def sendall(self, data: bytes, /) -> None:
        with self._send_lock:
            with self._lock:
                self._tls.write(data)
                records = self._out.read()
            self.sock.sendall(records)

    def _flush(self) -> None:
        with self._send_lock:
            with self._lock:
                records = self._out.read()
            if records:
                self.sock.sendall(records)

    def _fill(self) -> bool:
        """One raw recv into the TLS input; False at end of stream."""
        n = self.sock.recv_into(self._raw)
        if n:
            with self._lock:
                self._in.write(self._raw[:n])
        return bool(n)

    # the socket's own face
    def settimeout(self, value: float | None, /) -> None:
        self.sock.settimeout(value)

    def setblocking(self, flag: bool, /) -> None:
        self.sock.setblocking(flag)

    def shutdown(self, how: int, /) -> None:
        self.sock.shutdown(how)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()
