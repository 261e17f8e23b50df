"""A thousand cameras against one hub: ``python -m bench fleet``.

One run starts a private Mosquitto (dynamic security, as in production) and one real hub
(``python -m cloud_hub serve``: the models, SQLite, the MQTT ingest), provisions ``N``
devices (each its own credentials and role on the broker, and its row in the hub's
registry), connects them (each its own MQTT 5 connection, client id = device id, driven
by one ``fleet-loop`` thread through paho's external-loop calls), and then:

1. **bare**: the same work the hub does per escalation, in this process: decode the
   event and judge it with the hub's own judge (models, micro-batcher,
   ``CLOUD_HUB_INGEST_WORKERS`` threads); no MQTT, no store. Measured before the hub
   starts, before each bisection step and after the steps (the hub idle each time):
   ``bare_eps`` is the mean, ``bare_eps_runs`` each, since this shared machine's speed
   moves within minutes.
2. **steps**: offered rates doubling from ``--start-eps`` until a step fails, then
   ``--refine`` bisections (3). A step passes when the p95 of capture-to-verdict latency
   is under 1 s, at most 1 % of its events were answered ``busy``, and no backlog grew
   (99 % of its events answered within a second of its end). ``saturation_eps`` is the
   highest passing rate, ``saturation_bracket_eps`` it and the lowest failing one: the
   ceiling lies between. Doubling leaves a bracket as wide as the last passing rate;
   three bisections narrow it to an eighth of that (two left a quarter: a figure of 100
   meant anywhere from 100 to 120).
3. **overload**: 3x the saturation rate for ``--overload-s``, two thirds of it from one
   flooding device: the p95 of admitted (judged) events, the share answered ``busy``,
   and the worst p50 of any other device (its answers, verdict or busy). The
   ``overload_diagnosis`` line says which events were not answered within the timeout
   (the flooder's or another's, verdict, busy or none) and where their time went: the
   device's publish behind schedule, sent until stored at the hub (the broker's queue,
   the hub's inbound queue, its intake), stored until the hub decided (admission queue,
   judging), decided until the device heard; each stage's spread over all events; and
   per second of the phase the p95 until stored (a backlog at intake grows there).
   ``--saturation-eps R`` skips the bare measurement and the steps and offers 3x ``R``
   (to iterate on overload; the default run is the whole measurement).

Every escalation is a real one (the astronaut photograph's face crop and thumbnail as
JPEG, the size the agent sends; each JPEG carries its event's id in a comment, so that
no two events' images are the same bytes, as no two of a camera's are, and the hub's
content-addressed store writes every one: ``--same-images`` sends the same two, stored
once), with the device's 10 s verdict timeout. Afterwards the
JSON says whether every event was stored once and answered (``lost``, ``unanswered``,
``duplicates``), how often the broker dropped the hub (``hub_disconnects``), and bytes
per event on the wire (event and answer) and in the store.

Provisioning is the hub's bulk provisioning (``cloud-hub devices add --from FILE``:
the broker's control API, many commands per message, and one transaction);
``provision_s`` is its time.

Last line: JSON with ``saturation_eps``, ``bare_eps``, ``ratio`` (target >= 0.8),
``overload``, ``provision_s``, ``bytes_per_event``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import selectors
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families
from skimage import data

from bench.cpu import CpuMeter
from bench.scaleout import Replica, wait_ready
from cloud_hub import HubService, HubSettings
from cloud_hub.mosquitto import BrokerLimits, MosquittoBroker
from cloud_hub.provisioning import DeviceSpec
from sync import (
    DetectionPayload,
    EventIdFactory,
    EventMessage,
    ModelRef,
    TopicLayout,
    decode,
    encode_event,
    peek_schema,
)

log = logging.getLogger(__name__)

LAYOUT = TopicLayout()
SECRET = "fleet-bench-secret-key-0123456789abcdef"
VERDICT_TIMEOUT_S = 10.0
P95_LIMIT_S = 1.0
SHED_LIMIT = 0.01
ANSWERED_LIMIT = 0.99
CAPTURED_PLACEHOLDER = 1111111111.123456  # as wide as any time this century, to 1 us
DEVICE_PLACEHOLDER = "cam-zzzzz"  # as wide as the devices' ids
EVENT_ID_PLACEHOLDER = "00000000-0000-7000-8000-000000000000"
FD_PER_DEVICE = 2  # the device's socket here, its connection in the broker


def raise_fd_limit(needed: int) -> int:
    """Raise this process's open-file limit (inherited by the broker) towards ``needed``;
    returns the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return soft


def with_comment(jpeg: bytes, comment: bytes) -> bytes:
    """``jpeg`` with a comment segment (COM) right after its start marker: other bytes,
    the same pixels."""
    if jpeg[:2] != b"\xff\xd8" or len(comment) > 0xFFFF - 2:
        raise ValueError("not a JPEG, or a comment longer than a segment")
    return jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]


def escalation_template(*, same_images: bool = False) -> bytes:
    """One escalation as the agent sends it (a framed event: face crop and thumbnail of
    the astronaut photograph as raw JPEG), with placeholders for its ids and capture
    time. Each JPEG carries the event id in a comment, so that every event's images are
    its own (as a camera's are: never the same bytes twice), stored by the hub's
    content-addressed image store each time, not once for the whole run; with
    ``same_images``, every event has the same two (the hub stores them once: its cost
    without image writes)."""
    image = data.astronaut()

    def jpeg(pixels: np.ndarray[Any, Any], quality: int) -> bytes:
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        raw = bytes(encoded.tobytes())
        return raw if same_images else with_comment(raw, EVENT_ID_PLACEHOLDER.encode())

    crop = (130, 30, 320, 230)
    thumbnail = cv2.resize(image, (320, 320), interpolation=cv2.INTER_AREA)
    event = EventMessage(
        event_id=EVENT_ID_PLACEHOLDER, device_id=DEVICE_PLACEHOLDER,
        source="door", captured_at=CAPTURED_PLACEHOLDER, reason="uncertain", priority=5,
        model=ModelRef(name="blazeface-short", version="1.0.0"),
        detections=(DetectionPayload(box=(178, 82, 271, 174), score=0.7, label="face"),),
        frame_size=(image.shape[1], image.shape[0]),
        crop_box=tuple(float(v) for v in crop),  # type: ignore[arg-type]
        crop_jpeg=jpeg(np.ascontiguousarray(image[crop[1]:crop[3], crop[0]:crop[2]]), 85),
        thumbnail_jpeg=jpeg(thumbnail, 80), verdict_timeout_s=VERDICT_TIMEOUT_S)
    return encode_event(event)


def make_event(template: bytes, event_id: str, device_id: str, captured_at: float) -> bytes:
    """The template with this event's ids and capture time (each as wide as its
    placeholder, so that the frame's lengths hold)."""
    captured = f"{captured_at:.6f}"
    if len(device_id) != len(DEVICE_PLACEHOLDER) or len(captured) != len(
            repr(CAPTURED_PLACEHOLDER)):
        raise ValueError(f"{device_id!r} or {captured} is not as wide as its placeholder")
    return (template.replace(EVENT_ID_PLACEHOLDER.encode(), event_id.encode())
            .replace(DEVICE_PLACEHOLDER.encode(), device_id.encode())
            .replace(repr(CAPTURED_PLACEHOLDER).encode(), captured.encode()))


def device_client(device_id: str, password: str, index: int, inflight: int) -> mqtt.Client:
    """A simulated device's MQTT 5 client (client id and user name its id; ``userdata``
    its index), not yet connected."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id,
                         protocol=mqtt.MQTTv5, userdata=index)
    client.username_pw_set(device_id, password)
    client.max_inflight_messages_set(inflight)
    return client


class Writers:
    """The simulated devices (by index) whose paho client has bytes to send, kept by
    paho's socket-write callbacks for an external loop."""

    def __init__(self) -> None:
        self.due: set[int] = set()

    def want(self, client: mqtt.Client, userdata: int, sock: object) -> None:
        """paho's ``on_socket_register_write``."""
        self.due.add(userdata)

    def wrote(self, client: mqtt.Client, userdata: int, sock: object) -> None:
        """paho's ``on_socket_unregister_write``."""
        self.due.discard(userdata)


def connect_device(client: mqtt.Client, port: int, on_connect: Any, writers: Writers) -> None:
    """Connect a device's client to the broker on ``port`` for an external loop."""
    client.on_connect = on_connect
    client.on_socket_register_write = writers.want
    client.on_socket_unregister_write = writers.wrote
    client.connect("127.0.0.1", port, keepalive=60)


class Answer(NamedTuple):
    """What a simulated device heard back about one of its escalations."""

    schema: str
    at: float  # monotonic, on the device
    hub_at: float | None = None  # the hub's decision: a busy's ``at``, a verdict's decided_at


@dataclass(slots=True)
class Sent:
    """One escalation a simulated device published, and what it heard back."""

    device: int
    at: float  # monotonic
    answers: list[Answer] = field(default_factory=list)
    captured_at: float = 0.0  # wall clock, as in the event
    lag_s: float = 0.0  # how far the device's publish was behind its schedule

    def first(self, schema: str | None = None) -> float | None:
        """Seconds to the first answer (of ``schema``, if given)."""
        times = [a[1] for a in self.answers if schema is None or a[0] == schema]
        return min(times) - self.at if times else None


class DeviceFleet:
    """``N`` simulated devices, each its own MQTT 5 connection, driven by one thread.

    The ``fleet-loop`` thread owns every paho client (paho's external loop: ``loop_read``
    when a socket is readable, ``loop_write`` when paho has bytes to send, ``loop_misc``
    each second) and publishes the schedule it is given; other threads only read the
    records, under :attr:`lock`.
    """

    def __init__(self, port: int, credentials: Sequence[tuple[str, str]],
                 template: bytes) -> None:
        self.port = port
        self.ids = [device for device, _ in credentials]
        self.credentials = list(credentials)
        self.template = template
        self.lock = threading.Lock()
        self.sent: dict[str, Sent] = {}
        self.answer_bytes = 0
        self.answers = 0
        self.event_bytes = 0
        self._clients: list[mqtt.Client] = []
        self._selector = selectors.DefaultSelector()
        self._writers = Writers()
        self._schedule: list[tuple[float, int]] = []
        self._next = 0
        self._new_ids = EventIdFactory()
        self._subscribed = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def connect(self, timeout_s: float) -> float:
        """Connect and subscribe every device; returns the seconds it took.

        Raises:
            RuntimeError: Not all were subscribed within ``timeout_s``.
        """
        started = time.monotonic()
        for index, (device_id, password) in enumerate(self.credentials):
            client = device_client(device_id, password, index, 1000)
            client.on_subscribe = self._on_subscribe
            client.on_message = self._on_message
            connect_device(client, self.port, self._on_connect, self._writers)
            sock = client.socket()
            assert sock is not None
            self._selector.register(sock, selectors.EVENT_READ, index)
            self._clients.append(client)
            self._writers.due.add(index)
            self._turn(0.0)
        while self._subscribed < len(self._clients):
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"{self._subscribed} of {len(self._clients)} devices "
                                   f"subscribed within {timeout_s} s")
            self._turn(0.05)
        elapsed = time.monotonic() - started
        self._thread = threading.Thread(target=self._loop, name="fleet-loop", daemon=True)
        self._thread.start()
        return elapsed

    def offer(self, rate_eps: float, duration_s: float, *, flood_share: float = 0.0) -> None:
        """Publish at ``rate_eps`` for ``duration_s``, the devices taking turns; with
        ``flood_share``, that share of the events comes from the first device."""
        count = int(rate_eps * duration_s)
        start = time.monotonic() + 0.05
        first_other = 1 if flood_share > 0 else 0
        others = len(self.ids) - first_other
        schedule, turn = [], 0
        for k in range(count):
            if int((k + 1) * flood_share) > int(k * flood_share):
                device = 0
            else:
                device = first_other + turn % others
                turn += 1
            schedule.append((start + k / rate_eps, device))
        with self.lock:
            self._schedule, self._next = schedule, 0

    def close(self) -> None:
        """Stop the loop and disconnect every device."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for client in self._clients:
            client.disconnect()
            client.loop_write()

    # -- the fleet-loop thread -------------------------------------------------------

    def _loop(self) -> None:
        last_misc = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            with self.lock:
                due = []
                while self._next < len(self._schedule) and self._schedule[self._next][0] <= now:
                    due.append(self._schedule[self._next])
                    self._next += 1
                upcoming = (self._schedule[self._next][0] if self._next < len(self._schedule)
                            else now + 0.05)
            for scheduled, device in due:
                self._publish(device, now - scheduled)
            if now - last_misc >= 1.0:
                for client in self._clients:
                    client.loop_misc()
                last_misc = now
            self._turn(max(0.0, min(0.05, upcoming - time.monotonic())))

    def _publish(self, device: int, lag_s: float) -> None:
        device_id = self.ids[device]
        event_id = self._new_ids()
        captured_at = time.time()
        payload = make_event(self.template, event_id, device_id, captured_at)
        with self.lock:
            self.sent[event_id] = Sent(device, time.monotonic(), captured_at=captured_at,
                                       lag_s=lag_s)
            self.event_bytes += len(payload)
        self._clients[device].publish(LAYOUT.events(device_id), payload, qos=1)

    def _turn(self, timeout_s: float) -> None:
        for index in list(self._writers.due):
            self._clients[index].loop_write()
        for key, _ in self._selector.select(timeout_s):
            self._clients[key.data].loop_read()

    def _on_connect(self, client: mqtt.Client, userdata: int, flags: object,
                    reason: Any, properties: object) -> None:
        if reason.is_failure:
            log.error("device %s refused: %s", self.ids[userdata], reason)
            return
        client.subscribe(LAYOUT.verdicts(self.ids[userdata]), qos=1)

    def _on_subscribe(self, *_: object) -> None:
        self._subscribed += 1

    def _on_message(self, client: mqtt.Client, userdata: int,
                    message: mqtt.MQTTMessage) -> None:
        payload = bytes(message.payload)
        schema = peek_schema(payload) or "?"
        body = json.loads(payload)
        event_id = body.get("event_id")
        hub_at = body.get("at" if schema == "busy/1" else "decided_at")
        now = time.monotonic()
        with self.lock:
            self.answers += 1
            self.answer_bytes += len(payload)
            record = self.sent.get(event_id) if isinstance(event_id, str) else None
            if record is not None and schema != "receipt/1":
                record.answers.append(Answer(schema, now, hub_at if isinstance(
                    hub_at, float) else None))


@dataclass(frozen=True, slots=True)
class StepResult:
    """One offered rate's figures."""

    rate_eps: float
    sent: int
    p95_s: float | None
    shed_share: float
    answered_share: float
    queue_depth: float
    cpu_ms_per_event: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """p95 verdict latency under 1 s, under 1 % busy, no backlog left growing."""
        return (self.p95_s is not None and self.p95_s < P95_LIMIT_S
                and self.shed_share <= SHED_LIMIT and self.answered_share >= ANSWERED_LIMIT)

    def to_json(self) -> dict[str, Any]:
        """For the report."""
        return {"rate_eps": round(self.rate_eps, 1), "sent": self.sent,
                "p95_s": None if self.p95_s is None else round(self.p95_s, 3),
                "shed_share": round(self.shed_share, 4),
                "answered_share": round(self.answered_share, 4),
                "queue_depth": self.queue_depth, "passed": self.passed,
                "cpu_ms_per_event": self.cpu_ms_per_event}


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def scrape(port: int) -> dict[str, float]:
    """The hub's ``/metrics`` samples, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def run_step(fleet: DeviceFleet, hub: Replica, rate_eps: float, duration_s: float,
             *, grace_s: float = 1.0, flood_share: float = 0.0,
             cpu: CpuMeter | None = None) -> tuple[StepResult, list[Sent]]:
    """Offer one rate; its figures once ``grace_s`` after its last event has passed
    (with ``cpu``, its processes' CPU per event sent)."""
    before = set(fleet.sent)
    cpu_before = cpu.read() if cpu is not None else {}
    fleet.offer(rate_eps, duration_s, flood_share=flood_share)
    time.sleep(duration_s + 0.05 + grace_s)
    cpu_after = cpu.read() if cpu is not None else {}
    depth = scrape(hub.http_port).get("hub_admission_queue_depth{}", 0.0)
    with fleet.lock:
        records = [r for k, r in fleet.sent.items() if k not in before]
        verdicts = [t for r in records if (t := r.first("verdict/1")) is not None]
        shed = sum(1 for r in records if r.first("busy/1") is not None)
        answered = sum(1 for r in records if r.answers)
    total = max(1, len(records))
    return StepResult(rate_eps, len(records), _quantile(verdicts, 0.95), shed / total,
                      answered / total, depth,
                      CpuMeter.per_event(cpu_before, cpu_after, len(records))), records


def settle(fleet: DeviceFleet, hub: Replica, timeout_s: float = 60.0) -> None:
    """Wait until the hub's admission queue is empty and every event sent is answered
    (at most ``timeout_s``), so that a step does not inherit the last one's backlog."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with fleet.lock:
            waiting = sum(1 for r in fleet.sent.values() if not r.answers)
        if not waiting and scrape(hub.http_port).get("hub_admission_queue_depth{}", 0) == 0:
            return
        time.sleep(0.5)


class Bare(NamedTuple):
    """The bare pipeline's rate, and this process's CPU per event meanwhile."""

    eps: float
    cpu_ms_per_event: float


def measure_bare(settings_env: dict[str, str], template: bytes, seconds: float,
                 workers: int) -> Bare:
    """Decode and judge escalations in this process with the hub's own judge, from
    ``workers`` threads, for ``seconds``."""
    settings = HubSettings.model_validate(
        {k.removeprefix("CLOUD_HUB_").lower(): v for k, v in settings_env.items()})
    service = HubService(settings, ingest=False)
    service.start()
    judge = service.judge
    assert judge is not None
    payload = make_event(template, "01890000-0000-7000-8000-000000000000", "cam-bare0",
                         time.time())
    done = [0] * workers
    stop = threading.Event()

    def work(slot: int) -> None:
        while not stop.is_set():
            judge.judge(decode(payload, EventMessage, max_bytes=settings.max_message_bytes))
            done[slot] += 1

    threads = [threading.Thread(target=work, args=(k,), name=f"bare-{k}", daemon=True)
               for k in range(workers)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # warm-up
    first, started, cpu_started = sum(done), time.monotonic(), time.process_time()
    time.sleep(seconds)
    events = sum(done) - first
    rate = events / (time.monotonic() - started)
    cpu_ms = (time.process_time() - cpu_started) * 1e3 / max(1, events)
    stop.set()
    for thread in threads:
        thread.join(30)
    service.stop()
    return Bare(rate, round(cpu_ms, 2))


def provision(broker: MosquittoBroker, settings: HubSettings,
              device_ids: Sequence[str]) -> tuple[list[tuple[str, str]], float]:
    """Bulk-provision the devices as ``cloud-hub devices add --from FILE`` does (their
    clients and roles through the broker's control API, many commands per message; their
    rows in one transaction); ``(credentials, seconds)``."""
    service = HubService(settings, ingest=False)
    service.open_store()
    try:
        started = time.monotonic()
        outcomes = service.provision_devices([DeviceSpec(d, "fleet") for d in device_ids])
        elapsed = time.monotonic() - started
    finally:
        service.store.close()
    credentials = [(o.credentials.username, o.credentials.password)
                   for o in outcomes if o.credentials is not None]
    if len(credentials) != len(device_ids):
        raise RuntimeError(f"provisioned {len(credentials)} of {len(device_ids)} devices")
    return credentials, elapsed



class FleetServices:
    """The services a fleet benchmark runs against: a private Mosquitto (dynamic security,
    queues sized for a fleet) and one real hub (``python -m cloud_hub serve``, SQLite)
    in ``folder``; ``workers`` sets ``CLOUD_HUB_INGEST_WORKERS`` (default: the hub's)."""

    def __init__(self, folder: Path, workers: int | None,
                 runtime_threads: int | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.broker = MosquittoBroker(folder / "broker", anonymous=False, limits=BrokerLimits(
            max_queued_messages=100_000, max_queued_bytes=1024 ** 3))
        self.database = folder / "hub" / "hub.sqlite3"
        self.database.parent.mkdir(parents=True, exist_ok=True)
        self.settings = {
            "secret_key": SECRET, "mqtt_port": str(self.broker.port),
            "mqtt_username": self.broker.hub_username,
            "mqtt_password": self.broker.hub_password,
            "database_url": f"sqlite:///{self.database}", "public_metrics": "true",
            "landmark_model": "face-landmark"}
        if workers is not None:
            self.settings["ingest_workers"] = str(workers)
        if runtime_threads is not None:
            self.settings["runtime_threads"] = str(runtime_threads)
        self.workers = workers or HubSettings(secret_key=SECRET).ingest_workers
        self.hub = Replica("hub-fleet", self.settings, folder, cost_ms=0.0,
                           command=("-m", "cloud_hub", "serve"))

    def bare_env(self) -> dict[str, str]:
        """The hub's settings as environment, for the in-process bare pipeline."""
        env = {f"CLOUD_HUB_{k.upper()}": v for k, v in self.settings.items()
               if k not in ("database_url",)}
        env["CLOUD_HUB_DATA_DIR"] = str(self.folder / "bare")
        return env

    def provision(self, devices: int) -> tuple[list[tuple[str, str]], float]:
        """Bulk-provision ``cam-00000`` onwards (the broker running);
        ``(credentials, seconds)``."""
        return provision(self.broker, HubSettings.model_validate(
            {**self.settings, "data_dir": str(self.folder / "hub-fleet"),
             "mqtt_client_id": "hub-fleet", "broker_control": "mosquitto-dynsec"}),
            [f"cam-{k:05d}" for k in range(devices)])

    def start_hub(self) -> None:
        """Start the hub and wait until it is ready."""
        self.hub.start()
        wait_ready([self.hub], timeout_s=300)

    def stored(self) -> dict[str, float]:
        """The event ids in the hub's store, and when each was stored (hub's clock)."""
        with sqlite3.connect(self.database) as db:
            return dict(db.execute("SELECT id, received_at FROM events"))

    def stop(self) -> None:
        """Stop the hub and the broker."""
        self.hub.stop()
        self.broker.stop()


def cpu_per_event(bares: Sequence[Bare], steps: Sequence[StepResult],
                  saturation_eps: float) -> dict[str, float | None]:
    """Milliseconds of CPU per event: the bare pipeline's (the mean of its runs), and the
    hub's, the broker's and the simulated devices' at the saturation rate (its step).
    On a machine whose cores they all share, the hub's rate is at most the cores' time
    over the sum of the last three, the bare pipeline's over the first."""
    at_saturation = next((s.cpu_ms_per_event for s in reversed(steps)
                          if s.rate_eps == saturation_eps and s.passed), {})
    return {"bare": round(statistics.fmean(b.cpu_ms_per_event for b in bares), 2)
            if bares else None,
            **{name: at_saturation.get(name) for name in ("hub", "broker", "devices")}}


def overload_figures(records: Sequence[Sent]) -> dict[str, Any]:
    """The overload phase: admitted p95, shed share, the others' worst p50."""
    admitted = [t for r in records if (t := r.first("verdict/1")) is not None]
    shed = [r for r in records if r.first("busy/1") is not None]
    by_device: dict[int, list[float]] = defaultdict(list)
    for r in records:
        if r.device != 0 and (t := r.first()) is not None:
            by_device[r.device].append(t)
    flood = [r for r in records if r.device == 0]
    others = [r for r in records if r.device != 0]
    p95 = _quantile(admitted, 0.95)
    return {
        "sent": len(records),
        "admitted_p95_s": None if p95 is None else round(p95, 3),
        "shed_share": round(len(shed) / max(1, len(records)), 4),
        "flood_shed_share": round(sum(1 for r in flood if r.first("busy/1") is not None)
                                  / max(1, len(flood)), 4),
        "others_shed_share": round(sum(1 for r in others if r.first("busy/1") is not None)
                                   / max(1, len(others)), 4),
        "worst_other_device_p50_s": round(max(
            (statistics.median(v) for v in by_device.values()), default=0.0), 3),
        "answered_within_timeout": round(sum(
            1 for r in records if (t := r.first()) is not None and t <= VERDICT_TIMEOUT_S)
            / max(1, len(records)), 4),
    }


def _stages(record: Sent, stored_at: float | None) -> dict[str, Any]:
    """Where one event's time went, on the one wall clock the device, the broker and the
    hub share here: the device's publish behind schedule, sent until stored at the hub
    (the broker's queue, the hub's inbound queue and its intake), stored until the hub
    decided (admission queue and judging, or shedding), decided until the device heard
    (verdict writer, paho's window, the broker, the device's loop)."""
    answer = min(record.answers, key=lambda a: a[1]) if record.answers else None
    to_wall = record.captured_at - record.at  # the device's monotonic clock to the wall
    heard = None if answer is None else answer[1] + to_wall
    decided = None if answer is None else Answer(*answer).hub_at

    def span(start: float | None, end: float | None) -> float | None:
        return None if start is None or end is None else round(end - start, 3)

    return {"device": record.device, "answer": None if answer is None else answer[0],
            "total_s": span(record.captured_at, heard), "lag_s": round(record.lag_s, 3),
            "to_store_s": span(record.captured_at, stored_at),
            "to_decision_s": span(stored_at, decided), "to_device_s": span(decided, heard)}


def overload_diagnosis(sent: dict[str, Sent], stored_at: dict[str, float],
                       timeout_s: float = VERDICT_TIMEOUT_S) -> dict[str, Any]:
    """Which events of the overload phase were not answered within ``timeout_s``, whose,
    how, and where their time went (:func:`_stages`); each stage's p50/p95/max over all
    events; per second of the phase the events sent and their p95 until stored; and the
    slowest answers."""
    stages = {k: _stages(r, stored_at.get(k)) for k, r in sent.items()}
    missed = {k: v for k, v in stages.items() if v["total_s"] is None
              or v["total_s"] > timeout_s}
    kinds: dict[str, int] = defaultdict(int)
    for v in missed.values():
        kinds[f"{'flood' if v['device'] == 0 else 'other'} {v['answer'] or 'unanswered'}"] += 1

    def spread(name: str, of: dict[str, dict[str, Any]]) -> dict[str, float | None]:
        values = [v[name] for v in of.values() if v[name] is not None]
        return {"p50": _quantile(values, 0.5), "p95": _quantile(values, 0.95),
                "max": max(values, default=None)}

    names = ("lag_s", "to_store_s", "to_decision_s", "to_device_s", "total_s")
    start = min((r.captured_at for r in sent.values()), default=0.0)
    by_second: dict[int, list[float]] = defaultdict(list)
    for k, r in sent.items():
        by_second[int(r.captured_at - start)].append(stages[k]["to_store_s"] or float("inf"))
    return {
        "missed": len(missed), "missed_by_kind": dict(kinds),
        "missed_stages": {n: spread(n, missed) for n in names},
        "all_stages": {n: spread(n, stages) for n in names},
        "to_store_p95_by_second": [[second, len(v), _quantile(v, 0.95)]
                                   for second, v in sorted(by_second.items())],
        # The slowest answers (none first), missed or not: how close the rest came.
        "slowest": sorted(stages.values(), key=lambda v: -(v["total_s"] or 1e9))[:8],
    }


def main(argv: list[str]) -> int:
    """Run the fleet benchmark; print the figures, the last line as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench fleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--step-s", type=float, default=10.0, help="seconds per offered rate")
    parser.add_argument("--start-eps", type=float, default=10.0)
    parser.add_argument("--max-eps", type=float, default=2000.0)
    parser.add_argument("--refine", type=int, default=3, help="bisections after the doubling")
    parser.add_argument("--overload-s", type=float, default=15.0)
    parser.add_argument("--bare-s", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=None,
                        help="CLOUD_HUB_INGEST_WORKERS (judge threads); default the hub's")
    parser.add_argument("--runtime-threads", type=int, default=None,
                        help="CLOUD_HUB_RUNTIME_THREADS (each model run's CPU threads); "
                        "default the hub's")
    parser.add_argument("--same-images", action="store_true",
                        help="every event the same two images (stored once): the hub's "
                        "cost without image writes, for comparison")
    parser.add_argument("--keep", type=Path, default=None,
                        help="work in this folder and keep it (default: a temporary one, "
                        "deleted at the end)")
    parser.add_argument("--saturation-eps", type=float, default=None,
                        help="skip the bare measurement and the steps: only the overload "
                        "phase, at 3x this rate (to iterate on overload)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    fd_limit = raise_fd_limit(args.devices * FD_PER_DEVICE + 1024)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    services = FleetServices(folder, args.workers, args.runtime_threads)
    template = escalation_template(same_images=args.same_images)
    bares: list[Bare] = []

    def measure_bare_again() -> None:
        """The bare pipeline once more (the hub idle, if it runs): this shared machine's
        speed moves within minutes, and one bare figure would set the ratio alone."""
        bares.append(measure_bare(services.bare_env(), template, args.bare_s,
                                  services.workers))
        print(f"bare: {bares[-1].eps:.1f} events/s ({services.workers} threads)",
              flush=True)

    measuring_bare = args.saturation_eps is None
    if measuring_bare:
        measure_bare_again()
    broker, hub, database = services.broker, services.hub, services.database
    fleet: DeviceFleet | None = None
    broker.start()
    try:
        credentials, provision_s = services.provision(args.devices)
        print(f"provisioned {args.devices} devices in {provision_s:.1f} s", flush=True)
        services.start_hub()
        assert hub.process is not None
        assert broker.process is not None
        cpu = CpuMeter({"hub": hub.process.pid, "broker": broker.process.pid,
                        "devices": os.getpid()})
        fleet = DeviceFleet(broker.port, credentials, template)
        connect_s = fleet.connect(timeout_s=120)
        print(f"connected {args.devices} devices in {connect_s:.1f} s "
              f"(open files limit {fd_limit})", flush=True)
        steps: list[StepResult] = []
        good, bad = 0.0, None
        rate = args.start_eps
        if args.saturation_eps is not None:
            good, rate = args.saturation_eps, float("inf")
        while rate <= args.max_eps:
            result, _ = run_step(fleet, hub, rate, args.step_s, cpu=cpu)
            steps.append(result)
            print(json.dumps(result.to_json()), flush=True)
            if not result.passed:
                bad = rate
                break
            good, rate = rate, rate * 2
        for _ in range(args.refine if bad is not None else 0):
            settle(fleet, hub)  # the failing step's backlog cleared first
            assert bad is not None
            if measuring_bare:
                measure_bare_again()  # beside each deciding step
            rate = (good + bad) / 2
            result, _ = run_step(fleet, hub, rate, args.step_s, cpu=cpu)
            steps.append(result)
            print(json.dumps(result.to_json()), flush=True)
            good, bad = (rate, bad) if result.passed else (good, rate)
        settle(fleet, hub)
        if measuring_bare:
            measure_bare_again()  # after the steps
        overload_rate = 3 * max(good, args.start_eps)
        before = set(fleet.sent)
        _, records = run_step(fleet, hub, overload_rate, args.overload_s,
                              grace_s=VERDICT_TIMEOUT_S + 2, flood_share=2 / 3)
        overload = {"rate_eps": overload_rate, **overload_figures(records)}
        print(json.dumps({"overload": overload}), flush=True)
        metrics = scrape(hub.http_port)
        bare_eps = statistics.fmean(b.eps for b in bares) if bares else 0.0
        with fleet.lock:
            sent = dict(fleet.sent)
            event_bytes, answer_bytes, answers = (fleet.event_bytes, fleet.answer_bytes,
                                                  fleet.answers)
        stored = services.stored()
        diagnosis = overload_diagnosis({k: r for k, r in sent.items() if k not in before},
                                       stored)
        print(json.dumps({"overload_diagnosis": diagnosis}), flush=True)
        db_bytes = sum(p.stat().st_size for p in database.parent.glob("hub.sqlite3*"))
        image_bytes = sum(p.stat().st_size for p in (folder / "hub-fleet").rglob("*")
                          if p.is_file() and "images" in p.parts)
        duplicates = sum(max(0, len(r.answers) - 1) for r in sent.values())
        report = {
            "devices": args.devices, "provision_s": round(provision_s, 2),
            "connect_s": round(connect_s, 2),
            "saturation_eps": good, "bare_eps": round(bare_eps, 1),
            "bare_eps_runs": [round(b.eps, 1) for b in bares],
            "ratio": round(good / bare_eps, 3) if bare_eps else None,
            "saturation_bracket_eps": [good, bad],
            "cpu_ms_per_event": cpu_per_event(bares, steps, good),
            "overload": overload,
            "overload_missed": {k: diagnosis[k] for k in ("missed", "missed_by_kind")},
            "bytes_per_event": {
                "event_wire": round(event_bytes / max(1, len(sent))),
                "answer_wire": round(answer_bytes / max(1, answers)),
                "stored_row": round(db_bytes / max(1, len(stored))),
                "stored_images": round(image_bytes / max(1, len(stored))),
            },
            "events": len(sent), "lost": len(set(sent) - set(stored)),
            "unanswered": sum(1 for r in sent.values() if not r.answers),
            "duplicates": duplicates,
            "hub_disconnects": metrics.get("hub_mqtt_disconnects_total{}", 0.0),
            "hub_shed": {reason: metrics.get(f"hub_events_shed_total{{reason={reason}}}", 0.0)
                         for reason in ("queue-full", "deadline")},
            "hub_judging_yielded": metrics.get("hub_judging_yielded_total{}", 0.0),
            "steps": [s.to_json() for s in steps],
        }
    finally:
        if fleet is not None:
            fleet.close()
        services.stop()
        if args.keep is None:  # every event's images: hundreds of MB a run
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(report))
    return 0
