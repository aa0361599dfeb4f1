"""Response models of the API (public shapes; the registry's tables never leave the process)."""

from __future__ import annotations

from datetime import datetime
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")

__all__ = ["DevicePublic", "LatestDevice", "LatestMetric", "Page", "SeriesPublic", "SitePublic"]


class SitePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    enterprise: str
    industry: str
    area_m2: float
    energy_quota_tce_day: float | None = None
    energy_quota_tce_year: float | None = None
    greening_min_pct: float | None = None
    greening_max_pct: float | None = None


class DevicePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    site_id: str
    kind: str
    source_type: str | None = None
    online: bool | None = None
    last_seen: datetime | None = None


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    offset: int
    limit: int


class LatestMetric(BaseModel):
    value: float
    ts: datetime
    age_s: float
    flag: str
    unit: str


class LatestDevice(BaseModel):
    device: str
    measurement: str
    metrics: dict[str, LatestMetric]


class SeriesPublic(BaseModel):
    site: str
    device: str | None
    metric: str
    unit: str
    agg: str
    every: str
    points: list[tuple[datetime, float]]
