"""Simulated devices of an industrial park: plant models (``models``) and a live MQTT publisher (``live``).

They stand in for the park's meters, stack monitors and greening sensors so the platform can be run,
demonstrated and load-tested without hardware.
"""

from smartpark.simulators.live import LiveSimulator
from smartpark.simulators.models import ParkModel

__all__ = ["LiveSimulator", "ParkModel"]
