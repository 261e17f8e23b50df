"""``/v1/rollouts`` and publishing: model versions going out to the fleet."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field

from cloud_hub.api.deps import AUTH, ServiceDep, documented, require
from cloud_hub.api.schemas import ErrorPublic, RolloutPublic
from cloud_hub.distribution import ModelDistribution, warnings_now
from cloud_hub.errors import HubError, NotFoundError, TargetsKeyOfflineError
from cloud_hub.service import HubService
from models import ModelError
from sync import RolloutStateError
from sync.rollout import Rollout, RolloutStatus

router = APIRouter(tags=["rollouts"])

TARGETS_KEY_OFFLINE: dict[int | str, dict[str, Any]] = {403: {"model": ErrorPublic, "description": (
    "the token's role is too low, or signing is off: the targets key is offline")}}


class RolloutCreate(BaseModel):
    """A rollout to start (its id, waves and status are the server's)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    version: str
    group: str
    canary_percent: float = Field(default=10.0, gt=0, le=100)
    max_failure_share: float = Field(default=0.2, ge=0, le=1)


class PublishRequest(BaseModel):
    """What a published version is built for."""

    model_config = ConfigDict(extra="ignore")

    hardware: list[str] = Field(default_factory=lambda: ["any"])


def _distribution(service: HubService) -> ModelDistribution:
    if service.distribution is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the hub is starting")
    return service.distribution


@router.post("/v1/models/{name}/{version}/publish", status_code=status.HTTP_201_CREATED,
             dependencies=[require("admin")],
             responses={**AUTH, **documented(404, 409, 503), **TARGETS_KEY_OFFLINE})
def publish_model(name: str, version: str, body: PublishRequest,
                  service: ServiceDep) -> dict[str, str]:
    """Sign an uploaded version into the TUF repository that devices update from.

    Where the hub keeps its targets key offline (``CLOUD_HUB_TARGETS_KEY_OFFLINE``), this
    route is off (403, saying so): publish with ``cloud-hub models publish BUNDLE
    --targets-key FILE`` on the machine that holds the key.
    """
    distribution = _distribution(service)
    try:
        bundle = distribution.models.resolve(f"{name}@{version}")
        path = distribution.publish(bundle, hardware=body.hardware)
    except TargetsKeyOfflineError as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from exc
    except ModelError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except HubError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return {"target": path}


def _public(service: HubService, rollout: Rollout) -> RolloutPublic:
    return RolloutPublic.model_validate(
        {**rollout.to_dict(), "warnings": warnings_now(service.store, service.settings, rollout)})


@router.get("/v1/rollouts", response_model=list[RolloutPublic],
            dependencies=[require("viewer")], responses=AUTH)
def list_rollouts(service: ServiceDep,
                  status_filter: RolloutStatus | None = None) -> list[RolloutPublic]:
    """Every rollout, newest first, each with its warnings."""
    return [_public(service, Rollout.from_dict(r))
            for r in service.store.list_rollouts(status=status_filter)]


@router.get("/v1/rollouts/{rollout_id}", response_model=RolloutPublic,
            dependencies=[require("viewer")], responses={**AUTH, **documented(404)})
def get_rollout(rollout_id: str, service: ServiceDep) -> RolloutPublic:
    """One rollout: waves, outcomes per device, status, and why it cannot progress."""
    try:
        return _public(service, Rollout.from_dict(
            service.store.get_rollout(rollout_id=rollout_id)))
    except NotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc


@router.post("/v1/rollouts", status_code=status.HTTP_201_CREATED, response_model=RolloutPublic,
             dependencies=[require("operator")], responses={**AUTH, **documented(404, 409, 503)})
def start_rollout(body: RolloutCreate, service: ServiceDep) -> RolloutPublic:
    """Start a staged rollout: canaries first, then the rest of the group."""
    try:
        rollout = _distribution(service).start(
            model=body.model, version=body.version, group=body.group,
            canary_percent=body.canary_percent, max_failure_share=body.max_failure_share)
    except NotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except HubError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return _public(service, rollout)


class RolloutCancel(BaseModel):
    """Why a rollout is cancelled (kept as its reason)."""

    model_config = ConfigDict(extra="ignore")

    reason: str = Field(default="cancelled by the operator", max_length=500)


def _command(service: HubService, rollout_id: str,
             command: Callable[[ModelDistribution], Rollout]) -> RolloutPublic:
    distribution = _distribution(service)
    try:
        return _public(service, command(distribution))
    except NotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except RolloutStateError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


@router.post("/v1/rollouts/{rollout_id}/cancel", response_model=RolloutPublic,
             dependencies=[require("operator")], responses={**AUTH, **documented(404, 409, 503)})
def cancel_rollout(rollout_id: str, service: ServiceDep,
                   body: RolloutCancel | None = None) -> RolloutPublic:
    """Stop a rollout where it is: devices that installed keep the version, no other device
    is told to install it. A final rollout (completed, halted, rolled back) is a 409."""
    reason = (body or RolloutCancel()).reason
    return _command(service, rollout_id, lambda d: d.cancel(rollout_id, reason))


@router.post("/v1/rollouts/{rollout_id}/pause", response_model=RolloutPublic,
             dependencies=[require("operator")], responses={**AUTH, **documented(404, 409, 503)})
def pause_rollout(rollout_id: str, service: ServiceDep) -> RolloutPublic:
    """Start no further wave until resumed (devices already told go on installing). Only
    a running rollout pauses (409 otherwise); pausing a paused one changes nothing."""
    return _command(service, rollout_id, lambda d: d.pause(rollout_id))


@router.post("/v1/rollouts/{rollout_id}/resume", response_model=RolloutPublic,
             dependencies=[require("operator")], responses={**AUTH, **documented(404, 409, 503)})
def resume_rollout(rollout_id: str, service: ServiceDep) -> RolloutPublic:
    """Go on with a paused rollout (409 unless paused or running)."""
    return _command(service, rollout_id, lambda d: d.resume(rollout_id))


@router.post("/v1/rollouts/{rollout_id}/rollback", response_model=RolloutPublic,
             dependencies=[require("operator")],
             responses={**AUTH, **documented(404, 409, 503), **TARGETS_KEY_OFFLINE})
def rollback(rollout_id: str, service: ServiceDep) -> RolloutPublic:
    """Stop a rollout and ship the previous model to the whole group again (signing it
    needs the targets key: where it is offline, this route is off, as publishing is)."""
    try:
        again = _distribution(service).roll_back(rollout_id)
    except TargetsKeyOfflineError as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from exc
    except NotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except HubError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return _public(service, again)
