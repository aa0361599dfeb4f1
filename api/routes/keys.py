"""API keys, managed by admins: create (the key is shown once), list (never the secret), revoke."""

from __future__ import annotations

from fastapi import APIRouter, Response

from smartpark.api.deps import AdminDep, RegistryDep
from smartpark.api.errors import ADMIN_ERRORS, NotFound, Unprocessable
from smartpark.api.models import KeyCreate, KeyCreated, KeyPublic, Page
from smartpark.api.routes.sites import Limit, Offset
from smartpark.core.errors import RegistryError
from smartpark.core.registry.secrets import split_api_key

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=ADMIN_ERRORS)


@router.post("", status_code=201)
def create_key(body: KeyCreate, registry: RegistryDep, _admin: AdminDep) -> KeyCreated:
    try:
        key = registry.create_api_key(body.role, body.sites)
    except RegistryError as exc:
        raise Unprocessable(str(exc)) from exc
    key_id = split_api_key(key)[0]  # type: ignore[index]
    return KeyCreated(**KeyPublic.model_validate(registry.api_key(key_id)).model_dump(), key=key)


@router.get("")
def list_keys(registry: RegistryDep, _admin: AdminDep, offset: Offset = 0, limit: Limit = 100) -> Page[KeyPublic]:
    keys = registry.api_keys()
    items = [KeyPublic.model_validate(k) for k in keys[offset:offset + limit]]
    return Page[KeyPublic](items=items, total=len(keys), offset=offset, limit=limit)


@router.delete("/{key_id}", status_code=204, response_class=Response)
def revoke_key(key_id: str, registry: RegistryDep, _admin: AdminDep) -> Response:
    """Revoke a key: it is refused from the next request on (kept for the audit trail)."""
    if not registry.revoke_api_key(key_id):
        raise NotFound(f"key {key_id!r} not found")
    return Response(status_code=204)
