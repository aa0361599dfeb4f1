"""A parsed data packet -> one reading for the contract's checks: codes mapped to catalog metrics,
``-Flag`` to the contract's flags, ``DataTime`` (the park's local clock) to epoch milliseconds."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from smartpark.core.contract import Decoded, ReadingDecoder
from smartpark.core.emissions import o2_correct
from smartpark.core.reference import SourceType
from smartpark.hj212.codes import FLAG, VALUE, CodeMap
from smartpark.hj212.errors import PacketError
from smartpark.hj212.parse import Packet, data_time_ms

__all__ = ["ZS_PAIRS", "Conversion", "convert", "zs_disagreements"]

ZS_PAIRS = (("so2_mg_m3", "so2_zs_mg_m3"), ("nox_mg_m3", "nox_zs_mg_m3"), ("pm_mg_m3", "pm_zs_mg_m3"))
ZS_METRICS = frozenset(c for _, c in ZS_PAIRS) | {"so2_zs_h_mg_m3", "nox_zs_h_mg_m3", "pm_zs_h_mg_m3",
                                                  "so2_zs_d_mg_m3", "nox_zs_d_mg_m3", "pm_zs_d_mg_m3"}
ZS_SENTINEL = 9999.99  # HJ 212-2025 sends this where a value cannot be O2-corrected [S]
ZS_TOLERANCE = (0.05, 1.0)  # relative, absolute (mg/m3): rounding on the monitor's side is not a disagreement


class Conversion:
    """The validated reading (or its rejection) and what the packet carried that has no catalog metric."""

    __slots__ = ("decoded", "metrics", "sentinels", "unmapped")

    def __init__(self, decoded: Decoded, metrics: dict[str, float], unmapped: int, sentinels: int = 0) -> None:
        self.decoded, self.metrics, self.unmapped, self.sentinels = decoded, metrics, unmapped, sentinels


def convert(packet: Packet, device: tuple[str, str], codes: CodeMap, decoder: ReadingDecoder, *, tz: ZoneInfo,
            now_ms: int) -> Conversion:
    """Raises PacketError for a packet without a usable DataTime or with a value that is not a number."""
    site, device_id = device
    data_time = packet.data_time
    if data_time is None:
        raise PacketError("bad_datatime", f"CN {packet.cn} packet without DataTime")
    ts_ms = data_time_ms(data_time, tz)
    metrics: dict[str, float] = {}
    flags: dict[str, str] = {}
    unmapped = 0
    resolve, cn = codes.resolve, packet.cn
    for item in packet.cp:
        for key, value in item.items():
            target = resolve(cn, key)
            if target is None:
                unmapped += 1
            elif target[0] == VALUE:
                metrics[target[1]] = _number(key, value) * target[2]  # type: ignore[index]
            elif target[0] == FLAG:
                for metric in target[1]:
                    flags[metric] = value
    sentinels = [m for m in ZS_METRICS if metrics.get(m) == ZS_SENTINEL]
    for m in sentinels:  # "cannot be corrected", not 9999.99 mg/m3
        del metrics[m]
    flags = {m: f for m, f in flags.items() if m in metrics}
    if not metrics:
        raise PacketError("bad_segment", f"CN {packet.cn} packet carries no value the code table maps")
    return Conversion(decoder.validate(site, device_id, ts_ms, metrics, flags=flags, now_ms=now_ms), metrics, unmapped,
                      len(sentinels))


def _number(key: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise PacketError("bad_value", f"{key}={text[:40]!r} is not a number") from None


def zs_disagreements(metrics: dict[str, float], source: SourceType, max_o2_pct: float) -> list[str]:
    """Pollutants whose monitor-corrected value differs from the platform's O2 correction of the measured one
    (beyond rounding): a monitor configured with the wrong reference O2, or a tampered value."""
    o2 = metrics.get("o2_pct")
    if o2 is None:
        return []
    out = []
    for measured, corrected in ZS_PAIRS:
        if measured in metrics and corrected in metrics:
            ours = o2_correct(metrics[measured], o2, source, max_o2_pct)
            theirs = metrics[corrected]
            if ours is not None and abs(ours - theirs) > max(ZS_TOLERANCE[0] * abs(ours), ZS_TOLERANCE[1]):
                out.append(measured)
    return out
