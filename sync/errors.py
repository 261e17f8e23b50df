"""Errors raised by the sync layer (topics and message codec).

Hierarchy::

    SyncError                   anything this package refuses
    ├── TopicError              a topic outside the layout, or a bad device id or group
    ├── MessageError            a payload that cannot be accepted
    │   ├── OversizedMessageError   larger than the configured limit
    │   └── MalformedMessageError   not JSON, wrong schema, or a field missing or wrong
    ├── BrokerTlsError          the broker's TLS does not verify (never retried)
    ├── RolloutStateError       a rollout cannot be paused, resumed or cancelled as it is
    └── ServiceInstallError     a step of installing a systemd service failed
"""

from __future__ import annotations


class SyncError(Exception):
    """Base of every error the sync layer raises."""


class TopicError(SyncError, ValueError):
    """A topic that is not part of the layout, or an unusable device id or group."""


class MessageError(SyncError, ValueError):
    """A payload that cannot be accepted."""


class OversizedMessageError(MessageError):
    """The payload is larger than the limit.

    Attributes:
        size: Bytes received.
        limit: Bytes allowed.
    """

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")


class MalformedMessageError(MessageError):
    """The payload is not valid JSON or does not match its schema.

    Attributes:
        field: Dotted path of the offending field, if one is to blame.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class BrokerTlsError(SyncError):
    """The broker's TLS cannot be trusted or used: a wrong CA or host name, a refused
    client certificate, missing TLS files, or no TLS on the port. Retrying cannot help."""


class RolloutStateError(SyncError):
    """A rollout cannot take this command in its present status (resuming one that is not
    paused, cancelling one that completed).

    Attributes:
        rollout_id: The rollout.
        status: Its status.
        action: ``pause``, ``resume`` or ``cancel``.
    """

    def __init__(self, rollout_id: str, status: str, action: str) -> None:
        self.rollout_id = rollout_id
        self.status = status
        self.action = action
        super().__init__(f"cannot {action} rollout {rollout_id}: it is {status}")


class ServiceInstallError(SyncError):
    """A step of installing or removing a systemd service failed; the message names it."""
