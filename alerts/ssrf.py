"""The SSRF guard: a webhook URL is an address the engine will connect to on a user's behalf.

Only http(s). Every address the host resolves to is checked when the request is made (not when the
subscription is saved: DNS changes), and the request goes to the checked address itself (the Host header
and TLS SNI keep the name), so a second resolution cannot swap in an internal one. Private, loopback,
link-local (cloud metadata at 169.254.169.254), CGNAT (100.64/10), multicast, reserved and every other
non-global range is refused unless SMARTPARK_ALERTS_WEBHOOK_ALLOW_PRIVATE is set.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import NamedTuple
from urllib.parse import urlsplit

from smartpark.alerts.errors import UnsafeDestination

__all__ = ["Target", "check_address", "check_url_shape", "resolve_target"]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Target(NamedTuple):
    """A vetted destination: connect to ``address``, present ``host`` in Host and SNI."""

    scheme: str
    host: str
    port: int
    address: str
    path: str  # path and query

    def pinned_url(self) -> str:
        addr = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{addr}:{self.port}{self.path}"

    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def check_url_shape(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path?query) of an http(s) URL with a host; UnsafeDestination otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeDestination(f"not a valid URL: {exc}", url=url) from exc
    if parts.scheme not in ("http", "https"):
        raise UnsafeDestination(f"webhook URLs must be http or https, not {parts.scheme or 'none'!r}", url=url)
    if not parts.hostname:
        raise UnsafeDestination("webhook URL has no host", url=url)
    if parts.username or parts.password:
        raise UnsafeDestination("credentials in a webhook URL are refused (use the signature)", url=url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path


def check_address(address: str, *, allow_private: bool, url: str = "") -> IpAddress:
    """Refuse an address outside the global unicast space (unless private ones are allowed)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if ip.is_multicast or ip.is_unspecified:
        raise UnsafeDestination(f"{ip} is not a unicast address", url=url, address=str(ip))
    if not ip.is_global and not allow_private:
        raise UnsafeDestination(f"{ip} is not a public address (private, loopback, link-local, CGNAT or "
                                "reserved); SMARTPARK_ALERTS_WEBHOOK_ALLOW_PRIVATE allows it", url=url,
                                address=str(ip))
    return ip


def resolve_target(url: str, *, allow_private: bool) -> Target:
    """Resolve the URL's host now and check every address; the first one is the one to connect to."""
    scheme, host, port, path = check_url_shape(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UnsafeDestination(f"cannot resolve {host!r}: {exc}", url=url) from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise UnsafeDestination(f"{host!r} resolves to no address", url=url)
    checked = [check_address(a, allow_private=allow_private, url=url) for a in addresses]
    return Target(scheme, host, port, str(checked[0]), path)
