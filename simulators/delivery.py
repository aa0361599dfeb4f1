"""Network and device behaviour between a reading and the broker: outages, batches, duplicates, reordering,
malformed messages.

Why separate from the plant: what a device measures and what reaches the broker differ exactly where the
platform's hard bugs live. A device behind a 5G outage keeps measuring and buffers (store-and-forward); on
reconnect it sends contract batches ``{"readings": [...]}`` of at most 1,000 readings and 64 KiB. The broker
or the link may deliver twice or late; a device's firmware may send garbage. All of it is seeded, so a run
is reproducible, and recorded in the ground truth.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import msgspec
import numpy as np

from smartpark.core.contract import MAX_BATCH, MAX_PAYLOAD
from smartpark.simulators.scenario import Outage, Scenario
from smartpark.simulators.signals import device_key
from smartpark.simulators.timeline import Generated, Timeline
from smartpark.simulators.truth import TruthWriter

__all__ = ["MALFORMED", "Delivery", "Message", "batches"]

Kind = Literal["reading", "batch", "duplicate", "malformed"]
_BATCH_OPEN, _BATCH_CLOSE = b'{"readings":[', b"]}"
MALFORMED: list[tuple[bytes, str]] = [  # (payload, the ingest's expected rejection reason)
    (b'{"ts": 1, "metrics": {', "bad_json"),
    (b'{"metrics": {"power_kw": NaN}}', "non_finite"),
    (b'{"metrics": {"no_such_metric": 1.0}}', "unknown_metric"),
    (b'{"metrics": {"o2_pct": 99.0}}', "out_of_range"),
    (b'{"ts": "yesterday", "metrics": {"power_kw": 1.0}}', "bad_schema"),
]
_encoder = msgspec.json.Encoder()


class Message(NamedTuple):
    site: str
    device: str
    payload: bytes
    kind: Kind
    readings: int  # readings it carries (0 for malformed)


def batches(encoded: list[bytes]) -> list[tuple[bytes, int]]:
    """Contract batches of encoded readings, (payload, readings): at most MAX_BATCH readings and
    MAX_PAYLOAD bytes each."""
    out: list[tuple[bytes, int]] = []
    chunk: list[bytes] = []
    size = len(_BATCH_OPEN) + len(_BATCH_CLOSE)
    for e in encoded:
        if chunk and (len(chunk) == MAX_BATCH or size + len(e) + 1 > MAX_PAYLOAD):
            out.append((_BATCH_OPEN + b",".join(chunk) + _BATCH_CLOSE, len(chunk)))
            chunk, size = [], len(_BATCH_OPEN) + len(_BATCH_CLOSE)
        chunk.append(e)
        size += len(e) + 1
    if chunk:
        out.append((_BATCH_OPEN + b",".join(chunk) + _BATCH_CLOSE, len(chunk)))
    return out


class Delivery:
    """Turns each tick's generated readings into the messages devices send, in the order they send them."""

    def __init__(self, timeline: Timeline, scenario: Scenario, truth: TruthWriter | None = None) -> None:
        self.net = scenario.network
        self.truth = truth or TruthWriter(None)
        self.rng = np.random.default_rng(device_key(scenario.seed, "network"))
        self.outages: dict[str, list[tuple[float, float]]] = {}
        for ev in scenario.events:
            if isinstance(ev, Outage):
                for b, row in timeline.targets(ev.device):
                    device = timeline.kinds[b].refs[row].device.id
                    self.outages.setdefault(device, []).append(ev.window_s(timeline.start_s))
        self.buffers: dict[tuple[str, str], list[bytes]] = {}
        self.seq: dict[str, int] = {}
        self._held: list[Message] = []

    def down(self, device: str, t_s: float) -> bool:
        """Whether the device's link is down at plant time ``t_s``."""
        return any(t0 <= t_s < t1 for t0, t1 in self.outages.get(device, ()))

    def tick(self, t_s: float, readings: list[Generated]) -> list[Message]:
        """The messages sent at plant time ``t_s``: buffers of links just restored first, then the readings."""
        out = self._flush(lambda device: not self.down(device, t_s), t_s)
        for g in readings:
            self.truth.reading(g)
            encoded = self._encode(g)
            if self.down(g.device, g.ts / 1000.0):
                self.buffers.setdefault((g.site, g.device), []).append(encoded)
                continue
            out += self._send(Message(g.site, g.device, encoded, "reading", 1))
        held = [m for m in self._held if not self.down(m.device, t_s)]  # late ones wait for the link too
        self._held = [m for m in self._held if self.down(m.device, t_s)]
        return self._reorder(out) + held

    def finish(self) -> list[Message]:
        """At the end of a run: what is held back, and every buffer (links restored)."""
        held, self._held = self._held, []
        return held + self._flush(lambda device: True, None)

    def _encode(self, g: Generated) -> bytes:
        seq = self.seq.get(g.device, 0)
        self.seq[g.device] = seq + 1
        reading: dict[str, object] = {"ts": g.sent_ts, "seq": seq, "metrics": g.metrics}
        if g.flags:
            reading["flags"] = g.flags
        return _encoder.encode(reading)

    def _flush(self, restored: object, t_s: float | None) -> list[Message]:
        out: list[Message] = []
        for (site, device), buffered in list(self.buffers.items()):
            if buffered and restored(device):  # type: ignore[operator]
                parts = batches(buffered)
                self.truth.event("flush", device=device, readings=len(buffered), batches=len(parts),
                                 at=None if t_s is None else round(t_s * 1000))
                out += [Message(site, device, p, "batch", n) for p, n in parts]
                del self.buffers[(site, device)]
        return out

    def _send(self, msg: Message) -> list[Message]:
        out = [msg]
        if self.net.duplicate_rate and self.rng.random() < self.net.duplicate_rate:
            out.append(msg._replace(kind="duplicate"))
        if self.net.malformed_rate and self.rng.random() < self.net.malformed_rate:
            payload, reason = MALFORMED[int(self.rng.integers(len(MALFORMED)))]
            self.truth.event("malformed", device=msg.device, reason=reason)
            out.append(Message(msg.site, msg.device, payload, "malformed", 0))
        return out

    def _reorder(self, messages: list[Message]) -> list[Message]:
        """Hold some messages back to the end of the next tick: they arrive after newer readings."""
        if not self.net.reorder_rate:
            return messages
        late = self.rng.random(len(messages)) < self.net.reorder_rate
        self._held += [m for m, x in zip(messages, late, strict=True) if x]
        return [m for m, x in zip(messages, late, strict=True) if not x]
