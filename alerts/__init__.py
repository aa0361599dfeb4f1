"""The alert engine and its webhooks: rules on the live stream and on a schedule, episodes that fire once
and resolve once, durable signed webhook delivery. See engine.py for the threads and the order of writes."""

from smartpark.alerts.engine import AlertEngine, MessageSource, SourceFactory
from smartpark.alerts.errors import AlertsError, DeliveryError, EngineError, UnsafeDestination
from smartpark.alerts.repo import AlertRepo
from smartpark.alerts.rules import Condition, RuleSpec, default_rules

__all__ = ["AlertEngine", "AlertRepo", "AlertsError", "Condition", "DeliveryError", "EngineError",
           "MessageSource", "RuleSpec", "SourceFactory", "UnsafeDestination", "default_rules"]
