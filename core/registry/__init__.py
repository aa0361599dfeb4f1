"""The registry: park, sites, devices and API keys in the metadata database."""

from smartpark.core.registry.audit import AuditTrail, Rewrite, ValueRewrite
from smartpark.core.registry.models import ApiKey, Device, Park, Site
from smartpark.core.registry.parkfile import ParkFile, parse_park_file, read_park_file
from smartpark.core.registry.repo import Registry

__all__ = ["ApiKey", "AuditTrail", "Device", "Park", "ParkFile", "Registry", "Rewrite", "Site", "ValueRewrite",
           "parse_park_file", "read_park_file"]
