"""Building HJ 212 packets for the tests and the benchmark: data segments, frames, the park's clock."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from smartpark.hj212.frame import build_frame

TZ = ZoneInfo("Asia/Shanghai")
MN = "88888880000001"
PW = "123456"


def data_time(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, TZ).strftime("%Y%m%d%H%M%S")


def qn(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, TZ).strftime("%Y%m%d%H%M%S") + f"{ts_ms % 1000:03d}"


def segment(cp: str, *, cn: str = "2051", mn: str = MN, pw: str = PW, flag: int = 5, qn_text: str | None = None,
            st: str = "31", extra: str = "") -> str:
    head = f"QN={qn_text};" if qn_text is not None else ""
    return f"{head}ST={st};CN={cn};PW={pw};MN={mn};Flag={flag};{extra}CP=&&{cp}&&"


def minute_cp(ts_ms: int, *, nox: float = 40.0, o2: float = 17.0, so2: float = 20.0, pm: float = 3.0,
              nox_zs: float | None = None, nox_flag: str = "N") -> str:
    zs = f",a21002-ZsAvg={nox_zs}" if nox_zs is not None else ""
    return (f"DataTime={data_time(ts_ms)};a21026-Avg={so2},a21026-Flag=N;a21002-Avg={nox}{zs},"
            f"a21002-Flag={nox_flag};a34013-Avg={pm},a34013-Flag=N;a19001-Avg={o2},a19001-Flag=N;"
            f"a00000-Avg=140.0,a00000-Flag=N;a01012-Avg=120.5,a01012-Flag=N")


def minute_frame(ts_ms: int, *, mn: str = MN, pw: str = PW, flag: int = 5, **values: float) -> bytes:
    return build_frame(segment(minute_cp(ts_ms, **values), mn=mn, pw=pw, flag=flag, qn_text=qn(ts_ms)))


class Unit:
    """A data acquisition unit over a real TCP socket: sends bytes, reads the gateway's answers as frames."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        import socket

        from smartpark.hj212.frame import FrameReader

        self.sock = socket.create_connection((host, port), timeout=20)
        self.reader = FrameReader()
        self.pending: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self, timeout: float = 20.0) -> bytes:
        """The next answer's data segment (raises TimeoutError when none comes)."""
        from smartpark.hj212.frame import Frame

        self.sock.settimeout(timeout)
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the gateway closed the connection")
            self.pending += [f.segment for f in self.reader.feed(data) if isinstance(f, Frame)]
        return self.pending.pop(0)

    def closed_by_gateway(self, timeout: float = 20.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except (ConnectionResetError, TimeoutError):
            return False
        return True

    def close(self) -> None:
        self.sock.close()
