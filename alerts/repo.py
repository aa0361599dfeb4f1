"""The alert tables' operations: rules, subscriptions, state, episodes, the outbox and its log.

``commit`` is the engine's one write per batch: rule state, new and resolved episodes, and the outbox rows
of their webhooks go in one transaction, so an episode exists exactly when its deliveries do, and a batch
whose transaction did not commit is not acked (the broker redelivers it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Select, delete, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from smartpark.alerts.evaluate import State
from smartpark.alerts.models import (
    AlertMinute,
    AlertRule,
    AlertSeen,
    AlertState,
    Delivery,
    DeliveryAttempt,
    Episode,
    WebhookSubscription,
)
from smartpark.alerts.rules import RuleSpec
from smartpark.alerts.signing import message_id
from smartpark.core.clock import now_ms
from smartpark.core.migrations import upgrade_schema
from smartpark.core.repository import SqlRepository

__all__ = ["AlertRepo", "Changes", "Peak", "Resolved", "event_body", "now_ms", "rfc3339"]

SEED_MARK = ("_meta", "defaults-seeded")  # an alert_states row: defaults are seeded once, never again




def rfc3339(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


class Resolved(NamedTuple):
    episode: str
    end_ms: int
    value: float | None


class Peak(NamedTuple):
    episode: str
    value: float


@dataclass
class Changes:
    """What one batch of evaluation changed, written by ``AlertRepo.commit`` in one transaction."""

    states: dict[tuple[str, str], State] = field(default_factory=dict)
    # in order: an Episode that fired, or (episode id, end, last value) of one that resolved; one batch may
    # fire, resolve and fire again the same rule on the same device
    events: list[Episode | Resolved | Peak] = field(default_factory=list)
    minutes: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)  # -> [total, n]
    seen: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.states or self.events or self.minutes or self.seen)


def event_body(event_type: str, ep: Episode) -> dict[str, Any]:
    """The webhook body of an episode event (contract "Webhooks")."""
    return {"type": event_type, "id": ep.id, "rule": ep.rule_id, "site": ep.site, "device": ep.device,
            "metric": ep.metric, "value": ep.value, "limit": ep.limit, "unit": ep.unit, "window": ep.window,
            "started_at": rfc3339(ep.started_ms), "resolved_at": rfc3339(ep.ended_ms), "severity": ep.severity,
            "peak": ep.peak, "message": ep.message, "readings": ep.evidence, "timestamp": rfc3339(now_ms())}


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _first_pending() -> ColumnElement[bool]:
    """No earlier delivery of the same episode to the same subscription is pending (in flight or waiting for a
    retry): an episode's events reach a receiver in order. One batch may queue its firing and resolved with the
    same created_ms: the firing is the earlier."""
    e = aliased(Delivery)
    earlier = (e.created_ms < Delivery.created_ms) | (
        (e.created_ms == Delivery.created_ms) & (e.event_type == "alert.firing")
        & (Delivery.event_type != "alert.firing"))
    return ~exists().where(e.state == "pending", e.episode_id == Delivery.episode_id,
                           e.subscription_id == Delivery.subscription_id, e.id != Delivery.id, earlier)


def _matches(sub: WebhookSubscription, ep: Episode) -> bool:
    return ((not sub.sites or ep.site in sub.sites) and (not sub.severities or ep.severity in sub.severities)
            and (not sub.rules or ep.rule_id in sub.rules))


class AlertRepo(SqlRepository):
    """Alert tables on the metadata database's engine (the registry's)."""

    def init(self, defaults: Iterable[RuleSpec] = ()) -> None:
        """The tables at start-up (the migrations', brought to the head: nothing to do when there, so no reader
        meets a missing table later), then the default rules, the first time only (an admin may delete them)."""
        upgrade_schema(self.engine)
        try:
            with self.session() as s:
                if s.get(AlertState, SEED_MARK) is not None:
                    return
                for spec in defaults:
                    if s.get(AlertRule, spec.id) is None:
                        s.add(_rule_row(spec))
                s.add(AlertState(rule_id=SEED_MARK[0], subject=SEED_MARK[1], data={"at": now_ms()}))
        except IntegrityError:
            # the API and the alert engine start together on a new database: the other one seeded first
            with self.session() as s:
                if s.get(AlertState, SEED_MARK) is None:
                    raise

    # --- rules
    def rules(self) -> list[RuleSpec]:
        with self.session() as s:
            return [RuleSpec.model_validate(r.spec) for r in s.scalars(select(AlertRule).order_by(AlertRule.id))]

    def rule(self, rule_id: str) -> RuleSpec | None:
        with self.session() as s:
            row = s.get(AlertRule, rule_id)
            return None if row is None else RuleSpec.model_validate(row.spec)

    def put_rule(self, spec: RuleSpec) -> bool:
        """Create or replace a rule; True if it was created. Its state (open episodes) carries over."""
        with self.session() as s:
            row = s.get(AlertRule, spec.id)
            if row is None:
                s.add(_rule_row(spec))
                return True
            row.kind, row.enabled, row.spec, row.updated_ms = spec.kind, spec.enabled, spec.model_dump(), now_ms()
            return False

    def delete_rule(self, rule_id: str) -> bool:
        """Delete a rule; its open episodes resolve (their webhooks say so) and its state goes."""
        with self.session() as s:
            open_ids = s.scalars(select(Episode.id).where(Episode.rule_id == rule_id, Episode.state == "firing"))
            self._enqueue(s, self._resolve(s, [Resolved(i, now_ms(), None) for i in open_ids]))
            s.execute(delete(AlertState).where(AlertState.rule_id == rule_id))
            return s.execute(delete(AlertRule).where(AlertRule.id == rule_id)).rowcount > 0  # type: ignore[attr-defined]

    def rules_version(self) -> tuple[int, int]:
        """(count, latest update) of the rules and subscriptions: the engine reloads when it changes."""
        with self.session() as s:
            n, last = s.execute(select(func.count(), func.max(AlertRule.updated_ms))).one()
            m, sub_last = s.execute(select(func.count(), func.max(WebhookSubscription.created_ms))).one()
            return n * 100_003 + m, max(last or 0, sub_last or 0)

    # --- state
    def states(self) -> dict[tuple[str, str], State]:
        with self.session() as s:
            return {(r.rule_id, r.subject): State.load(r.data) for r in s.scalars(select(AlertState))
                    if r.rule_id != SEED_MARK[0]}

    def seen(self) -> dict[str, int]:
        with self.session() as s:
            return dict(s.execute(select(AlertSeen.device, AlertSeen.last_ms)).all())

    def minutes(self, device: str, pollutant: str, start_ms: int, end_ms: int) -> list[tuple[int, float, int]]:
        with self.session() as s:
            q = select(AlertMinute.minute_ms, AlertMinute.total, AlertMinute.n).where(
                AlertMinute.device == device, AlertMinute.pollutant == pollutant,
                AlertMinute.minute_ms >= start_ms, AlertMinute.minute_ms < end_ms).order_by(AlertMinute.minute_ms)
            return [(m, total, n) for m, total, n in s.execute(q)]

    def prune_minutes(self, before_ms: int) -> None:
        with self.session() as s:
            s.execute(delete(AlertMinute).where(AlertMinute.minute_ms < before_ms))

    # --- the batch commit
    def commit(self, changes: Changes) -> int:
        """Write a batch's changes in one transaction; returns how many deliveries it queued."""
        with self.session() as s:
            for (rule_id, subject), state in changes.states.items():
                s.merge(AlertState(rule_id=rule_id, subject=subject, data=state.dump()))
            self._upsert_minutes(s, changes.minutes)
            self._upsert_seen(s, changes.seen)
            events: list[tuple[str, Episode]] = []
            for event in changes.events:
                if isinstance(event, Episode):
                    s.add(event)
                    events.append(("alert.firing", event))
                elif isinstance(event, Peak):
                    s.execute(update(Episode).where(Episode.id == event.episode, Episode.peak < event.value)
                              .values(peak=event.value))
                else:
                    events += self._resolve(s, [event])
                s.flush()  # in order: the open-episode key is free again before the next firing
            return self._enqueue(s, events)

    @staticmethod
    def _resolve(s: Session, resolved: list[Resolved]) -> list[tuple[str, Episode]]:
        out = []
        for episode_id, end_ms, _value in resolved:
            ep = s.get(Episode, episode_id)
            if ep is None or ep.state != "firing":
                continue  # resolved already: a replay
            ep.state, ep.ended_ms, ep.open_key = "resolved", end_ms, None
            out.append(("alert.resolved", ep))
        return out

    @staticmethod
    def _enqueue(s: Session, events: list[tuple[str, Episode]]) -> int:
        if not events:
            return 0
        subs = list(s.scalars(select(WebhookSubscription).where(WebhookSubscription.enabled)))
        now, n = now_ms(), 0
        for event_type, ep in events:
            body = _dumps(event_body(event_type, ep))
            for sub in subs:
                if _matches(sub, ep):
                    s.add(Delivery(id=message_id(), subscription_id=sub.id, event_type=event_type,
                                   episode_id=ep.id, body=body, created_ms=now, next_ms=now))
                    n += 1
        return n

    def _upsert_minutes(self, s: Session, values: dict[tuple[str, str, int], list[float]]) -> None:
        """One row per reading (device, pollutant, reading time): a redelivered or late reading overwrites
        itself, so the hourly rules can take readings in any order without counting one twice."""
        if not values:
            return
        rows = [{"device": d, "pollutant": p, "minute_ms": ts, "total": total, "n": int(n)}
                for (d, p, ts), (total, n) in values.items()]
        if self.engine.dialect.name in ("sqlite", "postgresql"):
            dialect = __import__(f"sqlalchemy.dialects.{self.engine.dialect.name}", fromlist=["insert"])
            stmt = dialect.insert(AlertMinute)
            s.execute(stmt.on_conflict_do_update(index_elements=["device", "pollutant", "minute_ms"],
                                                 set_={"total": stmt.excluded.total, "n": stmt.excluded.n}), rows)
            return
        for row in rows:
            s.merge(AlertMinute(**row))

    def _upsert_seen(self, s: Session, seen: dict[str, int]) -> None:
        if not seen:
            return
        if self.engine.dialect.name in ("sqlite", "postgresql"):
            dialect = __import__(f"sqlalchemy.dialects.{self.engine.dialect.name}", fromlist=["insert"])
            stmt = dialect.insert(AlertSeen)
            stmt = stmt.on_conflict_do_update(index_elements=["device"], set_={"last_ms": stmt.excluded.last_ms},
                                              where=AlertSeen.last_ms < stmt.excluded.last_ms)
            s.execute(stmt, [{"device": d, "last_ms": t} for d, t in seen.items()])
            return
        for device, ts in seen.items():
            row = s.get(AlertSeen, device)
            if row is None:
                s.add(AlertSeen(device=device, last_ms=ts))
            elif row.last_ms < ts:
                row.last_ms = ts

    # --- episodes
    def episodes(self, *, sites: Iterable[str] | None, active: bool | None, offset: int = 0, limit: int = 100
                 ) -> tuple[list[Episode], int]:
        """Episodes newest first, of ``sites`` (None: all); ``active`` True firing, False resolved; and the total."""
        q = _episodes(sites, active)
        with self.session() as s:
            total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
            rows = s.scalars(q.order_by(Episode.started_ms.desc()).offset(offset).limit(limit))
            return list(rows), total

    def newest(self, *, sites: Iterable[str] | None, active: bool | None, limit: int) -> list[Episode]:
        """As episodes(), the first ``limit`` without the total (the pages' active alerts: no count query)."""
        return self._all(_episodes(sites, active).order_by(Episode.started_ms.desc()).limit(limit))

    def episode(self, episode_id: str) -> Episode | None:
        return self._get(Episode, episode_id)

    def unannotated(self) -> list[Episode]:
        """Episodes whose firing or resolution is not yet in the `alerts` measurement."""
        return self._all(select(Episode).where((Episode.annotated == 0) | (
            (Episode.annotated == 1) & (Episode.state == "resolved"))).limit(500))

    def mark_annotated(self, marks: dict[str, int]) -> None:
        with self.session() as s:
            for episode_id, level in marks.items():
                s.execute(update(Episode).where(Episode.id == episode_id).values(annotated=level))

    # --- webhook subscriptions
    def subscriptions(self) -> list[WebhookSubscription]:
        return self._all(select(WebhookSubscription).order_by(WebhookSubscription.created_ms))

    def subscription(self, sub_id: str) -> WebhookSubscription | None:
        return self._get(WebhookSubscription, sub_id)

    def add_subscription(self, sub: WebhookSubscription) -> None:
        with self.session() as s:
            s.add(sub)

    def update_subscription(self, sub_id: str, **values: Any) -> WebhookSubscription | None:
        with self.session() as s:
            sub = s.get(WebhookSubscription, sub_id)
            if sub is not None:
                for key, value in values.items():
                    setattr(sub, key, value)
            return sub

    def delete_subscription(self, sub_id: str) -> bool:
        with self.session() as s:
            s.execute(delete(Delivery).where(Delivery.subscription_id == sub_id))
            return s.execute(delete(WebhookSubscription).where(WebhookSubscription.id == sub_id)).rowcount > 0  # type: ignore[attr-defined]

    # --- outbox
    def add_delivery(self, delivery: Delivery) -> None:
        with self.session() as s:
            s.add(delivery)

    def due(self, now: int, limit: int, exclude: set[str], busy: frozenset[str] = frozenset()) -> list[Delivery]:
        """Pending deliveries due by ``now``, each the first pending one of its episode and subscription;
        none of the ``busy`` subscriptions (a backlog of one must not fill the batch for the others)."""
        with self.session() as s:
            q = select(Delivery).where(Delivery.state == "pending", Delivery.next_ms <= now, _first_pending())
            if busy:
                q = q.where(Delivery.subscription_id.not_in(busy))
            q = q.order_by(Delivery.next_ms).limit(limit + len(exclude))
            return [d for d in s.scalars(q) if d.id not in exclude][:limit]

    def next_due_ms(self) -> int | None:
        with self.session() as s:
            return s.scalar(select(func.min(Delivery.next_ms)).where(Delivery.state == "pending", _first_pending()))

    def record_attempt(self, attempt: DeliveryAttempt, *, state: str, next_ms: int, disable: str = "") -> None:
        """Log one attempt and move its delivery on; ``disable`` turns the subscription off (410 Gone)."""
        with self.session() as s:
            s.add(attempt)
            d = s.get(Delivery, attempt.delivery_id)
            if d is None:
                return
            d.attempts, d.state, d.next_ms = attempt.attempt, state, next_ms
            d.last_status, d.last_error = attempt.status, attempt.error
            if disable:
                s.execute(update(WebhookSubscription).where(WebhookSubscription.id == d.subscription_id)
                          .values(enabled=False, disabled_reason=disable))

    def deliveries(self, sub_id: str, offset: int = 0, limit: int = 100
                   ) -> list[tuple[Delivery, list[DeliveryAttempt]]]:
        with self.session() as s:
            rows = list(s.scalars(select(Delivery).where(Delivery.subscription_id == sub_id)
                                  .order_by(Delivery.created_ms.desc()).offset(offset).limit(limit)))
            ids = [d.id for d in rows]
            attempts: dict[str, list[DeliveryAttempt]] = {i: [] for i in ids}
            for a in s.scalars(select(DeliveryAttempt).where(DeliveryAttempt.delivery_id.in_(ids))
                               .order_by(DeliveryAttempt.id)):
                attempts[a.delivery_id].append(a)
            return [(d, attempts[d.id]) for d in rows]

    def delivery(self, delivery_id: str) -> tuple[Delivery, list[DeliveryAttempt]] | None:
        """One delivery with its attempts, oldest first."""
        with self.session() as s:
            d = s.get(Delivery, delivery_id)
            if d is None:
                return None
            q = select(DeliveryAttempt).where(DeliveryAttempt.delivery_id == delivery_id).order_by(DeliveryAttempt.id)
            return d, list(s.scalars(q))

    def pending_count(self) -> int:
        with self.session() as s:
            return s.scalar(select(func.count()).where(Delivery.state == "pending")) or 0


def _rule_row(spec: RuleSpec) -> AlertRule:
    now = now_ms()
    return AlertRule(id=spec.id, kind=spec.kind, enabled=spec.enabled, spec=spec.model_dump(), created_ms=now,
                     updated_ms=now)


def _episodes(sites: Iterable[str] | None, active: bool | None) -> Select[Episode]:
    """Episodes of ``sites`` (None: all); ``active`` True firing, False resolved, None both."""
    q = select(Episode)
    if sites is not None:
        q = q.where(Episode.site.in_(list(sites)))
    if active is not None:
        q = q.where(Episode.state == ("firing" if active else "resolved"))
    return q
