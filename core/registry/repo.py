"""Registry operations on the metadata database: engine, schema, park upsert, lookups, device state."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from sqlalchemy import create_engine, event, select
from sqlalchemy.orm import Session

from smartpark.core.errors import RegistryError
from smartpark.core.ids import SERVICE_PREFIX, reserved_device_id
from smartpark.core.migrations import upgrade_schema
from smartpark.core.registry.hierarchy import hierarchy_errors
from smartpark.core.registry.models import ApiKey, Device, Park, Site
from smartpark.core.registry.parkfile import ParkFile
from smartpark.core.registry.secrets import (
    DEVICE_PBKDF2_ITERATIONS,
    hash_password,
    new_api_key,
    new_password,
    verify_password,
)
from smartpark.core.repository import SqlRepository

__all__ = ["Registry"]

Row = TypeVar("Row", Site, Device)  # the rows `_update` edits


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cur.execute("PRAGMA journal_mode=WAL")  # readers (API) never block the writer (ingest)
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Registry(SqlRepository):
    """Sites, devices and keys in any SQLAlchemy database (SQLite in the data dir by default)."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        super().__init__(engine)

    def init(self) -> None:
        """Bring the metadata database's schema to this version's head (migrations; nothing to do when there)."""
        upgrade_schema(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # --- park files
    def load_park(self, park: ParkFile) -> tuple[int, int]:
        """Upsert a park's sites and devices (idempotent); returns (sites, devices) in the file."""
        with self.session() as s:
            s.merge(Park(**_fields(park.park)))
            n_devices = 0
            for spec in park.sites:
                site_fields = _fields(spec, exclude={"devices"})
                s.merge(Site(park_id=park.park.id, **site_fields))
                for dev in spec.devices:
                    self._upsert_device(s, spec.id, dev.id, dev.kind, dev.source_type)
                    self._set_meter(s, dev.id, dev.role, dev.parent, dev.rated_kw)
                    self._set_line(s, dev.id, dev.process, dev.product)
                    n_devices += 1
            s.flush()
            for spec in park.sites:
                for dev in spec.devices:
                    if dev.hj212 is not None:
                        _set_hj212(s, dev.id, dev.hj212.mn, dev.hj212.pw)
        return len(park.sites), n_devices

    @staticmethod
    def _upsert_device(s: Session, site: str, device: str, kind: str, source_type: str | None) -> None:
        existing = s.get(Device, device)
        if existing is None:
            s.add(Device(id=device, site_id=site, kind=kind, source_type=source_type))
            return
        if existing.site_id != site:
            raise RegistryError(f"device {device!r} is bound to site {existing.site_id!r}, not {site!r}")
        existing.kind, existing.source_type = kind, source_type

    @staticmethod
    def _set_meter(s: Session, device: str, role: str | None, parent: str | None, rated_kw: float | None) -> None:
        """The meter hierarchy fields of a device just upserted (validated with its park file)."""
        row = s.get(Device, device)
        if row is not None:
            row.role, row.parent_id, row.rated_kw = role, parent, rated_kw

    @staticmethod
    def _set_line(s: Session, device: str, process: str | None, product: str | None) -> None:
        """The screening fields of a device just upserted (validated with its park file)."""
        row = s.get(Device, device)
        if row is not None:
            row.process, row.product = process, product

    # --- lookups
    def park(self) -> Park | None:
        with self.session() as s:
            return s.scalars(select(Park)).first()

    def sites(self) -> list[Site]:
        return self._all(select(Site).order_by(Site.id))

    def site(self, site_id: str) -> Site | None:
        return self._get(Site, site_id)

    def devices(self, site_id: str | None = None) -> list[Device]:
        q = select(Device).order_by(Device.id)
        return self._all(q if site_id is None else q.where(Device.site_id == site_id))

    def bindings(self) -> dict[str, str]:
        """device id -> site id: what the ingest checks every topic against."""
        with self.session() as s:
            return {device: site for device, site in s.execute(select(Device.id, Device.site_id))}  # noqa: C416

    def password_hashes(self) -> dict[str, tuple[str, str]]:
        """device id -> (site id, password hash) for devices that have MQTT credentials."""
        with self.session() as s:
            rows = s.execute(select(Device.id, Device.site_id, Device.mqtt_password_hash))
            return {d: (site, h) for d, site, h in rows if h}

    def hj212_identities(self) -> dict[str, tuple[str, str, str, str | None]]:
        """HJ 212 MN -> (device id, site id, PW hash, source type): what the gateway binds packets with."""
        with self.session() as s:
            rows = s.execute(select(Device.hj212_mn, Device.id, Device.site_id, Device.hj212_pw_hash,
                                    Device.source_type).where(Device.hj212_mn.is_not(None)))
            return {mn: (d, site, h, st) for mn, d, site, h, st in rows if mn and h}

    def set_hj212(self, device_id: str, mn: str, pw: str) -> None:
        """Bind an MN and PW to a device (PW stored hashed); an MN already bound elsewhere is an error."""
        with self.session() as s:
            if s.get(Device, device_id) is None:
                raise RegistryError(f"unknown device {device_id!r}")
            _set_hj212(s, device_id, mn, pw)

    # --- device credentials and state
    def provision_device(self, device_id: str, password: str | None = None) -> str:
        """Give a device a new MQTT password (or ``password``); returns it (shown once, stored hashed)."""
        password = password or new_password()
        with self.session() as s:
            device = s.get(Device, device_id)
            if device is None:
                raise RegistryError(f"unknown device {device_id!r}")
            device.mqtt_password_hash = hash_password(password, iterations=DEVICE_PBKDF2_ITERATIONS)
        return password

    def set_device_status(self, device_id: str, online: bool, seen: datetime | None = None) -> bool:
        with self.session() as s:
            device = s.get(Device, device_id)
            if device is None:
                return False
            device.online = online
            device.last_seen = seen or datetime.now(UTC)
            return True

    # --- API keys
    def create_api_key(self, role: str, sites: list[str]) -> str:
        if role not in ("admin", "site"):
            raise RegistryError(f"role must be admin or site, not {role!r}")
        if role == "site" and not sites:
            raise RegistryError("a site key needs at least one --site")
        with self.session() as s:
            unknown = [x for x in sites if s.get(Site, x) is None]
            if unknown:
                raise RegistryError(f"unknown site(s): {', '.join(unknown)}")
            key, key_id, key_hash = new_api_key()
            s.add(ApiKey(id=key_id, key_hash=key_hash, role=role, sites=sites, created_at=datetime.now(UTC)))
        return key

    def api_key(self, key_id: str) -> ApiKey | None:
        return self._get(ApiKey, key_id)

    def api_keys(self) -> list[ApiKey]:
        return self._all(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id))

    def revoke_api_key(self, key_id: str) -> bool:
        with self.session() as s:
            key = s.get(ApiKey, key_id)
            if key is None:
                return False
            key.revoked = True
            return True

    # --- registry edits (the API's admin calls)
    def create_site(self, fields: dict[str, Any]) -> Site:
        park = self.park()
        if park is None:
            raise RegistryError("no park loaded: load a park file first")
        with self.session() as s:
            if s.get(Site, fields["id"]) is not None:
                raise RegistryError(f"site {fields['id']!r} already exists")
            site = Site(park_id=park.id, **fields)
            s.add(site)
        return site

    def _update(self, model: type[Row], key: str, fields: dict[str, Any]) -> Row | None:
        """Set ``fields`` on the row ``key`` of ``model``: the row, or None when there is none."""
        with self.session() as s:
            row = s.get(model, key)
            for name, value in fields.items() if row is not None else ():
                setattr(row, name, value)
            return row

    def update_site(self, site_id: str, fields: dict[str, Any]) -> Site | None:
        return self._update(Site, site_id, fields)

    def delete_site(self, site_id: str) -> bool:
        """Delete a site and its devices (their stored readings stay in the time-series store), and take it out
        of every key's scope: a key of that site alone is revoked, so a site re-created under the same id (a new
        tenant, perhaps) is never open to the old tenant's key."""
        with self.session() as s:
            site = s.get(Site, site_id)
            if site is not None:
                s.delete(site)
                for key in s.scalars(select(ApiKey).where(ApiKey.role == "site")):
                    if site_id in key.sites:
                        key.sites = [x for x in key.sites if x != site_id]  # a new list: JSON is not tracked
                        key.revoked = key.revoked or not key.sites
            return site is not None

    def create_device(self, site_id: str, fields: dict[str, Any]) -> Device:
        if reserved_device_id(fields["id"]):
            raise RegistryError(f"device id {fields['id']!r}: ids beginning with {SERVICE_PREFIX!r} are reserved "
                                "for the platform's services")
        with self.session() as s:
            existing = s.get(Device, fields["id"])
            if existing is not None:
                raise RegistryError(f"device {fields['id']!r} already exists (site {existing.site_id!r})")
            device = Device(site_id=site_id, **fields)
            s.add(device)
        return device

    def device(self, device_id: str) -> Device | None:
        return self._get(Device, device_id)

    def update_device(self, device_id: str, fields: dict[str, Any]) -> Device | None:
        return self._update(Device, device_id, fields)

    def hierarchy_problem(self, site_id: str, device_id: str, fields: dict[str, Any]) -> str | None:
        """What would break the site's meter hierarchy if ``device_id`` got ``fields`` (created when new)."""
        lines = []
        for d in self.devices(site_id):
            if d.id != device_id:
                lines.append((d.id, d.kind, d.role, d.parent_id))
        current = self.device(device_id)
        merged: dict[str, str | None] = {"kind": None, "role": None, "parent_id": None}
        if current is not None:
            merged |= {"kind": current.kind, "role": current.role, "parent_id": current.parent_id}
        merged |= {k: v for k, v in fields.items() if k in merged}
        lines.append((device_id, str(merged["kind"]), merged["role"], merged["parent_id"]))
        for i, _, message in hierarchy_errors(lines):
            if i == len(lines) - 1 or lines[i][3] == device_id:  # this device, or one beneath it
                return message
        return None

    def delete_device(self, device_id: str) -> bool:
        with self.session() as s:
            device = s.get(Device, device_id)
            if device is not None:
                s.delete(device)
            return device is not None


def _set_hj212(s: Session, device_id: str, mn: str, pw: str) -> None:
    """Rehash only a changed PW, so loading the same park file twice changes nothing."""
    other = s.scalars(select(Device).where(Device.hj212_mn == mn, Device.id != device_id)).first()
    if other is not None:
        raise RegistryError(f"HJ 212 MN {mn!r} is already bound to device {other.id!r}")
    device = s.get(Device, device_id)
    if device is None:
        raise RegistryError(f"unknown device {device_id!r}")
    device.hj212_mn = mn
    if device.hj212_pw_hash is None or not verify_password(pw, device.hj212_pw_hash):
        device.hj212_pw_hash = hash_password(pw)


def _fields(spec: object, exclude: set[str] | None = None) -> dict[str, object]:
    return {k: v for k, v in msgspec.structs.asdict(spec).items() if k not in (exclude or set())}  # type: ignore[arg-type]
