"""Schemathesis over the API's own OpenAPI schema, against the real served app: no server errors, and every
response (status, content type, body) as the schema says."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from smartpark.api.app import create_app
from smartpark.core.catalog import default_catalog
from smartpark.core.points import Point
from smartpark.core.registry import Registry, parse_park_file
from smartpark.core.settings import Settings
from smartpark.core.store.embedded import EmbeddedStore

from factories import PARK_YAML, ServedApp, now_ms


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServedApp, str]]:
    tmp: Path = tmp_path_factory.mktemp("schema")
    registry = Registry(f"sqlite:///{tmp / 'meta.sqlite'}")
    registry.init()
    registry.load_park(parse_park_file(PARK_YAML))
    store = EmbeddedStore(tmp / "ts.sqlite", default_catalog())
    store.init()
    t = now_ms() - 3_600_000
    store.write([Point("energy", "steel", "steel-meter", t + i * 60_000, {"power_kw": 5.0, "energy_kwh": 10.0 * i})
                 for i in range(30)])
    app = create_app(Settings(_env_file=None, data_dir=tmp), registry=registry, store=store,  # type: ignore[call-arg]
                     catalog=default_catalog())
    server = ServedApp(app)
    yield server, registry.create_api_key("admin", [])
    server.close()
    store.close()
    registry.close()


def test_api_conforms_to_its_schema(served: tuple[ServedApp, str]) -> None:
    """Every operation of the schema, a few generated cases each (schemathesis' strategies driven by
    Hypothesis here: its pytest plugin does not run on this pytest)."""
    server, key = served
    api_schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 20
    with requests.Session() as session:
        for operation in operations:
            check_operation(operation, key, session)


def check_operation(operation: schemathesis.APIOperation, key: str, session: requests.Session) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: schemathesis.Case) -> None:
        # Every check but "schema-valid data is accepted": rules across parameters (end after start, at most
        # 10,000 windows, delta only on counters) are not expressible in OpenAPI and rightly answer 422.
        case.call_and_validate(session=session, headers={"Authorization": f"Bearer {key}"}, timeout=30,
                               excluded_checks=[positive_data_acceptance])

    check()
