"""Registry maps held in memory by the services that look one up per message (the ingest's device -> site, the
HJ 212 gateway's MN -> identity): reloaded every minute, so devices deleted or moved stop being accepted, and
when an unknown key shows up (at most every 5 s), so devices added through the API or a park file are taken
without a restart. A failed reload keeps the last good map: the metadata DB away must not refuse data.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["REFRESH_S", "RELOAD_S", "Bindings", "ReloadingMap"]

RELOAD_S = 5.0  # an unknown key triggers a reload at most this often
REFRESH_S = 60.0  # and the whole map is reloaded this often anyway

V = TypeVar("V")


class ReloadingMap(Generic[V]):
    """``load()``'s map, reloaded by the rules above; ``lenient_start`` begins empty if the first load fails."""

    def __init__(self, load: Callable[[], dict[str, V]], what: str, log: logging.Logger, *,
                 lenient_start: bool = False) -> None:
        self._load = load
        self._what = what
        self._log = log
        self._lock = threading.Lock()
        self._map: dict[str, V] = {}
        self._loaded = 0.0
        if lenient_start:
            self.reload()
        else:
            self._map, self._loaded = load(), time.monotonic()

    def get(self, key: str) -> V | None:
        age = time.monotonic() - self._loaded
        if age > REFRESH_S:
            self.reload()
            age = 0.0
        found = self._map.get(key)
        if found is None and age > RELOAD_S:
            self.reload()
            found = self._map.get(key)
        return found

    def reload(self) -> None:
        with self._lock:
            try:
                self._map = self._load()
            except Exception as exc:  # keep the last good map rather than refuse data
                self._log.warning("could not reload %s (%s); keeping the last ones", self._what, exc)
            self._loaded = time.monotonic()


class Bindings(ReloadingMap[str]):
    """device -> site, for the ingest (a failing first load is fatal: the service cannot start without it)."""

    def __init__(self, load: Callable[[], dict[str, str]]) -> None:
        super().__init__(load, "device bindings", logging.getLogger("smartpark.ingest"))

    site_of = ReloadingMap.get  # device -> its site: the lookup itself (no extra call level per message)
