"""The daily feed: once a local day has closed, one signed `kpi.daily` event per site through the webhook
outbox (durable, retried and signed like the alerts' events), for a city platform that wants to be told.

The figures come from a function the composition root hands in (the API's summary, so they equal the KPI
endpoints'); the engine never imports another service. The last day sent is kept in ``alert_states`` in the
same transaction as the deliveries it queued: after a restart a day is neither sent twice nor skipped (days
missed while the engine was down are sent on its return, up to ``CATCH_UP_DAYS``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from smartpark.alerts.models import AlertState, Delivery, WebhookSubscription
from smartpark.alerts.repo import AlertRepo, now_ms, rfc3339
from smartpark.alerts.signing import message_id
from smartpark.core.errors import StoreError

__all__ = ["EVENT", "DailyFeed", "DailyFigures"]

log = logging.getLogger("smartpark.alerts")
EVENT = "kpi.daily"
MARK = ("_meta", "daily-feed")  # the alert_states row of the last day sent (not a rule: "_meta" rows are skipped)
CLOSE_GRACE_MS = 300_000  # a day is sent this long after local midnight: late readings are in by then
CATCH_UP_DAYS = 7

DailyFigures = Callable[[date], list[dict[str, Any]]]  # a closed local day -> per site its figures ("site" key)


class DailyFeed:
    def __init__(self, repo: AlertRepo, figures: DailyFigures) -> None:
        self.repo, self.figures = repo, figures

    def run(self, now: int, tz: ZoneInfo) -> int:
        """Queue the days closed since the last one sent; returns how many deliveries were queued."""
        closed = datetime.fromtimestamp((now - CLOSE_GRACE_MS) / 1000, tz).date() - timedelta(days=1)
        last = self._last()
        first = closed if last is None else max(last + timedelta(days=1), closed - timedelta(days=CATCH_UP_DAYS - 1))
        queued = 0
        day = first
        while day <= closed:
            try:
                rows = self.figures(day)
            except StoreError as exc:  # the mark stays: the next round tries the day again
                log.warning("daily feed for %s not computed this round: %s", day, exc)
                break
            except Exception:  # a defect must not stop the alert rounds; the next round tries again
                log.exception("daily feed for %s failed", day)
                break
            queued += self._queue(day, rows)
            day += timedelta(days=1)
        return queued

    def _last(self) -> date | None:
        with self.repo.session() as s:
            row = s.get(AlertState, MARK)
            return None if row is None else date.fromisoformat(row.data["day"])

    def _queue(self, day: date, rows: list[dict[str, Any]]) -> int:
        """The day's events for every subscription that takes them, and the mark, in one transaction."""
        with self.repo.session() as s:
            row = s.get(AlertState, MARK)
            if row is not None and date.fromisoformat(row.data["day"]) >= day:
                return 0  # another round got there first
            subs = [w for w in s.scalars(select(WebhookSubscription).where(WebhookSubscription.enabled))
                    if takes_daily(w)]
            now, n = now_ms(), 0
            for figures in rows:
                body = json.dumps({"type": EVENT, "id": f"{EVENT}:{figures['site']}:{day.isoformat()}",
                                   "date": day.isoformat(), **figures, "timestamp": rfc3339(now)},
                                  separators=(",", ":"), ensure_ascii=False)
                for sub in subs:
                    if not sub.sites or figures["site"] in sub.sites:
                        s.add(Delivery(id=message_id(), subscription_id=sub.id, event_type=EVENT, episode_id=None,
                                       body=body, created_ms=now, next_ms=now))
                        n += 1
            if row is None:
                s.add(AlertState(rule_id=MARK[0], subject=MARK[1], data={"day": day.isoformat()}))
            else:
                row.data = {"day": day.isoformat()}
        log.info("daily feed for %s: %d sites, %d deliveries queued", day, len(rows), n)
        return n


def takes_daily(sub: WebhookSubscription) -> bool:
    """A subscription takes the feed when it names it in its rules, or filters on neither rules nor severity
    (a catch-all); its site filter applies."""
    return EVENT in (sub.rules or []) or (not sub.rules and not sub.severities)
