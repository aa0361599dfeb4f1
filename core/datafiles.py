"""Data files the core ships (catalog, reference data, screening, HJ 212 codes): read a packaged one or a park's
own copy, the same way for every kind, so each module holds only its own checks."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec
import yaml

from smartpark.core.errors import ConfigError

__all__ = ["DataFile", "convert_yaml", "read_data_file", "read_yaml"]

T = TypeVar("T")
R = TypeVar("R")


def read_data_file(path: Path | None, packaged: str, what: str) -> tuple[str, str]:
    """(text, source name) of ``path``, or of the packaged ``data/<packaged>`` when ``path`` is None."""
    if path is None:
        text = resources.files("smartpark.core").joinpath(f"data/{packaged}").read_text(encoding="utf-8")
        return text, f"{packaged} (built in)"
    try:
        return Path(path).read_text(encoding="utf-8"), str(path)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc}") from exc


def convert_yaml(text: str, source: str, what: str, into: type[T]) -> T:
    """YAML into a msgspec type; any problem is a ConfigError naming the file. YAML 1.1 reads 1.0e6 as a
    string, hence the lax conversion of numbers."""
    try:
        data: Any = yaml.safe_load(text)
        return msgspec.convert(data, into, strict=False)
    except (yaml.YAMLError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{what} {source}: {exc}") from exc


def read_yaml(path: Path | None, packaged: str, what: str, into: type[T]) -> tuple[T, str]:
    """(content, source name) of a YAML data file: ``path``, or the packaged one when ``path`` is None."""
    text, source = read_data_file(path, packaged, what)
    return convert_yaml(text, source, what, into), source


class DataFile(Generic[R, T]):
    """One kind of data file: read as ``into``, then ``build`` checks it (a ConfigError naming the source) and
    makes the value callers use. The packaged file is built once: every service reads the same one."""

    def __init__(self, packaged: str, what: str, into: type[R], build: Callable[[R, str], T]) -> None:
        self.packaged, self.what, self.into, self.build = packaged, what, into, build
        self._default: T | None = None

    def load(self, path: Path | None = None) -> T:
        """A park's own file; ``None`` is the packaged one."""
        return self.default() if path is None else self._read(path)

    def default(self) -> T:
        """The packaged file, built on first use."""
        if self._default is None:
            self._default = self._read(None)
        return self._default

    def _read(self, path: Path | None) -> T:
        return self.build(*read_yaml(path, self.packaged, self.what, self.into))
