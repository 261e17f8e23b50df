"""The MQTT topic layout, version 1, defined once for the agent and the hub.

::

    {prefix}/v1/{device_id}/events      agent -> hub   escalations, QoS 1
    {prefix}/v1/{device_id}/verdicts    hub -> agent   verdicts and receipts, QoS 1
    {prefix}/v1/{device_id}/status      agent -> all   online/offline, retained, last will
    {prefix}/v1/{device_id}/telemetry   agent -> hub   periodic counters, QoS 0
    {prefix}/v1/{device_id}/updates     agent -> hub   model install steps, QoS 1
    {prefix}/v1/{device_id}/journal     agent -> all   decision journal (track/1), QoS 0
    {prefix}/v1/groups/{group}/models   hub -> agents  model announcements, retained

A device id or group is 1-64 characters of letters, digits, ``_``, ``-`` and ``.``: never
``/``, ``+`` or ``#``, which would let one device's topics match another's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from sync.errors import TopicError

VERSION = "v1"
DEVICE_KINDS = ("events", "verdicts", "status", "telemetry", "updates", "journal")
DeviceKind = Literal["events", "verdicts", "status", "telemetry", "updates", "journal"]
#: A device id or group name (``^...$`` read as a whole-string match, as pydantic reads it).
NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
_NAME = re.compile(NAME_PATTERN)
_PREFIX = re.compile(r"^[A-Za-z0-9_.-]{1,64}(/[A-Za-z0-9_.-]{1,64})*$")


def check_name(value: str, what: str = "device id") -> str:
    """Return ``value`` if it is a usable device id or group name.

    Raises:
        TopicError: It is empty, too long, or holds a character outside the allowed set.
    """
    if not isinstance(value, str) or not _NAME.fullmatch(value) or value in {".", ".."}:
        raise TopicError(
            f"{what} {value!r} must be 1-64 characters of letters, digits, '_', '-' or '.'"
        )
    return value


@dataclass(frozen=True, slots=True)
class TopicAddress:
    """What a topic names: the device (or group) and the kind of message."""

    name: str
    kind: str


@dataclass(frozen=True, slots=True)
class TopicLayout:
    """Topics under one prefix (one fleet)."""

    prefix: str = "fleet"

    def __post_init__(self) -> None:
        if not _PREFIX.fullmatch(self.prefix):
            raise TopicError(f"topic prefix {self.prefix!r} must be plain path segments")

    @property
    def root(self) -> str:
        """``{prefix}/v1``."""
        return f"{self.prefix}/{VERSION}"

    def device_topic(self, device_id: str, kind: DeviceKind) -> str:
        """The topic of ``kind`` messages for ``device_id``."""
        if kind not in DEVICE_KINDS:
            raise TopicError(f"unknown topic kind {kind!r}; expected one of {DEVICE_KINDS}")
        return f"{self.root}/{check_name(device_id)}/{kind}"

    def events(self, device_id: str) -> str:
        """Escalations from ``device_id``."""
        return self.device_topic(device_id, "events")

    def verdicts(self, device_id: str) -> str:
        """Verdicts for ``device_id``."""
        return self.device_topic(device_id, "verdicts")

    def status(self, device_id: str) -> str:
        """Retained online/offline status of ``device_id``."""
        return self.device_topic(device_id, "status")

    def telemetry(self, device_id: str) -> str:
        """Counters from ``device_id``."""
        return self.device_topic(device_id, "telemetry")

    def updates(self, device_id: str) -> str:
        """Model install reports from ``device_id``."""
        return self.device_topic(device_id, "updates")

    def journal(self, device_id: str) -> str:
        """The decision journal of ``device_id``: one ``track/1`` message per lifecycle
        step of each tracked object."""
        return self.device_topic(device_id, "journal")

    def models(self, group: str) -> str:
        """Retained model announcements for a device group."""
        return f"{self.root}/groups/{check_name(group, 'group')}/models"

    def all_devices(self, kind: DeviceKind) -> str:
        """Subscription filter for ``kind`` messages of every device."""
        return f"{self.root}/+/{kind}"

    def shared(self, group: str, kind: DeviceKind) -> str:
        """MQTT 5 shared subscription: the members of ``group`` split the messages."""
        return f"$share/{check_name(group, 'share group')}/{self.all_devices(kind)}"

    def parse(self, topic: str) -> TopicAddress:
        """Which device (or group) and kind ``topic`` is for.

        Raises:
            TopicError: The topic is not in this layout.
        """
        head = self.root + "/"
        if not topic.startswith(head):
            raise TopicError(f"topic {topic!r} is not under {self.root}")
        parts = topic[len(head):].split("/")
        if len(parts) == 2 and parts[1] in DEVICE_KINDS:
            return TopicAddress(check_name(parts[0]), parts[1])
        if len(parts) == 3 and parts[0] == "groups" and parts[2] == "models":
            return TopicAddress(check_name(parts[1], "group"), "models")
        raise TopicError(f"topic {topic!r} is not part of the {VERSION} layout")
