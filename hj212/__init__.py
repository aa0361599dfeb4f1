"""The HJ 212 gateway: stack monitors' data acquisition units over TCP, into the ingest's durable writer.

frame.py (framing, CRC) -> parse.py (data segment) -> identities.py (MN/PW) -> convert.py with codes.py (code
table -> catalog metrics, contract checks) -> the ingest's Batcher; server.py holds the connections and sends
the answers (reply.py) once durable; forward.py relays raw packets upstream; stats.py counts.
"""

from smartpark.hj212.frame import build_frame, crc16
from smartpark.hj212.parse import parse_segment
from smartpark.hj212.server import Gateway, GatewayConfig

__all__ = ["Gateway", "GatewayConfig", "build_frame", "crc16", "parse_segment"]
