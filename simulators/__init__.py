"""Simulated devices of an industrial park: plant models, scenarios, publishers, backfill and load generation.

They stand in for the park's meters, stack monitors and greening sensors so the platform can be run,
demonstrated, tested against ground truth and load-tested without hardware. Modules, by stage:
``models`` (plant physics per device kind) -> ``timeline`` (a ``scenario`` played over plant time) ->
``delivery`` (links, outages, batches, duplicates) -> ``runner`` / ``live`` (MQTT) or ``backfill`` (the store);
``truth`` records what was generated; ``loadgen`` and ``publisher`` drive the benchmarks.
"""

from smartpark.simulators.live import LiveSimulator
from smartpark.simulators.models import ParkModel
from smartpark.simulators.scenario import Scenario, default_scenario, load_scenario
from smartpark.simulators.timeline import Timeline

__all__ = ["LiveSimulator", "ParkModel", "Scenario", "Timeline", "default_scenario", "load_scenario"]
