"""The MQTT ingest worker: escalations in, verdicts out, exactly once in the store.

Escalations arrive through an MQTT 5 shared subscription (``$share/<group>/...``), so
that several hub processes split the load. paho acknowledges nothing by itself
(``manual_ack``): a message is acknowledged only after it was stored, and an escalation
only once it was answered (its verdict recorded and sent, or ``busy``), so that the
broker delivers again whatever a hub that died held, to it when it returns under its
client id or to another replica. The store inserts each event id once; a redelivered event is
answered with the verdict already recorded. Bad input (malformed, oversized, unknown
device, a device writing under another's id, a device re-sending another's event id) is
counted, logged and dropped. Devices' decision journals arrive the same way (QoS 0): the
steps of escalated tracks are kept for the events' timelines (:mod:`cloud_hub.journal`).

Threads, and what each owns:

* paho's network thread only puts each message on the inbound queue and returns: it
  never blocks, so the hub keeps answering the broker's keepalives and sending verdicts
  whatever the load. The queue needs no bound of its own for QoS 1 messages: the broker
  sends at most ``mqtt_receive_maximum`` unacknowledged (MQTT 5 Receive Maximum; more
  than the admission queue holds). QoS 0 telemetry beyond that is dropped (counted).
* ``intake-<n>`` threads decode, check and store each message (the escalations waiting
  together in one transaction: one sync to disk for many), and offer
  each stored escalation to the admission queue (:mod:`cloud_hub.admission`), answering
  ``busy`` at once for an event it sheds (the queue is full at that priority and device
  share, or the event could not be judged within its device's verdict timeout, which
  runs from the capture: time spent in the broker's queue counts).
* ``judge-<n>`` threads take the next event from the admission queue (by priority, in
  turn across devices) and judge it; their detector requests
  meet in the micro-batcher. They give way to intake (:class:`IntakeFirst`): once it
  takes up a message that arrived more than :data:`INTAKE_BEHIND_S` earlier, they wait
  until it is less than half that behind, or has nothing left, so that under overload the
  CPU goes first to storing every event and answering what cannot be judged in time,
  not to judging while the queue in front of the hub grows past the devices' timeouts.
  The admission queue is theirs; intake threads reach it only through
  :class:`_Admission`, under its lock.
* the ``verdict-writer`` thread records what the judge threads hand it through a bounded
  queue, all that waits in one transaction (one sync to disk for many), then sends each
  verdict as stored and acknowledges its event's message.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cloud_hub.admission import (
    AdmissionLimits,
    AdmissionQueue,
    Shed,
    Ticket,
    answer_deadline,
    priority_of,
)
from cloud_hub.errors import BadImageError, HubError, JudgeError, NotFoundError, RetryLaterError
from cloud_hub.journal import JOURNAL_MAX_BYTES, DeviceRate, check_step, never_escalated
from cloud_hub.judge import EventJudge, Judgement
from cloud_hub.metrics import HubMetrics
from cloud_hub.mqtt import BrokerSettings, default_client_id
from cloud_hub.settings import HubSettings
from cloud_hub.store import DeviceStanding, NewVerdict, Store, TrackKey
from cloud_hub.supervision import Supervisor
from sync import (
    BusyMessage,
    DetectionPayload,
    EventMessage,
    MessageError,
    ModelRef,
    OversizedMessageError,
    ReceiptMessage,
    StatusMessage,
    TelemetryMessage,
    TopicAddress,
    TopicError,
    TopicLayout,
    TrackEventMessage,
    UpdateReport,
    VerdictMessage,
    decode,
    encode,
    is_framed_event,
)

log = logging.getLogger(__name__)

RETRY_FIRST_S = 0.25
RETRY_MAX_S = 10.0
VERDICT_BATCH = 64  # verdicts recorded in one transaction, at most
VERDICT_QUEUE = 1024  # judged, not yet recorded: judge threads wait beyond it
INTAKE_BATCH = 64  # messages whose escalations are stored in one transaction, at most
INTAKE_BEHIND_S = 1.0  # intake this far behind arrivals: the judge threads wait for it
MIN_RETRY_AFTER_S = 1.0  # the shortest slow-down a busy answer asks of a device
_Device = TypeVar("_Device", EventMessage, StatusMessage, TelemetryMessage, UpdateReport,
                  TrackEventMessage)


@dataclass(frozen=True, slots=True)
class _Stored:
    """A stored escalation, and the message that brought it (acknowledged once the
    event is answered: judged, or busy; ``None`` when it came another way)."""

    event: EventMessage
    arrived_at: float
    message: mqtt.MQTTMessage | None = None


_Judged = tuple[NewVerdict, mqtt.MQTTMessage | None, float]
_Item = TypeVar("_Item")


def _waiting(source: queue.Queue[_Item | None], first: _Item,
             limit: int) -> tuple[list[_Item], bool]:
    """``first`` and what already waits behind it in ``source`` (no waiting for more), up
    to ``limit`` items; and whether the stop sentinel (``None``) was among them."""
    batch = [first]
    while len(batch) < limit:
        try:
            item = source.get_nowait()
        except queue.Empty:
            return batch, False
        if item is None:
            return batch, True
        batch.append(item)
    return batch, False


class _Admission:
    """The admission queue with its lock and the judge threads' wake-up."""

    def __init__(self, limits: AdmissionLimits, metrics: HubMetrics) -> None:
        self.queue: AdmissionQueue[_Stored] = AdmissionQueue(limits)
        self._ready = threading.Condition()
        self._metrics = metrics
        self._closed = False

    def offer(self, ticket: Ticket[_Stored], now: float) -> list[Shed[_Stored]]:
        with self._ready:
            shed = self.queue.offer(ticket, now)
            if not any(s.ticket is ticket for s in shed):
                self._metrics.admitted.inc()
                self._ready.notify()
            self._metrics.admission_depth.set(len(self.queue))
        return shed

    def take(self, clock: Callable[[], float]) -> tuple[Ticket[_Stored] | None,
                                                        list[Shed[_Stored]]]:
        """Wait for the next event to judge; ``(None, shed)`` once closed."""
        with self._ready:
            while True:
                if self._closed:
                    return None, []
                ticket, shed = self.queue.take(clock())
                self._metrics.admission_depth.set(len(self.queue))
                if ticket is not None or shed:
                    return ticket, shed
                self._ready.wait()

    def judged(self, seconds: float) -> None:
        with self._ready:
            self.queue.judged(seconds)

    def answered(self, seconds: float) -> None:
        with self._ready:
            self.queue.answered(seconds)

    def retry_after_s(self) -> float:
        """How long the queue takes to drain at the current pace (at least a second)."""
        with self._ready:
            queue, limits = self.queue, self.queue.limits
            return max(MIN_RETRY_AFTER_S, len(queue) * queue.service_s / limits.workers)

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()


class IntakeFirst:
    """Judging gives way to intake: the judge threads wait while intake is behind.

    Intake threads say how far behind arrivals they are as they take up each batch (and
    ``0`` once nothing waits); judge threads call :meth:`wait_turn` before each event.
    """

    def __init__(self, metrics: HubMetrics, behind_s: float = INTAKE_BEHIND_S) -> None:
        self._caught_up = threading.Event()
        self._caught_up.set()
        self._metrics = metrics
        self._behind_s = behind_s

    def behind(self, seconds: float) -> None:
        """Intake is taking up a message that arrived ``seconds`` ago."""
        if seconds > self._behind_s:
            self._caught_up.clear()
        elif seconds <= self._behind_s / 2:
            self._caught_up.set()

    def wait_turn(self) -> None:
        """Wait while intake is behind (counted)."""
        if not self._caught_up.is_set():
            self._metrics.judging_yielded.inc()
            self._caught_up.wait()

    def waiting(self) -> bool:
        """Whether judging waits now."""
        return not self._caught_up.is_set()

    def release(self) -> None:
        """Let every judge thread go (stopping)."""
        self._caught_up.set()


class IngestWorker:
    """One hub process's share of the fleet's escalations.

    Args:
        clock: Wall-clock seconds (events' deadlines; tests may pass their own).
    """

    def __init__(self, settings: HubSettings, store: Store, judge: EventJudge,
                 metrics: HubMetrics,
                 on_update_report: Callable[[UpdateReport], None] | None = None,
                 on_verdict: Callable[[dict[str, Any]], None] | None = None, *,
                 clock: Callable[[], float] = time.time,
                 supervisor: Supervisor | None = None) -> None:
        self.settings = settings
        self.supervisor = supervisor or Supervisor()
        self._on_update_report = on_update_report
        self._on_verdict = on_verdict
        self.store = store
        self.judge = judge
        self.metrics = metrics
        self.layout = TopicLayout(settings.mqtt_prefix)
        self.name = settings.mqtt_client_id or default_client_id()
        self._clock = clock
        self._stopping = threading.Event()
        # Bounded by the broker (Receive Maximum) for QoS 1; see the module docstring.
        self._inbound: queue.Queue[tuple[mqtt.MQTTMessage, float] | None] = queue.Queue()
        self._intake_first = IntakeFirst(metrics)
        self._admission = _Admission(AdmissionLimits(
            capacity=settings.admission_capacity, workers=settings.ingest_workers),
            metrics)
        self._threads: list[threading.Thread] = []
        # A verdict, the message to acknowledge, and when it was judged (perf_counter).
        self._verdicts: queue.Queue[_Judged | None] = queue.Queue(VERDICT_QUEUE)
        self._writer: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self.connected = threading.Event()
        self.handled = 0
        self._journal_rate = DeviceRate(settings.journal_steps_per_minute,
                                        settings.journal_burst)
        self._journal_rate_lock = threading.Lock()  # the intake-<n> threads share it

    def start(self) -> None:
        """Connect, subscribe, start the intake and judge threads."""
        client = BrokerSettings.from_settings(self.settings).client(self.name, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 30)
        client.max_inflight_messages_set(self.settings.mqtt_max_inflight)
        client.max_queued_messages_set(0)  # verdicts wait in paho, never refused
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600
        properties.ReceiveMaximum = self.settings.mqtt_receive_maximum
        client.connect_async(self.settings.mqtt_host, self.settings.mqtt_port, keepalive=30,
                             clean_start=False, properties=properties)
        self._client = client
        for index in range(self.settings.intake_workers):
            self._spawn(self._intake, f"intake-{index}")
        for index in range(self.settings.ingest_workers):
            self._spawn(self._judging, f"judge-{index}")
        self._writer = self.supervisor.spawn(self._write_verdicts, "verdict-writer")
        client.loop_start()

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        self._threads.append(self.supervisor.spawn(target, name))

    def stop(self) -> None:
        """Disconnect, then let the threads finish what they hold.

        A message whose store write is still being retried stays unacknowledged: the
        broker delivers it again when this replica (same client id) or another returns.
        An event stored but not yet judged is judged when its device sends it again
        (it does, until it hears a receipt or a verdict).
        """
        self._stopping.set()
        self.supervisor.stopping()
        self._intake_first.release()  # no judge thread waits for an intake that stops
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        for _ in range(self.settings.intake_workers):
            self._inbound.put(None)
        self._admission.close()
        for thread in self._threads:
            thread.join(30)
        self._threads.clear()
        self._verdicts.put(None)  # after the judge threads: what they judged is recorded
        if self._writer is not None:
            self._writer.join(30)
            self._writer = None

    @property
    def admission(self) -> AdmissionQueue[_Stored]:
        """The admission queue (read its counters; the judge threads own it)."""
        return self._admission.queue

    # -- paho's thread ---------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any,
                    reason: ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:
            log.error("broker refused the hub's connection: %s", reason)
            return
        # paho does not honour the broker's Receive Maximum (and cannot change its own
        # limit once connected): more verdicts in flight than the broker takes is a
        # protocol error, so say which setting to lower.
        broker_maximum = getattr(properties, "ReceiveMaximum", None)
        if broker_maximum and int(broker_maximum) < self.settings.mqtt_max_inflight:
            log.warning("the broker takes %d messages in flight, CLOUD_HUB_MQTT_MAX_INFLIGHT "
                        "is %d: lower it to %d (or raise Mosquitto's max_inflight_messages)",
                        broker_maximum, self.settings.mqtt_max_inflight, broker_maximum)
        client.subscribe(self.layout.shared(self.settings.share_group, "events"), qos=1)
        client.subscribe(self.layout.all_devices("status"), qos=1)
        client.subscribe(self.layout.all_devices("telemetry"), qos=0)  # every replica: metrics
        client.subscribe(self.layout.shared(self.settings.share_group, "updates"), qos=1)
        client.subscribe(self.layout.shared(self.settings.share_group, "journal"), qos=0)
        self.connected.set()
        self.metrics.connected.set(1)
        log.info("%s connected to %s:%d", self.name, self.settings.mqtt_host,
                 self.settings.mqtt_port)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any,
                       reason: ReasonCode, properties: Properties | None) -> None:
        self.connected.clear()
        self.metrics.connected.set(0)
        if not self._stopping.is_set():
            self.metrics.disconnects.inc()
            log.warning("%s lost the broker: %s", self.name, reason)

    def _on_message(self, client: mqtt.Client, userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        if message.qos == 0 and self._inbound.qsize() >= self.settings.mqtt_receive_maximum:
            self.metrics.dropped.labels("hub-busy").inc()  # telemetry: the next one follows
            return
        # When it arrived: what the device's verdict timeout had left then (it runs from
        # the capture) runs down from here, however long the event then waits to be stored.
        self._inbound.put_nowait((message, self._clock()))

    # -- intake threads --------------------------------------------------------------

    def _intake(self) -> None:
        while (first := self._inbound.get()) is not None:
            batch, stopping = _waiting(self._inbound, first, INTAKE_BATCH)
            self._intake_first.behind(self._clock() - first[1])
            self._take(batch)
            if self._inbound.empty():
                self._intake_first.behind(0.0)
            if stopping:
                return

    def _take(self, batch: list[tuple[mqtt.MQTTMessage, float]]) -> None:
        """Handle a batch of messages: its escalations stored in one transaction, the
        rest one by one. Each is acknowledged once handled for good; an escalation once
        it is answered (judged, or busy), so that one a hub died holding comes back to it
        (or to another replica) from the broker."""
        escalations: list[_Stored] = []
        addresses: list[TopicAddress | None] = []
        for message, _ in batch:
            try:
                addresses.append(self.layout.parse(message.topic))
            except TopicError:
                addresses.append(None)  # handle() counts it
        # The senders' standing in one query, not one per escalation.
        standings = self._standings_until_known({
            address.name for address in addresses
            if address is not None and address.kind == "events"})
        if standings is None:
            return  # stopping: all unacknowledged, the broker delivers them again
        for (message, arrived_at), address in zip(batch, addresses, strict=True):
            self.handled += 1
            topic, payload = message.topic, bytes(message.payload)
            if address is not None and address.kind == "events":
                event = self._accept_event(address.name, payload,
                                           standing=standings[address.name])
                if event is not None:
                    escalations.append(_Stored(event, arrived_at, message))
                    continue
                done = True
            else:
                done = self._handle_until_done(topic, payload, arrived_at)
            if done:
                self._ack(message)
        if escalations:
            self._store_until_done(escalations)

    def _standings_until_known(self, device_ids: set[str]) -> dict[str, DeviceStanding] | None:
        """The senders' standing, retrying a store that is down (as
        :meth:`_store_until_done` does); ``None`` if the hub stops meanwhile."""
        attempt = 0
        while True:
            try:
                return self.store.device_standings(device_ids=device_ids)
            except RetryLaterError as exc:
                attempt += 1
                if self._back_off(attempt, f"the standing of {len(device_ids)} device(s)",
                                  exc):
                    return None

    def _ack(self, message: mqtt.MQTTMessage | None) -> None:
        """Acknowledge a message (thread-safe: paho queues the PUBACK)."""
        if message is not None and message.qos > 0 and self._client is not None:
            self._client.ack(message.mid, message.qos)

    def _store_until_done(self, escalations: list[_Stored]) -> None:
        """Store escalations together, retrying a store that is down (as
        :meth:`_handle_until_done` does; unacknowledged if the hub stops meanwhile). A
        batch the store refuses for good is stored one by one, so that one bad row costs
        only itself."""
        attempt = 0
        while True:
            try:
                self._store_events(escalations)
                return
            except RetryLaterError as exc:
                attempt += 1
                if self._back_off(attempt, f"{len(escalations)} escalation(s)", exc):
                    return
            except HubError as exc:
                if len(escalations) > 1:
                    for one in escalations:
                        self._store_until_done([one])
                    return
                self.metrics.dropped.labels("hub-error").inc()
                log.error("could not store event %s: %s", escalations[0].event.event_id,
                          exc)
                self._ack(escalations[0].message)
                return
            except Exception:  # a thread must outlive any one batch
                self.metrics.dropped.labels("internal-error").inc()
                log.exception("failed on %d escalation(s)", len(escalations))
                for one in escalations:
                    self._ack(one.message)
                return

    def _back_off(self, attempt: int, what: str, exc: Exception) -> bool:
        """Count a transient store failure and wait before the next attempt, longer each
        time; whether the hub is stopping meanwhile (then give up, unacknowledged)."""
        self.metrics.retries.labels("store-unavailable").inc()
        delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** min(attempt, 10))
        log.warning("cannot store %s yet (attempt %d, next in %.1f s): %s", what, attempt,
                    delay, exc)
        return self._stopping.wait(delay)

    def _handle_until_done(self, topic: str, payload: bytes, arrived_at: float) -> bool:
        """Handle one message, retrying transient failures (the store is down or full)
        with backoff; whether it may be acknowledged.

        Only a message that was stored, or refused for good (counted), is acknowledged:
        one that met a transient failure is retried here, and if the hub stops meanwhile
        it stays unacknowledged, so the broker delivers it again.
        """
        attempt = 0
        while True:
            try:
                self.handle(topic, payload, arrived_at)
                return True
            except RetryLaterError as exc:
                attempt += 1
                if self._back_off(attempt, f"a message on {topic}", exc):
                    return False
            except HubError as exc:
                self.metrics.dropped.labels("hub-error").inc()
                log.error("could not handle a message on %s: %s", topic, exc)
                return True
            except Exception:  # a thread must outlive any one message
                self.metrics.dropped.labels("internal-error").inc()
                log.exception("failed on a message on %s", topic)
                return True

    def handle(self, topic: str, payload: bytes, arrived_at: float | None = None) -> None:
        """Handle one message; never raises for bad input (it is counted instead).

        An escalation is stored and offered for judgement (or answered ``busy``); the
        judge threads judge it. ``arrived_at``: when it reached the hub (default now).
        """
        try:
            address = self.layout.parse(topic)
        except TopicError as exc:
            self._drop("bad-topic", f"{topic}: {exc}")
            return
        if address.kind == "status":
            self._status(address.name, payload)
        elif address.kind == "events":
            self._event(address.name, payload,
                        self._clock() if arrived_at is None else arrived_at)
        elif address.kind == "updates":
            self._update_report(address.name, payload)
        elif address.kind == "telemetry":
            self._telemetry(address.name, payload)
        elif address.kind == "journal":
            self._journal(address.name, payload)
        else:
            self._drop("unexpected-topic", topic)

    def _drop(self, reason: str, detail: str) -> None:
        self.metrics.dropped.labels(reason).inc()
        log.warning("dropped a message (%s): %s", reason, detail)

    def _accept(self, device_id: str, payload: bytes, kind: type[_Device],
                what: str, *, max_bytes: int | None = None,
                standing: DeviceStanding | None = None) -> _Device | None:
        """Decode a device's message; count and drop it if it is malformed, oversized,
        claims another device, or comes from a device that was never provisioned or was
        revoked (``standing``: the device's, when the caller looked it up)."""
        try:
            message = decode(payload, kind,
                             max_bytes=max_bytes or self.settings.max_message_bytes)
        except OversizedMessageError as exc:
            self._drop("oversized", f"{what} from {device_id}: {exc}")
            return None
        except MessageError as exc:
            self._drop("malformed", f"{what} from {device_id}: {exc}")
            return None
        if message.device_id != device_id:
            self._drop("spoofed-device",
                       f"{what} claims {message.device_id} on {device_id}'s topic")
            return None
        if standing is None:
            standing = self.store.device_standing(device_id=device_id)
        if standing != "active":
            self._drop(f"{standing}-device", f"{what} from {device_id}")
            return None
        return message

    def _status(self, device_id: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained message
        status = self._accept(device_id, payload, StatusMessage, "status")
        if status is not None:
            # A device's own (epoch, seq) orders its statuses across hubs and reconnects;
            # one that sends none is ordered by arrival here.
            order = status.epoch if status.epoch is not None else time.time()
            self.store.record_status(device_id=device_id, online=status.state == "online",
                                     at=order, seq=status.seq, models=status.models,
                                     backend=status.backend,
                                     updates_enabled=status.updates_enabled,
                                     agent_version=status.agent_version)

    def _telemetry(self, device_id: str, payload: bytes) -> None:
        telemetry = self._accept(device_id, payload, TelemetryMessage, "telemetry")
        if telemetry is not None:
            self.metrics.record_telemetry(device_id, telemetry.at, telemetry.values)
            # Heard from: a rollout warns about devices it waits for that went quiet.
            self.store.touch_device(device_id=device_id, at=time.time())
            self.store.record_telemetry(device_id=device_id, at=telemetry.at,
                                        values=telemetry.values, inputs=telemetry.inputs)

    def _update_report(self, device_id: str, payload: bytes) -> None:
        report = self._accept(device_id, payload, UpdateReport, "update report")
        if report is not None and self._on_update_report is not None:
            self._on_update_report(report)

    def _journal(self, device_id: str, payload: bytes) -> None:
        """Keep one step of a device's decision journal (see :mod:`cloud_hub.journal`)."""
        step = self._accept(device_id, payload, TrackEventMessage, "journal step",
                            max_bytes=min(JOURNAL_MAX_BYTES, self.settings.max_message_bytes))
        if step is None:
            return
        problem = check_step(step)
        if problem is not None:
            self._drop("malformed", f"journal step from {device_id}: {problem}")
            return
        with self._journal_rate_lock:
            allowed = self._journal_rate.allow(device_id, time.monotonic())
        if not allowed:
            # Not logged one by one: a flood would flood the log too.
            self.metrics.dropped.labels("journal-rate").inc()
            return
        if step.event_id is not None:
            try:
                owner = self.store.get_event(event_id=step.event_id)["device_id"]
            except NotFoundError:
                owner = device_id  # not stored yet: the journal may overtake its event
            if owner != device_id:
                self._drop("replayed-event-id", f"{device_id}'s journal names event "
                           f"{step.event_id} of {owner}")
                return
        if never_escalated(step):
            track = TrackKey(device_id, step.source, step.track_id, step.first_frame)
            since = self.store.lifecycle_start(track=track, before=step.at)
            if since is not None:
                self.store.forget_track(track=track, since=since)
            return
        self.store.add_journal_step(message=step, received_at=time.time())
        self.metrics.journal_steps.inc()

    def publish(self, topic: str, payload: bytes, retain: bool) -> None:
        """Publish with QoS 1 on the worker's connection (announcements)."""
        if self._client is None:
            raise HubError("the ingest worker is not started")
        self._client.publish(topic, payload, qos=1, retain=retain)

    def _event(self, device_id: str, payload: bytes, arrived_at: float) -> None:
        event = self._accept_event(device_id, payload)
        if event is not None:
            self._store_events([_Stored(event, arrived_at)])

    def _accept_event(self, device_id: str, payload: bytes,
                      standing: DeviceStanding | None = None) -> EventMessage | None:
        event = self._accept(device_id, payload, EventMessage, "event", standing=standing)
        if event is not None:
            # JSON events come from outboxes written before the framed format: when this
            # stays flat, every device has upgraded.
            self.metrics.event_formats.labels(
                "frame" if is_framed_event(payload) else "json").inc()
        return event

    def _store_events(self, escalations: list[_Stored]) -> None:
        """Store accepted escalations in one transaction; admit the new ones, answer
        redelivered ones.

        Raises:
            RetryLaterError: The store is down: nothing was stored.
            HubError: The store refused them for good.
        """
        received_at = self._clock()
        new = self.store.add_events(
            [self._row(item.event, received_at) for item in escalations],
            seen={item.event.device_id: received_at for item in escalations})
        for item in escalations:
            if item.event.event_id in new:
                new.discard(item.event.event_id)  # the same event twice in a batch: once
                self.metrics.ingested.inc()
                self._admit(item)
            else:
                self._redelivered(item)

    @staticmethod
    def _row(event: EventMessage, received_at: float) -> dict[str, Any]:
        return {
            "id": event.event_id, "device_id": event.device_id, "source": event.source,
            "reason": event.reason, "priority": event.priority,
            "captured_at": event.captured_at, "received_at": received_at,
            "edge_model": event.model.name, "edge_version": event.model.version,
            "edge_detections": json.dumps([d.model_dump(mode="json")
                                           for d in event.detections]),
            "anomaly_score": event.anomaly_score, "crop": event.crop_jpeg,
            "thumbnail": event.thumbnail_jpeg, **_frame_size(event),
        }

    def _redelivered(self, item: _Stored) -> None:
        """An escalation whose id is stored: answer with its verdict, or say it is stored
        and judge it (again, if whoever held it died)."""
        event = item.event
        device_id = event.device_id
        stored = self.store.get_event(event_id=event.event_id)
        if stored["device_id"] != device_id:
            # An event id belongs to the device that sent it first: another device
            # re-sending it must not hear (or make its owner hear) that verdict.
            self._drop("replayed-event-id", f"{device_id} re-sent event "
                       f"{event.event_id} of {stored['device_id']}")
            self._ack(item.message)
            return
        self.metrics.dedup_hits.inc()
        if stored["outcome"] is not None:
            self._send(stored)
            self._ack(item.message)
            return
        # Another worker or replica holds it (or died judging it): say it is safe here,
        # so the device stops sending it, and judge it if nobody has.
        self._send_receipt(device_id, event.event_id)
        self._admit(item)

    def _admit(self, item: _Stored) -> None:
        """Offer a stored escalation for judgement; answer ``busy`` for what is shed."""
        event = item.event
        deadline = answer_deadline(
            captured_at=event.captured_at, arrived_at=item.arrived_at,
            timeout_s=event.verdict_timeout_s or self.settings.default_verdict_timeout_s)
        # None: it waited past its timeout (in the outbox, or the broker's queue), so the
        # device has decided it already.
        ticket = Ticket(event.device_id, priority_of(event.reason, late=deadline is None),
                        deadline, item)
        for shed in self._admission.offer(ticket, self._clock()):
            self._send_busy(shed)

    # -- judge threads ---------------------------------------------------------------

    def _judging(self) -> None:
        while True:
            self._intake_first.wait_turn()
            ticket, shed = self._admission.take(self._clock)
            for item in shed:
                self._send_busy(item)
            if ticket is None:
                if not shed:
                    return  # closed
                continue
            try:
                self._judge_until_done(ticket.item)
            except Exception:  # a thread must outlive any one event
                self.metrics.dropped.labels("internal-error").inc()
                log.exception("failed judging event %s", ticket.item.event.event_id)
                self._ack(ticket.item.message)

    def _judge_until_done(self, item: _Stored) -> None:
        """Judge, then hand the verdict to the verdict writer (an event left unjudged or
        unrecorded when the hub stops is unacknowledged: the broker delivers it again)."""
        event = item.event
        started = time.perf_counter()
        judgement = self._judgement(event)
        judged = time.perf_counter()
        self._admission.judged(judged - started)
        self._verdicts.put((NewVerdict(
            event.event_id, judgement.outcome,
            [d.model_dump(mode="json") for d in judgement.detections], judgement.model,
            judgement.version, judgement.inference_ms, time.time(), self.name),
            item.message, judged))

    # -- the verdict-writer thread ---------------------------------------------------

    def _write_verdicts(self) -> None:
        while (first := self._verdicts.get()) is not None:
            batch, stopping = _waiting(self._verdicts, first, VERDICT_BATCH)
            try:
                self._record_and_send(batch)
            except Exception:  # the thread must outlive any one batch
                self.metrics.dropped.labels("internal-error").inc()
                log.exception("failed recording %d verdict(s)", len(batch))
            if stopping:
                return

    def _record_and_send(self, batch: list[_Judged]) -> None:
        """Record verdicts in one transaction (retrying a store that is down), then send
        each as stored, read back in that transaction (another replica's may have been
        first), and acknowledge the
        message that brought its event. How long that took after the batch's first
        judgement (the verdict that waited longest) tells admission how early an answer
        must start on its way."""
        attempt = 0
        while True:
            try:
                stored = self.store.set_verdicts([verdict for verdict, _, _ in batch])
                break
            except RetryLaterError as exc:
                attempt += 1
                if self._back_off(attempt, f"{len(batch)} verdict(s)", exc):
                    return
        for verdict, message, _ in batch:
            event = stored.get(verdict.event_id)
            if event is None:
                log.warning("event %s was pruned before its verdict went out",
                            verdict.event_id)
            else:
                self._send(event)
            self._ack(message)
        self._admission.answered(time.perf_counter() - min(judged for _, _, judged in batch))

    def _judgement(self, event: EventMessage) -> Judgement:
        started = time.perf_counter()
        try:
            judgement = self.judge.judge(event)
        except JudgeError as exc:
            if isinstance(exc, BadImageError):
                self.metrics.images_refused.labels(exc.reason, "ingest").inc()
            self._drop("bad-image", f"event {event.event_id}: {exc}")
            judgement = Judgement("rejected", (), self.judge.model_name,
                                  "unjudged", 0.0)
        self.metrics.inference.observe(time.perf_counter() - started)
        return judgement

    def _send_busy(self, shed: Shed[_Stored]) -> None:
        event = shed.ticket.item.event
        busy = BusyMessage(event_id=event.event_id, device_id=event.device_id,
                           reason=shed.reason, retry_after_s=self._admission.retry_after_s(),
                           at=time.time())
        properties = Properties(PacketTypes.PUBLISH)
        properties.CorrelationData = event.event_id.encode()
        assert self._client is not None
        self._client.publish(self.layout.verdicts(event.device_id), encode(busy), qos=1,
                             properties=properties)
        self.metrics.shed.labels(shed.reason).inc()
        self._ack(shed.ticket.item.message)

    def _send_receipt(self, device_id: str, event_id: str) -> None:
        receipt = ReceiptMessage(device_id=device_id, event_ids=(event_id,), at=time.time())
        assert self._client is not None
        self._client.publish(self.layout.verdicts(device_id), encode(receipt), qos=1)
        self.metrics.receipts.inc()

    def _send(self, stored: dict[str, Any]) -> None:
        verdict = VerdictMessage(
            event_id=stored["id"], device_id=stored["device_id"], outcome=stored["outcome"],
            detections=tuple(DetectionPayload.model_validate(d)
                             for d in stored["hub_detections"] or []),
            model=ModelRef(name=stored["hub_model"], version=stored["hub_version"]),
            inference_ms=stored["inference_ms"] or 0.0, decided_at=stored["decided_at"],
        )
        properties = Properties(PacketTypes.PUBLISH)
        properties.CorrelationData = stored["id"].encode()
        assert self._client is not None
        self._client.publish(self.layout.verdicts(stored["device_id"]), encode(verdict),
                             qos=1, properties=properties)
        self.metrics.verdicts.labels(verdict.outcome).inc()
        self.metrics.verdict_latency.observe(max(0.0, time.time() - stored["captured_at"]))
        if self._on_verdict is not None:
            self._on_verdict(stored)


MAX_FRAME_SIDE = 65_535


def _frame_size(event: EventMessage) -> dict[str, int]:
    """The event's frame size as stored: only a plausible one (its boxes are in it)."""
    if event.frame_size is None:
        return {}
    width, height = event.frame_size
    if not (0 < width <= MAX_FRAME_SIDE and 0 < height <= MAX_FRAME_SIDE):
        return {}
    return {"frame_width": width, "frame_height": height}
