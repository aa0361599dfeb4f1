"""Request dependencies as Annotated shortcuts: the registry, the store, the alert tables, and the caller's API
key scope."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from smartpark.alerts.access import AlertAccess
from smartpark.api.errors import Forbidden, NotFound, Unauthorized
from smartpark.core.catalog import Catalog
from smartpark.core.reference import Reference
from smartpark.core.registry import Device, Registry, Site
from smartpark.core.registry.secrets import hash_api_secret, split_api_key
from smartpark.core.settings import Settings
from smartpark.core.store.base import TimeSeriesStore

__all__ = ["AdminDep", "AlertsDep", "CatalogDep", "Principal", "PrincipalDep", "ReferenceDep", "RegistryDep",
           "SettingsDep", "StoreDep", "admin_device", "admin_site", "principal_for_key", "require_admin",
           "scoped_device", "scoped_site"]

_bearer = HTTPBearer(auto_error=False, description="An API key from `smartpark keys create`")


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    role: str
    sites: frozenset[str]

    def can_see(self, site_id: str) -> bool:
        return self.role == "admin" or site_id in self.sites


def _app_state(name: str) -> Callable[[Request], Any]:
    """A dependency handing out one object the app factory put on ``app.state``: made once, shared by requests."""

    def from_state(request: Request) -> Any:
        return getattr(request.app.state, name)

    return from_state


RegistryDep = Annotated[Registry, Depends(_app_state("registry"))]
StoreDep = Annotated[TimeSeriesStore, Depends(_app_state("store"))]
CatalogDep = Annotated[Catalog, Depends(_app_state("catalog"))]
ReferenceDep = Annotated[Reference, Depends(_app_state("reference"))]
SettingsDep = Annotated[Settings, Depends(_app_state("settings"))]
AlertsDep = Annotated[AlertAccess, Depends(_app_state("alerts"))]  # tables ready at start-up


def principal_for_key(registry: Registry, api_key: str) -> Principal | None:
    """The key's principal, None for an unknown, malformed or revoked key (the page's login uses it too)."""
    parts = split_api_key(api_key)
    key = registry.api_key(parts[0]) if parts else None
    if parts is None or key is None or key.revoked or not hmac.compare_digest(
            key.key_hash, hash_api_secret(parts[1])):
        return None
    return Principal(key.id, key.role, frozenset(key.sites))


def _principal(
    request: Request, registry: RegistryDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if creds is None:
        raise Unauthorized("missing `Authorization: Bearer <key>`")
    who = principal_for_key(registry, creds.credentials)
    if who is None:
        raise Unauthorized("invalid or revoked API key")
    request.app.state.limits.take(who.key_id)  # api/limits.py: 429 past the key's request rate
    return who


def _admin(who: Annotated[Principal, Depends(_principal)]) -> Principal:
    if who.role != "admin":
        raise Forbidden("this call needs an admin key")
    return who


PrincipalDep = Annotated[Principal, Depends(_principal)]
AdminDep = Annotated[Principal, Depends(_admin)]


def scoped_site(registry: Registry, who: Principal, site_id: str) -> Site:
    """The site if the caller may see it; 404 otherwise, so a site key never learns what else exists."""
    site = registry.site(site_id) if who.can_see(site_id) else None
    if site is None:
        raise NotFound(f"site {site_id!r} not found")
    return site


def scoped_device(registry: Registry, who: Principal, device_id: str) -> Device:
    """The device if its site is visible to the caller; 404 otherwise (as for sites)."""
    device = registry.device(device_id)
    if device is None or not who.can_see(device.site_id):
        raise NotFound(f"device {device_id!r} not found")
    return device


def require_admin(who: Principal) -> None:
    """For admin calls on a site or device id: scope first (404 for what the key cannot see), then role."""
    if who.role != "admin":
        raise Forbidden("this call needs an admin key")


def admin_site(registry: Registry, who: Principal, site_id: str) -> Site:
    """The site for an admin call: 404 for what the key cannot see, before 403 for a non-admin key."""
    site = scoped_site(registry, who, site_id)
    require_admin(who)
    return site


def admin_device(registry: Registry, who: Principal, device_id: str) -> Device:
    """The device for an admin call, checked in the same order as ``admin_site``."""
    device = scoped_device(registry, who, device_id)
    require_admin(who)
    return device
