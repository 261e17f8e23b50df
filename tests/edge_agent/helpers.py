"""Helpers shared by edge agent tests."""

from __future__ import annotations

import time

from edge_agent.delivery.outbox import OutboxItem
from sync import EventMessage, ModelRef, TopicLayout, encode, uuid7_from


def event_id(index: int) -> str:
    """A deterministic UUIDv7 for test event number ``index``."""
    return uuid7_from(1_790_000_000_000 + index, index & 0xFFF, index)


def event_item(layout: TopicLayout, device_id: str, index: int, *, priority: int = 5,
               padding: int = 512, created_at: float | None = None,
               created_mono: float = 0.0) -> OutboxItem:
    """An outbox item holding a real, encoded escalation."""
    message = EventMessage(
        event_id=event_id(index), device_id=device_id, source="test",
        captured_at=time.time(), reason="uncertain", priority=priority,
        model=ModelRef(name="blazeface-short", version="1.0.0"),
        crop_jpeg=b"\xff\xd8" + bytes(padding),
    )
    return OutboxItem(message.event_id, layout.events(device_id), encode(message), priority,
                      time.time() if created_at is None else created_at,
                      created_mono=created_mono)
