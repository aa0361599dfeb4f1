"""Time-series stores behind one interface (see base.py)."""

from smartpark.core.catalog import Catalog
from smartpark.core.settings import Settings
from smartpark.core.store.base import AGGREGATES, Agg, LatestValue, Series, SeriesQuery, TimeSeriesStore

__all__ = ["AGGREGATES", "Agg", "LatestValue", "Series", "SeriesQuery", "TimeSeriesStore", "open_store"]


def open_store(settings: Settings, catalog: Catalog) -> TimeSeriesStore:
    """InfluxDB when SMARTPARK_INFLUX_URL is set, else the embedded SQLite store in the data dir."""
    if settings.influx_url:
        from smartpark.core.store.influx import InfluxStore

        return InfluxStore(settings.influx_url, settings.influx_db, catalog,
                           username=settings.influx_username, password=settings.influx_password,
                           token=settings.influx_token, timeout_s=settings.influx_timeout_s,
                           retention_days=settings.retention_days, gzip_writes=settings.influx_gzip,
                           ca_file=settings.influx_ca_file)
    from smartpark.core.store.embedded import EmbeddedStore

    return EmbeddedStore(settings.data_dir / "timeseries.sqlite", catalog)
