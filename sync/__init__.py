"""What crosses between edge and hub: topic layout, message codec, event ids.

Pure code, no I/O of its own (apart from ``sync/tls.py``, the MQTT clients' TLS that both
sides share, and ``sync/cli_common.py``, the options and log set-up both command lines
share): both the edge agent and the cloud hub import it, and it imports neither.
"""

from __future__ import annotations

from sync.cli_common import (
    JsonLogFormatter,
    add_log_options,
    configure_logging,
    release,
    share_options,
    version_line,
)
from sync.errors import (
    BrokerTlsError,
    MalformedMessageError,
    MessageError,
    OversizedMessageError,
    RolloutStateError,
    SyncError,
    TopicError,
)
from sync.ids import EventIdFactory, event_id_time_ms, is_event_id, uuid7_from
from sync.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_RECEIPT_IDS,
    AnyMessage,
    DetectionPayload,
    EscalationReason,
    EventMessage,
    JournalStep,
    ModelAnnouncement,
    ModelRef,
    ReceiptMessage,
    SightingPayload,
    StatusMessage,
    TelemetryMessage,
    TrackEventMessage,
    UpdateReport,
    VerdictMessage,
    decode,
    encode,
    peek_schema,
)
from sync.tls import TlsFiles, check_broker_tls, client_context
from sync.topics import DEVICE_KINDS, VERSION, DeviceKind, TopicAddress, TopicLayout, check_name

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEVICE_KINDS",
    "MAX_RECEIPT_IDS",
    "VERSION",
    "AnyMessage",
    "BrokerTlsError",
    "DetectionPayload",
    "DeviceKind",
    "EscalationReason",
    "EventIdFactory",
    "EventMessage",
    "JournalStep",
    "JsonLogFormatter",
    "MalformedMessageError",
    "MessageError",
    "ModelAnnouncement",
    "ModelRef",
    "OversizedMessageError",
    "ReceiptMessage",
    "RolloutStateError",
    "SightingPayload",
    "StatusMessage",
    "SyncError",
    "TelemetryMessage",
    "TlsFiles",
    "TopicAddress",
    "TopicError",
    "TopicLayout",
    "TrackEventMessage",
    "UpdateReport",
    "VerdictMessage",
    "add_log_options",
    "check_broker_tls",
    "check_name",
    "client_context",
    "configure_logging",
    "decode",
    "encode",
    "event_id_time_ms",
    "is_event_id",
    "peek_schema",
    "release",
    "share_options",
    "uuid7_from",
    "version_line",
]
