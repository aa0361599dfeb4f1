"""Which device an MN is, and whether a PW is its PW: the registry's HJ 212 bindings, cached.

PW hashes are PBKDF2 (tens of milliseconds a check by design), and a unit sends its PW in every packet: a
verified (MN, hash, PW) is remembered, so a check costs a dict lookup after the first packet. The map is
reloaded like the ingest's bindings (`core/registry/cache.py`), so devices bound through the API or a park file
are taken without a restart.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import NamedTuple

from smartpark.core.registry.cache import ReloadingMap
from smartpark.core.registry.secrets import verify_password

__all__ = ["Identities", "Identity"]

log = logging.getLogger("smartpark.hj212")
CACHE_MAX = 50_000


class Identity(NamedTuple):
    device: str
    site: str
    pw_hash: str
    source_type: str | None


def _key(mn: str, identity: Identity, pw: str) -> tuple[str, str, bytes]:
    return mn, identity.pw_hash, hashlib.sha256(pw.encode()).digest()  # the PW itself is not kept


class Identities(ReloadingMap[Identity]):
    """MN -> Identity (a failing first load leaves it empty until a reload works), and the verified PWs."""

    def __init__(self, load: Callable[[], dict[str, tuple[str, str, str, str | None]]]) -> None:
        self._verified: dict[tuple[str, str, bytes], bool] = {}
        super().__init__(lambda: {mn: Identity(*row) for mn, row in load().items()}, "HJ 212 identities", log,
                         lenient_start=True)

    find = ReloadingMap.get  # MN -> its identity

    def cached(self, mn: str, identity: Identity, pw: str) -> bool | None:
        """The remembered outcome of checking ``pw``; None when it was never checked (call `verify`)."""
        return self._verified.get(_key(mn, identity, pw))

    def verify(self, mn: str, identity: Identity, pw: str) -> bool:
        """Check ``pw`` against the hash (a PBKDF2: tens of ms; the gateway runs it off its loop) and remember."""
        ok = verify_password(pw, identity.pw_hash)
        with self._lock:
            if len(self._verified) >= CACHE_MAX:
                self._verified.clear()
            self._verified[_key(mn, identity, pw)] = ok
        return ok
