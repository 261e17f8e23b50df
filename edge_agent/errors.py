"""Errors raised by the edge agent.

Hierarchy::

    EdgeAgentError              anything the agent refuses
    ├── ConfigError             the configuration file is missing, not TOML, or a value is wrong
    ├── SampleDataError         sample footage or readings cannot be produced
    ├── ImageReadError          an image file is missing or cannot be decoded
    ├── SourceError             an input (camera, file, folder, topic) cannot be opened
    ├── OutboxError             the durable outbox cannot be opened or written
    ├── PublishError            the broker refused a publish or did not acknowledge it
    ├── ListenError             a local port (metrics) cannot be listened on
    ├── UpdateRefusedError      a model update failed verification or does not fit
    └── InstallError            a model install step failed; the serving model is unchanged
"""

from __future__ import annotations

from typing import Literal

from models import ImageRefusal


class EdgeAgentError(Exception):
    """Base of every error the edge agent raises."""


class ConfigError(EdgeAgentError):
    """The configuration is unusable; the message names the key, value and expectation.

    Attributes:
        key: Dotted key of the offending value, if one is to blame.
        problems: Every problem found (the message is the first), so that
            ``edge-agent config check`` can report them all at once.
    """

    def __init__(self, message: str, *, key: str | None = None,
                 problems: tuple[str, ...] = ()) -> None:
        self.key = key
        self.problems = problems or (message,)
        super().__init__(message)


class SampleDataError(EdgeAgentError):
    """Sample footage or readings cannot be produced (bad size, scikit-image missing)."""


class ImageReadError(EdgeAgentError):
    """An image file is missing, unreadable, or its image was refused.

    Attributes:
        reason: ``unreadable`` (missing or unreadable file), or why the image was
            refused: ``unknown-format``, ``malformed-header``, ``too-large`` or
            ``undecodable``.
    """

    def __init__(self, message: str, *, reason: ImageRefusal | Literal["unreadable"] = (
            "unreadable")) -> None:
        self.reason = reason
        super().__init__(message)


class SourceError(EdgeAgentError):
    """An input cannot be opened."""


class OutboxError(EdgeAgentError):
    """The durable outbox cannot be opened or written.

    Attributes:
        full: The disk is full or failed (``SQLITE_FULL``/``SQLITE_IOERR``): a local
            fault to degrade around, not a reason to stop.
    """

    def __init__(self, message: str, *, full: bool = False) -> None:
        self.full = full
        super().__init__(message)


class PublishError(EdgeAgentError):
    """A publish that needed the broker's word (a local MQTT action) did not get it.

    Attributes:
        reason_code: The MQTT 5 reason code of the broker's PUBACK (``0x87``: not
            authorized), or ``None`` when no PUBACK came.
    """

    def __init__(self, message: str, *, reason_code: int | None = None) -> None:
        self.reason_code = reason_code
        super().__init__(message)


class ListenError(EdgeAgentError):
    """A local port cannot be listened on (another process holds it, or it is privileged).

    Attributes:
        key: The configuration key that names the port.
    """

    def __init__(self, message: str, *, key: str) -> None:
        self.key = key
        super().__init__(message)


class UpdateRefusedError(EdgeAgentError):
    """An update was refused.

    Attributes:
        kind: ``signature``, ``expired``, ``rollback``, ``mix-and-match``, ``integrity``,
            ``too-long``, ``unavailable``, ``runtime`` or ``hardware``.
    """

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        super().__init__(f"update refused ({kind}): {reason}")


class InstallError(EdgeAgentError):
    """An install step failed; the install record says which, and the serving model is
    unchanged."""
