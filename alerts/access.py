"""The API's one way in to the alert tables: reads that return plain frozen records, and the admin's edits.

The app creates one ``AlertAccess`` at start-up (``start``: tables at the head, default rules seeded), so no
request meets a missing table. The ORM rows never leave this module; a database error is ``AlertsUnavailable``
(the reason logged here), never an empty list that would read as "no alerts".
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from smartpark.alerts.delivery import send_once
from smartpark.alerts.errors import AlertsUnavailable
from smartpark.alerts.models import Delivery, DeliveryAttempt, Episode, WebhookSubscription
from smartpark.alerts.repo import AlertRepo, now_ms
from smartpark.alerts.rules import RuleSpec, default_rules
from smartpark.alerts.signing import check_secret, message_id, new_secret
from smartpark.alerts.ssrf import check_webhook_url
from smartpark.core.redact import redact
from smartpark.core.reference import Reference
from smartpark.core.settings import Settings

__all__ = ["ACTIVE_LIMIT", "AlertAccess", "AttemptRecord", "DeliveryRecord", "EpisodeRecord", "RuleSpec",
           "SubscriptionRecord"]

log = logging.getLogger("smartpark.alerts")
P = ParamSpec("P")
R = TypeVar("R")
ACTIVE_LIMIT = 200  # active episodes on a page: the newest, after scoping to the caller's sites


@dataclass(frozen=True, slots=True)
class EpisodeRecord:
    id: str
    rule: str
    state: str  # firing | resolved
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
    started_ms: int
    ended_ms: int | None
    evidence: tuple[Any, ...]  # the readings (or hourly figures) that triggered it


@dataclass(frozen=True, slots=True)
class SubscriptionRecord:
    """A webhook subscription without its secret (shown once, when created)."""

    id: str
    url: str
    sites: tuple[str, ...]
    severities: tuple[str, ...]
    rules: tuple[str, ...]
    enabled: bool
    disabled_reason: str
    description: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    attempt: int
    at_ms: int
    status: int | None
    latency_ms: float
    error: str


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    id: str  # the webhook-id header of every attempt
    type: str
    state: str  # pending | delivered | failed | gone
    episode: str | None
    created_ms: int
    next_ms: int
    attempts: tuple[AttemptRecord, ...]


def _guarded(method: Callable[Concatenate[AlertAccess, P], R]) -> Callable[Concatenate[AlertAccess, P], R]:
    """A database error becomes AlertsUnavailable (the reason logged here); a constraint violation stays itself."""

    @functools.wraps(method)
    def wrapper(self: AlertAccess, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            log.warning("alert tables unavailable (%s): %s", method.__name__, redact(str(exc).splitlines()[0]))
            raise AlertsUnavailable(f"the alert tables cannot be used now ({method.__name__})") from exc

    return wrapper


class AlertAccess:
    """Rules, episodes, webhook subscriptions and their deliveries on the metadata database, as plain records."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._repo = AlertRepo(engine)
        self._settings = settings

    @_guarded
    def start(self, reference: Reference) -> None:
        """At start-up: the tables (migrations to the head) and the default rules, the first time only."""
        self._repo.init(default_rules(reference))

    # --- episodes
    @_guarded
    def active(self, sites: Collection[str]) -> list[EpisodeRecord]:
        """Firing episodes of ``sites``, newest first, at most ACTIVE_LIMIT: scoped before the limit, so others'
        alerts never crowd a site's out."""
        if not sites:
            return []
        return [_episode(e) for e in self._repo.newest(sites=sorted(sites), active=True, limit=ACTIVE_LIMIT)]

    @_guarded
    def episodes(self, *, sites: Collection[str] | None, active: bool | None, offset: int = 0, limit: int = 100
                 ) -> tuple[list[EpisodeRecord], int]:
        """A page of episodes newest first, of ``sites`` (None: all), and the total."""
        rows, total = self._repo.episodes(sites=sites, active=active, offset=offset, limit=limit)
        return [_episode(e) for e in rows], total

    @_guarded
    def episode(self, episode_id: str) -> EpisodeRecord | None:
        ep = self._repo.episode(episode_id)
        return None if ep is None else _episode(ep)

    # --- rules
    @_guarded
    def rules(self) -> list[RuleSpec]:
        return self._repo.rules()

    @_guarded
    def rule(self, rule_id: str) -> RuleSpec | None:
        return self._repo.rule(rule_id)

    @_guarded
    def put_rule(self, spec: RuleSpec) -> bool:
        """Create or replace; True if created. The engine picks it up within one schedule interval."""
        return self._repo.put_rule(spec)

    @_guarded
    def delete_rule(self, rule_id: str) -> bool:
        return self._repo.delete_rule(rule_id)

    # --- webhook subscriptions
    @_guarded
    def subscriptions(self) -> list[SubscriptionRecord]:
        return [_subscription(s) for s in self._repo.subscriptions()]

    @_guarded
    def subscription(self, sub_id: str) -> SubscriptionRecord | None:
        sub = self._repo.subscription(sub_id)
        return None if sub is None else _subscription(sub)

    @_guarded
    def create_subscription(self, url: str, *, secret: str | None, sites: list[str], severities: list[str],
                            rules: list[str], description: str) -> tuple[SubscriptionRecord, str]:
        """Subscribe a URL (UnsafeDestination, BadSecret when refused); returns it and its secret, shown once."""
        check_webhook_url(url, allow_private=self._settings.alerts_webhook_allow_private)
        secret = secret or new_secret()
        check_secret(secret)
        sub = WebhookSubscription(id=f"wh_{message_id()[4:20]}", url=url, secret=secret, sites=sites,
                                  severities=severities, rules=rules, enabled=True, disabled_reason="",
                                  description=description, created_ms=now_ms())
        self._repo.add_subscription(sub)
        return _subscription(sub), secret

    @_guarded
    def update_subscription(self, sub_id: str, *, url: str | None = None, sites: list[str] | None = None,
                            severities: list[str] | None = None, rules: list[str] | None = None,
                            description: str | None = None, enabled: bool | None = None) -> SubscriptionRecord | None:
        """Change the fields given (None: unchanged); None if unknown. Re-enabling clears the reason a 410
        disabled it."""
        if url is not None:
            check_webhook_url(url, allow_private=self._settings.alerts_webhook_allow_private)
        changes = {k: v for k, v in {"url": url, "sites": sites, "severities": severities, "rules": rules,
                                     "description": description, "enabled": enabled}.items() if v is not None}
        if enabled:
            changes["disabled_reason"] = ""
        sub = self._repo.update_subscription(sub_id, **changes)
        return None if sub is None else _subscription(sub)

    @_guarded
    def delete_subscription(self, sub_id: str) -> bool:
        return self._repo.delete_subscription(sub_id)

    # --- deliveries
    @_guarded
    def deliveries(self, sub_id: str, offset: int = 0, limit: int = 100) -> list[DeliveryRecord]:
        return [_delivery(d, attempts) for d, attempts in self._repo.deliveries(sub_id, offset, limit)]

    @_guarded
    def ping(self, sub_id: str) -> DeliveryRecord | None:
        """Send a signed `ping` now, logged as a delivery (retried by the engine if it failed); None if unknown."""
        sub = self._repo.subscription(sub_id)
        if sub is None:
            return None
        msg = message_id()
        body = (f'{{"type":"ping","id":"{msg}","webhook":"{sub.id}",'
                f'"timestamp":"{datetime.now(UTC).isoformat(timespec="milliseconds")}"}}')
        d = Delivery(id=msg, subscription_id=sub.id, event_type="ping", episode_id=None, body=body,
                     state="pending", attempts=0, created_ms=now_ms(), next_ms=now_ms() + 3_600_000,
                     last_status=None, last_error="")
        self._repo.add_delivery(d)
        send_once(self._repo, self._settings, sub, d)
        logged = self._repo.delivery(msg)
        return None if logged is None else _delivery(*logged)


def _episode(ep: Episode) -> EpisodeRecord:
    return EpisodeRecord(id=ep.id, rule=ep.rule_id, state=ep.state, severity=ep.severity, site=ep.site,
                         device=ep.device, metric=ep.metric, value=ep.value, peak=ep.peak, limit=ep.limit,
                         unit=ep.unit, window=ep.window, message=ep.message, started_ms=ep.started_ms,
                         ended_ms=ep.ended_ms, evidence=tuple(ep.evidence or ()))


def _subscription(sub: WebhookSubscription) -> SubscriptionRecord:
    return SubscriptionRecord(id=sub.id, url=sub.url, sites=tuple(sub.sites), severities=tuple(sub.severities),
                              rules=tuple(sub.rules), enabled=sub.enabled, disabled_reason=sub.disabled_reason,
                              description=sub.description, created_ms=sub.created_ms)


def _delivery(d: Delivery, attempts: list[DeliveryAttempt]) -> DeliveryRecord:
    return DeliveryRecord(id=d.id, type=d.event_type, state=d.state, episode=d.episode_id, created_ms=d.created_ms,
                          next_ms=d.next_ms, attempts=tuple(
                              AttemptRecord(a.attempt, a.at_ms, a.status, a.latency_ms, a.error) for a in attempts))
