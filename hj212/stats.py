"""The gateway's own figures: connections, frames, answers, rejections by reason (`/metrics` as
``smartpark_hj212_*``, and `platform` points tagged with the gateway's instance)."""

from __future__ import annotations

from smartpark.ingest.stats import IngestStats

__all__ = ["HELP", "gateway_stats"]

HELP = {
    "connections": "open connections from data acquisition units",
    "connections_opened": "connections accepted",
    "connections_closed": "connections ended (by either side)",
    "closed_idle": "connections closed after SMARTPARK_HJ212_IDLE_TIMEOUT_S without data (half-open links)",
    "closed_slow_reader": "connections dropped because the unit stopped reading its answers",
    "closed_wrong_pw": "connections closed after repeated wrong PWs",
    "frames_received": "frames received (well formed or not; garbage runs excluded)",
    "packets_accepted": "data packets handed to the writer (after auth; split packets once reassembled)",
    "split_parts": "parts of split packets received",
    "readings": "valid readings handed to the writer",
    "answers_sent": "9014 data answers sent (each after its readings were durable)",
    "answers_dropped": "9014 answers not sent: the connection had gone (the unit resends)",
    "refusals_sent": "9011 refusals sent (QnRtn: PW, MN, ST, Flag, QN, CN or CRC wrong)",
    "unmapped_items": "CP values of codes the code table does not map (kept in the relayed raw packet only)",
    "zs_disagreements": "monitor O2-corrected values that disagree with the platform's correction",
    "zs_sentinels": "monitor O2-corrected values sent as 9999.99 (cannot be corrected; HJ 212-2025 [S]): not stored",
    "heartbeats": "heartbeat packets (CN 9015, HJ 212-2025 [S])",
    "forwarded": "raw packets relayed to the upstream platforms (SMARTPARK_HJ212_FORWARD)",
    "forward_failures": "relay attempts that failed (the packets wait in the data dir and are sent again)",
}


def gateway_stats() -> IngestStats:
    return IngestStats(prefix="smartpark_hj212", help_text=HELP)
