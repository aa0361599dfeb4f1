"""The straightforward HJ 212 server bench_hj212.py compares the gateway with: asyncio streams, one frame
read at a time up to CR LF, its CRC checked, its segment parsed, its one point written to InfluxDB alone
(line protocol, one HTTP request per frame, in the default thread pool), then the 9014 answer.

    python bench/hj212_baseline.py --port P --influx URL --db DB
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime
from zoneinfo import ZoneInfo

import httpx

TZ = ZoneInfo("Asia/Shanghai")
CODES = {"a21026": "so2_mg_m3", "a21002": "nox_mg_m3", "a34013": "pm_mg_m3", "a19001": "o2_pct",
         "a00000": "flow_nm3_h", "a01012": "temp_c", "a01014": "moisture_pct"}


def crc16(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def frame(segment: str) -> bytes:
    body = segment.encode()
    return b"##%04d%s%04X\r\n" % (len(body), body, crc16(body))


def parse(line: bytes) -> tuple[dict[str, str], str, dict[str, float]] | None:
    if not line.startswith(b"##") or len(line) < 12:
        return None
    n = int(line[2:6])
    segment, crc = line[6:6 + n], line[6 + n:10 + n]
    if int(crc, 16) != crc16(segment):
        return None
    head, _, cp = segment.decode().partition("CP=&&")
    fields = dict(p.split("=", 1) for p in head.split(";") if p)
    values: dict[str, float] = {}
    data_time = ""
    for item in cp.rstrip("&").split(";"):
        for pair in item.split(","):
            key, _, value = pair.partition("=")
            code, _, suffix = key.partition("-")
            if key == "DataTime":
                data_time = value
            elif suffix == "Avg" and code in CODES:
                values[CODES[code]] = float(value)
    return fields, data_time, values


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--influx", required=True)
    parser.add_argument("--db", required=True)
    args = parser.parse_args()
    client = httpx.Client(base_url=args.influx, timeout=30)

    def write(line: str) -> None:
        client.post("/write", params={"db": args.db, "precision": "ms"}, content=line).raise_for_status()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readuntil(b"\r\n"):
                parsed = parse(line)
                if parsed is None:
                    continue
                fields, data_time, values = parsed
                ts = int(datetime.strptime(data_time, "%Y%m%d%H%M%S").replace(tzinfo=TZ).timestamp() * 1000)
                body = ",".join(f"{k}={v}" for k, v in values.items())
                await asyncio.to_thread(write, f"emissions,site=bench,device={fields['MN']} {body} {ts}")
                writer.write(frame(f"QN={fields['QN']};ST=91;CN=9014;PW={fields['PW']};MN={fields['MN']};"
                                   f"Flag=4;CP=&&&&"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", args.port, backlog=4096)
        print("READY", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    sys.exit(main())
