"""Rule specifications: what an admin writes through the API, validated once, evaluated as written.

A rule has a kind, a severity and a scope (site, device, device kind, source type; empty means all).
Kinds and where they are evaluated:

- ``threshold`` (live stream): conditions on metrics, optionally O2-corrected, combined with ``any``/``all``;
  each condition fires above ``limit`` and clears below ``clear`` (hysteresis); ``duration_s`` is how long
  the combination must hold, in device time, before the episode fires. A condition's limit is either a
  number or the device's source-type limit for a pollutant (reference data).
- ``hourly_mean`` (schedule): the hourly mean of valid, O2-corrected minutes against the source-type limit,
  on each closed local hour (``mode: closed``) or, as an early warning, on the running hour (``running``).
- ``no_data`` (schedule): a device seen before has sent nothing for ``after_s``.
- ``device_offline`` (live stream): the device's status topic says ``offline``.
- ``energy_quota`` (schedule): a site's energy use today (tce) above its daily quota.
- ``greening_band`` (schedule): a site's green-cover ratio outside its band.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from smartpark.core.catalog import Catalog
from smartpark.core.reference import Pollutant, Reference

__all__ = ["INSTANT_KINDS", "SCHEDULED_KINDS", "SEVERITIES", "Condition", "RuleSpec", "default_rules"]

Kind = Literal["threshold", "hourly_mean", "no_data", "device_offline", "energy_quota", "greening_band"]
Severity = Literal["info", "warning", "critical"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical")
INSTANT_KINDS = frozenset({"threshold", "device_offline"})
SCHEDULED_KINDS = frozenset({"hourly_mean", "no_data", "energy_quota", "greening_band"})
RULE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class Condition(BaseModel):
    """One comparison; ``op`` ``>`` fires above ``limit`` and clears below ``clear`` (``<`` mirrors it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str
    op: Literal[">", "<"] = ">"
    limit: float | None = None
    """A fixed limit; or leave it out and name ``pollutant`` to take the device's source-type limit."""
    pollutant: Pollutant | None = None
    clear: float | None = None
    """Clears past this value (hysteresis); default ``clear_ratio`` x the limit."""
    clear_ratio: float = Field(1.0, gt=0, le=10)
    o2_corrected: bool = False

    @model_validator(mode="after")
    def _limit_or_pollutant(self) -> Condition:
        if (self.limit is None) == (self.pollutant is None):
            raise ValueError("a condition needs exactly one of `limit` and `pollutant`")
        if self.limit is not None and self.clear is not None and (
                (self.op == ">" and self.clear > self.limit) or (self.op == "<" and self.clear < self.limit)):
            raise ValueError("`clear` must be on the safe side of `limit` (below it for `>`, above for `<`)")
        return self


class RuleSpec(BaseModel):
    """A rule as stored and as the API shows it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=RULE_ID.pattern)
    name: str = Field("", max_length=200)
    kind: Kind
    severity: Severity = "warning"
    enabled: bool = True
    # scope: empty means every site / device / kind / source type
    site: str | None = None
    device: str | None = None
    device_kind: str | None = None
    source_type: str | None = None
    # threshold
    conditions: list[Condition] = Field(default_factory=list, max_length=16)
    combine: Literal["any", "all"] = "any"
    duration_s: float = Field(0.0, ge=0, le=86_400)
    # hourly_mean
    pollutant: Pollutant | None = None
    mode: Literal["closed", "running"] = "closed"
    min_minutes: int = Field(15, ge=1, le=60)
    """running mode: the running hour needs this many valid minutes before it may fire."""
    # no_data
    after_s: float | None = Field(None, gt=0)
    """no_data: silence that counts as no data; default SMARTPARK_ALERTS_NO_DATA_S."""
    # threshold (per condition), hourly_mean and energy_quota
    clear_ratio: float = Field(1.0, gt=0, le=1)
    """hourly_mean and energy_quota: clears below this share of the limit."""

    @model_validator(mode="after")
    def _by_kind(self) -> RuleSpec:
        if self.kind == "threshold" and not self.conditions:
            raise ValueError("a threshold rule needs at least one condition")
        if self.kind != "threshold" and self.conditions:
            raise ValueError(f"a {self.kind} rule takes no conditions")
        if self.kind == "hourly_mean" and self.pollutant is None:
            raise ValueError("an hourly_mean rule needs `pollutant` (pm, so2 or nox)")
        return self

    def check(self, catalog: Catalog) -> None:
        """Refuse metrics the catalog does not know (ValueError, shown to the API caller)."""
        for c in self.conditions:
            if c.metric not in catalog.metrics:
                raise ValueError(f"unknown metric {c.metric!r}")

    @property
    def instant(self) -> bool:
        return self.kind in INSTANT_KINDS

    def covers(self, site: str, device: str | None, kind: str | None, source_type: str | None) -> bool:
        """Whether a subject falls in the rule's scope."""
        return ((self.site is None or self.site == site)
                and (self.device is None or self.device == device)
                and (self.device_kind is None or self.device_kind == kind)
                and (self.source_type is None or self.source_type == source_type))


def default_rules(reference: Reference) -> list[RuleSpec]:
    """The set a new park starts with: each CEMS pollutant against its device's source-type limit (limits
    and reference O2 come from the reference data per source type), plus no-data, offline, quota, greening."""
    rules: list[RuleSpec] = []
    for pollutant, metric in reference.emissions.pollutants.items():
        cond = Condition(metric=metric, pollutant=pollutant, o2_corrected=True, clear_ratio=0.9)
        rules += [
            RuleSpec(id=f"{pollutant}-over-limit", kind="threshold", severity="warning", device_kind="cems",
                     name=f"{pollutant.upper()} (O2-corrected) above the source-type limit for 5 minutes",
                     conditions=[cond], duration_s=300),
            RuleSpec(id=f"{pollutant}-hourly-mean", kind="hourly_mean", severity="critical", device_kind="cems",
                     name=f"Hourly mean of valid O2-corrected {pollutant.upper()} above the limit",
                     pollutant=pollutant, mode="closed", clear_ratio=1.0),
            RuleSpec(id=f"{pollutant}-hourly-early", kind="hourly_mean", severity="warning", device_kind="cems",
                     name=f"Running hour's {pollutant.upper()} mean heading over the limit (early warning)",
                     pollutant=pollutant, mode="running", min_minutes=15, clear_ratio=0.9),
        ]
    rules += [
        RuleSpec(id="device-no-data", kind="no_data", severity="warning", name="No data from a device"),
        RuleSpec(id="device-offline", kind="device_offline", severity="warning", name="Device reports offline"),
        RuleSpec(id="energy-over-quota", kind="energy_quota", severity="warning",
                 name="Site energy use today above its daily quota"),
        RuleSpec(id="greening-out-of-band", kind="greening_band", severity="info",
                 name="Site green-cover ratio outside its band"),
    ]
    return rules
