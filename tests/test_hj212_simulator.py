"""A scenario's stack monitor speaking HJ 212 to the gateway (`transport: hj212`) with its faults: packets
with a bad CRC, split packets, reconnects. Its readings land, and the gateway counts each fault."""

from __future__ import annotations

from pathlib import Path

from test_hj212_gateway import HJ_PARK, start

from smartpark.core.mqtt import Endpoint
from smartpark.core.registry import parse_park_file
from smartpark.hj212.frame import FrameReader, Malformed, build_frame, crc16_fast
from smartpark.simulators.hj212 import with_bad_crc
from smartpark.simulators.live import Hj212Target, LiveSimulator
from smartpark.simulators.scenario import parse_scenario

from factories import wait_for
from hj212_packets import MN, PW

SCENARIO = """
name: hj212-faults
seed: 7
interval_s: 60
upsets: false
transports:
  - {device: sinter-cems, transport: hj212, bad_crc_rate: 0.5, split_rate: 0.5, reconnect_rate: 0.3}
"""


def test_a_stack_monitor_speaks_hj212_with_faults(tmp_path: Path) -> None:
    for env in start(tmp_path):
        park = parse_park_file(HJ_PARK)
        target = Hj212Target("127.0.0.1", env.gateway.port, {"sinter-cems": (MN, PW)})
        sim = LiveSimulator(park, {}, Endpoint("127.0.0.1", 1), interval_s=0.05, scenario=parse_scenario(SCENARIO),
                            hj212=target)
        assert sim.device_count == 0  # no MQTT client for the HJ 212 unit (nor for devices without credentials)
        (unit,) = sim.hj212_units.values()
        with sim:
            wait_for(lambda: unit.sent >= 12 and all(unit.faults[f] for f in ("bad_crc", "split", "reconnect")),  # noqa: B023
                     timeout=60)
        # the unit counts a fault when it sends it, the gateway when it has read it: the last may still be on its way
        def caught_up(stats: dict[str, object]) -> bool:
            return (stats["rejected"].get("bad_crc") == unit.faults["bad_crc"]  # type: ignore[attr-defined]  # noqa: B023
                    and stats["split_parts"] == 2 * unit.faults["split"])  # noqa: B023

        wait_for(lambda: caught_up(env.gateway.stats.snapshot()))  # noqa: B023
        stats = env.gateway.stats.snapshot()
        assert stats["rejected"]["bad_crc"] == unit.faults["bad_crc"]  # type: ignore[index]
        assert stats["split_parts"] == 2 * unit.faults["split"]
        assert stats["connections_opened"] >= 1 + unit.faults["reconnect"]
        assert unit.unanswered == 0
        latest = {v.metric for v in env.store.latest("steel") if v.device == "sinter-cems"}
        assert {"nox_mg_m3", "so2_mg_m3", "pm_mg_m3", "o2_pct", "flow_nm3_h"} <= latest


# HJ 212's CRC keeps 8 bits of state between bytes, so 1 segment in 256 has the CRC 0000 (this one does)
CRC_0000 = (b"QN=20261205120000113;ST=31;CN=2051;PW=123456;MN=000113;Flag=5;"
            b"CP=&&DataTime=20261205120000;a21026-Avg=1.0,a21026-Flag=N&&")


def test_a_bad_crc_fault_is_a_bad_crc_even_when_the_crc_is_0000() -> None:
    """The unit once wrote "0000" over the CRC, or cut 3 bytes off when it already was 0000: the gateway then
    counted a bad length, and the test above failed one run in ~20."""
    assert crc16_fast(CRC_0000) == 0
    good = build_frame(b"QN=1;ST=31;CN=2051;PW=1;MN=1;Flag=5;CP=&&&&")
    for frame in (build_frame(CRC_0000), good):
        items = FrameReader().feed(with_bad_crc(frame) + good)
        assert [type(i).__name__ for i in items] == ["Malformed", "Frame"]
        assert isinstance(items[0], Malformed)
        assert items[0].reason == "bad_crc"
        assert items[0].segment == frame[6:-6]
