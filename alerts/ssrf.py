"""The SSRF guard: a webhook URL is an address the engine will connect to on a user's behalf.

Only http(s). Every address the host resolves to is checked when the request is made (not when the
subscription is saved: DNS changes), and the request goes to the checked address itself (the Host header
and TLS SNI keep the name), so a second resolution cannot swap in an internal one. Private, loopback,
link-local (cloud metadata at 169.254.169.254), CGNAT (100.64/10), multicast, reserved and every other
non-global range is refused unless SMARTPARK_ALERTS_WEBHOOK_ALLOW_PRIVATE is set.

An IPv6 address that carries an IPv4 one (IPv4-mapped, -compatible and -translated, NAT64 64:ff9b::/96 and
64:ff9b:1::/48, 6to4 2002::/16, Teredo, ISATAP) is judged by the IPv4 address too: a NAT64 gateway or a 6to4
relay would deliver ``64:ff9b::a9fe:a9fe`` to 169.254.169.254.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import NamedTuple
from urllib.parse import urlsplit

from smartpark.alerts.errors import UnsafeDestination

__all__ = ["Target", "check_address", "check_url_shape", "check_webhook_url", "embedded_ipv4", "resolve_target"]

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


def check_webhook_url(url: str, *, allow_private: bool) -> None:
    """A subscription's URL when it is saved: its shape, and a literal address now (names are checked at each
    delivery, since DNS answers change)."""
    _, host, _, _ = check_url_shape(url)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return
    check_address(host, allow_private=allow_private, url=url)


def check_address(address: str, *, allow_private: bool, url: str = "") -> IpAddress:
    """Refuse an address outside the global unicast space (unless private ones are allowed), and an IPv6
    address whose embedded IPv4 address would be refused."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    inner = embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else []
    shell = bool(inner) and any(ip in net for net in TRANSLATION_SHELLS)
    for candidate in ([] if shell else [ip]) + inner:
        _check_one(candidate, allow_private=allow_private, url=url, shown=ip)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return mapped or ip  # ::ffff:a.b.c.d is connected to as a.b.c.d


def _check_one(ip: IpAddress, *, allow_private: bool, url: str, shown: IpAddress) -> None:
    where = str(shown) if ip == shown else f"{shown} (carrying {ip})"
    if ip.is_multicast or ip.is_unspecified:
        raise UnsafeDestination(f"{where} is not a unicast address", url=url, address=str(shown))
    if (not ip.is_global or ip.is_reserved) and not allow_private:
        raise UnsafeDestination(f"{where} is not a public address (private, loopback, link-local, CGNAT or "
                                "reserved); SMARTPARK_ALERTS_WEBHOOK_ALLOW_PRIVATE allows it", url=url,
                                address=str(shown))


# Prefixes whose addresses only stand for the IPv4 address in their last 32 bits (judged by it alone):
# IPv4-mapped, IPv4-compatible, IPv4-translated, NAT64 well-known; and NAT64 local-use (RFC 6052 /48).
_LAST_32 = tuple(ipaddress.IPv6Network(n) for n in ("::ffff:0:0/96", "::/96", "::ffff:0:0:0/96", "64:ff9b::/96"))
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
TRANSLATION_SHELLS = (*_LAST_32, _NAT64_LOCAL)
_ISATAP_IIDS = (b"\x00\x00\x5e\xfe", b"\x02\x00\x5e\xfe")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address an IPv6 address carries (RFC 4291, 6052, 3056, 4380, 5214); [] if none."""
    raw = ip.packed
    if int(ip) <= 1:  # :: and ::1 are themselves, not IPv4-compatible addresses
        return []
    if ip in _NAT64_LOCAL:  # the /48 layout: bits 48-63 and 72-87 (bits 64-71 are the zero "u" octet)
        return [ipaddress.IPv4Address(raw[6:8] + raw[9:11])]
    if any(ip in net for net in _LAST_32) or raw[8:12] in _ISATAP_IIDS:
        return [ipaddress.IPv4Address(raw[12:])]
    return [a for a in (ip.sixtofour, *(ip.teredo or ())) if a is not None]  # 6to4; Teredo server and client


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
