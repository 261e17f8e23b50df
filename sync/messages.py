"""Messages between agent and hub, and their codec: JSON, validated strictly, no I/O.

Every message carries a ``schema`` tag (``event/1``, ``verdict/1`` …). Decoding checks
the size first, then the JSON, then every field (no number may be infinite or NaN); any
failure is one :class:`MessageError` naming the problem.

An escalation's images travel as raw bytes, not base64 inside the JSON (a third more
bytes, and the hub's CPU to undo it): :func:`encode_event` writes a *framed event*::

    magic b"\x89EVT" | version 1 | flags (1: crop, 2: thumbnail) | 2 bytes zero
    | header length, crop length, thumbnail length (3 x uint32, big-endian)
    | header: the event's JSON without its images | crop JPEG | thumbnail JPEG

The fixed 20-byte preamble states every length before anything is read; the lengths must
add up to the payload exactly, the header is bounded (:data:`MAX_EVENT_HEADER_BYTES`) and
validated as strictly as a JSON event, and may not carry images of its own. JSON cannot
start with the magic's first byte, so :func:`decode` tells the two apart by the payload
alone: old JSON events (from an outbox written before the upgrade) are still read.
Publishers also say which it is in MQTT 5 properties (:data:`EVENT_CONTENT_TYPE`, or the
UTF-8 payload format indicator for JSON), for brokers and bridges; the payload decides.
Chosen over CBOR (``cbor2``) by measurement (``python -m bench codec``, a real 31.7 KB
crop and thumbnail): the same bytes (32,142 against CBOR's 32,110; JSON with base64:
42,736), encoding several times faster, decoding alike (both are mostly the message's
validation), no new dependency, and the header keeps the strict JSON validation every
other message goes through.
"""

from __future__ import annotations

import json
import struct
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sync.errors import MalformedMessageError, OversizedMessageError
from sync.ids import is_event_id
from sync.install import Step
from sync.topics import check_name

DEFAULT_MAX_MESSAGE_BYTES = 512 * 1024
EVENT_MAGIC = b"\x89EVT"
EVENT_FRAME_VERSION = 1
EVENT_CONTENT_TYPE = "application/vnd.cloud-hub.event+frame"
MAX_EVENT_HEADER_BYTES = 256 * 1024  # detections, readings: the JSON part alone
_PREAMBLE = struct.Struct(">4sBBxxIII")
_CROP, _THUMBNAIL = 1, 2

Score = Annotated[float, Field(ge=0.0, le=1.0)]
Box = tuple[float, float, float, float]


class _Message(BaseModel):
    # allow_inf_nan: JSON's ``Infinity``, ``NaN`` and ``1e999`` are refused in every
    # number field, on both sides, at decode and at construction alike.
    model_config = ConfigDict(
        extra="forbid", frozen=True, ser_json_bytes="base64", val_json_bytes="base64",
        allow_inf_nan=False,
    )


class ModelRef(_Message):
    """Which model produced a result."""

    name: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=64)


class DetectionPayload(_Message):
    """One detection: box in source-frame pixels, score, label, optional keypoints."""

    box: Box
    score: Score
    label: str = Field(min_length=1, max_length=64)
    keypoints: tuple[tuple[float, float], ...] = ()


class _DeviceMessage(_Message):
    device_id: str

    @field_validator("device_id")
    @classmethod
    def _device(cls, value: str) -> str:
        return check_name(value)


class _EventBound(_DeviceMessage):
    event_id: str

    @field_validator("event_id")
    @classmethod
    def _event_id(cls, value: str) -> str:
        if not is_event_id(value):
            raise ValueError("must be a lower-case UUIDv7")
        return value


EscalationReason = Literal["uncertain", "suspicious", "audit", "anomaly", "unexplained"]


class EventMessage(_EventBound):
    """An escalation from an edge agent.

    Attributes:
        captured_at: When the frame or window was captured (Unix seconds).
        priority: 0 (routine) to 9 (most urgent); decides outbox eviction order.
        detections: What the edge model saw (empty for anomaly windows).
        crop_jpeg: The region worth a second look, JPEG, bounded in size.
        thumbnail_jpeg: The whole frame, small, JPEG.
        anomaly_score: The edge anomaly model's score, for sensor windows.
        readings: The sensor window that was scored.
        verdict_timeout_s: How long the device waits for this verdict before it decides
            locally (its fallback timeout). The hub answers ``busy`` at once rather than
            judge an event it cannot judge in time; absent: the hub assumes its default.
    """

    schema_: Literal["event/1"] = Field(default="event/1", alias="schema")
    source: str = Field(min_length=1, max_length=128)
    captured_at: float
    reason: EscalationReason
    priority: int = Field(ge=0, le=9)
    model: ModelRef
    detections: tuple[DetectionPayload, ...] = Field(default=(), max_length=100)
    frame_size: tuple[int, int] | None = None
    crop_box: Box | None = None
    crop_jpeg: bytes | None = None
    thumbnail_jpeg: bytes | None = None
    anomaly_score: float | None = None
    readings: tuple[float, ...] = Field(default=(), max_length=4096)
    verdict_timeout_s: float | None = Field(default=None, gt=0, le=86400)

    model_config = ConfigDict(populate_by_name=True)


class VerdictMessage(_EventBound):
    """The hub's judgement of one escalation, sent back to its device."""

    schema_: Literal["verdict/1"] = Field(default="verdict/1", alias="schema")
    outcome: Literal["confirmed", "rejected"]
    detections: tuple[DetectionPayload, ...] = Field(default=(), max_length=100)
    model: ModelRef
    inference_ms: float = Field(ge=0.0)
    decided_at: float

    model_config = ConfigDict(populate_by_name=True)


BusyReason = Literal["queue-full", "deadline"]


class BusyMessage(_EventBound):
    """The hub's answer that it stored an escalation but will not judge it in time.

    A variant of the verdict, sent on the device's verdicts topic instead of one: the hub
    has the event (as a receipt says), and the device should decide locally now rather
    than wait out its timeout, and publish more slowly for a while.

    Attributes:
        reason: ``queue-full`` (the hub's admission queue had no room for it, at its
            priority and the device's share) or ``deadline`` (it would not be judged
            within the device's ``verdict_timeout_s``).
        retry_after_s: A hint: how long the device should publish more slowly.
        at: When the hub decided (its clock).
    """

    schema_: Literal["busy/1"] = Field(default="busy/1", alias="schema")
    reason: BusyReason
    retry_after_s: float = Field(default=1.0, ge=0.0, le=3600.0)
    at: float

    model_config = ConfigDict(populate_by_name=True)


MAX_RECEIPT_IDS = 256


class ReceiptMessage(_DeviceMessage):
    """The hub's word that it has stored these events (durably), before their verdicts.

    Sent on the device's verdicts topic. A device deletes an escalation from its outbox
    only on this or on the event's verdict: a PUBACK says only that the broker took it.
    """

    schema_: Literal["receipt/1"] = Field(default="receipt/1", alias="schema")
    event_ids: tuple[str, ...] = Field(min_length=1, max_length=MAX_RECEIPT_IDS)
    at: float

    model_config = ConfigDict(populate_by_name=True)

    @field_validator("event_ids")
    @classmethod
    def _event_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for event_id in value:
            if not is_event_id(event_id):
                raise ValueError(f"{event_id!r} is not a lower-case UUIDv7")
        return value


class StatusMessage(_DeviceMessage):
    """A device's retained online/offline state (also its MQTT last will)."""

    schema_: Literal["status/1"] = Field(default="status/1", alias="schema")
    state: Literal["online", "offline"]
    at: float
    epoch: float | None = Field(
        default=None, description="the device's time when this connection was opened; with "
        "seq it orders a device's statuses (a last will is written at connect time)")
    seq: int = Field(default=0, ge=0, le=2**31 - 1)
    agent_version: str = ""
    models: dict[str, str] = Field(default_factory=dict)
    backend: str = ""
    updates_enabled: bool | None = Field(
        default=None, description="whether the agent installs signed model updates (its "
        "config's updates.enabled); None from agents that do not say: a rollout to a device "
        "that installs none cannot progress, and the hub warns about it")

    model_config = ConfigDict(populate_by_name=True)


InputProblem = Literal["dark", "low-contrast", "blurry", "frozen"]


class InputHealth(_Message):
    """How one camera's picture looks, by its latest frame (``edge_agent.inputs``).

    Attributes:
        brightness: Mean luma, 0-255.
        contrast: Standard deviation of luma (RMS contrast), 0-255.
        sharpness: Variance of the luma's Laplacian over the variance of luma: edges
            against contrast, so darkness alone does not read as blur.
        frozen_frames: Frames in a row identical to the one before (a stuck camera).
        problems: What an operator should look at.
    """

    brightness: float = Field(ge=0, le=255)
    contrast: float = Field(ge=0, le=255)
    sharpness: float = Field(ge=0)
    frozen_frames: int = Field(ge=0)
    problems: tuple[InputProblem, ...] = Field(default=(), max_length=4)


#: Telemetry values that count what waits in a device's outbox.
BACKLOG_VALUES = ("outbox_events", "outbox_bytes")
MAX_BACKLOG_VALUE = float(2**53)  # counted exactly by a float


class TelemetryMessage(_DeviceMessage):
    """A device's periodic counters and gauges, and the health of each camera source."""

    schema_: Literal["telemetry/1"] = Field(default="telemetry/1", alias="schema")
    at: float
    values: dict[str, float]
    inputs: dict[str, InputHealth] = Field(default_factory=dict, max_length=256)

    model_config = ConfigDict(populate_by_name=True)

    @field_validator("values")
    @classmethod
    def _backlog_is_a_count(cls, values: dict[str, float]) -> dict[str, float]:
        """The outbox's backlog (``outbox_events``, ``outbox_bytes``) is a count: the hub
        adds the fleet's up, and one device's ``-1e308`` or ``1e308`` would make the
        total meaningless."""
        for name in BACKLOG_VALUES:
            value = values.get(name)
            if value is not None and not 0 <= value <= MAX_BACKLOG_VALUE:
                raise ValueError(f"{name} must be a count from 0 to {MAX_BACKLOG_VALUE:.0f}, "
                                 f"not {value!r}")
        return values


class ModelAnnouncement(_Message):
    """The hub's retained word to a device group: this version, for these devices."""

    schema_: Literal["announce/1"] = Field(default="announce/1", alias="schema")
    rollout_id: str = Field(min_length=1, max_length=64)
    group: str
    model: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=64)
    target: str = Field(min_length=1, max_length=256)
    devices: tuple[str, ...] | None = Field(default=None, description="None: the whole group")
    at: float

    model_config = ConfigDict(populate_by_name=True)

    @field_validator("model", "version")
    @classmethod
    def _path_safe(cls, value: str) -> str:
        # The device names folders after them before anything is verified: one plain
        # name each (no '/', never '.' or '..').
        return check_name(value, "model name or version")


class UpdateReport(_DeviceMessage):
    """A device's report of one install step (and, when it failed, why)."""

    schema_: Literal["update/1"] = Field(default="update/1", alias="schema")
    rollout_id: str | None = None
    model: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=64)
    previous: str | None = None
    step: Step  # the install step vocabulary, the same on both sides
    reason: str = Field(default="", max_length=2000)
    at: float

    model_config = ConfigDict(populate_by_name=True)


MAX_JOURNAL_SIGHTINGS = 256
#: Frame numbers, track ids and counts stay exact in JSON (and in a 64-bit column).
MAX_JOURNAL_INT = 2**53 - 1
JournalStep = Literal["new", "update", "end"]


class SightingPayload(_Message):
    """One frame on which a tracked object was detected: frame number, box, score."""

    frame: int = Field(ge=0, le=MAX_JOURNAL_INT)
    box: Box
    score: Score


class TrackEventMessage(_DeviceMessage):
    """One step of a tracked object's lifecycle in the decision journal (``track/1``).

    ``new`` when the edge first sees the object, ``update`` when its decision changes or
    an escalation, verdict, fallback or reconciliation happens, ``end`` when the track
    ends. Each carries the frames it was seen on since the previous step.

    Attributes:
        track_id: The source's track number (unique while the agent runs).
        first_frame: The source's frame number where the track began.
        last_frame: The last frame the object was detected on.
        action: The edge's latest decision (``local``, ``escalate``, ``drop``), and
            ``reason`` why (the policy's reason, or ``verdict-held`` for a frame the
            detector missed but the hub's confirmation covered).
        positive: The answer for this object on its latest frame.
        event_id: The track's latest escalation, if any.
        escalations: How many times the track was escalated.
        verdict: The hub's latest verdict on the track, and ``verdict_timing`` (``on-time``
            or ``late``, after the local fallback ran).
        fell_back: The latest escalation's verdict did not come in time: the edge decided.
        agrees: For a late verdict: whether it agrees with the local fallback.
    """

    schema_: Literal["track/1"] = Field(default="track/1", alias="schema")
    step: JournalStep
    source: str
    track_id: int = Field(ge=0, le=MAX_JOURNAL_INT)
    at: float
    first_frame: int = Field(ge=0, le=MAX_JOURNAL_INT)
    last_frame: int = Field(ge=0, le=MAX_JOURNAL_INT)
    label: str = Field(min_length=1, max_length=64)
    action: Literal["local", "escalate", "drop"]
    reason: str = Field(min_length=1, max_length=32)
    positive: bool
    sightings: tuple[SightingPayload, ...] = Field(default=(), max_length=MAX_JOURNAL_SIGHTINGS)
    event_id: str | None = None
    escalations: int = Field(default=0, ge=0, le=MAX_JOURNAL_INT)
    verdict: Literal["confirmed", "rejected"] | None = None
    verdict_timing: Literal["on-time", "late"] | None = None
    fell_back: bool = False
    agrees: bool | None = None

    model_config = ConfigDict(populate_by_name=True)

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        return check_name(value, "source name")


AnyMessage = (EventMessage | VerdictMessage | BusyMessage | ReceiptMessage | StatusMessage
              | TelemetryMessage | ModelAnnouncement | UpdateReport | TrackEventMessage)
_M = TypeVar("_M", bound=_Message)


def encode(message: _Message) -> bytes:
    """Serialise a message to compact JSON bytes."""
    return message.model_dump_json(by_alias=True, exclude_none=True).encode()


def decode(
    payload: bytes, kind: type[_M], *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> _M:
    """Parse and validate ``payload`` as a ``kind`` message.

    An :class:`EventMessage` is read from a framed event (:func:`encode_event`) or from
    JSON alike; every other kind only from JSON.

    Raises:
        OversizedMessageError: ``payload`` is longer than ``max_bytes``.
        MalformedMessageError: Not JSON, not an object, wrong schema tag, or a bad field;
            a framed event whose lengths, flags or header are wrong.
    """
    if len(payload) > max_bytes:
        raise OversizedMessageError(len(payload), max_bytes)
    if is_framed_event(payload):
        if kind is not EventMessage:
            raise MalformedMessageError(f"a framed event is not a {kind.__name__}")
        framed: _M = _decode_framed_event(payload)  # type: ignore[assignment]
        return framed
    return _decode_json(payload, kind)


def _decode_json(payload: bytes, kind: type[_M]) -> _M:
    try:
        return kind.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise MalformedMessageError(f"not valid JSON: {first['msg']}") from exc
        field = ".".join(str(p) for p in first["loc"]) or None
        detail = "; ".join(_describe(e) for e in exc.errors()[:5])
        raise MalformedMessageError(f"bad {kind.__name__}: {detail}", field=field) from exc


def encode_event(event: EventMessage) -> bytes:
    """Serialise an escalation as a framed event: its JSON without images, then the
    images' raw bytes (see the module's docstring)."""
    header = event.model_dump_json(by_alias=True, exclude_none=True,
                                   exclude={"crop_jpeg", "thumbnail_jpeg"}).encode()
    crop, thumbnail = event.crop_jpeg, event.thumbnail_jpeg
    flags = (_CROP if crop is not None else 0) | (_THUMBNAIL if thumbnail is not None else 0)
    preamble = _PREAMBLE.pack(EVENT_MAGIC, EVENT_FRAME_VERSION, flags, len(header),
                              len(crop or b""), len(thumbnail or b""))
    return b"".join((preamble, header, crop or b"", thumbnail or b""))


def is_framed_event(payload: bytes) -> bool:
    """Whether ``payload`` is a framed event (else JSON, or nothing this codec writes)."""
    return payload[:len(EVENT_MAGIC)] == EVENT_MAGIC


def _decode_framed_event(payload: bytes) -> EventMessage:
    """Read a framed event whose total size was checked; every length is checked
    against the payload before it is used."""
    if len(payload) < _PREAMBLE.size:
        raise MalformedMessageError("framed event shorter than its preamble")
    _, version, flags, header_size, crop_size, thumbnail_size = _PREAMBLE.unpack_from(payload)
    if version != EVENT_FRAME_VERSION:
        raise MalformedMessageError(f"framed event version {version}; this side reads "
                                    f"{EVENT_FRAME_VERSION}")
    if flags & ~(_CROP | _THUMBNAIL):
        raise MalformedMessageError(f"framed event flags {flags:#x} name unknown parts")
    if (crop_size and not flags & _CROP) or (thumbnail_size and not flags & _THUMBNAIL):
        raise MalformedMessageError("framed event has bytes for an image it does not flag")
    if header_size > MAX_EVENT_HEADER_BYTES:
        raise MalformedMessageError(f"framed event header of {header_size} bytes exceeds "
                                    f"{MAX_EVENT_HEADER_BYTES}")
    if _PREAMBLE.size + header_size + crop_size + thumbnail_size != len(payload):
        raise MalformedMessageError(
            f"framed event parts ({header_size} + {crop_size} + {thumbnail_size} bytes) do "
            f"not add up to its {len(payload) - _PREAMBLE.size} bytes")
    start = _PREAMBLE.size + header_size
    event = _decode_json(payload[_PREAMBLE.size:start], EventMessage)  # never a frame again
    if event.crop_jpeg is not None or event.thumbnail_jpeg is not None:
        raise MalformedMessageError("a framed event's images travel after its header, "
                                    "not inside it", field="crop_jpeg")
    return event.model_copy(update={
        "crop_jpeg": payload[start:start + crop_size] if flags & _CROP else None,
        "thumbnail_jpeg": payload[start + crop_size:] if flags & _THUMBNAIL else None,
    })


def peek_schema(payload: bytes) -> str | None:
    """The ``schema`` tag of a payload (a framed event's is ``event/1``), or ``None`` if
    there is none."""
    if is_framed_event(payload):
        return "event/1"
    try:
        raw: Any = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None  # a hostile nesting depth is just not a message
    return raw.get("schema") if isinstance(raw, dict) else None


def _describe(error: Any) -> str:
    loc = ".".join(str(p) for p in error["loc"]) or "(message)"
    if error["type"] == "missing":
        return f"{loc}: required field is missing"
    return f"{loc}: {error['msg']}"
