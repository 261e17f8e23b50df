"""Home Assistant's MQTT discovery: the device appears in Home Assistant by itself.

On a local broker that Home Assistant reads (``[home_assistant]`` in the config, off by
default; not the hub's broker), the agent publishes retained discovery configs, as Home
Assistant's MQTT integration documents them, at
``<discovery_prefix>/<component>/<node_id>/<object_id>/config``:

``binary_sensor/<node>/face_present``
    "Face present": ON while any camera's latest frame holds a positive decision
    (device class ``occupancy``).
``sensor/<node>/escalations``
    Escalations sent to the hub since the agent started (``total_increasing``).
``sensor/<node>/backlog``
    Escalations waiting in the outbox (``measurement``).
``image/<node>/latest_crop``
    The latest escalated crop, a JPEG published raw on its ``image_topic``.

Each config carries a ``unique_id``, the same ``device`` block (one device per agent) and
the availability topic, which the agent sets ``online`` (retained) when it connects and
its last will sets ``offline``. States are published retained under
``<state_prefix>/<node>/``, only when they change.

:func:`discovery_messages` is pure. :class:`HomeAssistantBridge` is a thread,
``home-assistant``, that owns the state and a paho client (whose own loop thread is
``paho-mqtt-client-<node>-ha``); the pipeline and the supervisor only put updates on its
bounded queue (an update that finds it full is dropped: the next one says the same), and
paho's callbacks only enqueue too.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.config import HomeAssistantConfig
from edge_agent.mqtt import new_client

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
ONLINE, OFFLINE = "online", "offline"


@dataclass(frozen=True, slots=True)
class HomeAssistantTopics:
    """Where one device's states go."""

    availability: str
    face_present: str
    escalations: str
    backlog: str
    latest_crop: str

    @classmethod
    def of(cls, state_prefix: str, node_id: str) -> HomeAssistantTopics:
        """The topics under ``<state_prefix>/<node_id>/``."""
        base = f"{state_prefix}/{node_id}"
        return cls(f"{base}/availability", f"{base}/face_present", f"{base}/escalations",
                   f"{base}/backlog", f"{base}/latest_crop")


@dataclass(frozen=True, slots=True)
class Retained:
    """A retained message to publish."""

    topic: str
    payload: bytes


def node_id(device_id: str) -> str:
    """Home Assistant's node id for a device: letters, digits, ``_`` and ``-`` only (a
    device id's dots become ``_``)."""
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in device_id)


def discovery_messages(config: HomeAssistantConfig, device_id: str,
                       version: str) -> tuple[Retained, ...]:
    """Every discovery config of one device, JSON, to be published retained. Pure."""
    node = config.node_id or node_id(device_id)
    topics = HomeAssistantTopics.of(config.state_prefix, node)
    device = {"identifiers": [f"edge-agent-{node}"], "name": f"Edge agent {device_id}",
              "manufacturer": "edge-cloud-runtime", "model": "edge-agent",
              "sw_version": version}
    common: dict[str, Any] = {
        "device": device, "availability_topic": topics.availability,
        "payload_available": ONLINE, "payload_not_available": OFFLINE,
    }
    entities: tuple[tuple[str, str, dict[str, Any]], ...] = (
        ("binary_sensor", "face_present", {
            "name": "Face present", "state_topic": topics.face_present,
            "payload_on": "ON", "payload_off": "OFF", "device_class": "occupancy"}),
        ("sensor", "escalations", {
            "name": "Escalations", "state_topic": topics.escalations,
            "state_class": "total_increasing", "icon": "mdi:cloud-upload"}),
        ("sensor", "backlog", {
            "name": "Backlog", "state_topic": topics.backlog, "state_class": "measurement",
            "unit_of_measurement": "events", "icon": "mdi:tray-full"}),
        ("image", "latest_crop", {
            "name": "Latest crop", "image_topic": topics.latest_crop,
            "content_type": "image/jpeg"}),
    )
    return tuple(
        Retained(f"{config.discovery_prefix}/{component}/{node}/{object_id}/config",
                 json.dumps({**fields, **common, "unique_id": f"{node}_{object_id}",
                             "object_id": f"{node}_{object_id}"},
                            sort_keys=True).encode())
        for component, object_id, fields in entities
    )


@dataclass(frozen=True, slots=True)
class _Presence:
    source: str
    present: bool


@dataclass(frozen=True, slots=True)
class _Counts:
    escalations: int
    backlog: int


@dataclass(frozen=True, slots=True)
class _Crop:
    jpeg: bytes


class _Connected:
    """paho's on_connect, as a queue item."""


_Update = _Presence | _Counts | _Crop | _Connected | None


class HomeAssistantBridge:
    """The ``home-assistant`` thread: discovery, availability and states on the local
    broker.

    Args:
        config: The ``[home_assistant]`` section (enabled).
        device_id: The agent's device id.
        version: The agent's version (the device block's ``sw_version``).
    """

    def __init__(self, config: HomeAssistantConfig, device_id: str, version: str) -> None:
        self.config = config
        self.node = config.node_id or node_id(device_id)
        self.topics = HomeAssistantTopics.of(config.state_prefix, self.node)
        self._discovery = discovery_messages(config, device_id, version)
        self._queue: queue.Queue[_Update] = queue.Queue(QUEUE_SIZE)
        self._client: mqtt.Client | None = None
        self._thread: threading.Thread | None = None
        # Owned by the thread: what was published last.
        self._present: dict[str, bool] = {}
        self._published: dict[str, bytes] = {}

    def start(self) -> None:
        """Connect (in the background: an absent broker is retried) and start the thread.

        Raises:
            ConfigError: A TLS file of the local broker is unusable.
        """
        broker = self.config.broker
        client = new_client(broker, f"{self.node}-ha")
        client.will_set(self.topics.availability, OFFLINE, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.reconnect_delay_set(1, 30)
        client.connect_async(broker.host, broker.port, keepalive=broker.keepalive_s)
        self._client = client
        self._thread = threading.Thread(target=self._run, name="home-assistant", daemon=True)
        self._thread.start()
        client.loop_start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Say ``offline`` (waiting up to ``timeout_s`` for the broker to take it) and
        disconnect."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout_s)
        if self._client is not None:
            sent = self._client.publish(self.topics.availability, OFFLINE, qos=1, retain=True)
            if self._client.is_connected():
                try:
                    sent.wait_for_publish(timeout_s)
                except (RuntimeError, ValueError) as exc:  # paho's "not queued" errors
                    log.warning("home assistant: offline not sent: %s", exc)
            self._client.disconnect()
            self._client.loop_stop()

    def presence(self, source: str, present: bool) -> None:
        """A camera's latest frame: does it hold a positive decision."""
        self._put(_Presence(source, present))

    def counts(self, *, escalations: int, backlog: int) -> None:
        """Escalations sent so far, and the outbox's backlog."""
        self._put(_Counts(escalations, backlog))

    def crop(self, jpeg: bytes) -> None:
        """The latest escalated crop."""
        self._put(_Crop(jpeg))

    def _put(self, update: _Update) -> None:
        try:
            self._queue.put_nowait(update)
        except queue.Full:
            log.debug("home assistant queue full; an update dropped (the next repeats it)")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any,
                    reason: ReasonCode, properties: Any) -> None:
        if reason.is_failure:
            log.warning("home assistant broker %s:%d refused the agent: %s",
                        self.config.broker.host, self.config.broker.port, reason)
            return
        self._put(_Connected())

    def _run(self) -> None:
        while (update := self._queue.get()) is not None:
            if isinstance(update, _Connected):
                for message in self._discovery:
                    self._publish(message.topic, message.payload)
                self._publish(self.topics.availability, ONLINE.encode())
                for topic, payload in self._published.items():  # states, again
                    self._publish(topic, payload)
            elif isinstance(update, _Presence):
                self._present[update.source] = update.present
                self._state(self.topics.face_present,
                            b"ON" if any(self._present.values()) else b"OFF")
            elif isinstance(update, _Counts):
                self._state(self.topics.escalations, str(update.escalations).encode())
                self._state(self.topics.backlog, str(update.backlog).encode())
            else:
                self._state(self.topics.latest_crop, update.jpeg)

    def _state(self, topic: str, payload: bytes) -> None:
        if self._published.get(topic) != payload:
            self._published[topic] = payload
            self._publish(topic, payload)

    def _publish(self, topic: str, payload: bytes) -> None:
        assert self._client is not None
        # Not connected: nothing is queued (paho's queue has no bound, and crops are large);
        # the latest of every state is published again when the connection comes back.
        if self._client.is_connected():
            self._client.publish(topic, payload, qos=1, retain=True)
