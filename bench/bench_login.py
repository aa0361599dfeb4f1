"""Failed logins against the embedded broker: its CPU-seconds for N wrong passwords of one known device.

    .venv/bin/python bench/bench_login.py [--n 200] [--no-throttle]

The broker runs in this process on the demo park's registry (208 devices with credentials); the attacker is
another process making N sequential CONNECTs with wrong passwords, each waiting for its CONNACK. Measured:
this process's user+system CPU during the attack. `--no-throttle` turns the failed-login throttle off (each
attempt then costs a registry lookup and a PBKDF2 check), the baseline of the same run. Issue 11: 200 wrong
passwords cost the broker 6.4 CPU-seconds (2.7 on the 2-core test machine) before the throttle and the
101-round device hashes; 0.15 after.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smartpark.broker import EmbeddedBroker
from smartpark.core.registry import Registry, read_park_file
from smartpark.platform import demo_park_path

ATTACK = """
import sys, threading
import paho.mqtt.client as m
port, n = int(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    done = threading.Event()
    c = m.Client(m.CallbackAPIVersion.VERSION2, client_id="sinter-1-cems", reconnect_on_failure=False)
    c.username_pw_set("sinter-1-cems", f"wrong-{i}")
    c.on_connect = c.on_disconnect = lambda *_: done.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    done.wait(5)
    c.loop_stop()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(n: int, throttle: bool) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(f"sqlite:///{Path(tmp) / 'meta.sqlite'}")
        registry.init()
        registry.load_park(read_park_file(demo_park_path()))
        for site in registry.sites():
            for device in registry.devices(site.id):
                registry.provision_device(device.id)
        port = free_port()
        with EmbeddedBroker(registry, "127.0.0.1", port, {"smartpark-ingest": os.urandom(12).hex()}) as broker:
            logging.getLogger("amqtt").setLevel(logging.ERROR)  # one warning per refused login otherwise
            if not throttle:
                broker.authority.throttle.base_s = broker.authority.throttle.max_s = 0.0
            before, started = os.times(), time.monotonic()
            subprocess.run([sys.executable, "-c", ATTACK, str(port), str(n)], check=True)
            after, wall = os.times(), time.monotonic() - started
        registry.close()
    return after.user - before.user + after.system - before.system, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--no-throttle", action="store_true")
    args = parser.parse_args()
    for throttle in ([False] if args.no_throttle else [False, True]):
        cpu, wall = run(args.n, throttle)
        print(f"{'throttle on ' if throttle else 'throttle off'}: {args.n} wrong passwords cost the broker "
              f"{cpu:.2f} CPU-s ({wall:.1f} s wall)")


if __name__ == "__main__":
    main()
