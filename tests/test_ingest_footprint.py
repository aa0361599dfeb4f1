"""What the ingest process loads: its memory is a measured figure (bench/bench_ingest.py, peak RSS <= 100 MiB),
and the API's stack (FastAPI, Starlette, uvicorn, Jinja2: ~20 MiB) has no business in it."""

from __future__ import annotations

import subprocess
import sys

API_STACK = ("fastapi", "starlette", "uvicorn", "jinja2", "numpy", "amqtt", "smartpark.api", "smartpark.alerts")


def test_the_ingest_command_does_not_import_the_api_stack() -> None:
    code = ("import sys; import smartpark.cli, smartpark.platform, smartpark.ingest.service; "
            f"print(','.join(m for m in {API_STACK!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert loaded.stdout.strip() == ""
