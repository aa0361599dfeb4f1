"""Alerts: rules and webhooks (admin), episodes (any key, for the sites it may see; 404 for the others).

The alert tables belong to the alert engine (smartpark.alerts); the API reads and edits them through one
``AlertAccess`` the app makes at start-up (plain records in, plain records out; the tables exist before the
first request). A database error answers 503 (api/errors.py), never an empty list. The engine picks up rule
and subscription changes within one schedule interval (SMARTPARK_ALERTS_EVAL_INTERVAL_S).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from smartpark.alerts.access import AlertAccess, DeliveryRecord, EpisodeRecord, RuleSpec, SubscriptionRecord
from smartpark.alerts.errors import BadSecret, UnsafeDestination
from smartpark.api.deps import AdminDep, AlertsDep, CatalogDep, PrincipalDep, RegistryDep, scoped_site
from smartpark.api.errors import ADMIN_ERRORS, ERRORS, Conflict, NotFound, Unprocessable
from smartpark.api.models import SiteId
from smartpark.core.ids import ID_SCHEMA_PATTERN

__all__ = ["router"]

router = APIRouter(prefix="/v1/alerts", tags=["alerts"], responses=ADMIN_ERRORS)

Offset = Annotated[int, Query(ge=0, le=1_000_000)]
Limit = Annotated[int, Query(ge=1, le=1000)]
Severity = Literal["info", "warning", "critical"]
# a subscription's rule filter: rule ids, or `kpi.daily` for the daily feed (alerts/daily.py)
RuleId = Annotated[str, Field(pattern=ID_SCHEMA_PATTERN + r"|^kpi\.daily$")]


def _iso(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


# ------------------------------------------------------------------------------------------------ rules
@router.get("/rules")
def list_rules(alerts: AlertsDep, _: AdminDep) -> list[RuleSpec]:
    return alerts.rules()


@router.post("/rules", status_code=201)
def create_rule(spec: RuleSpec, alerts: AlertsDep, catalog: CatalogDep, _: AdminDep) -> RuleSpec:
    _check_rule(spec, catalog)
    if alerts.rule(spec.id) is not None:
        raise Conflict(f"rule {spec.id!r} exists; PUT /v1/alerts/rules/{spec.id} replaces it")
    alerts.put_rule(spec)
    return spec


@router.get("/rules/{rule_id}")
def get_rule(rule_id: str, alerts: AlertsDep, _: AdminDep) -> RuleSpec:
    spec = alerts.rule(rule_id)
    if spec is None:
        raise NotFound(f"rule {rule_id!r} not found")
    return spec


@router.put("/rules/{rule_id}")
def replace_rule(rule_id: str, spec: RuleSpec, alerts: AlertsDep, catalog: CatalogDep, _: AdminDep) -> RuleSpec:
    if spec.id != rule_id:
        raise Unprocessable(f"the body's id {spec.id!r} is not the path's {rule_id!r}")
    _check_rule(spec, catalog)
    alerts.put_rule(spec)
    return spec


@router.delete("/rules/{rule_id}", status_code=204)
def delete_rule(rule_id: str, alerts: AlertsDep, _: AdminDep) -> Response:
    if not alerts.delete_rule(rule_id):
        raise NotFound(f"rule {rule_id!r} not found")
    return Response(status_code=204)


def _check_rule(spec: RuleSpec, catalog: Any) -> None:
    try:
        spec.check(catalog)
    except ValueError as exc:
        raise Unprocessable(str(exc)) from exc


# ------------------------------------------------------------------------------------------------ episodes
class EpisodePublic(BaseModel):
    id: str
    rule: str
    state: Literal["firing", "resolved"]
    severity: str
    site: str
    device: str | None
    metric: str | None
    value: float | None
    peak: float | None
    limit: float | None
    unit: str
    window: str
    message: str
    started_at: datetime
    resolved_at: datetime | None
    readings: list[Any] = Field(description="The readings (or hourly figures) that triggered the episode")


class EpisodePage(BaseModel):
    items: list[EpisodePublic]
    total: int
    offset: int
    limit: int


def _episode(ep: EpisodeRecord) -> EpisodePublic:
    return EpisodePublic(id=ep.id, rule=ep.rule, state=ep.state, severity=ep.severity,
                         site=ep.site, device=ep.device, metric=ep.metric, value=ep.value, peak=ep.peak,
                         limit=ep.limit, unit=ep.unit, window=ep.window, message=ep.message,
                         started_at=_iso(ep.started_ms), resolved_at=_iso(ep.ended_ms),
                         readings=list(ep.evidence))


@router.get("/episodes", responses=ERRORS)
def list_episodes(alerts: AlertsDep, registry: RegistryDep, who: PrincipalDep, *, site: str | None = None,
                  active: bool | None = None, offset: Offset = 0, limit: Limit = 100) -> EpisodePage:
    """Episodes newest first; `active=true` the firing ones, `active=false` the past ones. A site key sees
    the episodes of its sites only."""
    if site is not None:
        scoped_site(registry, who, site)
        sites: list[str] | None = [site]
    else:
        sites = None if who.role == "admin" else sorted(who.sites)
    rows, total = alerts.episodes(sites=sites, active=active, offset=offset, limit=limit)
    return EpisodePage(items=[_episode(e) for e in rows], total=total, offset=offset, limit=limit)


@router.get("/episodes/{episode_id}", responses=ERRORS)
def get_episode(episode_id: str, alerts: AlertsDep, who: PrincipalDep) -> EpisodePublic:
    ep = alerts.episode(episode_id)
    if ep is None or not who.can_see(ep.site):
        raise NotFound(f"episode {episode_id!r} not found")
    return _episode(ep)


# ------------------------------------------------------------------------------------------------ webhooks
class WebhookBase(BaseModel):
    url: str = Field(max_length=2000, examples=["https://dispatch.example.com/hooks/smartpark"])
    sites: list[SiteId] = Field(default_factory=list, max_length=1000, description="Only these sites (empty: all)")
    severities: list[Severity] = Field(default_factory=list, description="Only these severities (empty: all)")
    rules: list[RuleId] = Field(default_factory=list, max_length=1000, description="Only these rules (empty: all)")
    description: str = Field("", max_length=200)


class WebhookCreate(WebhookBase):
    secret: str | None = Field(None, description="whsec_ + base64 of 24-64 random bytes; generated if absent")


class WebhookUpdate(BaseModel):
    url: str | None = Field(None, max_length=2000)
    sites: list[SiteId] | None = Field(None, max_length=1000)
    severities: list[Severity] | None = None
    rules: list[RuleId] | None = Field(None, max_length=1000)
    description: str | None = Field(None, max_length=200)
    enabled: bool | None = Field(None, description="true re-enables a subscription a 410 disabled")


class WebhookPublic(WebhookBase):
    id: str
    enabled: bool
    disabled_reason: str
    created_at: datetime


class WebhookCreated(WebhookPublic):
    secret: str = Field(description="Shown once: verify signatures with it (Standard Webhooks)")


class AttemptPublic(BaseModel):
    attempt: int
    at: datetime
    status: int | None
    latency_ms: float
    error: str


class DeliveryPublic(BaseModel):
    id: str = Field(description="The webhook-id header of every attempt")
    type: str
    state: Literal["pending", "delivered", "failed", "gone"]
    episode: str | None
    created_at: datetime
    next_attempt_at: datetime | None
    attempts: list[AttemptPublic]


def _webhook(sub: SubscriptionRecord) -> dict[str, Any]:
    return {"id": sub.id, "url": sub.url, "sites": list(sub.sites), "severities": list(sub.severities),
            "rules": list(sub.rules), "description": sub.description, "enabled": sub.enabled,
            "disabled_reason": sub.disabled_reason, "created_at": _iso(sub.created_ms)}


def _sub(alerts: AlertAccess, sub_id: str) -> SubscriptionRecord:
    sub = alerts.subscription(sub_id)
    if sub is None:
        raise NotFound(f"webhook {sub_id!r} not found")
    return sub


def _refused(exc: UnsafeDestination | BadSecret) -> Unprocessable:
    """A URL the SSRF guard refuses (shape, or a literal non-global address) or a secret that cannot sign."""
    return Unprocessable(str(exc), {"url": exc.url} if isinstance(exc, UnsafeDestination) else None)


@router.get("/webhooks")
def list_webhooks(alerts: AlertsDep, _: AdminDep) -> list[WebhookPublic]:
    return [WebhookPublic(**_webhook(s)) for s in alerts.subscriptions()]


@router.post("/webhooks", status_code=201)
def create_webhook(body: WebhookCreate, alerts: AlertsDep, _: AdminDep) -> WebhookCreated:
    """Subscribe a URL; the answer carries the signing secret, shown this once."""
    try:
        sub, secret = alerts.create_subscription(body.url, secret=body.secret, sites=body.sites,
                                                 severities=list(body.severities), rules=body.rules,
                                                 description=body.description)
    except (UnsafeDestination, BadSecret) as exc:
        raise _refused(exc) from exc
    return WebhookCreated(**_webhook(sub), secret=secret)


@router.get("/webhooks/{sub_id}")
def get_webhook(sub_id: str, alerts: AlertsDep, _: AdminDep) -> WebhookPublic:
    return WebhookPublic(**_webhook(_sub(alerts, sub_id)))


@router.patch("/webhooks/{sub_id}")
def update_webhook(sub_id: str, body: WebhookUpdate, alerts: AlertsDep, _: AdminDep) -> WebhookPublic:
    try:
        sub = alerts.update_subscription(sub_id, **body.model_dump(exclude_none=True))
    except UnsafeDestination as exc:
        raise _refused(exc) from exc
    if sub is None:
        raise NotFound(f"webhook {sub_id!r} not found")
    return WebhookPublic(**_webhook(sub))


@router.delete("/webhooks/{sub_id}", status_code=204)
def delete_webhook(sub_id: str, alerts: AlertsDep, _: AdminDep) -> Response:
    if not alerts.delete_subscription(sub_id):
        raise NotFound(f"webhook {sub_id!r} not found")
    return Response(status_code=204)


@router.post("/webhooks/{sub_id}/test")
def ping_webhook(sub_id: str, alerts: AlertsDep, _: AdminDep) -> DeliveryPublic:
    """Send a signed `ping` now and answer with its logged attempt (a failed one is retried by the engine)."""
    delivery = alerts.ping(sub_id)
    if delivery is None:
        raise NotFound(f"webhook {sub_id!r} not found")
    return _delivery(delivery)


def _delivery(d: DeliveryRecord) -> DeliveryPublic:
    return DeliveryPublic(
        id=d.id, type=d.type, state=d.state, episode=d.episode,
        created_at=_iso(d.created_ms), next_attempt_at=_iso(d.next_ms) if d.state == "pending" else None,
        attempts=[AttemptPublic(attempt=a.attempt, at=_iso(a.at_ms), status=a.status,
                                latency_ms=a.latency_ms, error=a.error) for a in d.attempts])


@router.get("/webhooks/{sub_id}/deliveries")
def list_deliveries(sub_id: str, alerts: AlertsDep, _: AdminDep, offset: Offset = 0, limit: Limit = 100
                    ) -> list[DeliveryPublic]:
    """The delivery log: newest first, each with every attempt's status, latency and error."""
    _sub(alerts, sub_id)
    return [_delivery(d) for d in alerts.deliveries(sub_id, offset, limit)]
