"""One device by id (ids are unique in the park): read by anyone who may see its site; edit, delete and new
MQTT credentials for admins. Another site's device is 404, as for sites."""

from __future__ import annotations

from fastapi import APIRouter, Response

from smartpark.api.deps import PrincipalDep, RegistryDep, admin_device, scoped_device
from smartpark.api.errors import ADMIN_ERRORS, ERRORS, Conflict, Unprocessable
from smartpark.api.models import DeviceProvisioned, DevicePublic, DeviceUpdate
from smartpark.api.routes.sites import provisioned
from smartpark.core.errors import RegistryError
from smartpark.core.registry import Registry


def set_hj212(registry: Registry, device: str, mn: str, pw: str) -> None:
    """An MN already bound to another device is a conflict (409), not a silent rebinding."""
    try:
        registry.set_hj212(device, mn, pw)
    except RegistryError as exc:
        raise Conflict(str(exc)) from exc


router = APIRouter(prefix="/v1/devices", tags=["devices"], responses=ERRORS)


@router.get("/{device}")
def get_device(device: str, registry: RegistryDep, who: PrincipalDep) -> DevicePublic:
    return DevicePublic.model_validate(scoped_device(registry, who, device))


@router.patch("/{device}", responses=ADMIN_ERRORS)
def update_device(device: str, body: DeviceUpdate, registry: RegistryDep, who: PrincipalDep) -> DevicePublic:
    current = admin_device(registry, who, device)
    fields = body.model_dump(exclude_unset=True, exclude={"hj212"})
    problem = registry.hierarchy_problem(current.site_id, device, fields)
    if problem:
        raise Unprocessable(problem)
    if body.hj212 is not None:
        set_hj212(registry, device, body.hj212.mn, body.hj212.pw)
    return DevicePublic.model_validate(registry.update_device(device, fields))


@router.delete("/{device}", status_code=204, response_class=Response, responses=ADMIN_ERRORS)
def delete_device(device: str, registry: RegistryDep, who: PrincipalDep) -> Response:
    admin_device(registry, who, device)
    registry.delete_device(device)
    return Response(status_code=204)


@router.post("/{device}/credentials", responses=ADMIN_ERRORS)
def rotate_credentials(device: str, registry: RegistryDep, who: PrincipalDep) -> DeviceProvisioned:
    """New MQTT password for the device (shown once); the old one stops working at the broker's next reload."""
    admin_device(registry, who, device)
    return provisioned(registry, device)
