"""Request and response bodies. ``XCreate`` is what clients send, ``XPublic`` what they get.

Create schemas ignore fields the server owns (``online``, ``last_seen``, ``created_at``,
``verified`` ...): a client cannot set them, and sending them is not an error.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cloud_hub.provisioning import MAX_BATCH_DEVICES
from sync import InputHealth, check_name
from sync.rollout import RolloutStatus

#: Device ids and group names, as ``sync.check_name`` checks them (which also refuses
#: ``.`` and ``..``): stated for the OpenAPI document, while ``check_name`` keeps
#: validating, with its message that says what is allowed.
NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class ErrorPublic(BaseModel):
    """Any refusal but a 422: what went wrong, in words."""

    detail: str


class DeviceCreate(BaseModel):
    """A device to provision."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(json_schema_extra={"pattern": NAME_PATTERN})
    group: str = Field(default="default", json_schema_extra={"pattern": NAME_PATTERN})
    labels: dict[str, str] = Field(default_factory=dict)
    rotate: bool = Field(default=False, description="the device exists: issue new "
                         "credentials (its old password stops working, it is disconnected)")

    @field_validator("id", "group")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)  # TopicError is a ValueError: pydantic reports it


class DeviceBatchItem(BaseModel):
    """One device of a bulk provisioning request (an unusable id or group is reported for
    that device alone, as ``failed``)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(json_schema_extra={"pattern": NAME_PATTERN})
    group: str = Field(default="default", json_schema_extra={"pattern": NAME_PATTERN})


class DeviceBatchCreate(BaseModel):
    """Many devices to provision at once; those that exist are left as they are."""

    model_config = ConfigDict(extra="ignore")

    devices: list[DeviceBatchItem] = Field(min_length=1, max_length=MAX_BATCH_DEVICES)


class DeviceBatchOutcome(BaseModel):
    """What happened to one device of a batch: ``created`` (with its credentials, shown
    once), ``exists`` (untouched) or ``failed`` (``reason``)."""

    id: str
    group: str
    status: Literal["created", "exists", "failed"]
    mqtt: MqttCredentials | None = None
    reason: str = ""


class DeviceBatchResult(BaseModel):
    """Every device of the batch, in its order, and the counts."""

    created: int
    exists: int
    failed: int
    devices: list[DeviceBatchOutcome]


class DevicePublic(BaseModel):
    """A device as the API shows it."""

    id: str
    group: str
    labels: dict[str, str]
    created_at: float
    last_seen: float | None
    online: bool
    status_at: float | None
    models: dict[str, str]
    backend: str
    updates_enabled: bool | None = Field(
        default=None, description="whether the device installs model updates (None: it has "
        "not said)")
    agent_version: str = ""
    telemetry: dict[str, float] = Field(
        default_factory=dict, description="the device's latest telemetry: outbox backlog "
        "(outbox_events, outbox_bytes), per-source input health (name.source)")
    telemetry_at: float | None = None
    inputs: dict[str, InputHealth] = Field(
        default_factory=dict, description="each camera source's input health (brightness, "
        "contrast, sharpness, frozen frames, problems) from the latest telemetry")


class MqttCredentials(BaseModel):
    """Shown once, at provisioning."""

    username: str
    password: str
    host: str
    port: int
    topic_prefix: str


class DeviceProvisioned(DevicePublic):
    """A new device and its credentials."""

    mqtt: MqttCredentials


class EventPublic(BaseModel):
    """An escalation and its verdict (images are separate downloads)."""

    id: str
    device_id: str
    source: str
    reason: str
    priority: int
    captured_at: float
    received_at: float
    edge_model: str
    edge_version: str
    edge_detections: list[dict[str, Any]]
    anomaly_score: float | None
    outcome: str | None
    hub_detections: list[dict[str, Any]] | None
    hub_model: str | None
    hub_version: str | None
    inference_ms: float | None
    decided_at: float | None
    verdict_latency_s: float | None = None
    frame_size: tuple[int, int] | None = Field(
        default=None, description="[width, height] of the frame the boxes are in")
    has_crop: bool
    has_thumbnail: bool


class EventPage(BaseModel):
    """A page of events, newest first."""

    items: list[EventPublic]
    next_cursor: str | None


class SightingPublic(BaseModel):
    """One frame on which the edge detected the tracked object."""

    model_config = ConfigDict(from_attributes=True)

    frame: int = Field(description="the source's frame number")
    box: tuple[float, float, float, float] = Field(
        description="[x1, y1, x2, y2] in the source frame's pixels (the event's "
        "frame_size; its thumbnail is that frame scaled down)")
    score: float


class TrackPublic(BaseModel):
    """The tracked object an event belongs to: the device's source and its track."""

    device_id: str
    source: str
    track_id: int
    first_frame: int


class JournalStepPublic(BaseModel):
    """One step of a tracked object's lifecycle, as the device journaled it (``track/1``).

    ``action``, ``reason`` and ``positive`` are the edge's latest decision on the object;
    ``sightings`` are the frames it was seen on since the previous step.
    """

    model_config = ConfigDict(from_attributes=True)

    step: Literal["new", "update", "end"]
    at: float = Field(description="when the device journaled it (the device's clock, Unix s)")
    received_at: float = Field(description="when the hub got it (Unix s)")
    last_frame: int
    label: str
    action: Literal["local", "escalate", "drop"]
    reason: str
    positive: bool
    sightings: list[SightingPublic]
    event_id: str | None
    escalations: int
    verdict: Literal["confirmed", "rejected"] | None
    verdict_timing: Literal["on-time", "late"] | None
    fell_back: bool
    agrees: bool | None


class EventTimeline(BaseModel):
    """An event and the lifecycle of the tracked object it was escalated for."""

    event: EventPublic
    track: TrackPublic | None = Field(
        description="null when the hub holds no journal step naming the event (a sensor "
        "window, escalated motion, a device that does not publish its journal)")
    steps: list[JournalStepPublic] = Field(description="in the device's order")
    truncated: bool = Field(description="the lifecycle has more steps than were returned")


class ModelPublic(BaseModel):
    """A model version in the registry."""

    name: str
    version: str
    task: str
    runtime: str
    sha256: str
    size_bytes: int
    uploaded_at: float


class TokenCreate(BaseModel):
    """A token to issue."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=128)
    role: Literal["viewer", "operator", "admin"]


class TokenIssued(BaseModel):
    """A new token, shown once."""

    id: int
    name: str
    role: str
    token: str


class TokenPublic(BaseModel):
    """A token as listed (never the token itself)."""

    id: int
    name: str
    role: str
    created_at: float
    last_used: float | None


class RolloutPublic(BaseModel):
    """A rollout: its waves, each device's outcome, its status and why it cannot progress.

    ``warnings`` is empty while nothing stands in the rollout's way; otherwise each entry
    is one sentence (devices it waits for offline for long, updates turned off on them, a
    group with no device). Only a running or paused rollout has warnings.
    """

    id: str
    model: str
    version: str
    group: str
    waves: list[list[str]]
    wave: int
    status: RolloutStatus
    max_failure_share: float
    results: dict[str, str]
    reason: str
    warnings: list[str] = Field(default_factory=list)


class InferenceResult(BaseModel):
    """Detections from ``/v1/infer``."""

    model: str
    version: str
    backend: str
    width: int
    height: int
    detections: list[dict[str, Any]]
