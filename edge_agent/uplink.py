"""The uplink thread: outbox commits, MQTT 5 publishes, PUBACKs, verdicts in.

One thread, named ``uplink``, owns the outbox. Escalations reach it through a bounded
queue (:meth:`Uplink.submit` blocks when it is full: back-pressure, never a silent drop).
Each turn of its loop commits, in one transaction, every event that arrived (and the
deletes of acknowledged events); then it publishes, oldest first, as many stored events
as the in-flight window and the drain rate allow. Events are published only after their
commit, and deleted only after their PUBACK, so a crash at any point loses nothing: on
start, everything still in the outbox is sent again (the hub deduplicates by event id).

Deletes are not urgent (a crash before one is committed costs a duplicate, never a
loss), so they ride along with the next insert, or are flushed in groups of
:data:`DELETE_BATCH`, after :data:`DELETE_DELAY_S`, or when nothing is in flight: one
fsync for many PUBACKs. Freshly stored events are published from memory; the database is
read back only for a backlog (after a restart or an outage).

paho-mqtt runs its network loop in its own thread and calls back into this module; the
callbacks only queue what they saw and wake the uplink thread.
"""

from __future__ import annotations

import logging
import queue
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.backoff import Backoff
from edge_agent.config import MqttConfig
from edge_agent.errors import PublishError
from edge_agent.mqtt import check_broker, new_client
from edge_agent.outbox import Outbox, OutboxItem
from sync import StatusMessage, TopicLayout, encode

log = logging.getLogger(__name__)

ConnectionState = Literal["online", "offline"]
INBOUND_QUEUE = 1024
BATCH = 1024
DELETE_BATCH = 512
HANDOFF_WINDOWS = 8
ACK_WAKE = 64
FAILURE_CODE = 0x80  # MQTT 5 reason codes from 0x80 up are failures
DELETE_DELAY_S = 0.25
REFUSALS_KEPT = 1024  # refused PUBACKs remembered for publish_confirmed (by message id)


class _PackedProperties(Properties):
    """PUBLISH properties packed once: paho packs them again for every message otherwise,
    which costs as much as the rest of a publish."""

    def __init__(self, message_expiry_s: int) -> None:
        super().__init__(PacketTypes.PUBLISH)
        self.MessageExpiryInterval = message_expiry_s
        # Properties refuses attributes that are not MQTT property names.
        object.__setattr__(self, "_packed", super().pack())

    def pack(self) -> bytes:
        """The bytes packed at construction."""
        packed: bytes = object.__getattribute__(self, "_packed")
        return packed


@dataclass(frozen=True, slots=True)
class UplinkCounters:
    """A consistent snapshot of the uplink's counters."""

    connected: bool
    published: int
    acknowledged: int
    refused: int
    reconnects: int
    inflight: int
    outbox_depth: int
    outbox_bytes: int
    dropped: int


class Uplink:
    """Durable, ordered, rate-limited delivery of escalations; and the verdict feed.

    Args:
        device_id: MQTT client id and the device part of every topic.
        config: Broker connection settings.
        outbox: The (unopened) outbox; the uplink thread opens and closes it.
        layout: Topic layout.
        status: Builds this device's status message (``online``/``offline``).
        on_message: Called from paho's thread with ``(topic, payload)`` for each verdict
            or other subscribed message; must be quick and thread-safe.
        subscriptions: Extra topic filters to subscribe to (besides the verdicts).
        on_drop: Called in the uplink thread for every dropped event ``(id, reason)``.
        on_stored: Called in the uplink thread with the events each commit stored.
        rng: Jitter source for reconnect backoff.
    """

    def __init__(
        self,
        *,
        device_id: str,
        config: MqttConfig,
        outbox: Outbox,
        layout: TopicLayout,
        status: Callable[[ConnectionState], StatusMessage],
        on_message: Callable[[str, bytes], None] | None = None,
        subscriptions: tuple[str, ...] = (),
        on_drop: Callable[[str, str], None] | None = None,
        on_stored: Callable[[list[OutboxItem]], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.device_id = device_id
        self.config = config
        self.outbox = outbox
        self.layout = layout
        self._status = status
        self._on_message = on_message
        self._subscriptions = (layout.verdicts(device_id), *subscriptions)
        self._on_drop = on_drop
        self._on_stored = on_stored
        self._rng = rng or random.Random()
        self._backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s)
        self._inbound: deque[OutboxItem] = deque()
        self._room = threading.Condition()
        self._acks: deque[tuple[int, bool, str]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._idle = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._inflight: dict[int, OutboxItem] = {}  # by MQTT message id
        self._acked: list[tuple[int, int]] = []  # (seq, disk cost)
        self._acked_since = 0.0
        self._ready: deque[OutboxItem] = deque()
        self._backlog = True  # until the database has been read once, it may hold events
        self._cursor = 0
        self._attempt = 0
        self._refused_connack = False
        self._refusals: dict[int, tuple[int, ReasonCode]] = {}  # mid -> (ns, reason)
        self._refusals_lock = threading.Lock()
        self._properties = _PackedProperties(config.message_expiry_s)
        self._tokens = float(config.max_inflight)
        self._tokens_at = time.monotonic()
        self.error: BaseException | None = None
        self.published = self.acknowledged = self.refused = self.reconnects = 0
        self.dropped = 0

    # -- public ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the broker session is up."""
        return self._connected.is_set()

    def start(self) -> None:
        """Check the broker's TLS, open the outbox, start paho's loop and the uplink thread.

        Raises:
            ConfigError: The broker's TLS does not verify (a wrong CA or host name).
        """
        check_broker(self.config)
        self.outbox.open()
        self._client = self._make_client()
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)
        self._thread.start()

    def submit(self, item: OutboxItem, timeout_s: float | None = None) -> None:
        """Hand one escalation to the uplink; blocks while the queue is full.

        Raises:
            queue.Full: Still full after ``timeout_s``.
        """
        if len(self._inbound) >= INBOUND_QUEUE:
            with self._room:
                if not self._room.wait_for(lambda: len(self._inbound) < INBOUND_QUEUE,
                                           timeout_s):
                    raise queue.Full
        self._inbound.append(item)
        if self._idle.is_set():
            self._idle.clear()
        if not self._wake.is_set():
            self._wake.set()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is queued, in flight or stored (all delivered)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._idle.wait(0.05) and not self._inbound:
                return True
        return False

    def counters(self) -> UplinkCounters:
        """Current counters (read without locking; each value is itself consistent)."""
        return UplinkCounters(
            connected=self.connected, published=self.published,
            acknowledged=self.acknowledged, refused=self.refused,
            reconnects=self.reconnects, inflight=len(self._inflight),
            outbox_depth=self.outbox.count, outbox_bytes=self.outbox.stored_bytes,
            dropped=self.dropped,
        )

    def publish_side(self, topic: str, payload: bytes, *, qos: int = 0,
                     retain: bool = False) -> None:
        """Publish something that needs no outbox (telemetry, local actions)."""
        if self._client is not None:
            self._client.publish(topic, payload, qos=qos, retain=retain)

    def publish_confirmed(self, topic: str, payload: bytes, timeout_s: float) -> None:
        """Publish with QoS 1 and wait for the broker's PUBACK (local actions).

        Raises:
            PublishError: The broker refused it (an MQTT 5 reason code from 0x80 up, such
                as 0x87 not authorized), or no PUBACK came within ``timeout_s``.
        """
        client = self._client
        if client is None:
            raise PublishError(f"cannot publish to {topic}: the uplink is not started")
        sent_ns = time.monotonic_ns()
        info = client.publish(topic, payload, qos=1)
        try:
            info.wait_for_publish(timeout=timeout_s)
        except (RuntimeError, ValueError) as exc:  # paho: not connected, queue full
            raise PublishError(f"cannot publish to {topic}: {exc}") from exc
        if not info.is_published():
            raise PublishError(f"no PUBACK for {topic} within {timeout_s:g} s")
        # paho runs on_publish before it marks the message published, so a refusal of
        # this message id is already recorded; older entries belong to earlier messages.
        with self._refusals_lock:
            refusal = self._refusals.pop(info.mid, None)
        if refusal is not None and refusal[0] >= sent_ns:
            reason = refusal[1]
            raise PublishError(f"the broker refused the publish to {topic}: {reason} "
                               f"(reason code 0x{reason.value:02x})", reason_code=reason.value)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Commit what is queued, announce ``offline``, disconnect, close the outbox."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        client = self._client
        if client is not None:
            if self.connected:
                info = client.publish(
                    self.layout.status(self.device_id),
                    encode(self._status("offline")), qos=1, retain=True,
                )
                try:
                    info.wait_for_publish(timeout=2.0)
                except (RuntimeError, ValueError):
                    log.warning("could not announce offline status before disconnecting")
            client.disconnect()
            client.loop_stop()
        self.outbox.close()

    # -- the uplink thread -----------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                stopping = self._stop.is_set()
                items = self._take_inbound()
                self._take_acks()
                if items or self._deletes_due(stopping):
                    acked, self._acked = self._acked, []
                    result = self.outbox.commit(items, acked)
                    self.acknowledged += result.deleted
                    for event_id, reason in result.dropped:
                        self._dropped(event_id, reason)
                    if result.stored:
                        self._stored(result.stored)
                self._publish_ready()
                if stopping and not self._inbound:
                    break
                if not self._inbound and not self._acks:
                    if self.outbox.count == 0 and not self._inflight:
                        self._idle.set()
                    self._wake.wait(DELETE_DELAY_S if self._acked else 0.2)
                    self._wake.clear()
        except BaseException as exc:
            self.error = exc
            log.exception("uplink thread failed")
            raise

    def _take_inbound(self) -> list[OutboxItem]:
        inbound = self._inbound
        items = [inbound.popleft() for _ in range(min(BATCH, len(inbound)))]
        if items:
            with self._room:
                self._room.notify_all()
        return items

    def _deletes_due(self, stopping: bool) -> bool:
        if not self._acked:
            return False
        return (
            stopping or len(self._acked) >= DELETE_BATCH or not self._inflight
            or time.monotonic() - self._acked_since >= DELETE_DELAY_S
        )

    def _stored(self, stored: list[OutboxItem]) -> None:
        if self._on_stored is not None:
            self._on_stored(stored)
        if self._backlog or not self.connected:
            self._backlog = True  # they wait in the database
        else:
            self._ready.extend(stored)

    def _take_acks(self) -> None:
        if self._acks and not self._acked:
            self._acked_since = time.monotonic()
        while self._acks:
            mid, failed, reason = self._acks.popleft()
            sent = self._inflight.pop(mid, None)
            if sent is None:
                continue
            event_id = sent.event_id
            if failed:
                self.refused += 1
                log.error("broker refused event %s: %s", event_id, reason)
                self.outbox.record_drop(sent, f"broker-refused: {reason}")
                self._dropped(event_id, f"broker-refused: {reason}")
            else:
                self._acked.append((sent.seq, sent.cost))

    def _dropped(self, event_id: str, reason: str) -> None:
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop(event_id, reason)

    def _publish_ready(self) -> None:
        client = self._client
        if client is None or not self.connected:
            return
        # paho keeps ``max_inflight`` on the wire and sends the next on each PUBACK in its
        # own thread; handing it a few windows ahead keeps the pipe full without waiting
        # for this thread to wake up between PUBACKs.
        room = HANDOFF_WINDOWS * self.config.max_inflight - len(self._inflight)
        now = time.monotonic()
        rate = self.config.drain_rate_per_s
        self._tokens = min(float(HANDOFF_WINDOWS * self.config.max_inflight),
                           self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        budget = min(room, int(self._tokens), BATCH)
        if budget <= 0:
            if room > 0:  # rate-limited: come back when a token is due
                threading.Timer(1.0 / rate, self._wake.set).start()
            return
        properties = self._properties
        if self._backlog:
            self._ready.clear()  # stale after an outage: the database is the truth
            batch = self.outbox.after(self._cursor, budget)
            if len(batch) < budget:
                self._backlog = False  # caught up: new events go out from memory
        else:
            batch = [self._ready.popleft() for _ in range(min(budget, len(self._ready)))]
        for item in batch:
            info = client.publish(item.topic, item.payload, qos=1, properties=properties)
            # Not connected any more: paho keeps the message and sends it on reconnect.
            self._inflight[info.mid] = item
            self._cursor = max(self._cursor, item.seq)
            self._tokens -= 1
            self.published += 1
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                log.warning("publish of %s returned %s", item.event_id, info.rc)

    # -- paho adapter ----------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        client = new_client(cfg, self.device_id)
        client.max_inflight_messages_set(cfg.max_inflight)
        client.max_queued_messages_set(0)
        will = Properties(PacketTypes.WILLMESSAGE)
        client.will_set(self.layout.status(self.device_id), encode(self._status("offline")),
                        qos=1, retain=True, properties=will)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        client.on_message = self._on_paho_message
        self._set_delay(client)
        connect = Properties(PacketTypes.CONNECT)
        connect.SessionExpiryInterval = cfg.session_expiry_s
        client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s,
                             clean_start=False, properties=connect)
        return client

    def _set_delay(self, client: mqtt.Client) -> float:
        delay = self._backoff.delay(self._attempt, self._rng)
        # paho annotates int seconds but waits float seconds; sub-second matters here.
        client.reconnect_delay_set(min_delay=delay, max_delay=delay)  # type: ignore[arg-type]
        return delay

    def _retry_later(self, client: mqtt.Client, cause: str) -> None:
        """Count a reconnection attempt, back off, and say why and when, at WARNING."""
        self.reconnects += 1
        self._attempt += 1
        delay = self._set_delay(client)
        log.warning("mqtt: no connection to %s:%d: %s; retry %d in %.1f s (at %s)",
                    self.config.host, self.config.port, cause, self._attempt, delay,
                    time.strftime("%H:%M:%S", time.localtime(time.time() + delay)))

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any,
                    reason: ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            self._refused_connack = True
            self._retry_later(client, f"the broker refused the connection ({reason})")
            return
        self._attempt = 0
        self._set_delay(client)
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        client.publish(self.layout.status(self.device_id), encode(self._status("online")),
                       qos=1, retain=True)
        self._connected.set()
        self._wake.set()
        log.info("connected to %s:%d (session present: %s)", self.config.host,
                 self.config.port, getattr(flags, "session_present", "?"))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any,
                       reason: ReasonCode, properties: Properties | None) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._backlog = True  # what was ready in memory is safe in the database
        if self._stop.is_set():
            return
        if self._refused_connack:  # paho reports a refused CONNACK here too: counted once
            self._refused_connack = False
            return
        self._retry_later(client, f"disconnected ({reason})" if was_connected
                          else f"the connection closed before it was accepted ({reason})")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this from inside its ``except OSError`` block without passing the
        # error; the exception being handled is the cause (refused, unresolvable host,
        # certificate that does not verify).
        error = sys.exc_info()[1]
        self._retry_later(client, str(error) if error is not None else "connection failed")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int,
                    reason: ReasonCode, properties: Properties | None) -> None:
        # ReasonCode's properties and str() are slow; a success is the plain value 0.
        failed = reason.value >= FAILURE_CODE
        if failed:
            with self._refusals_lock:
                self._refusals[mid] = (time.monotonic_ns(), reason)
                if len(self._refusals) > REFUSALS_KEPT:
                    del self._refusals[next(iter(self._refusals))]
        self._acks.append((mid, failed, str(reason) if failed else ""))
        # Wake the uplink thread for batches of PUBACKs, not for each one.
        if len(self._acks) >= ACK_WAKE or len(self._acks) >= len(self._inflight):
            self._wake.set()

    def _on_paho_message(self, client: mqtt.Client, userdata: Any,
                         message: mqtt.MQTTMessage) -> None:
        if self._on_message is not None:
            self._on_message(message.topic, bytes(message.payload))
