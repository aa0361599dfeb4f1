"""The three ways to run a scenario (``smartpark simulate --mode``): live, accelerated and backfill.

Why here and not in the command: the command line only resolves settings, registry and store (the composition
root's job); what a mode means in plant time (where it starts, where it ends, how fast it runs) is the
simulator's, and tests and benchmarks call it the same way the command does.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec

from smartpark.core import clock
from smartpark.core.catalog import Catalog
from smartpark.core.errors import ConfigError
from smartpark.core.mqtt.endpoint import Endpoint
from smartpark.core.reference import Reference
from smartpark.core.registry import ParkFile, read_park_file
from smartpark.core.screening import Screening
from smartpark.core.store.base import TimeSeriesStore
from smartpark.simulators.backfill import BackfillResult, backfill
from smartpark.simulators.progress import progress_bar
from smartpark.simulators.resume import Counters, stored_counters
from smartpark.simulators.runner import PublishRun, RunStats, scenario_events
from smartpark.simulators.scenario import Scenario, default_scenario, load_scenario, park_file_of
from smartpark.simulators.timeline import Frame, Timeline
from smartpark.simulators.truth import TruthWriter

__all__ = ["ACCELERATED_SPEED", "Mode", "Window", "check_publish_window", "load_run", "run_backfill", "run_publish",
           "window"]

Mode = Literal["live", "accelerated", "backfill"]
ACCELERATED_SPEED = 1440.0  # a day of plant time per minute
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Window:
    start_ms: int
    end_ms: int | None  # None: until stopped
    speed: float  # plant seconds per real second; 0: no waiting


def load_run(scenario_file: Path | None, park_file: Path | None, demo_park: Path, *, seed: int | None = None,
             interval_s: float | None = None, reference: Reference | None = None,
             screening: Screening | None = None) -> tuple[ParkFile, Scenario]:
    """The scenario (default: the demo scenario) with command-line overrides, and its park (checked against the
    park's reference and screening data: default, the shipped ones)."""
    scenario = load_scenario(scenario_file) if scenario_file else default_scenario()
    if seed is not None:
        scenario = msgspec.structs.replace(scenario, seed=seed)
    if interval_s is not None:
        scenario = msgspec.structs.replace(scenario, interval_s=interval_s)
    park = read_park_file(park_file or park_file_of(scenario) or demo_park, reference, screening=screening)
    return park, scenario


def window(scenario: Scenario, mode: Mode, days: float, *, now_ms: int | None = None,
           speed: float = ACCELERATED_SPEED) -> Window:
    """Plant time of a run: live from now on; accelerated and backfill the last ``days`` up to now."""
    now = now_ms if now_ms is not None else clock.now_ms()
    step = round(scenario.interval_s * 1000)
    if scenario.start is not None:
        start = int(scenario.start.timestamp() * 1000)
    elif mode == "live":
        start = -(-now // step) * step  # the next whole interval
    else:
        start = (now - round(days * DAY_MS)) // step * step
    if mode == "live":
        return Window(start, None, 1.0)
    return Window(start, start + round(days * DAY_MS), speed if mode == "accelerated" else 0.0)


def check_publish_window(win: Window, window_ms: int, *, now_ms: int | None = None) -> None:
    """Published history reaches the ingest, which refuses readings older than its store-and-forward window:
    refuse a run that starts before it (ConfigError) rather than have it dead-lettered. (A backfill straight
    into the store has no such bound.)"""
    now = now_ms if now_ms is not None else clock.now_ms()
    if win.start_ms < now - window_ms:
        raise ConfigError(
            f"this run starts {(now - win.start_ms) / DAY_MS:.1f} days back, beyond the ingest's "
            f"{window_ms / DAY_MS:g}-day store-and-forward window (SMARTPARK_STORE_FORWARD_DAYS), which would "
            "reject those readings: use --mode backfill without --publish (straight into the store), fewer "
            "--days, or a longer window")


def run_backfill(store: TimeSeriesStore, park: ParkFile, scenario: Scenario, win: Window, catalog: Catalog, *,
                 truth_path: Path | None = None) -> BackfillResult:
    """Write the window's history straight into the store, with a progress bar on a terminal."""
    assert win.end_ms is not None, "a backfill needs an end"
    timeline = Timeline(park, scenario, win.start_ms, catalog=catalog)
    timeline.resume(stored_counters(store, park, catalog, win.start_ms))  # continue each stored counter
    total = sum(len(m.refs) for m in timeline.kinds) * -(-(win.end_ms - win.start_ms) // round(
        scenario.interval_s * 1000))
    with TruthWriter(truth_path) as truth, progress_bar(total, "backfill") as advance:
        scenario_events(scenario, win.start_ms, truth)

        def record(frame: Frame) -> None:
            for g in frame.readings():
                truth.reading(g)

        return backfill(store, timeline, win.end_ms, catalog, progress=advance,
                        on_frame=record if truth_path else None)


def run_publish(park: ParkFile, scenario: Scenario, endpoint: Endpoint, win: Window, *,
                credentials: dict[str, str] | None = None, truth_path: Path | None = None,
                stop: threading.Event | None = None, counters: Counters | None = None) -> RunStats:
    """Publish the window over MQTT, one connection per device (progress bar when it has an end)."""
    with TruthWriter(truth_path) as truth:
        run = PublishRun(park, scenario, endpoint, start_ms=win.start_ms, end_ms=win.end_ms, speed=win.speed,
                         credentials=credentials, truth=truth, chunk=1 if win.speed == 1.0 else 60)
        run.timeline.resume(counters or {})  # continue each counter from what is stored (resume.py)
        if win.end_ms is None:
            return run.run(stop)
        total = len(run.conns) * -(-(win.end_ms - win.start_ms) // round(scenario.interval_s * 1000))
        with progress_bar(total, "publish") as advance:
            return run.run(stop, advance)
