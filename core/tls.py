"""Client TLS for every connection the platform opens: the MQTT transport (``core/mqtt``) and InfluxDB over https.

One rule everywhere: certificate and host-name verification are always on, against the given CA bundle or
else the system CAs; TLS 1.2 at least. The context is built once per process per set of files (a context
loads and parses its CA bundle, so 200 simulated devices share one).
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass
from pathlib import Path

from smartpark.core.errors import ConfigError

__all__ = ["TlsFiles", "tls_context"]


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A client's TLS material: a CA bundle (None: the system CAs) and an optional certificate and key."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        return tls_context(self)


@functools.lru_cache(maxsize=8)
def tls_context(files: TlsFiles) -> ssl.SSLContext:
    """A verifying client context; a file that cannot be used is a ConfigError naming it and why."""
    try:
        ctx = ssl.create_default_context(cafile=str(files.ca_file) if files.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"CA file {files.ca_file}: {_reason(exc)}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.sslsocket_class = _ClosingSSLSocket
    if files.cert_file is not None:
        try:
            ctx.load_cert_chain(str(files.cert_file), str(files.key_file) if files.key_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"client certificate {files.cert_file} / key {files.key_file}: "
                              f"{_reason(exc)}") from exc
    return ctx


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when its handshake fails: paho wraps and handshakes in one step and drops the socket on an
    error without closing it (a file descriptor left to the garbage collector)."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc) or type(exc).__name__
