"""Request dependencies as Annotated shortcuts: the registry, the store, and the caller's API key scope."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from smartpark.api.errors import NotFound, Unauthorized
from smartpark.core.catalog import Catalog
from smartpark.core.registry import Registry, Site
from smartpark.core.registry.secrets import hash_api_secret, split_api_key
from smartpark.core.store.base import TimeSeriesStore

__all__ = ["CatalogDep", "Principal", "PrincipalDep", "RegistryDep", "StoreDep", "scoped_site"]

_bearer = HTTPBearer(auto_error=False, description="An API key from `smartpark keys create`")


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    role: str
    sites: frozenset[str]

    def can_see(self, site_id: str) -> bool:
        return self.role == "admin" or site_id in self.sites


def _registry(request: Request) -> Registry:
    return request.app.state.registry


def _store(request: Request) -> TimeSeriesStore:
    return request.app.state.store


def _catalog(request: Request) -> Catalog:
    return request.app.state.catalog


RegistryDep = Annotated[Registry, Depends(_registry)]
StoreDep = Annotated[TimeSeriesStore, Depends(_store)]
CatalogDep = Annotated[Catalog, Depends(_catalog)]


def _principal(
    registry: RegistryDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if creds is None:
        raise Unauthorized("missing `Authorization: Bearer <key>`")
    parts = split_api_key(creds.credentials)
    key = registry.api_key(parts[0]) if parts else None
    if parts is None or key is None or key.revoked or not hmac.compare_digest(
            key.key_hash, hash_api_secret(parts[1])):
        raise Unauthorized("invalid or revoked API key")
    return Principal(key.id, key.role, frozenset(key.sites))


PrincipalDep = Annotated[Principal, Depends(_principal)]


def scoped_site(registry: Registry, who: Principal, site_id: str) -> Site:
    """The site if the caller may see it; 404 otherwise, so a site key never learns what else exists."""
    site = registry.site(site_id) if who.can_see(site_id) else None
    if site is None:
        raise NotFound(f"site {site_id!r} not found")
    return site
