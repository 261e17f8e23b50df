"""What crosses between edge and hub: topic layout, message codec, event ids.

Pure code, no I/O of its own: both the edge agent and the cloud hub import it, and it
imports neither.
"""

from __future__ import annotations

from sync.errors import (
    MalformedMessageError,
    MessageError,
    OversizedMessageError,
    SyncError,
    TopicError,
)
from sync.ids import EventIdFactory, event_id_time_ms, is_event_id, uuid7_from
from sync.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    AnyMessage,
    DetectionPayload,
    EscalationReason,
    EventMessage,
    ModelAnnouncement,
    ModelRef,
    StatusMessage,
    TelemetryMessage,
    UpdateReport,
    VerdictMessage,
    decode,
    encode,
    peek_schema,
)
from sync.topics import DEVICE_KINDS, VERSION, DeviceKind, TopicAddress, TopicLayout, check_name

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEVICE_KINDS",
    "VERSION",
    "AnyMessage",
    "DetectionPayload",
    "DeviceKind",
    "EscalationReason",
    "EventIdFactory",
    "EventMessage",
    "MalformedMessageError",
    "MessageError",
    "ModelAnnouncement",
    "ModelRef",
    "OversizedMessageError",
    "StatusMessage",
    "SyncError",
    "TelemetryMessage",
    "TopicAddress",
    "TopicError",
    "TopicLayout",
    "UpdateReport",
    "VerdictMessage",
    "check_name",
    "decode",
    "encode",
    "event_id_time_ms",
    "is_event_id",
    "peek_schema",
    "uuid7_from",
]
