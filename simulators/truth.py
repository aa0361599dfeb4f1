"""Ground truth: what a run generated (readings) and injected (events), one JSON object per line.

Why a file: tests and operators compare what the platform stored, computed and alerted against what actually
happened, after the fact and from another process. JSON lines because any tool reads them and a run that
dies halfway leaves every complete line readable. Readings are ``{"type": "reading", ...}`` with the true
plant ``ts`` and the device clock's ``sent_ts``; events are ``{"type": "event", "kind", ...}`` with absolute
times in epoch milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import msgspec

from smartpark.simulators.timeline import Generated

__all__ = ["TruthWriter", "read_truth"]

_encoder = msgspec.json.Encoder()


class TruthWriter:
    """Appends readings and events to a JSON-lines file; a ``None`` path writes nothing (truth off)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: IO[bytes] | None = path.open("wb") if path is not None else None
        self.readings = 0
        self.events = 0

    def reading(self, g: Generated) -> None:
        if self._file is not None:
            self._file.write(_encoder.encode({"type": "reading", "site": g.site, "device": g.device, "ts": g.ts,
                                              "sent_ts": g.sent_ts, "metrics": g.metrics, "flags": g.flags}))
            self._file.write(b"\n")
            self.readings += 1

    def event(self, kind: str, **fields: Any) -> None:
        if self._file is not None:
            self._file.write(_encoder.encode({"type": "event", "kind": kind, **fields}) + b"\n")
            self.events += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def read_truth(path: Path) -> Iterator[dict[str, Any]]:
    """Every record of a truth file, in order."""
    decoder = msgspec.json.Decoder()
    with path.open("rb") as f:
        for row in f:
            if row.strip():
                yield decoder.decode(row)
