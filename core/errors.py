"""Typed errors of the domain core.

    SmartparkError
    ├── ConfigError            bad configuration: fatal at start-up
    ├── ParkFileError          a park file that cannot be loaded (file, line, key named)
    ├── RegistryError          a registry lookup or write that cannot be done
    └── StoreError             a time-series store call failed (``retryable`` says whether to try again)
        ├── StoreUnavailable   server down, timeout, 5xx: retryable
        └── StoreRejected      the store refused the data or query (4xx, bad line): not retryable
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ParkFileError",
    "RegistryError",
    "SmartparkError",
    "StoreError",
    "StoreRejected",
    "StoreUnavailable",
]


class SmartparkError(Exception):
    """Base of every error smartpark raises on purpose."""


class ConfigError(SmartparkError):
    """Configuration that cannot work; raised before any I/O."""


class ParkFileError(SmartparkError):
    """A park file that cannot be loaded; names the file, line and key."""

    def __init__(self, message: str, *, path: str = "", line: int | None = None, key: str = "") -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}" if where else message)
        self.path, self.line, self.key = path, line, key


class RegistryError(SmartparkError):
    """A registry operation that cannot be done (unknown id, conflicting binding)."""


class StoreError(SmartparkError):
    """A time-series store call failed."""

    retryable: bool = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class StoreUnavailable(StoreError):
    """The store cannot be reached or failed on its side; the same call may succeed later."""

    retryable = True


class StoreRejected(StoreError):
    """The store refused the request itself; repeating it will not help."""

    retryable = False
