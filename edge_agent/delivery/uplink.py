"""The uplink thread: outbox commits, MQTT 5 publishes, the hub's receipts and verdicts.

One thread, named ``uplink``, owns the outbox and the delivery window
(:mod:`edge_agent.delivery`). Escalations reach it through a bounded queue
(:meth:`Uplink.submit` blocks when it is full: back-pressure, never a silent drop). Each
turn of its loop commits, in one transaction, every event that arrived, the deletes of
events the hub confirmed and the pipeline's changes to pending verdicts; then it
publishes what the window allows: retries that are due, live events, then the backlog.

An event leaves the outbox only when the hub says it has it: its receipt or its verdict
(both on the device's verdicts topic). A PUBACK only says the broker took it; a PUBACK
with a failure reason code (16, "no matching subscribers", included) keeps the event and
publishes it again after a backoff, and so does a receipt that does not come in time.
A crash at any point loses nothing: on start, everything still in the outbox is sent
again (the hub stores each event id once).

A full disk or a failing outbox file does not stop the agent: new escalations are
refused with the counted reason ``disk-full`` (``outbox-error``) and reported back
(:attr:`Uplink.degraded`), the caller decides them locally, and the uplink tries to
write again every :data:`DEGRADED_RETRY_S` until it can.

paho-mqtt runs its network loop in its own thread; the callbacks only queue what they
saw and wake the uplink thread.
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
from edge_agent.delivery.outbox import Outbox, OutboxItem, PendingChanges
from edge_agent.delivery.window import DeliveryWindow, WindowLimits
from edge_agent.errors import OutboxError, PublishError
from edge_agent.mqtt import check_broker, new_client
from sync import (
    EVENT_CONTENT_TYPE,
    BusyMessage,
    MessageError,
    ReceiptMessage,
    StatusMessage,
    TopicLayout,
    VerdictMessage,
    decode,
    encode,
    is_framed_event,
    peek_schema,
)

log = logging.getLogger(__name__)

ConnectionState = Literal["online", "offline"]
INBOUND_QUEUE = 1024
BATCH = 1024
DELETE_BATCH = 512
HANDOFF_WINDOWS = 8
ACK_WAKE = 64
DELETE_DELAY_S = 0.25
FAILURE_CODE = 0x80  # MQTT 5 reason codes from 0x80 up are failures
REFUSALS_KEPT = 1024  # refused PUBACKs remembered for publish_confirmed (by message id)
DEGRADED_RETRY_S = 1.0
MAX_VERDICT_BYTES = 64 * 1024
WILL_SEQ = 2**31 - 1  # a last will ends its connection: it orders after every status of it
OFFLINE_SEQ = WILL_SEQ - 1
Degraded = Literal["disk-full", "outbox-error"]


def window_limits(config: MqttConfig) -> WindowLimits:
    """The delivery window's limits for the agent's MQTT settings."""
    return WindowLimits(
        max_inflight=HANDOFF_WINDOWS * config.max_inflight,
        max_unconfirmed=max(config.max_unconfirmed, HANDOFF_WINDOWS * config.max_inflight),
        rate_per_s=config.drain_rate_per_s,
        receipt_timeout_s=config.receipt_timeout_s,
        retry_first_s=config.reconnect_min_s,
        retry_max_s=max(config.retry_max_s, config.reconnect_min_s),
    )


class _PackedProperties(Properties):
    """PUBLISH properties packed once: paho packs them again for every message otherwise,
    which costs as much as the rest of a publish.

    Args:
        framed: The payloads are framed events (their content type says so); else JSON
            (the UTF-8 payload format indicator says so): an outbox written before the
            upgrade still holds JSON events.
    """

    def __init__(self, message_expiry_s: int, *, framed: bool) -> None:
        super().__init__(PacketTypes.PUBLISH)
        self.MessageExpiryInterval = message_expiry_s
        if framed:
            self.ContentType = EVENT_CONTENT_TYPE
        else:
            self.PayloadFormatIndicator = 1
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
    unconfirmed: int = 0
    confirmed: int = 0
    republished: int = 0
    busy: int = 0
    degraded: Degraded | None = None


class Uplink:
    """Durable, ordered, rate-limited delivery of escalations; and the verdict feed.

    Args:
        device_id: MQTT client id and the device part of every topic.
        config: Broker connection settings.
        outbox: The outbox; opened by :meth:`start` unless the caller opened it.
        layout: Topic layout.
        status: Builds this device's status message (``online``/``offline``).
        on_verdict: Called in the uplink thread with each verdict for this device.
        on_busy: Called in the uplink thread with each ``busy`` answer: the hub stored the
            event but will not judge it in time (the caller decides it locally now); the
            window also publishes more slowly for the time the hub asks.
        on_malformed: Called in the uplink thread with ``(topic, reason)`` for a message
            on the verdicts topic that is not a valid receipt or verdict for this device.
        on_message: Called from paho's thread with ``(topic, payload)`` for messages on
            the extra ``subscriptions``; must be quick and thread-safe.
        subscriptions: Extra topic filters to subscribe to (besides the verdicts).
        on_drop: Called in the uplink thread for every dropped event ``(id, reason)``.
        on_stored: Called in the uplink thread with the events each commit stored.
        rng: Jitter source for reconnect backoff.
        clock: Monotonic seconds (the delivery window's timers).
    """

    def __init__(
        self,
        *,
        device_id: str,
        config: MqttConfig,
        outbox: Outbox,
        layout: TopicLayout,
        status: Callable[[ConnectionState], StatusMessage],
        on_verdict: Callable[[VerdictMessage], None] | None = None,
        on_busy: Callable[[BusyMessage], None] | None = None,
        on_malformed: Callable[[str, str], None] | None = None,
        on_message: Callable[[str, bytes], None] | None = None,
        subscriptions: tuple[str, ...] = (),
        on_drop: Callable[[str, str], None] | None = None,
        on_stored: Callable[[list[OutboxItem]], None] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device_id = device_id
        self.config = config
        self.outbox = outbox
        self.layout = layout
        self._status = status
        self._on_verdict = on_verdict
        self._on_busy = on_busy
        self._on_malformed = on_malformed
        self._on_message = on_message
        self._verdict_topic = layout.verdicts(device_id)
        self._subscriptions = (self._verdict_topic, *subscriptions)
        self._on_drop = on_drop
        self._on_stored = on_stored
        self._rng = rng or random.Random()
        self._clock = clock
        self._backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s)
        self._inbound: deque[OutboxItem] = deque()
        self._room = threading.Condition()
        self._acks: deque[tuple[int, bool, str]] = deque()
        self._incoming: deque[bytes] = deque()
        self._pending_resolved: deque[str] = deque()
        self._pending_fell_back: deque[str] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._idle = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self.window = DeliveryWindow(window_limits(config))
        self._live: dict[int, OutboxItem] = {}  # by seq: stored, to publish from memory
        self._acked: list[tuple[int, int]] = []  # (seq, disk cost) confirmed by the hub
        self._confirmed_ids: list[str] = []  # confirmed, unknown to the window
        self._acked_since = 0.0
        self._changes_since: float | None = None
        self._attempt = 0
        self._refused_connack = False
        self._refusals: dict[int, tuple[int, ReasonCode]] = {}  # mid -> (ns, reason)
        self._refusals_lock = threading.Lock()
        self._epoch = time.time()
        self._status_seq = 0
        self._properties = {framed: _PackedProperties(config.message_expiry_s, framed=framed)
                            for framed in (True, False)}
        self._degraded_until = 0.0
        self.degraded: Degraded | None = None
        self.error: BaseException | None = None
        self.published = self.acknowledged = self.refused = self.reconnects = 0
        self.dropped = self.confirmed = self.republished = self.busy = 0

    # -- public ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the broker session is up."""
        return self._connected.is_set()

    def start(self) -> None:
        """Check the broker's TLS, open the outbox (unless open), start paho's loop and
        the uplink thread.

        Raises:
            ConfigError: The broker's TLS does not verify (a wrong CA or host name).
        """
        check_broker(self.config)
        if not self.outbox.is_open:
            self.outbox.open()
        self._client = self._make_client()
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)
        self._thread.start()

    @property
    def thread(self) -> threading.Thread | None:
        """The uplink thread, once started (for supervision)."""
        return self._thread

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

    def pending_resolved(self, event_id: str) -> None:
        """The pipeline applied ``event_id``'s verdict: forget its wait (thread-safe)."""
        self._pending_resolved.append(event_id)

    def pending_fell_back(self, event_id: str) -> None:
        """The pipeline ran ``event_id``'s fallback: keep its wait only to reconcile a late
        verdict (thread-safe)."""
        self._pending_fell_back.append(event_id)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is queued, unconfirmed or stored (the hub has everything)."""
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
            reconnects=self.reconnects, inflight=self.window.inflight,
            outbox_depth=self.outbox.count, outbox_bytes=self.outbox.stored_bytes,
            dropped=self.dropped, unconfirmed=self.window.unconfirmed,
            confirmed=self.confirmed, republished=self.republished, busy=self.busy,
            degraded=self.degraded,
        )

    def publish_side(self, topic: str, payload: bytes, *, qos: int = 0,
                     retain: bool = False) -> mqtt.MQTTMessageInfo | None:
        """Publish something that needs no outbox (telemetry, local actions); the
        message info (``None`` before start) tells its fate."""
        if self._client is None:
            return None
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def publish_status(self, state: ConnectionState) -> None:
        """Publish this device's retained status now (e.g. after a model swap)."""
        if self._client is not None:
            self._client.publish(self.layout.status(self.device_id),
                                 encode(self._ordered_status(state)), qos=1, retain=True)

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
                    encode(self._ordered_status("offline", OFFLINE_SEQ)), qos=1, retain=True,
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
                now = self._clock()
                items = self._take_inbound()
                self._take_acks(now)
                self._take_incoming()
                if (items or self._confirmed_ids or self._deletes_due(stopping, now)
                        or self._pending_changes_due(stopping, now)):
                    self._commit(items, self._take_pending_changes(), now)
                self._publish_planned(self._clock())
                if stopping and not self._inbound:
                    break
                if not self._inbound and not self._acks and not self._incoming:
                    if self.outbox.count == 0 and self.window.idle:
                        self._idle.set()
                    self._wake.wait(self._sleep_s(now))
                    self._wake.clear()
        except BaseException as exc:
            self.error = exc
            log.exception("uplink thread failed")
            raise

    def _sleep_s(self, now: float) -> float:
        wait = DELETE_DELAY_S if self._acked or self._changes_since is not None else 0.2
        due = self.window.next_due(now)
        return max(0.001, min(wait, due)) if due is not None else wait

    def _take_inbound(self) -> list[OutboxItem]:
        inbound = self._inbound
        items = [inbound.popleft() for _ in range(min(BATCH, len(inbound)))]
        if items:
            with self._room:
                self._room.notify_all()
        return items

    def _pending_changes_due(self, stopping: bool, now: float) -> bool:
        """Changes to verdict waits are not urgent (after a crash a verdict is matched, or
        a fallback runs, once more): they ride along with the next commit, or wait at most
        :data:`DELETE_DELAY_S`."""
        if not self._pending_resolved and not self._pending_fell_back:
            self._changes_since = None
            return False
        if self._changes_since is None:
            self._changes_since = now
        return stopping or now - self._changes_since >= DELETE_DELAY_S

    def _take_pending_changes(self) -> PendingChanges | None:
        self._changes_since = None
        if not self._pending_resolved and not self._pending_fell_back:
            return None
        resolved = [self._pending_resolved.popleft() for _ in range(len(self._pending_resolved))]
        fell = [self._pending_fell_back.popleft() for _ in range(len(self._pending_fell_back))]
        return PendingChanges(tuple(resolved), tuple(fell))

    def _deletes_due(self, stopping: bool, now: float) -> bool:
        if not self._acked:
            return False
        return (
            stopping or len(self._acked) >= DELETE_BATCH or self.window.unconfirmed == 0
            or now - self._acked_since >= DELETE_DELAY_S
        )

    def _commit(self, items: list[OutboxItem], changes: PendingChanges | None,
                now: float) -> None:
        """One transaction; on a full disk or a failing file, degrade instead of dying."""
        if self.degraded is not None and now < self._degraded_until:
            self._refuse(items)
            self._requeue_changes(changes)
            return
        acked, confirmed_ids = self._acked, self._confirmed_ids
        try:
            result = self.outbox.commit(items, acked, confirmed_ids=confirmed_ids,
                                        pending=changes)
        except OutboxError as exc:
            if self.degraded is None:
                log.error("outbox cannot be written (%s): refusing new escalations, deciding"
                          " them locally, retrying every %.0f s", exc, DEGRADED_RETRY_S)
            self.degraded = "disk-full" if exc.full else "outbox-error"
            self._degraded_until = now + DEGRADED_RETRY_S
            self._refuse(items)
            self._requeue_changes(changes)
            return
        if self.degraded is not None:
            log.warning("outbox writable again (%s over): accepting escalations", self.degraded)
            self.degraded = None
        self._acked, self._confirmed_ids = [], []
        self.acknowledged += result.deleted
        self.window.forget([seq for seq, _ in result.confirmed])
        for event_id, reason in result.dropped:
            self._dropped(event_id, reason)
        if result.dropped:
            self.window.backlog = True  # evicted or expired rows: re-read what is left
        if result.stored:
            if self._on_stored is not None:
                self._on_stored(result.stored)
            by_seq = {item.seq: item for item in result.stored}
            for seq in self.window.stored(list(by_seq)):
                self._live[seq] = by_seq[seq]

    def _refuse(self, items: list[OutboxItem]) -> None:
        reason = self.degraded or "outbox-error"
        for item in items:
            self._dropped(item.event_id, reason)

    def _requeue_changes(self, changes: PendingChanges | None) -> None:
        if changes is not None:
            self._pending_resolved.extendleft(reversed(changes.resolved))
            self._pending_fell_back.extendleft(reversed(changes.fell_back))

    def _take_acks(self, now: float) -> None:
        refused: dict[str, int] = {}
        while self._acks:
            mid, failed, reason = self._acks.popleft()
            if self.window.puback(mid, not failed, now) is not None and failed:
                self.refused += 1
                refused[reason] = refused.get(reason, 0) + 1
        if refused:  # one line per turn, not per event: a long outage must not flood logs
            log.warning("broker did not take %d event(s) (%s): keeping them, retrying",
                        sum(refused.values()),
                        ", ".join(f"{n} {reason}" for reason, n in refused.items()))

    def _take_incoming(self) -> None:
        """Receipts, verdicts and busy answers from the hub: confirm their events; pass
        verdicts and busy answers on."""
        confirmed: list[str] = []
        while self._incoming:
            payload = self._incoming.popleft()
            schema = peek_schema(payload) if len(payload) <= MAX_VERDICT_BYTES else None
            try:
                if schema == "receipt/1":
                    receipt = decode(payload, ReceiptMessage, max_bytes=MAX_VERDICT_BYTES)
                    self._check_device(receipt.device_id)
                    confirmed += receipt.event_ids
                    continue
                if schema == "busy/1":
                    busy = decode(payload, BusyMessage, max_bytes=MAX_VERDICT_BYTES)
                    self._check_device(busy.device_id)
                    confirmed.append(busy.event_id)  # stored at the hub, as a receipt says
                    self.window.busy(self._clock(), busy.retry_after_s)
                    self.busy += 1
                    if self._on_busy is not None:
                        self._on_busy(busy)
                    continue
                verdict = decode(payload, VerdictMessage, max_bytes=MAX_VERDICT_BYTES)
                self._check_device(verdict.device_id)
            except (MessageError, ValueError) as exc:
                if self._on_malformed is not None:
                    self._on_malformed(self._verdict_topic, str(exc))
                log.warning("dropped a bad message on %s: %s", self._verdict_topic, exc)
                continue
            confirmed.append(verdict.event_id)
            if self._on_verdict is not None:
                self._on_verdict(verdict)
        if not confirmed:
            return
        known, unknown = self.window.confirm(confirmed)
        for seq, _ in known:
            self._live.pop(seq, None)
        if known and not self._acked:
            self._acked_since = self._clock()
        self._acked += known
        self._confirmed_ids += unknown
        self.confirmed += len(known) + len(unknown)

    def _check_device(self, device_id: str) -> None:
        if device_id != self.device_id:
            raise ValueError(f"addressed to device {device_id!r}")

    def _dropped(self, event_id: str, reason: str) -> None:
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop(event_id, reason)

    def _publish_planned(self, now: float) -> None:
        client = self._client
        if client is None:
            return
        plan = self.window.plan(now, connected=self.connected)
        if plan.empty:
            return
        batch: list[OutboxItem] = []
        if plan.retry:
            batch += self.outbox.by_seq(plan.retry)
            gone = set(plan.retry) - {item.seq for item in batch}
            self.window.forget(sorted(gone))  # evicted or expired meanwhile
            self.republished += len(batch)
        batch += [item for seq in plan.live if (item := self._live.pop(seq, None)) is not None]
        if plan.backlog:
            rows = self.outbox.after(self.window.cursor, plan.backlog)
            self.window.backlog_read(plan.backlog, len(rows))
            # Not again what this turn publishes already (live events are out of the live
            # set but not yet published), nor a row the hub confirmed that waits for the
            # next batch of deletes.
            taken = {item.seq for item in batch} | {seq for seq, _ in self._acked}
            confirmed_ids = set(self._confirmed_ids)
            batch += [row for row in rows if not self.window.skip_in_backlog(row.seq)
                      and row.seq not in taken and row.event_id not in confirmed_ids]
        for item in batch:
            properties = self._properties[is_framed_event(item.payload)]
            info = client.publish(item.topic, item.payload, qos=1, properties=properties)
            # Not connected any more: paho keeps the message and sends it on reconnect.
            self.window.published(item.seq, item.event_id, item.cost, info.mid, now)
            self.published += 1
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                log.warning("publish of %s returned %s", item.event_id, info.rc)

    def _ordered_status(self, state: ConnectionState, seq: int | None = None) -> StatusMessage:
        if seq is None:
            self._status_seq += 1
            seq = self._status_seq
        return self._status(state).model_copy(update={"epoch": self._epoch, "seq": seq})

    # -- paho adapter ----------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        client = new_client(cfg, self.device_id)
        client.max_inflight_messages_set(cfg.max_inflight)
        client.max_queued_messages_set(0)
        self._set_will(client)
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

    def _set_will(self, client: mqtt.Client) -> None:
        """A fresh connection epoch and the last will that ends it: registered before every
        connection attempt, so that the will orders after every status of its connection
        and before any of the next one (its time is not the process's start)."""
        self._epoch = time.time()
        self._status_seq = 0
        client.will_set(self.layout.status(self.device_id),
                        encode(self._ordered_status("offline", WILL_SEQ)), qos=1, retain=True,
                        properties=Properties(PacketTypes.WILLMESSAGE))

    def _set_delay(self, client: mqtt.Client) -> float:
        delay = self._backoff.delay(self._attempt, self._rng)
        # paho annotates int seconds but waits float seconds; sub-second matters here.
        client.reconnect_delay_set(min_delay=delay, max_delay=delay)  # type: ignore[arg-type]
        return delay

    def _retry_later(self, client: mqtt.Client, cause: str) -> None:
        """Count a reconnection attempt, back off, and say why and when, at WARNING."""
        self._set_will(client)
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
        client.publish(self.layout.status(self.device_id),
                       encode(self._ordered_status("online")), qos=1, retain=True)
        self._connected.set()
        self._wake.set()
        log.info("connected to %s:%d (session present: %s)", self.config.host,
                 self.config.port, getattr(flags, "session_present", "?"))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any,
                       reason: ReasonCode, properties: Properties | None) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
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
        # ReasonCode's properties and str() are slow; a success is the plain value 0. Any
        # other code, 16 ("no matching subscribers") included, means the hub cannot have
        # an escalation; for side publishes (actions) only a failure code is a refusal.
        failed = reason.value != 0
        if reason.value >= FAILURE_CODE:
            with self._refusals_lock:
                self._refusals[mid] = (time.monotonic_ns(), reason)
                if len(self._refusals) > REFUSALS_KEPT:
                    del self._refusals[next(iter(self._refusals))]
        self._acks.append((mid, failed, str(reason) if failed else ""))
        # Wake the uplink thread for batches of PUBACKs, not for each one.
        if len(self._acks) >= ACK_WAKE or len(self._acks) >= self.window.inflight or failed:
            self._wake.set()

    def _on_paho_message(self, client: mqtt.Client, userdata: Any,
                         message: mqtt.MQTTMessage) -> None:
        if message.topic == self._verdict_topic:
            self._incoming.append(bytes(message.payload))
            self._wake.set()
        elif self._on_message is not None:
            self._on_message(message.topic, bytes(message.payload))
