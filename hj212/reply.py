"""The gateway's answers: 9011 (request answer, QnRtn) and 9014 (data answer), same QN as the request."""

from __future__ import annotations

from smartpark.hj212.frame import build_frame
from smartpark.hj212.parse import Packet

__all__ = ["QN_RTN", "data_answer", "refusal"]

# QnRtn of a 9011 answer (HJ 212-2017 [C]): why a request is refused.
QN_RTN = {"ready": 1, "refused": 2, "wrong_pw": 3, "unknown_mn": 4, "bad_st": 5, "bad_flag": 6,
          "unsupported_version": 6, "bad_qn": 7, "bad_cn": 8, "bad_crc": 9}
SYSTEM_ST = "91"  # system interaction


def _answer(packet: Packet, cn: str, cp: str) -> bytes:
    # Answers carry the request's version bits and never ask for an answer themselves (A = 0).
    p = packet
    return build_frame(f"QN={p.qn or ''};ST={SYSTEM_ST};CN={cn};PW={p.pw};MN={p.mn};Flag={p.flag.version << 2};"
                       f"CP=&&{cp}&&")


def data_answer(packet: Packet) -> bytes:
    """9014: the data packet ``packet.qn`` was received (sent only once its readings are durable)."""
    return _answer(packet, "9014", "")


def refusal(packet: Packet, reason: str) -> bytes:
    """9011 with the QnRtn for ``reason`` (100: other)."""
    rtn = QN_RTN.get(reason, 100)
    return _answer(packet, "9011", f"QnRtn={rtn}")
