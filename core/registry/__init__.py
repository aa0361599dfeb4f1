"""The registry: park, sites, devices and API keys in the metadata database."""

from smartpark.core.registry.models import ApiKey, Device, Park, Site
from smartpark.core.registry.parkfile import ParkFile, parse_park_file, read_park_file
from smartpark.core.registry.repo import Registry

__all__ = ["ApiKey", "Device", "Park", "ParkFile", "Registry", "Site", "parse_park_file", "read_park_file"]
