"""Request and response models of the API, split Base/Create/Update/Public: the registry's tables never leave
the process, and what a client may send is narrower than what it gets back."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from smartpark.core.ids import ID_SCHEMA_PATTERN
from smartpark.core.registry.parkfile import HJ212_MN_PATTERN

T = TypeVar("T")

__all__ = [
    "CarrierUse",
    "Co2Use",
    "CounterEventPublic",
    "DeviceCreate",
    "DeviceProvisioned",
    "DevicePublic",
    "DeviceUpdate",
    "EmissionsKpi",
    "EnergyDay",
    "EnergyKpi",
    "GreeningKpi",
    "Hj212Identity",
    "HourMean",
    "KeyCreate",
    "KeyCreated",
    "KeyPublic",
    "LatestDevice",
    "LatestMetric",
    "MeterUse",
    "Page",
    "ParkKpis",
    "PollutantCompliance",
    "SeriesPublic",
    "SiteCreate",
    "SiteId",
    "SiteKpis",
    "SitePublic",
    "SiteUpdate",
    "StackCompliance",
]

# SQLite hands back naive datetimes for timezone-aware columns; the registry writes UTC.
UtcDatetime = Annotated[datetime, AfterValidator(lambda v: v if v.tzinfo else v.replace(tzinfo=UTC))]

SiteId = Annotated[str, Field(pattern=ID_SCHEMA_PATTERN, max_length=63)]
Id = Field(pattern=ID_SCHEMA_PATTERN, examples=["steel-works"], description="Lower case letters, digits, - and _")


class SiteBase(BaseModel):
    name: str = Field(min_length=1, max_length=200, examples=["Liaoxi Special Steel Works"])
    enterprise: str = Field(min_length=1, max_length=200, examples=["Liaoxi Iron & Steel Group Co., Ltd."])
    industry: str = Field(min_length=1, max_length=40, examples=["steel"])
    area_m2: float = Field(gt=0, le=1e9, examples=[2_500_000])
    energy_quota_tce_day: float | None = Field(None, gt=0, le=1e9, examples=[9000])
    energy_quota_tce_year: float | None = Field(None, gt=0, le=1e12)
    greening_min_pct: float | None = Field(None, ge=0, le=100, examples=[12.0])
    greening_max_pct: float | None = Field(None, ge=0, le=100, examples=[20.0])


class SiteCreate(SiteBase):
    id: str = Id


def _not_null(value: object) -> object:
    if value is None:
        raise ValueError("may not be null: leave the field out to keep its value")
    return value


class SiteUpdate(BaseModel):
    """Only the fields given change; null clears a quota or a band, the other fields cannot be null."""

    _required = field_validator("name", "enterprise", "industry", "area_m2")(_not_null)

    name: str | None = Field(None, min_length=1, max_length=200)
    enterprise: str | None = Field(None, min_length=1, max_length=200)
    industry: str | None = Field(None, min_length=1, max_length=40)
    area_m2: float | None = Field(None, gt=0, le=1e9)
    energy_quota_tce_day: float | None = Field(None, gt=0, le=1e9)
    energy_quota_tce_year: float | None = Field(None, gt=0, le=1e12)
    greening_min_pct: float | None = Field(None, ge=0, le=100)
    greening_max_pct: float | None = Field(None, ge=0, le=100)


class SitePublic(SiteBase):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(examples=["steel-works"])


DeviceKind = Literal["energy_meter", "cems", "greening", "gateway"]


MeterRole = Literal["main", "sub", "generation"]


class DeviceBase(BaseModel):
    kind: DeviceKind = Field(examples=["cems"])
    source_type: str | None = Field(None, max_length=40, examples=["sinter"],
                                    description="CEMS only: selects limits and reference O2")
    # meter hierarchy (energy meters; rules in core/registry/hierarchy.py)
    role: MeterRole | None = Field(None, description="Energy meters: main (site supply), sub (beneath `parent`) "
                                   "or generation; default sub where a parent is given, else main")
    parent_id: str | None = Field(None, pattern=ID_SCHEMA_PATTERN, description="Sub-meters: the meter above, same site")
    rated_kw: float | None = Field(None, gt=0, le=1e8, description="Rated power: bounds a plausible counter step")


class DeviceCreate(DeviceBase):
    id: str = Field(pattern=ID_SCHEMA_PATTERN, examples=["sinter-3-cems"])


class Hj212Identity(BaseModel):
    """A stack monitor's HJ 212 identity: the MN its data acquisition unit sends and its PW (write-only: stored
    as a hash, never shown again)."""

    mn: str = Field(pattern=HJ212_MN_PATTERN, examples=["88888880000001"])
    pw: str = Field(min_length=1, max_length=64, examples=["123456"])


class DeviceUpdate(BaseModel):
    """Only the fields given change; null clears the source type, the kind cannot be null."""

    _required = field_validator("kind")(_not_null)
    kind: DeviceKind | None = None
    source_type: str | None = Field(None, max_length=40)
    role: MeterRole | None = None
    parent_id: str | None = Field(None, pattern=ID_SCHEMA_PATTERN)
    rated_kw: float | None = Field(None, gt=0, le=1e8)
    hj212: Hj212Identity | None = Field(None, description="Bind the device to an HJ 212 MN and PW (the gateway)")


class DevicePublic(DeviceBase):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(examples=["sinter-1-cems"])
    site_id: str = Field(examples=["steel-works"])
    online: bool | None = None
    last_seen: UtcDatetime | None = None
    hj212_mn: str | None = Field(None, description="HJ 212 MN of the device's data acquisition unit, if any")


class DeviceProvisioned(DevicePublic):
    """A device with new MQTT credentials: the password is shown this once and stored only as a hash."""

    mqtt_username: str = Field(examples=["sinter-3-cems"])
    mqtt_password: str = Field(examples=["Vt3q0Yb8bQ2m1c5fKc9dXw"])
    topic: str = Field(examples=["smartpark/v1/steel-works/sinter-3-cems/telemetry"])


class KeyCreate(BaseModel):
    role: Literal["admin", "site"] = Field(examples=["site"])
    sites: list[SiteId] = Field(default_factory=list, max_length=100, examples=[["steel-works"]])


class KeyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(examples=["3fa85f6457b1"])
    role: str = Field(examples=["site"])
    sites: list[str] = Field(examples=[["steel-works"]])
    created_at: UtcDatetime
    revoked: bool


class KeyCreated(KeyPublic):
    key: str = Field(description="The key itself, shown this once", examples=["sp_3fa85f6457b1_q1w2e3r4t5y6"])


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int = Field(ge=0)
    offset: int = Field(ge=0)
    limit: int = Field(ge=1)


class LatestMetric(BaseModel):
    value: float = Field(examples=[31.7])
    ts: datetime
    age_s: float = Field(examples=[4.2], description="Seconds since the reading's device timestamp")
    stale: bool = Field(description="Older than SMARTPARK_API_STALE_AFTER_S")
    flag: str = Field(examples=["N"])
    unit: str = Field(examples=["mg/m3"])


class LatestDevice(BaseModel):
    device: str = Field(examples=["sinter-1-cems"])
    measurement: str = Field(examples=["emissions"])
    age_s: float = Field(description="Age of the device's newest reading")
    stale: bool
    metrics: dict[str, LatestMetric]


class SeriesPublic(BaseModel):
    site: str = Field(examples=["steel-works"])
    device: str | None = Field(examples=["sinter-1-cems"], description="null when grouped by site")
    metric: str = Field(examples=["nox_mg_m3"])
    unit: str = Field(examples=["mg/m3"])
    agg: str = Field(examples=["mean"])
    every: str = Field(examples=["1m"])
    points: list[tuple[datetime, float]] = Field(examples=[[["2026-01-05T08:00:00Z", 31.2]]])


# --------------------------------------------------------------------------------------------- KPIs


class CarrierUse(BaseModel):
    carrier: str = Field(examples=["electricity"])
    metric: str = Field(examples=["energy_kwh"])
    amount: float = Field(examples=[1_250_000.0])
    unit: str = Field(examples=["kWh"])
    kgce_per_unit: float = Field(examples=[0.1229])
    tce: float = Field(examples=[153.6])


class Co2Use(BaseModel):
    carrier: str = Field(examples=["coal"])
    scope: Literal[1, 2] = Field(description="1: burnt on site; 2: purchased electricity, steam, heat")
    amount: float = Field(examples=[8880.0], description="The carrier's consumption (main meters), its unit")
    co2_kg_per_unit: float = Field(examples=[1900.0])
    co2_t: float = Field(examples=[16872.0])
    confidence: str = Field(examples=["U"], description="C confirmed, S secondary sources, U unconfirmed")
    source: str


class MeterUse(BaseModel):
    """One energy meter's consumption per metric, with what its sub-meters leave unmetered."""

    device: str = Field(examples=["steel-works-meter-01"])
    role: Literal["main", "sub", "generation"]
    parent: str | None = Field(None, examples=["steel-works-main-substation"])
    amounts: dict[str, float] = Field(examples=[{"energy_kwh": 41_200.0}])
    unmetered: dict[str, float] | None = Field(
        None, description="Meters with sub-meters: own amount minus the direct sub-meters' (negative: they read more)")


class CounterEventPublic(BaseModel):
    """A counter step that was not an ordinary increase (README "Counter rules")."""

    site: str
    device: str
    metric: str = Field(examples=["energy_kwh"])
    at: datetime = Field(description="Minute of the reading that ended the step")
    kind: Literal["reset", "implausible", "gap"]
    elapsed_s: float = Field(description="Since the previous reading")
    reading: float = Field(description="The counter after the step")
    step: float = Field(description="Reading minus the previous one (negative at a reset)")
    counted: float = Field(description="Counted as consumption (a reset: the reading since the reset)")
    excluded: float = Field(description="Not counted: implausible for the meter's bound, or across a gap")


class EnergyDay(BaseModel):
    day: date = Field(description="Local calendar day of the park")
    amounts: dict[str, float] = Field(description="Main meters' consumption per metric")
    total_tce: float


class EnergyKpi(BaseModel):
    site: str | None = Field(examples=["steel-works"], description="null for the park")
    start: datetime
    end: datetime
    carriers: list[CarrierUse] = Field(description="Main meters only (a site's supply); sub-meters in `meters`")
    total_tce: float = Field(examples=[4210.5])
    days: list[EnergyDay] = Field(description="Per local day; the days add up to the period")
    meters: list[MeterUse] = Field(description="Per meter, with the unmetered remainder under its sub-meters")
    generation_kwh: float = Field(0.0, description="Generation/export meters: produced, not added to the use")
    co2: list[Co2Use] = Field(description="Per carrier and scope")
    co2_scope1_t: float = Field(examples=[16872.0], description="Fuels burnt on site")
    co2_scope2_t: float = Field(examples=[640.3], description="Purchased electricity (grid factor) and steam")
    co2_total_t: float = Field(examples=[17512.3], description="Scope 1 + scope 2")
    co2_electricity_t: float = Field(examples=[640.3], description="Scope 2 of purchased electricity alone")
    co2_t: float = Field(examples=[640.3], deprecated=True,
                         description="Deprecated (electricity only, despite its name): co2_electricity_t; "
                                     "all CO2: co2_total_t")
    grid_factor_kg_per_kwh: float = Field(examples=[0.5122])
    grid_factor_year: int = Field(examples=[2023])
    grid_region: str = Field(examples=["northeast"])
    output_t: float | None = Field(examples=[21000.0])
    intensity_tce_per_t: float | None = Field(examples=[0.2005])
    quota_tce: float | None = Field(None, description="The site's quota over the period (daily or yearly)")
    quota_use_pct: float | None = None
    counter_events: list[CounterEventPublic] = Field(
        description="Resets (counted) and implausible or gap steps (excluded) of the site's meters' counters "
                    "(the park: every visible site's)")
    excluded: dict[str, float] = Field(description="Per metric: what the main meters' excluded steps did not count")


class HourMean(BaseModel):
    start: datetime = Field(description="Local clock hour, with the park's offset")
    mean_mg_m3: float | None = Field(examples=[41.3], description="Mean of the valid (O2-corrected) minutes")
    valid_minutes: int = Field(examples=[58])
    status: Literal["invalid", "compliant", "exceeding"]


class PollutantCompliance(BaseModel):
    pollutant: str = Field(examples=["nox"])
    metric: str = Field(examples=["nox_mg_m3"])
    limit_mg_m3: float = Field(examples=[50.0])
    hours_with_data: int
    hours_valid: int
    hours_compliant: int
    hours_exceeding: int
    compliance_pct: float | None = Field(examples=[98.6], description="Compliant over valid hours")
    exceeding: list[HourMean]
    hours: list[HourMean] | None = Field(None, description="Every hour with data (with `hours=true`)")


class StackCompliance(BaseModel):
    device: str = Field(examples=["sinter-1-cems"])
    source_type: str = Field(examples=["sinter"])
    o2_ref_pct: float | None = Field(examples=[16.0])
    pollutants: list[PollutantCompliance]


class EmissionsKpi(BaseModel):
    site: str = Field(examples=["steel-works"])
    start: datetime
    end: datetime
    min_valid_minutes: int = Field(examples=[45])
    target_pct: float = Field(examples=[95.0])
    compliance_pct: float | None = Field(examples=[97.9], description="Over every stack and pollutant")
    meets_target: bool | None
    stacks: list[StackCompliance]


class GreeningKpi(BaseModel):
    site: str = Field(examples=["steel-works"])
    area_m2: float
    green_area_m2: float | None = Field(examples=[380_000.0], description="Mean over the period")
    coverage_pct: float | None = Field(examples=[15.2])
    band_min_pct: float
    band_max_pct: float
    status: Literal["below", "within", "above", "no_data"]


class SiteKpis(BaseModel):
    site: str
    energy: EnergyKpi
    emissions_compliance_pct: float | None
    emissions_meets_target: bool | None
    greening: GreeningKpi


class ParkKpis(BaseModel):
    start: datetime
    end: datetime
    energy: EnergyKpi
    emissions_compliance_pct: float | None
    greening_coverage_pct: float | None = Field(description="Area-weighted over the sites with data")
    sites: list[SiteKpis]
