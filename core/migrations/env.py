"""Alembic's environment for the metadata database: run by `upgrade_schema` and `smartpark db revision`.

The caller hands over the connection (``config.attributes["connection"]``) and, to autogenerate or compare,
the full metadata (``config.attributes["target_metadata"]``, assembled by the composition root from every
service's models): the core never imports a service. Batch mode lets SQLite take ALTERs.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=context.config.attributes.get("target_metadata"),
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
