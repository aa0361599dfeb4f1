"""Which late points change a value the platform already holds: the rewrites the audit trail records.

Only points of readings at or before their device's last seen time are candidates (ingest/decode.py marks
them; devices send in time order, so on the normal path there are none and this module is never called). A
candidate's previous value is the latest one the platform took for its key (measurement, site, device, time):
from a batch still in the store's hands (written before this one), else from the store, looked up in one
batched call; a key repeated within the batch compares with its earlier occurrence. The same value again is
a redelivery (at-least-once), not a change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from smartpark.core.points import FieldValue, Point
from smartpark.core.registry.audit import Rewrite
from smartpark.core.store.base import PointKey, StoredFields, point_key

__all__ = ["find_rewrites"]


def find_rewrites(late: Sequence[tuple[int, Point]], pending: Iterable[Sequence[Point]], batch: Sequence[Point],
                  lookup: Callable[[list[Point]], StoredFields]) -> list[Rewrite]:
    """The metric values that ``batch``'s late points change, in batch order.

    ``pending``: the points of earlier batches not yet known to be in the store, oldest first; ``lookup``:
    the store's stored_fields (raises StoreError when the store cannot answer).
    """
    received = {point_key(p): ms for ms, p in late}
    current: dict[PointKey, dict[str, FieldValue]] = dict(lookup([p for _, p in late]))
    for points in pending:
        for p in points:
            key = point_key(p)
            if key in received:
                current[key] = {**current.get(key, {}), **p.fields}
    out: list[Rewrite] = []
    for p in batch:
        key = point_key(p)
        if key not in received:
            continue
        before = current.get(key)
        if before:
            out += _changes(p, before, received[key])
            current[key] = {**before, **p.fields}
        else:
            current[key] = dict(p.fields)
    return out


def _changes(p: Point, before: dict[str, FieldValue], received_ms: int) -> list[Rewrite]:
    """Metric fields whose stored value differs (flags and fields never stored before are not changes)."""
    out = []
    for name, value in p.fields.items():
        old = before.get(name)
        if isinstance(value, str) or old is None or isinstance(old, str) or float(old) == value:
            continue
        out.append(Rewrite(p.site, p.device, p.measurement, name, p.ts_ms, float(old), float(value), received_ms))
    return out
