"""The gateway's typed errors.

    SmartparkError (core)
    └── PacketError        a frame or packet the gateway refuses; ``reason`` is the counted rejection reason
"""

from __future__ import annotations

from smartpark.core.errors import SmartparkError

__all__ = ["REASONS", "PacketError"]

# Every reason a frame, packet or connection is refused, counted in /metrics and the `platform` measurement.
REASONS = {
    "garbage": "bytes outside any frame",
    "bad_length": "the length field is not 4 digits or does not match the frame",
    "too_large": "data segment longer than SMARTPARK_HJ212_MAX_SEGMENT",
    "bad_crc": "CRC does not match the data segment",
    "bad_encoding": "data segment not UTF-8 (ASCII in HJ 212-2017)",
    "encrypted": "CP encrypted (SM4, HJ 212-2025 over the internet [S]): not supported",
    "bad_segment": "data segment without the required fields or with malformed items",
    "bad_qn": "QN not YYYYMMDDhhmmsszzz, or missing where an answer is requested",
    "bad_flag": "Flag missing or not a number",
    "unsupported_version": "Flag version 0 (HJ/T 212-2005)",
    "bad_split": "split packet with bad PNUM/PNO",
    "split_incomplete": "split packet whose parts did not all arrive in time",
    "bad_st": "ST is not a system code the gateway takes",
    "bad_cn": "CN is not a command the gateway takes",
    "bad_datatime": "DataTime missing or not YYYYMMDDhhmmss",
    "bad_value": "a value is not a number or a flag not a known one",
    "unknown_mn": "MN not bound to a device in the registry",
    "wrong_pw": "PW does not match the device's",
    "too_many_connections": "connection refused at SMARTPARK_HJ212_MAX_CONNECTIONS",
}


class PacketError(SmartparkError):
    """A frame or packet refused with a counted reason (one of REASONS)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
