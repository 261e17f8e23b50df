"""A fleet returning from an outage: ``python -m bench fleet-return``.

``N`` devices come back after ``--offline-s`` (an hour) without a connection, each holding
``--backlog`` escalations captured during it, against a private Mosquitto and one real
hub (:class:`bench.fleet.FleetServices`: bulk-provisioned devices, ``cloud-hub serve``).
Each simulated device behaves as the agent does, with the agent's own pure logic:

* **Jittered reconnects**: a device retries with the agent's :class:`~edge_agent.backoff.
  Backoff` (``reconnect_min_s``, ``reconnect_max_s``); after an hour of failures each of
  its waits is the longest one, jittered, and the link comes back at some point during
  it. So each device connects ``random() * Backoff.delay(many, rng)`` after the outage
  ends (seeded: ``--seed``).
* **Drain pacing**: each device publishes through its own :class:`~edge_agent.delivery.
  window.DeliveryWindow`, with the limits the agent derives from its default settings
  (:func:`~edge_agent.delivery.uplink.window_limits`: 50/s): live events before the
  backlog, oldest backlog first, PUBACKs and receipts confirming, retries after a
  timeout, and every ``busy`` answer halving the device's pace for the time the hub asks.
* **Live events** arrive at ``--live-eps`` across the fleet (devices taking turns, connected
  or not: a device still offline holds its live events too) from the outage's end until
  every backlog event is answered (at least ``--min-live-s``).

Backlog events carry their capture time, an hour old at most, so the hub classes them
``late`` (its lowest admission class: the device decided them already); live events are
``uncertain`` escalations with the device's 10 s verdict timeout.

Last line: JSON with ``clear_s`` (from the outage's end until every backlog event has an
answer, verdict or ``busy``), ``live_on_time`` (share of live events captured while their
device was connected with a verdict within their timeout; those captured before their
device was back are counted apart, ``live_held_offline``), ``live_answered_in_time``
(verdict or ``busy`` within it), ``live_p95_s``
(capture to first answer), ``busy_share`` (of all events' first answers), ``connect_spread_s``,
``lost`` (sent, not in the hub's store), ``unanswered``, ``duplicates`` (answers after an
event's first), ``hub_disconnects``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import selectors
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from bench.fleet import (
    FD_PER_DEVICE,
    LAYOUT,
    VERDICT_TIMEOUT_S,
    Answer,
    FleetServices,
    Sent,
    Writers,
    _quantile,
    connect_device,
    device_client,
    escalation_template,
    make_event,
    raise_fd_limit,
    scrape,
)
from edge_agent.backoff import Backoff
from edge_agent.config import MqttConfig
from edge_agent.delivery.uplink import window_limits
from edge_agent.delivery.window import DeliveryWindow, WindowLimits
from sync import EventIdFactory

log = logging.getLogger(__name__)

LONG_OUTAGE_ATTEMPT = 32  # an hour of failed attempts: every wait is the longest one


def reconnect_offsets(devices: int, backoff: Backoff, rng: random.Random) -> list[float]:
    """Seconds after the outage's end at which each device connects again: the rest of
    its current (jittered, longest) wait."""
    return [rng.random() * backoff.delay(LONG_OUTAGE_ATTEMPT, rng) for _ in range(devices)]


@dataclass(slots=True)
class _Device:
    """One simulated device: its outbox (by seq: event id and capture time), its window."""

    index: int
    device_id: str
    password: str
    connect_at: float  # monotonic
    window: DeliveryWindow
    outbox: dict[int, tuple[str, float]] = field(default_factory=dict)
    by_id: dict[str, int] = field(default_factory=dict)
    next_seq: int = 1
    client: mqtt.Client | None = None
    connected: bool = False

    def store(self, event_id: str, captured_at: float) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self.outbox[seq] = (event_id, captured_at)
        self.by_id[event_id] = seq
        return seq

    def confirm(self, event_ids: list[str]) -> None:
        known, unknown = self.window.confirm(event_ids)
        for seq, _ in known:
            entry = self.outbox.pop(seq, None)
            if entry is not None:
                self.by_id.pop(entry[0], None)
        for event_id in unknown:
            seq_or_none = self.by_id.pop(event_id, None)
            if seq_or_none is not None:
                self.outbox.pop(seq_or_none, None)
                self.window.forget([seq_or_none])


class ReturningFleet:
    """``N`` devices with backlogs, each its own MQTT 5 connection and delivery window,
    driven by one ``fleet-return`` thread (paho's external loop, as :class:`bench.fleet.
    DeviceFleet`); other threads read the records under :attr:`lock`."""

    def __init__(self, port: int, credentials: Sequence[tuple[str, str]], template: bytes,
                 *, backlog: int, offline_s: float, offsets: Sequence[float],
                 limits: WindowLimits) -> None:
        self.port = port
        self.template = template
        self.lock = threading.Lock()
        self.sent: dict[str, Sent] = {}
        self.backlog_ids: set[str] = set()
        self.live_ids: set[str] = set()
        self.held_ids: set[str] = set()  # live events captured while their device was offline
        self.busy_answers = 0
        self.started = time.monotonic()
        self._new_ids = EventIdFactory()
        now_wall = time.time()
        self.devices = [
            _Device(k, device_id, password, self.started + offsets[k], DeliveryWindow(limits))
            for k, (device_id, password) in enumerate(credentials)]
        for device in self.devices:
            for j in range(backlog):
                event_id = self._new_ids()
                device.store(event_id, now_wall - offline_s + (j + 0.5) * offline_s / backlog)
                self.sent[event_id] = Sent(device.index, self.started)
                self.backlog_ids.add(event_id)
        self._selector = selectors.DefaultSelector()
        self._writers = Writers()
        self._waiting = sorted(self.devices, key=lambda d: d.connect_at)
        self._live_eps = 0.0
        self._live_next = 0
        self._live_started = self.started
        self._stop_live = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fleet-return", daemon=True)

    def start(self, live_eps: float) -> None:
        """Start the loop: devices connect at their offsets; live events at ``live_eps``."""
        self._live_eps = live_eps
        self._thread.start()

    def stop_live(self) -> None:
        """No more live events."""
        with self.lock:
            self._stop_live = True

    def backlog_cleared_at(self) -> float | None:
        """Seconds from the outage's end to the last backlog event's first answer, once
        every one has one."""
        with self.lock:
            firsts = [r.answers[0][1] for k in self.backlog_ids if (r := self.sent[k]).answers]
            if len(firsts) < len(self.backlog_ids):
                return None
        return max(firsts, default=self.started) - self.started

    def close(self) -> None:
        """Stop the loop and disconnect every device."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        for device in self.devices:
            if device.client is not None:
                device.client.disconnect()
                device.client.loop_write()

    # -- the fleet-return thread ------------------------------------------------------

    def _loop(self) -> None:
        last_misc = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            while self._waiting and self._waiting[0].connect_at <= now:
                self._connect(self._waiting.pop(0))
            self._live(now)
            for device in self.devices:
                if device.connected and device.outbox:
                    self._deliver(device, now)
            if now - last_misc >= 1.0:
                for device in self.devices:
                    if device.client is not None:
                        device.client.loop_misc()
                last_misc = now
            for index in list(self._writers.due):
                client = self.devices[index].client
                if client is not None:
                    client.loop_write()
            for key, _ in self._selector.select(0.01):
                client = self.devices[key.data].client
                if client is not None:
                    client.loop_read()

    def _connect(self, device: _Device) -> None:
        client = device_client(device.device_id, device.password, device.index,
                               device.window.limits.max_inflight)
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        connect_device(client, self.port, self._on_connect, self._writers)
        sock = client.socket()
        assert sock is not None
        self._selector.register(sock, selectors.EVENT_READ, device.index)
        device.client = client
        self._writers.due.add(device.index)

    def _live(self, now: float) -> None:
        with self.lock:
            if self._stop_live or self._live_eps <= 0:
                return
        due = int((now - self._live_started) * self._live_eps)
        while self._live_next < due:
            device = self.devices[self._live_next % len(self.devices)]
            self._live_next += 1
            event_id = self._new_ids()
            seq = device.store(event_id, time.time())
            device.window.stored([seq])
            with self.lock:
                self.sent[event_id] = Sent(device.index, now)
                self.live_ids.add(event_id)
                if not device.connected:
                    self.held_ids.add(event_id)

    def _deliver(self, device: _Device, now: float) -> None:
        window = device.window
        plan = window.plan(now, connected=True)
        if plan.empty:
            return
        seqs = list(plan.retry) + list(plan.live)
        if plan.backlog:
            rows = [seq for seq in device.outbox if seq > window.cursor][: plan.backlog]
            window.backlog_read(plan.backlog, len(rows))
            seqs += [seq for seq in rows if not window.skip_in_backlog(seq)]
        client = device.client
        assert client is not None
        for seq in seqs:
            entry = device.outbox.get(seq)
            if entry is None:
                continue
            event_id, captured_at = entry
            payload = make_event(self.template, event_id, device.device_id, captured_at)
            info = client.publish(LAYOUT.events(device.device_id), payload, qos=1)
            window.published(seq, event_id, len(payload), info.mid, now)

    def _on_connect(self, client: mqtt.Client, userdata: int, flags: object,
                    reason: Any, properties: object) -> None:
        device = self.devices[userdata]
        if reason.is_failure:
            log.error("device %s refused: %s", device.device_id, reason)
            return
        device.connected = True
        client.subscribe(LAYOUT.verdicts(device.device_id), qos=1)

    def _on_publish(self, client: mqtt.Client, userdata: int, mid: int, reason: Any,
                    properties: object) -> None:
        self.devices[userdata].window.puback(mid, not reason.is_failure, time.monotonic())

    def _on_message(self, client: mqtt.Client, userdata: int,
                    message: mqtt.MQTTMessage) -> None:
        device = self.devices[userdata]
        body = json.loads(bytes(message.payload))
        schema = body.get("schema")
        now = time.monotonic()
        if schema == "receipt/1":
            device.confirm(list(body.get("event_ids", ())))
            return
        event_id = body.get("event_id")
        if not isinstance(event_id, str):
            return
        device.confirm([event_id])
        if schema == "busy/1":
            device.window.busy(now, float(body.get("retry_after_s", 1.0)))
        with self.lock:
            if schema == "busy/1":
                self.busy_answers += 1
            record = self.sent.get(event_id)
            if record is not None:
                record.answers.append(Answer(str(schema), now))


def outage_figures(sent: dict[str, Sent], backlog_ids: set[str], live_ids: set[str],
                   stored: set[str], timeout_s: float) -> dict[str, Any]:
    """The counts and shares of a return (times from each record's ``at``)."""
    live = [sent[k] for k in live_ids]
    live_first = [t for r in live if (t := r.first()) is not None]
    firsts = [r.answers[0][0] for r in sent.values() if r.answers]
    p95 = _quantile(live_first, 0.95)
    return {
        "backlog_events": len(backlog_ids), "live_events": len(live),
        "backlog_answered": sum(1 for k in backlog_ids if sent[k].answers),
        "live_answered": len(live_first),
        "live_on_time": round(sum(
            1 for r in live if (t := r.first("verdict/1")) is not None and t <= timeout_s)
            / max(1, len(live)), 4),
        "live_answered_in_time": round(sum(1 for t in live_first if t <= timeout_s)
                                       / max(1, len(live)), 4),
        "live_p95_s": None if p95 is None else round(p95, 3),
        "busy_share": round(sum(1 for s in firsts if s == "busy/1") / max(1, len(firsts)), 4),
        "backlog_busy_share": round(sum(
            1 for k in backlog_ids if sent[k].answers and sent[k].answers[0][0] == "busy/1")
            / max(1, len(backlog_ids)), 4),
        "lost": len(set(sent) - stored),
        "unanswered": sum(1 for r in sent.values() if not r.answers),
        "duplicates": sum(max(0, len(r.answers) - 1) for r in sent.values()),
    }


@dataclass(frozen=True, slots=True)
class ReturnPlan:
    """One return's shape.

    Attributes:
        devices: Simulated devices.
        backlog: Escalations each holds from the outage.
        offline_s: How long the outage lasted (the backlog's capture times span it).
        live_eps: Live escalations per second, the whole fleet together.
        min_live_s: Live events for at least this long.
        max_s: Give up waiting for the backlog to clear after this long.
        reconnect_max_s: The agent's longest reconnect wait (``mqtt.reconnect_max_s``);
            the rest of the agent's settings are its defaults.
        seed: For the reconnect jitter.
        workers: The hub's judge threads (None: its default).
    """

    devices: int = 1000
    backlog: int = 10
    offline_s: float = 3600.0
    live_eps: float = 20.0
    min_live_s: float = 30.0
    max_s: float = 600.0
    reconnect_max_s: float = MqttConfig().reconnect_max_s
    seed: int = 1
    workers: int | None = None


def run_return(plan: ReturnPlan, folder: Path) -> dict[str, Any]:
    """Run one return against fresh services in ``folder``; its figures."""
    raise_fd_limit(plan.devices * FD_PER_DEVICE + 1024)
    services = FleetServices(folder, plan.workers)
    template = escalation_template()
    services.broker.start()
    fleet: ReturningFleet | None = None
    try:
        credentials, provision_s = services.provision(plan.devices)
        services.start_hub()
        agent = MqttConfig(reconnect_max_s=plan.reconnect_max_s)
        offsets = reconnect_offsets(plan.devices, Backoff(
            agent.reconnect_min_s, agent.reconnect_max_s), random.Random(plan.seed))
        fleet = ReturningFleet(services.broker.port, credentials, template,
                               backlog=plan.backlog, offline_s=plan.offline_s,
                               offsets=offsets, limits=window_limits(agent))
        fleet.start(plan.live_eps)
        clear_s: float | None = None
        while time.monotonic() - fleet.started < plan.max_s:
            time.sleep(0.5)
            clear_s = fleet.backlog_cleared_at()
            if clear_s is not None and time.monotonic() - fleet.started >= plan.min_live_s:
                break
        fleet.stop_live()
        live_until = time.monotonic() - fleet.started
        grace_end = time.monotonic() + VERDICT_TIMEOUT_S + 2
        while time.monotonic() < grace_end:  # the last live events' answers, retries
            time.sleep(0.5)
            with fleet.lock:
                if all(r.answers for r in fleet.sent.values()):
                    break
        time.sleep(1.0)  # late duplicates, if any
        metrics = scrape(services.hub.http_port)
        with fleet.lock:
            sent = {k: Sent(r.device, r.at, list(r.answers)) for k, r in fleet.sent.items()}
            backlog_ids, held_ids = set(fleet.backlog_ids), set(fleet.held_ids)
            live_ids = fleet.live_ids - held_ids
        stored = set(services.stored())
    finally:
        if fleet is not None:
            fleet.close()
        services.stop()
    return {
        "devices": plan.devices, "backlog_per_device": plan.backlog,
        "offline_s": plan.offline_s, "live_eps": plan.live_eps,
        "provision_s": round(provision_s, 2),
        "connect_spread_s": round(max(offsets, default=0.0), 2),
        "clear_s": None if clear_s is None else round(clear_s, 2),
        "live_s": round(live_until, 2),
        **outage_figures(sent, backlog_ids, live_ids, stored, VERDICT_TIMEOUT_S),
        "live_held_offline": len(held_ids),
        "live_held_answered": sum(1 for k in held_ids if sent[k].answers),
        "hub_disconnects": metrics.get("hub_mqtt_disconnects_total{}", 0.0),
        "hub_admitted": metrics.get("hub_events_admitted_total{}", 0.0),
        "hub_shed": {k.removeprefix("hub_events_shed_total"): v for k, v in metrics.items()
                     if k.startswith("hub_events_shed_total")},
    }


def main(argv: list[str]) -> int:
    """Run the return; print the figures, the last line as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench fleet-return", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = ReturnPlan()
    parser.add_argument("--devices", type=int, default=defaults.devices)
    parser.add_argument("--backlog", type=int, default=defaults.backlog,
                        help="escalations each device holds from the outage")
    parser.add_argument("--offline-s", type=float, default=defaults.offline_s)
    parser.add_argument("--live-eps", type=float, default=defaults.live_eps)
    parser.add_argument("--min-live-s", type=float, default=defaults.min_live_s)
    parser.add_argument("--max-s", type=float, default=defaults.max_s)
    parser.add_argument("--reconnect-max-s", type=float, default=defaults.reconnect_max_s)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workers", type=int, default=None,
                        help="CLOUD_HUB_INGEST_WORKERS (judge threads); default the hub's")
    parser.add_argument("--keep", type=Path, default=None,
                        help="work in this folder and keep it (default: a temporary one, "
                        "deleted at the end)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    plan = ReturnPlan(devices=args.devices, backlog=args.backlog, offline_s=args.offline_s,
                      live_eps=args.live_eps, min_live_s=args.min_live_s, max_s=args.max_s,
                      reconnect_max_s=args.reconnect_max_s, seed=args.seed,
                      workers=args.workers)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench-fleet-return-"))
    try:
        print(json.dumps(run_return(plan, folder)))
    finally:
        if args.keep is None:  # every event's images: hundreds of MB a run
            shutil.rmtree(folder, ignore_errors=True)
    return 0
