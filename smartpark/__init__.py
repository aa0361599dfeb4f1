"""smartpark: IoT telemetry for industrial parks (energy, emissions, greening) over MQTT into InfluxDB.

This package is the composition root: the command line and the one-command platform runner. The services
live in smartpark.ingest, smartpark.api, smartpark.alerts and smartpark.simulators; the domain core they
share in smartpark.core.
"""

__version__ = "0.1.0"
