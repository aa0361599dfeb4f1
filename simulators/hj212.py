"""A stack monitor's data acquisition unit speaking HJ 212 to the park's gateway instead of MQTT.

A scenario names such devices (``transports: [{device: ..., transport: hj212, ...}]``); the live simulator
hands their messages here. Each unit has its own TCP connection and thread, as a real unit does: every
reading becomes a minute-data packet (CN 2051, Flag 5: answer required) and is resent until its 9014 answer
comes, with the scenario's faults: a packet sent first with a bad CRC, a packet split in parts (PNUM/PNO),
a reconnect before a packet. Malformed payloads of the scenario's network go out as garbage bytes.

The framing and CRC here are written from the standard, independently of the gateway's (simulators import
only the core): a unit built on the gateway's own encoder could not catch a mistake both share.
"""

from __future__ import annotations

import logging
import queue
import random
import socket
import threading
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import yaml

from smartpark.core.datafiles import read_data_file
from smartpark.simulators.scenario import Transport

__all__ = ["Hj212Unit", "metric_codes"]

log = logging.getLogger("smartpark.simulators")
ANSWER_TIMEOUT_S = 5.0
ATTEMPTS = 3  # sends of one packet before the unit gives up on it (counted)
CONNECT_TIMEOUT_S = 3.0


def crc16(data: bytes) -> int:
    """HJ 212-2017 Annex A CRC (see the gateway's hj212/frame.py for the same algorithm, written apart)."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def build_frame(segment: str) -> bytes:
    body = segment.encode()
    return b"##%04d%s%04X\r\n" % (len(body), body, crc16(body))


def metric_codes(path: Path | None = None) -> dict[str, tuple[str, float]]:
    """catalog metric -> (HJ 212 code, scale) of measured values, from the park's code table (core data)."""
    text, _ = read_data_file(path, "hj212-codes.yaml", "HJ 212 code table")
    codes = yaml.safe_load(text)["codes"]
    return {spec["metric"]: (code, float(spec.get("scale", 1))) for code, spec in codes.items()}


def with_bad_crc(frame: bytes) -> bytes:
    """The frame with a CRC that is wrong but well formed: the CRC with every bit flipped. (Writing a fixed
    "0000" instead is no fault when the CRC is 0000, one packet in 256 with this CRC.)"""
    crc = int(frame[-6:-2], 16) ^ 0xFFFF
    return b"%s%04X\r\n" % (frame[:-6], crc)


class Hj212Unit:
    """One unit: `deliver(payload)` queues a contract message (a reading or a batch) for sending."""

    def __init__(self, device: str, mn: str, pw: str, host: str, port: int, *, link: Transport,
                 codes: dict[str, tuple[str, float]], tz: ZoneInfo, seed: int = 1) -> None:
        self.device, self.mn, self.pw = device, mn, pw
        self.host, self.port = host, port
        self.link, self.codes, self.tz = link, codes, tz
        self.rng = random.Random(f"{seed}:{device}")
        self.sent = 0  # packets answered (9014)
        self.unanswered = 0  # packets given up on after ATTEMPTS sends
        self.faults: dict[str, int] = {"bad_crc": 0, "split": 0, "reconnect": 0, "garbage": 0}
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._sock: socket.socket | None = None
        self._inbox = b""
        self._serial = 0
        self._thread = threading.Thread(target=self._run, name=f"hj212-unit-{device}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._close()

    def deliver(self, payload: bytes) -> None:
        self._queue.put(payload)

    # --- the unit's thread
    def _run(self) -> None:
        while (payload := self._queue.get()) is not None:
            try:
                self._message(payload)
            except Exception:  # a unit keeps going, as a real one would
                log.exception("HJ 212 unit %s failed on a message", self.device)

    def _message(self, payload: bytes) -> None:
        try:
            body: Any = msgspec.json.decode(payload)
        except msgspec.DecodeError:
            self.faults["garbage"] += 1
            self._send_raw(payload)
            return
        readings = body.get("readings", [body]) if isinstance(body, dict) else []
        for reading in readings:
            if isinstance(reading, dict) and isinstance(reading.get("ts"), int):
                self._packet(reading)

    def _packet(self, reading: dict[str, Any]) -> None:
        items = self._cp_items(reading)
        if not items:
            return
        self._serial += 1
        local = datetime.fromtimestamp(reading["ts"] / 1000, self.tz)
        qn = local.strftime("%Y%m%d%H%M%S") + f"{self._serial % 1000:03d}"
        data_time = f"DataTime={local.strftime('%Y%m%d%H%M%S')}"
        frames = self._frames(qn, data_time, items)
        for _ in range(ATTEMPTS):
            if self._send_and_wait(frames, qn):
                self.sent += 1
                return
        self.unanswered += 1

    def _cp_items(self, reading: dict[str, Any]) -> list[str]:
        flags = reading.get("flags") or {}
        out = []
        for metric, value in reading.get("metrics", {}).items():
            code = self.codes.get(metric)
            if code is not None:
                out.append(f"{code[0]}-Avg={value / code[1]:.4g},{code[0]}-Flag={flags.get(metric, 'N')}")
        return out

    def _frames(self, qn: str, data_time: str, items: list[str]) -> list[bytes]:
        head = f"QN={qn};ST=31;CN=2051;PW={self.pw};MN={self.mn};"
        if len(items) > 1 and self.rng.random() < self.link.split_rate:
            parts = [items[: len(items) // 2], items[len(items) // 2:]]
            return [build_frame(f"{head}Flag=7;PNUM={len(parts)};PNO={n};CP=&&{data_time};{';'.join(p)}&&")
                    for n, p in enumerate(parts, 1)]
        return [build_frame(f"{head}Flag=5;CP=&&{data_time};{';'.join(items)}&&")]

    def _send_and_wait(self, frames: list[bytes], qn: str) -> bool:
        try:
            if self._sock is not None and self.rng.random() < self.link.reconnect_rate:
                self.faults["reconnect"] += 1
                self._close()
            sock = self._connect()
            if self.rng.random() < self.link.bad_crc_rate:
                sock.sendall(with_bad_crc(frames[0]))
                self.faults["bad_crc"] += 1
            sock.sendall(b"".join(frames))
            if len(frames) > 1:  # counted per send, as the gateway counts parts: a resend is a second split
                self.faults["split"] += 1
            return self._await(qn, len(frames))
        except OSError as exc:
            log.debug("HJ 212 unit %s: %s; resending", self.device, exc)
            self._close()
            return False

    def _await(self, qn: str, answers: int) -> bool:
        """True once ``answers`` 9014s for ``qn`` came (9011 refusals and other answers are passed over)."""
        want = f"QN={qn};ST=91;CN=9014;".encode()
        sock = self._sock
        if sock is None:
            return False
        sock.settimeout(ANSWER_TIMEOUT_S)
        got = 0
        while got < answers:
            while b"\r\n" not in self._inbox:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionResetError("the gateway closed the connection")
                self._inbox += data
            line, _, self._inbox = self._inbox.partition(b"\r\n")
            got += line[6:].startswith(want)  # after ## and the length
        return True

    def _send_raw(self, data: bytes) -> None:
        try:
            self._connect().sendall(data)
        except OSError:
            self._close()

    def _connect(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT_S)
            self._inbox = b""
        return self._sock

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
