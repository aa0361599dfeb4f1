"""InfluxDB DDL: the database, its retention policies, the rollup continuous queries and the service users.

On 1.x ``create_schema`` lays out the retention policies: ``raw`` (the default, ``retention_days``), ``rp_1m``
and ``rp_1h`` (longer), filled by continuous queries ``cq_<measurement>_1m`` / ``cq_<measurement>_1h`` that
keep the field names (gauges by ``mean``, counters by ``last``), so a dashboard switches resolution by
switching the retention policy alone. On 2.x/3.x the bucket and its DBRP mapping are the operator's.
"""

from __future__ import annotations

from smartpark.core.catalog import Catalog
from smartpark.core.errors import StoreRejected
from smartpark.core.store.influx_http import InfluxHttp
from smartpark.core.store.line_protocol import quote_ident, quote_literal
from smartpark.core.store.rollups import RAW_RP, RESAMPLE_FOR, ROLLUPS, rollup_select

__all__ = ["continuous_queries", "create_schema", "ensure_user"]


def create_schema(http: InfluxHttp, catalog: Catalog, retention_days: int) -> str | None:
    """Create the database, retention policies and continuous queries (1.x; idempotent); the retention policy
    writes and reads name from now on (None on 2.x/3.x, where the compatibility API runs no DDL: only check
    that the server answers)."""
    if not http.is_v1():
        http.ping()
        return None
    db = quote_ident(http.database)
    http.query(f"CREATE DATABASE {db}", with_db=False)
    _retention_policies(http, retention_days)
    for name, create in continuous_queries(catalog, http.database):
        try:
            http.query(create)  # 1.6 accepts a CQ identical to an existing one as a no-op
        except StoreRejected as exc:
            if "already exists" not in str(exc):
                raise
            # same name, other text (the catalog changed): replace it
            http.query(f"DROP CONTINUOUS QUERY {quote_ident(name)} ON {db}; {create}")
    return RAW_RP


def _retention_policies(http: InfluxHttp, retention_days: int) -> None:
    db = quote_ident(http.database)
    existing = {
        row[0]
        for result in http.query(f"SHOW RETENTION POLICIES ON {db}")
        for series in result.get("series", [])
        for row in series.get("values", [])
    }
    wanted = [(RAW_RP, f"{retention_days}d", True)]
    wanted += [(rp, f"{retention_days * k}d" if k else "INF", False) for rp, _, _, k in ROLLUPS]
    statements = []
    for rp, duration, default in wanted:
        verb = "ALTER" if rp in existing else "CREATE"
        statement = f"{verb} RETENTION POLICY {quote_ident(rp)} ON {db} DURATION {duration} REPLICATION 1"
        statements.append(statement + (" DEFAULT" if default else ""))
    http.query("; ".join(statements))


def continuous_queries(catalog: Catalog, database: str) -> list[tuple[str, str]]:
    """(name, CREATE statement) of every rollup CQ, one per measurement of the catalog and rollup."""
    db = quote_ident(database)
    out = []
    for domain in sorted({m.domain for m in catalog.metrics.values()}):
        for rp, every, suffix, _ in ROLLUPS:
            name = f"cq_{domain}_{suffix}"
            select = f"{rollup_select(catalog, database, domain, rp)} GROUP BY time({every}), *"
            resample = f"RESAMPLE FOR {RESAMPLE_FOR[rp]} " if rp in RESAMPLE_FOR else ""
            out.append((name, f"CREATE CONTINUOUS QUERY {quote_ident(name)} ON {db} {resample}BEGIN {select} END"))
    return out


def ensure_user(http: InfluxHttp, user: str, password: str, privilege: str) -> None:
    """Create or update a non-admin 1.x user with exactly ``privilege`` (READ, WRITE, ALL) on the database.

    Needs admin credentials (`smartpark db init`). An existing user gets the password given here (rotation:
    change it in the settings and run init again) and loses admin rights and other grants on this database.
    Errors never carry the password.
    """
    if privilege not in ("READ", "WRITE", "ALL"):
        raise ValueError(f"privilege must be READ, WRITE or ALL, not {privilege!r}")
    who, db, secret = quote_ident(user), quote_ident(http.database), quote_literal(password)
    users = {row[0]: row[1] for result in http.query("SHOW USERS", with_db=False)
             for series in result.get("series", []) for row in series.get("values", [])}
    statements = [f"SET PASSWORD FOR {who} = {secret}" if user in users
                  else f"CREATE USER {who} WITH PASSWORD {secret}"]
    if users.get(user):
        statements.append(f"REVOKE ALL PRIVILEGES FROM {who}")  # no admin
    statements += [f"REVOKE ALL ON {db} FROM {who}", f"GRANT {privilege} ON {db} TO {who}"]
    try:
        http.query("; ".join(statements), with_db=False)
    except StoreRejected as exc:
        message = str(exc).replace(password, "***") if password else str(exc)
        raise StoreRejected(f"InfluxDB user {user!r}: {message}", status=exc.status) from None
