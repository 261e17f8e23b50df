"""Delivery of escalations from the agent to the hub: what to send when (pure).

The outbox (``edge_agent.outbox``) keeps escalations on disk; the uplink
(``edge_agent.uplink``) is the thread and the paho adapter; this package holds the
decisions between them, with no I/O, so they are tested without a broker.
"""

from __future__ import annotations

from edge_agent.delivery.window import DeliveryWindow, Plan, WindowLimits

__all__ = ["DeliveryWindow", "Plan", "WindowLimits"]
