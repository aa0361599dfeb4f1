"""Alerts: rules and webhooks (admin), episodes (any key, for the sites it may see; 404 for the others).

The alert tables belong to the alert engine (smartpark.alerts); the API reads and edits them through its
repository, the one place that knows their shape, and creates them on first use, so the API works whether
or not the engine has ever run. The engine picks up rule and subscription changes within one schedule
interval (SMARTPARK_ALERTS_EVAL_INTERVAL_S).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import threading
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from smartpark.alerts.delivery import send_once
from smartpark.alerts.errors import UnsafeDestination
from smartpark.alerts.models import Delivery, DeliveryAttempt, Episode, WebhookSubscription
from smartpark.alerts.repo import AlertRepo, now_ms
from smartpark.alerts.rules import RuleSpec, default_rules
from smartpark.alerts.signing import SECRET_PREFIX, message_id, new_secret
from smartpark.alerts.ssrf import check_address, check_url_shape
from smartpark.api.deps import AdminDep, CatalogDep, PrincipalDep, RegistryDep, scoped_site
from smartpark.api.errors import ADMIN_ERRORS, ERRORS, Conflict, NotFound, Unprocessable
from smartpark.api.models import SiteId
from smartpark.core.ids import ID_SCHEMA_PATTERN
from smartpark.core.reference import load_reference
from smartpark.core.settings import Settings

__all__ = ["router"]

router = APIRouter(prefix="/v1/alerts", tags=["alerts"], responses=ADMIN_ERRORS)
_init_lock = threading.Lock()

Offset = Annotated[int, Query(ge=0, le=1_000_000)]
Limit = Annotated[int, Query(ge=1, le=1000)]
Severity = Literal["info", "warning", "critical"]
# a subscription's rule filter: rule ids, or `kpi.daily` for the daily feed (alerts/daily.py)
RuleId = Annotated[str, Field(pattern=ID_SCHEMA_PATTERN + r"|^kpi\.daily$")]


def _repo(request: Request) -> AlertRepo:
    """The alert repository on the registry's database, its tables created on first use."""
    with _init_lock:
        repo = getattr(request.app.state, "alert_repo", None)
        if repo is None:
            settings: Settings = request.app.state.settings
            repo = AlertRepo(request.app.state.registry.engine)
            repo.init(default_rules(load_reference(settings.reference_file)))
            request.app.state.alert_repo = repo
        return repo


RepoDep = Annotated[AlertRepo, Depends(_repo)]


def _iso(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


# ------------------------------------------------------------------------------------------------ rules
@router.get("/rules")
def list_rules(repo: RepoDep, _: AdminDep) -> list[RuleSpec]:
    return repo.rules()


@router.post("/rules", status_code=201)
def create_rule(spec: RuleSpec, repo: RepoDep, catalog: CatalogDep, _: AdminDep) -> RuleSpec:
    _check_rule(spec, catalog)
    if repo.rule(spec.id) is not None:
        raise Conflict(f"rule {spec.id!r} exists; PUT /v1/alerts/rules/{spec.id} replaces it")
    repo.put_rule(spec)
    return spec


@router.get("/rules/{rule_id}")
def get_rule(rule_id: str, repo: RepoDep, _: AdminDep) -> RuleSpec:
    spec = repo.rule(rule_id)
    if spec is None:
        raise NotFound(f"rule {rule_id!r} not found")
    return spec


@router.put("/rules/{rule_id}")
def replace_rule(rule_id: str, spec: RuleSpec, repo: RepoDep, catalog: CatalogDep, _: AdminDep) -> RuleSpec:
    if spec.id != rule_id:
        raise Unprocessable(f"the body's id {spec.id!r} is not the path's {rule_id!r}")
    _check_rule(spec, catalog)
    repo.put_rule(spec)
    return spec


@router.delete("/rules/{rule_id}", status_code=204)
def delete_rule(rule_id: str, repo: RepoDep, _: AdminDep) -> Response:
    if not repo.delete_rule(rule_id):
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


def _episode(ep: Episode) -> EpisodePublic:
    return EpisodePublic(id=ep.id, rule=ep.rule_id, state=ep.state, severity=ep.severity,
                         site=ep.site, device=ep.device, metric=ep.metric, value=ep.value, peak=ep.peak,
                         limit=ep.limit, unit=ep.unit, window=ep.window, message=ep.message,
                         started_at=_iso(ep.started_ms), resolved_at=_iso(ep.ended_ms),
                         readings=ep.evidence)


@router.get("/episodes", responses=ERRORS)
def list_episodes(repo: RepoDep, registry: RegistryDep, who: PrincipalDep, *, site: str | None = None,
                  active: bool | None = None, offset: Offset = 0, limit: Limit = 100) -> EpisodePage:
    """Episodes newest first; `active=true` the firing ones, `active=false` the past ones. A site key sees
    the episodes of its sites only."""
    if site is not None:
        scoped_site(registry, who, site)
        sites: list[str] | None = [site]
    else:
        sites = None if who.role == "admin" else sorted(who.sites)
    rows, total = repo.episodes(sites=sites, active=active, offset=offset, limit=limit)
    return EpisodePage(items=[_episode(e) for e in rows], total=total, offset=offset, limit=limit)


@router.get("/episodes/{episode_id}", responses=ERRORS)
def get_episode(episode_id: str, repo: RepoDep, who: PrincipalDep) -> EpisodePublic:
    ep = repo.episode(episode_id)
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


def _webhook(sub: WebhookSubscription) -> dict[str, Any]:
    return {"id": sub.id, "url": sub.url, "sites": sub.sites, "severities": sub.severities, "rules": sub.rules,
            "description": sub.description, "enabled": sub.enabled, "disabled_reason": sub.disabled_reason,
            "created_at": _iso(sub.created_ms)}


def _check_url(url: str, settings: Settings) -> None:
    """http(s) with a host; a literal address must pass the SSRF guard now (names are checked per delivery)."""
    try:
        _, host, _, _ = check_url_shape(url)
        if _is_address(host):
            check_address(host, allow_private=settings.alerts_webhook_allow_private, url=url)
    except UnsafeDestination as exc:
        raise Unprocessable(str(exc), {"url": url}) from exc


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_secret(secret: str) -> None:
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Unprocessable("the secret is not whsec_ + base64") from exc
    if not secret.startswith(SECRET_PREFIX) or not 24 <= len(key) <= 64:
        raise Unprocessable("the secret must be whsec_ + base64 of 24 to 64 bytes")


def _sub(repo: AlertRepo, sub_id: str) -> WebhookSubscription:
    sub = repo.subscription(sub_id)
    if sub is None:
        raise NotFound(f"webhook {sub_id!r} not found")
    return sub


@router.get("/webhooks")
def list_webhooks(repo: RepoDep, _: AdminDep) -> list[WebhookPublic]:
    return [WebhookPublic(**_webhook(s)) for s in repo.subscriptions()]


@router.post("/webhooks", status_code=201)
def create_webhook(body: WebhookCreate, request: Request, repo: RepoDep, _: AdminDep) -> WebhookCreated:
    """Subscribe a URL; the answer carries the signing secret, shown this once."""
    _check_url(body.url, request.app.state.settings)
    secret = body.secret or new_secret()
    _check_secret(secret)
    sub = WebhookSubscription(id=f"wh_{message_id()[4:20]}", url=body.url, secret=secret, sites=body.sites,
                              severities=body.severities, rules=body.rules, enabled=True, disabled_reason="",
                              description=body.description, created_ms=now_ms())
    repo.add_subscription(sub)
    return WebhookCreated(**_webhook(sub), secret=secret)


@router.get("/webhooks/{sub_id}")
def get_webhook(sub_id: str, repo: RepoDep, _: AdminDep) -> WebhookPublic:
    return WebhookPublic(**_webhook(_sub(repo, sub_id)))


@router.patch("/webhooks/{sub_id}")
def update_webhook(sub_id: str, body: WebhookUpdate, request: Request, repo: RepoDep, _: AdminDep
                   ) -> WebhookPublic:
    values = body.model_dump(exclude_none=True)
    if "url" in values:
        _check_url(values["url"], request.app.state.settings)
    if values.get("enabled"):
        values["disabled_reason"] = ""
    sub = repo.update_subscription(sub_id, **values)
    if sub is None:
        raise NotFound(f"webhook {sub_id!r} not found")
    return WebhookPublic(**_webhook(sub))


@router.delete("/webhooks/{sub_id}", status_code=204)
def delete_webhook(sub_id: str, repo: RepoDep, _: AdminDep) -> Response:
    if not repo.delete_subscription(sub_id):
        raise NotFound(f"webhook {sub_id!r} not found")
    return Response(status_code=204)


@router.post("/webhooks/{sub_id}/test")
def ping_webhook(sub_id: str, request: Request, repo: RepoDep, _: AdminDep) -> DeliveryPublic:
    """Send a signed `ping` now and answer with its logged attempt (a failed one is retried by the engine)."""
    sub = _sub(repo, sub_id)
    msg = message_id()
    body = (f'{{"type":"ping","id":"{msg}","webhook":"{sub.id}",'
            f'"timestamp":"{datetime.now(UTC).isoformat(timespec="milliseconds")}"}}')
    d = Delivery(id=msg, subscription_id=sub.id, event_type="ping", episode_id=None, body=body, state="pending",
                 attempts=0, created_ms=now_ms(), next_ms=now_ms() + 3_600_000, last_status=None, last_error="")
    repo.add_delivery(d)
    send_once(repo, request.app.state.settings, sub, d)
    return _delivery(*_one_delivery(repo, sub.id, msg))


def _one_delivery(repo: AlertRepo, sub_id: str, delivery_id: str) -> tuple[Delivery, list[DeliveryAttempt]]:
    for d, attempts in repo.deliveries(sub_id, limit=50):
        if d.id == delivery_id:
            return d, attempts
    raise NotFound(f"delivery {delivery_id!r} not found")


def _delivery(d: Delivery, attempts: list[DeliveryAttempt]) -> DeliveryPublic:
    return DeliveryPublic(
        id=d.id, type=d.event_type, state=d.state, episode=d.episode_id,
        created_at=_iso(d.created_ms), next_attempt_at=_iso(d.next_ms) if d.state == "pending" else None,
        attempts=[AttemptPublic(attempt=a.attempt, at=_iso(a.at_ms), status=a.status,
                                latency_ms=a.latency_ms, error=a.error) for a in attempts])


@router.get("/webhooks/{sub_id}/deliveries")
def list_deliveries(sub_id: str, repo: RepoDep, _: AdminDep, offset: Offset = 0, limit: Limit = 100
                    ) -> list[DeliveryPublic]:
    """The delivery log: newest first, each with every attempt's status, latency and error."""
    _sub(repo, sub_id)
    return [_delivery(d, attempts) for d, attempts in repo.deliveries(sub_id, offset, limit)]

