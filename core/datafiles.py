"""Data files the core ships (catalog, reference data, parks): read a packaged one or a park's own copy."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import yaml

from smartpark.core.errors import ConfigError

__all__ = ["convert_yaml", "read_data_file"]

T = TypeVar("T")


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
