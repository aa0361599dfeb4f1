"""Which device an MN is, and whether a PW is its PW: the registry's HJ 212 bindings, cached.

PW hashes are PBKDF2 (tens of milliseconds a check by design), and a unit sends its PW in every packet: a
verified (MN, hash, PW) is remembered, so a check costs a dict lookup after the first packet. The map is
reloaded every minute and when an unknown MN shows up (at most every 5 s), so devices bound through the API
or a park file are taken without a restart.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from smartpark.core.registry.secrets import verify_password

__all__ = ["Identities", "Identity"]

log = logging.getLogger("smartpark.hj212")
RELOAD_S = 5.0
REFRESH_S = 60.0
CACHE_MAX = 50_000


class Identity(NamedTuple):
    device: str
    site: str
    pw_hash: str
    source_type: str | None


def _key(mn: str, identity: Identity, pw: str) -> tuple[str, str, bytes]:
    return mn, identity.pw_hash, hashlib.sha256(pw.encode()).digest()  # the PW itself is not kept


class Identities:
    def __init__(self, load: Callable[[], dict[str, tuple[str, str, str, str | None]]]) -> None:
        self._load = load
        self._map: dict[str, Identity] = {}
        self._loaded = 0.0
        self._verified: dict[tuple[str, str, bytes], bool] = {}
        self._lock = threading.Lock()
        self.reload()

    def find(self, mn: str) -> Identity | None:
        age = time.monotonic() - self._loaded
        if age > REFRESH_S:  # devices unbound or deleted in the registry stop being accepted
            self.reload()
            age = 0.0
        found = self._map.get(mn)
        if found is None and age > RELOAD_S:
            self.reload()
            found = self._map.get(mn)
        return found

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

    def reload(self) -> None:
        with self._lock:
            try:
                self._map = {mn: Identity(*row) for mn, row in self._load().items()}
            except Exception as exc:  # the metadata DB away: keep the last good map rather than refuse data
                log.warning("could not reload HJ 212 identities (%s); keeping the last ones", exc)
            self._loaded = time.monotonic()
