"""The MQTT ingest worker: escalations in, verdicts out, exactly once in the store.

Escalations arrive through an MQTT 5 shared subscription (``$share/<group>/...``), so
that several hub processes split the load. paho acknowledges nothing by itself
(``manual_ack``): a message is acknowledged only after it was handled, so a hub that dies
mid-way gets it redelivered. The store inserts each event id once; a redelivered event is
answered with the verdict already recorded. Bad input (malformed, oversized, unknown
device, a device writing under another's id, a device re-sending another's event id) is
counted, logged and dropped. Devices' decision journals arrive the same way (QoS 0): the
steps of escalated tracks are kept for the events' timelines (:mod:`cloud_hub.journal`).

paho's network thread only queues messages; ``ingest-<n>`` worker threads handle them,
so that their detector requests meet in the micro-batcher.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cloud_hub.errors import BadImageError, HubError, JudgeError, NotFoundError, RetryLaterError
from cloud_hub.journal import JOURNAL_MAX_BYTES, DeviceRate, check_step, never_escalated
from cloud_hub.judge import EventJudge
from cloud_hub.metrics import HubMetrics
from cloud_hub.mqtt import BrokerSettings, default_client_id
from cloud_hub.settings import HubSettings
from cloud_hub.store import Store, TrackKey
from sync import (
    DetectionPayload,
    EventMessage,
    MessageError,
    ModelRef,
    OversizedMessageError,
    ReceiptMessage,
    StatusMessage,
    TelemetryMessage,
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

QUEUE_SIZE = 256
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 10.0
_Device = TypeVar("_Device", EventMessage, StatusMessage, TelemetryMessage, UpdateReport,
                  TrackEventMessage)


class IngestWorker:
    """One hub process's share of the fleet's escalations."""

    def __init__(self, settings: HubSettings, store: Store, judge: EventJudge,
                 metrics: HubMetrics,
                 on_update_report: Callable[[UpdateReport], None] | None = None,
                 on_verdict: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.settings = settings
        self._on_update_report = on_update_report
        self._on_verdict = on_verdict
        self.store = store
        self.judge = judge
        self.metrics = metrics
        self.layout = TopicLayout(settings.mqtt_prefix)
        self.name = settings.mqtt_client_id or default_client_id()
        self._stopping = threading.Event()
        self._queue: queue.Queue[mqtt.MQTTMessage | None] = queue.Queue(QUEUE_SIZE)
        self._threads: list[threading.Thread] = []
        self._client: mqtt.Client | None = None
        self.connected = threading.Event()
        self.handled = 0
        self._journal_rate = DeviceRate(settings.journal_steps_per_minute,
                                        settings.journal_burst)
        self._journal_rate_lock = threading.Lock()  # the ingest-<n> workers share it

    def start(self) -> None:
        """Connect, subscribe, start the worker threads."""
        client = BrokerSettings.from_settings(self.settings).client(self.name, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 30)
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600
        client.connect_async(self.settings.mqtt_host, self.settings.mqtt_port, keepalive=30,
                             clean_start=False, properties=properties)
        self._client = client
        for index in range(self.settings.ingest_workers):
            thread = threading.Thread(target=self._work, name=f"ingest-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        client.loop_start()

    def stop(self) -> None:
        """Disconnect, then let the workers finish what they hold.

        A message whose store write is still being retried stays unacknowledged: the
        broker delivers it again when this replica (same client id) or another returns.
        """
        self._stopping.set()
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(30)
        self._threads.clear()

    # -- paho's thread ---------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any,
                    reason: ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:
            log.error("broker refused the hub's connection: %s", reason)
            return
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

    def _on_message(self, client: mqtt.Client, userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        try:
            if message.qos == 0:  # nothing to redeliver it: never hold paho up for one
                self._queue.put_nowait(message)
            else:
                self._queue.put(message, timeout=10)
        except queue.Full:
            # Not acknowledged: the broker delivers it again after a reconnect.
            self.metrics.dropped.labels("hub-busy").inc()
            log.warning("ingest queue full; left %s unacknowledged", message.topic)

    # -- worker threads --------------------------------------------------------------

    def _work(self) -> None:
        while (message := self._queue.get()) is not None:
            done = self._handle_until_done(message.topic, bytes(message.payload))
            if done and message.qos > 0 and self._client is not None:
                self._client.ack(message.mid, message.qos)
            self.handled += 1

    def _handle_until_done(self, topic: str, payload: bytes) -> bool:
        """Handle one message, retrying transient failures (the store is down or full)
        with backoff; whether it may be acknowledged.

        Only a message that was stored, or refused for good (counted), is acknowledged:
        one that met a transient failure is retried here, and if the hub stops meanwhile
        it stays unacknowledged, so the broker delivers it again.
        """
        attempt = 0
        while True:
            try:
                self.handle(topic, payload)
                return True
            except RetryLaterError as exc:
                attempt += 1
                self.metrics.retries.labels("store-unavailable").inc()
                delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** min(attempt, 10))
                log.warning("cannot store a message on %s yet (attempt %d, next in %.1f s):"
                            " %s", topic, attempt, delay, exc)
                if self._stopping.wait(delay):
                    return False
            except HubError as exc:
                self.metrics.dropped.labels("hub-error").inc()
                log.error("could not handle a message on %s: %s", topic, exc)
                return True
            except Exception:  # a worker must outlive any one message
                self.metrics.dropped.labels("internal-error").inc()
                log.exception("failed on a message on %s", topic)
                return True

    def handle(self, topic: str, payload: bytes) -> None:
        """Handle one message; never raises for bad input (it is counted instead)."""
        try:
            address = self.layout.parse(topic)
        except TopicError as exc:
            self._drop("bad-topic", f"{topic}: {exc}")
            return
        if address.kind == "status":
            self._status(address.name, payload)
        elif address.kind == "events":
            self._event(address.name, payload)
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
                what: str, *, max_bytes: int | None = None) -> _Device | None:
        """Decode a device's message; count and drop it if it is malformed, oversized,
        claims another device, or comes from a device that was never provisioned or was
        revoked."""
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

    def _event(self, device_id: str, payload: bytes) -> None:
        event = self._accept(device_id, payload, EventMessage, "event")
        if event is None:
            return
        # JSON events come from outboxes written before the framed format: when this
        # stays flat, every device has upgraded.
        self.metrics.event_formats.labels("frame" if is_framed_event(payload) else "json").inc()
        received_at = time.time()
        self.store.touch_device(device_id=device_id, at=received_at)
        new = self.store.add_event(
            id=event.event_id, device_id=device_id, source=event.source,
            reason=event.reason, priority=event.priority, captured_at=event.captured_at,
            received_at=received_at, edge_model=event.model.name,
            edge_version=event.model.version,
            edge_detections=json.dumps([d.model_dump(mode="json") for d in event.detections]),
            anomaly_score=event.anomaly_score, crop=event.crop_jpeg,
            thumbnail=event.thumbnail_jpeg, **_frame_size(event),
        )
        if new:
            self.metrics.ingested.inc()
        else:
            stored = self.store.get_event(event_id=event.event_id)
            if stored["device_id"] != device_id:
                # An event id belongs to the device that sent it first: another device
                # re-sending it must not hear (or make its owner hear) that verdict.
                self._drop("replayed-event-id", f"{device_id} re-sent event "
                           f"{event.event_id} of {stored['device_id']}")
                return
            self.metrics.dedup_hits.inc()
            if stored["outcome"] is not None:
                self._send(stored)
                return
            # Another worker or replica holds it (or died judging it): say it is safe here,
            # so the device stops sending it, and judge it if nobody has.
            self._send_receipt(device_id, event.event_id)
        started = time.perf_counter()
        try:
            judgement = self.judge.judge(event)
            outcome, detections = judgement.outcome, judgement.detections
            model, version, inference_ms = (judgement.model, judgement.version,
                                            judgement.inference_ms)
        except JudgeError as exc:
            if isinstance(exc, BadImageError):
                self.metrics.images_refused.labels(exc.reason, "ingest").inc()
            self._drop("bad-image", f"event {event.event_id}: {exc}")
            outcome, detections, inference_ms = "rejected", (), 0.0
            model, version = self.judge.model_name, "unjudged"
        self.metrics.inference.observe(time.perf_counter() - started)
        self.store.set_verdict(
            event_id=event.event_id, outcome=outcome,
            detections=[d.model_dump(mode="json") for d in detections], model=model,
            version=version, inference_ms=inference_ms, decided_at=time.time(),
            handled_by=self.name,
        )
        try:
            self._send(self.store.get_event(event_id=event.event_id))
        except NotFoundError:
            log.warning("event %s was pruned before its verdict went out", event.event_id)

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
