"""Delivery of escalations from the agent to the hub, until the hub has them.

* :mod:`~edge_agent.delivery.outbox`: the durable SQLite outbox (bounds, priorities,
  expiry on the monotonic clock, pending verdicts, salvage of a damaged file);
* :mod:`~edge_agent.delivery.window`: which stored escalation to publish when (pure, no
  I/O: tested without a broker);
* :mod:`~edge_agent.delivery.uplink`: the ``uplink`` thread and its paho adapter, which
  commit, publish, and take the hub's receipts and verdicts.
"""

from __future__ import annotations

from edge_agent.delivery.outbox import (
    Outbox,
    OutboxClock,
    OutboxItem,
    PendingChanges,
    PendingRecord,
    SalvageReport,
)
from edge_agent.delivery.uplink import ConnectionState, Uplink, UplinkCounters
from edge_agent.delivery.window import DeliveryWindow, Plan, WindowLimits

__all__ = [
    "ConnectionState",
    "DeliveryWindow",
    "Outbox",
    "OutboxClock",
    "OutboxItem",
    "PendingChanges",
    "PendingRecord",
    "Plan",
    "SalvageReport",
    "Uplink",
    "UplinkCounters",
    "WindowLimits",
]
