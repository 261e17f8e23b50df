"""``/v1/devices``: the fleet."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from cloud_hub.api.deps import (
    AUTH,
    DeviceIdPath,
    GroupQuery,
    ServiceDep,
    documented,
    require,
    unprocessable,
)
from cloud_hub.api.schemas import (
    DeviceBatchCreate,
    DeviceBatchOutcome,
    DeviceBatchResult,
    DeviceCreate,
    DeviceProvisioned,
    DevicePublic,
    MqttCredentials,
)
from cloud_hub.errors import (
    BrokerUnavailableError,
    DeviceExistsError,
    NotFoundError,
    ProvisioningError,
    StoreUnavailableError,
)
from cloud_hub.provisioning import DeviceSpec

router = APIRouter(prefix="/v1/devices", tags=["devices"])


@router.get("", response_model=list[DevicePublic], dependencies=[require("viewer")],
            responses=AUTH)
def list_devices(service: ServiceDep, group: GroupQuery = None) -> list[dict[str, object]]:
    """Every device, with its online state and installed models."""
    return service.store.list_devices(group=group)


@router.get("/{device_id}", response_model=DevicePublic, dependencies=[require("viewer")],
            responses={**AUTH, **documented(404)})
def get_device(device_id: DeviceIdPath, service: ServiceDep) -> dict[str, object]:
    """One device."""
    try:
        return service.store.get_device(device_id=device_id)
    except NotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc


@router.post("", response_model=DeviceProvisioned, status_code=status.HTTP_201_CREATED,
             dependencies=[require("admin")],
             responses={**AUTH, **documented(409, 503)})
def provision_device(body: DeviceCreate, service: ServiceDep) -> dict[str, object]:
    """Register a device and issue its MQTT credentials (the password is shown once).

    An existing device gets new credentials only with ``rotate``: its old password stops
    working and its session is disconnected.
    """
    try:
        device, credentials = service.provision_device(body.id, body.group, body.labels,
                                                       rotate=body.rotate)
    except DeviceExistsError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except ProvisioningError as exc:
        raise unprocessable(("body", "id"), str(exc)) from exc
    except BrokerUnavailableError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    settings = service.settings
    device["mqtt"] = MqttCredentials(
        username=credentials.username, password=credentials.password,
        host=settings.mqtt_host, port=settings.mqtt_port, topic_prefix=settings.mqtt_prefix,
    )
    return device


@router.post("/batch", response_model=DeviceBatchResult, dependencies=[require("admin")],
             responses={**AUTH, **documented(503)})
def provision_devices(body: DeviceBatchCreate, service: ServiceDep) -> DeviceBatchResult:
    """Provision many devices in one call (passwords are shown once).

    Devices that exist are left as they are (``exists``), so the same batch may be sent
    again; one the broker refused, an id listed twice or one of the hub's own names is
    ``failed`` with its reason. Only devices whose broker client was created are
    registered.
    """
    try:
        outcomes = service.provision_devices(
            [DeviceSpec(item.id, item.group) for item in body.devices])
    except (BrokerUnavailableError, StoreUnavailableError) as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    settings = service.settings
    items = [DeviceBatchOutcome(
        id=o.device_id, group=o.group, status=o.status, reason=o.reason,
        mqtt=MqttCredentials(username=o.credentials.username, password=o.credentials.password,
                             host=settings.mqtt_host, port=settings.mqtt_port,
                             topic_prefix=settings.mqtt_prefix) if o.credentials else None)
        for o in outcomes]
    return DeviceBatchResult(
        created=sum(i.status == "created" for i in items),
        exists=sum(i.status == "exists" for i in items),
        failed=sum(i.status == "failed" for i in items), devices=items)


@router.delete("/{device_id}", status_code=status.HTTP_204_NO_CONTENT,
               dependencies=[require("admin")], responses={**AUTH, **documented(404, 503)})
def revoke_device(device_id: DeviceIdPath, service: ServiceDep) -> None:
    """Revoke a device's broker access: it is disconnected and cannot reconnect.

    Its events stay; provisioning it again needs ``rotate``.
    """
    try:
        service.revoke_device(device_id)
    except NotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except BrokerUnavailableError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
