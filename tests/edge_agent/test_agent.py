"""The edge agent as a whole, on a real broker with the real model and footage."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bench.cascade import load_truth, write_clip
from edge_agent.footage import SampleFootage
from models import ModelStore
from sync import (
    BusyMessage,
    EventMessage,
    ModelRef,
    TelemetryMessage,
    TopicLayout,
    TrackEventMessage,
    VerdictMessage,
    decode,
    encode,
)
from tests.broker import Collector, MosquittoBroker, free_port
from tests.edge_agent.agent_helpers import (
    AgentThread,
    agent_config,
    agent_process,
    read_status,
    write_config,
)

pytestmark = pytest.mark.integration

LAYOUT = TopicLayout()


class Responder:
    """Stands in for the hub: answers every other escalation with a verdict."""

    def __init__(self, port: int) -> None:
        self.answered: list[str] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.seen = 0

    def __call__(self, topic: str, payload: bytes) -> None:
        if not topic.endswith("/events"):
            return
        event = decode(payload, EventMessage)
        self.seen += 1
        if self.seen % 2:
            return
        verdict = VerdictMessage(
            event_id=event.event_id, device_id=event.device_id, outcome="confirmed",
            detections=event.detections, model=ModelRef(name="judge", version="1.0.0"),
            inference_ms=1.0, decided_at=time.time(),
        )
        self.answered.append(event.event_id)
        self.client.publish(LAYOUT.verdicts(event.device_id), encode(verdict), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _events(collector: Collector) -> dict[str, EventMessage]:
    found = {}
    for topic, payload in list(collector.messages):
        if topic.endswith("/events"):
            event = decode(payload, EventMessage)
            found[event.event_id] = event
    return found


def test_run_escalates_uncertain_faces_and_reconciles_verdicts(
    broker: MosquittoBroker, zoo_store: ModelStore, tmp_path: Path
) -> None:
    responder = Responder(broker.port)
    collector = Collector(broker.port, LAYOUT.all_devices("events"), on_message=responder)
    journal_topic = Collector(broker.port, LAYOUT.all_devices("journal"))
    config = write_config(tmp_path / "agent.toml",
                          agent_config(tmp_path, broker.port, zoo_store.root))
    process = agent_process(config, "--exit-when-done")
    try:
        _, errors = process.communicate(timeout=120)
    finally:
        process.kill()
        responder.close()
        collector.close()
        journal_topic.close()
    assert process.returncode == 0, errors.decode()[-2000:]
    events = _events(collector)
    faces = [e for e in events.values() if e.detections and e.detections[0].label == "face"]
    # Each crossing face is a track, escalated when it first looks uncertain and again
    # only when its evidence changes: a few escalations, not one per frame.
    assert 2 <= len(faces) < 10
    for event in faces:
        assert event.reason == "uncertain" and event.priority == 5
        assert any(0.5 <= d.score < 0.95 for d in event.detections)
        assert event.crop_jpeg is not None and len(event.crop_jpeg) <= 48 * 1024
        crop = cv2.imdecode(np.frombuffer(event.crop_jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert crop is not None and crop.shape[0] > 20
        assert event.thumbnail_jpeg is not None and event.frame_size == (640, 360)
        assert event.model.name == "blazeface-short"
    status = read_status(tmp_path / "state")
    assert status["escalations"] == len(events)
    assert status["verdicts"] == len(responder.answered)
    assert status["fallbacks"] == len(events) - len(responder.answered)
    assert status["outbox"]["events"] == 0 and status["running"] is False
    # The decision journal: every escalation belongs to a tracked object's lifecycle,
    # in the state folder's file and on the device's journal topic.
    lines = (tmp_path / "state" / "journal.jsonl").read_bytes().splitlines()
    journal = [decode(line, TrackEventMessage) for line in lines]
    tracked = {i for i, e in events.items() if e.reason != "unexplained"}  # motion: no track
    assert {m.event_id for m in journal if m.event_id} == tracked
    tracks = {m.track_id for m in journal}
    assert sorted(m.track_id for m in journal if m.step == "new") == sorted(tracks)
    judged = [m for m in journal if m.verdict is not None]
    assert {m.event_id for m in judged} == set(responder.answered) & tracked
    published = [decode(p, TrackEventMessage) for t, p in list(journal_topic.messages)
                 if t == LAYOUT.journal("cam-test")]
    assert published
    assert all(m in journal for m in published)


class BusyHub:
    """Stands in for an overloaded hub: stores nothing, answers every escalation busy."""

    def __init__(self, port: int) -> None:
        self.answered: list[EventMessage] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def __call__(self, topic: str, payload: bytes) -> None:
        if not topic.endswith("/events"):
            return
        event = decode(payload, EventMessage)
        busy = BusyMessage(event_id=event.event_id, device_id=event.device_id,
                           reason="queue-full", retry_after_s=5.0, at=time.time())
        self.answered.append(event)
        self.client.publish(LAYOUT.verdicts(event.device_id), encode(busy), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_busy_hub_makes_the_agent_decide_at_once_not_at_its_timeout(
    broker: MosquittoBroker, zoo_store: ModelStore, tmp_path: Path
) -> None:
    """With a verdict timeout longer than the whole run, every fallback comes from a busy
    answer; each escalation tells the hub that timeout, and leaves the outbox."""
    hub = BusyHub(broker.port)
    collector = Collector(broker.port, LAYOUT.all_devices("events"), on_message=hub,
                          receipts=False)
    config = write_config(tmp_path / "agent.toml", agent_config(
        tmp_path, broker.port, zoo_store.root, fallback={"verdict_timeout_s": 3600.0}))
    process = agent_process(config, "--exit-when-done")
    try:
        _, errors = process.communicate(timeout=120)
    finally:
        process.kill()
        hub.close()
        collector.close()
    assert process.returncode == 0, errors.decode()[-2000:]
    status = read_status(tmp_path / "state")
    assert status["escalations"] >= 2 and status["verdicts"] == 0
    assert status["fallbacks"] == status["escalations"]
    assert status["outbox"]["events"] == 0
    assert {e.verdict_timeout_s for e in hub.answered} == {3600.0}


def test_sigterm_finishes_in_flight_work_and_exits_cleanly(
    broker: MosquittoBroker, zoo_store: ModelStore, tmp_path: Path
) -> None:
    collector = Collector(broker.port, LAYOUT.all_devices("events"))
    raw = agent_config(tmp_path, broker.port, zoo_store.root)
    raw["sources"] = [{"name": "yard", "kind": "sample", "model": "blazeface-short",
                       "loop": True, "max_fps": 60.0}]
    process = agent_process(write_config(tmp_path / "agent.toml", raw))
    try:
        deadline = time.monotonic() + 60
        while read_status(tmp_path / "state").get("escalations", 0) < 3:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0, errors.decode()[-2000:]
    status = read_status(tmp_path / "state")
    assert status["running"] is False
    stopped = subprocess.run(
        [sys.executable, "-m", "edge_agent", "status", "--config",
         str(tmp_path / "agent.toml")], capture_output=True, text=True, timeout=30, check=False,
    )
    assert stopped.returncode == 3, stopped.stderr  # not running
    shown = stopped.stdout
    assert "device cam-test: stopped" in shown and "blazeface-short@1.0.0 on litert" in shown
    stored = sqlite3.connect(tmp_path / "state" / "outbox.sqlite3").execute(
        "SELECT event_id FROM outbox").fetchall()
    delivered = set(_events(collector))
    # Everything escalated was either delivered or is still safe in the outbox.
    assert len(delivered) + len(stored) >= status["escalations"]
    collector.close()


def test_kill_9_then_restart_delivers_what_the_outbox_held(
    zoo_store: ModelStore, tmp_path: Path
) -> None:
    broker = MosquittoBroker(tmp_path / "broker")  # down while the agent escalates
    raw = agent_config(tmp_path, broker.port, zoo_store.root)
    raw["sources"] = [{"name": "yard", "kind": "sample", "model": "blazeface-short",
                       "loop": True}]
    config = write_config(tmp_path / "agent.toml", raw)
    first = agent_process(config)
    try:
        deadline = time.monotonic() + 60
        while read_status(tmp_path / "state").get("outbox", {}).get("events", 0) < 5:
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.1)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    held = {row[0] for row in sqlite3.connect(tmp_path / "state" / "outbox.sqlite3").execute(
        "SELECT event_id FROM outbox")}
    assert len(held) >= 5
    broker.start()
    collector = Collector(broker.port, LAYOUT.all_devices("events"))
    raw["sources"] = [{"name": "yard", "kind": "sample", "model": "blazeface-short"}]
    second = agent_process(write_config(tmp_path / "agent.toml", raw), "--exit-when-done")
    try:
        _, errors = second.communicate(timeout=120)
        assert second.returncode == 0, errors.decode()[-2000:]
        assert collector.wait_for(lambda m: held <= set(_events(collector)), 20)
        left = sqlite3.connect(tmp_path / "state" / "outbox.sqlite3").execute(
            "SELECT COUNT(*) FROM outbox").fetchone()[0]
        assert left == 0
    finally:
        second.kill()
        collector.close()
        broker.stop()


def test_malformed_verdicts_are_counted_and_dropped_and_metrics_served(
    broker: MosquittoBroker, zoo_store: ModelStore, tmp_path: Path
) -> None:
    metrics_port = free_port()
    telemetry = Collector(broker.port, LAYOUT.telemetry("cam-test"))
    raw = agent_config(tmp_path, broker.port, zoo_store.root,
                       metrics={"port": metrics_port},
                       mqtt={"telemetry_interval_s": 0.5})
    raw["sources"] = [{"name": "yard", "kind": "sample", "model": "blazeface-short",
                       "loop": True, "max_fps": 30.0}]
    run = AgentThread(raw).start()
    try:
        run.wait_until(lambda s: s["connected"])
        sender = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        sender.connect("127.0.0.1", broker.port)
        sender.loop_start()
        topic = LAYOUT.verdicts("cam-test")
        other = VerdictMessage(
            event_id="01a22291-1512-7334-b5e0-71a494108049", device_id="cam-other",
            outcome="confirmed", model=ModelRef(name="m", version="1"), inference_ms=1,
            decided_at=1,
        )
        for payload in (b"\x00garbage", b"{}", b"[" * 100_000, encode(other)):
            sender.publish(topic, payload, qos=1).wait_for_publish(5)
        snapshot = run.wait_until(lambda s: s["malformed_verdicts"] >= 4)
        assert snapshot["malformed_verdicts"] == 4
        run.wait_until(lambda s: s["sources"]["yard"]["frames"] > 20)  # still working
        sender.disconnect()
        sender.loop_stop()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as page:
            exposition = page.read().decode()
        for name in ("edge_frames_total", "edge_frames_gated_total", "edge_inference_seconds",
                     "edge_backend_info", "edge_outbox_events", "edge_mqtt_reconnects",
                     'edge_malformed_messages_total{kind="verdict"} 4.0'):
            assert name in exposition
        assert telemetry.wait_for(lambda m: len(m) >= 2, 10)
        values = decode(telemetry.messages[-1][1], TelemetryMessage).values
        assert values["frames.yard"] > 0 and "outbox_events" in values
    finally:
        telemetry.close()
        assert run.finish() == 0


def _corrupt_video(path: Path) -> None:
    """An MJPEG AVI whose every third frame has its JPEG data scrambled."""
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for _ in range(30):
        writer.write(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    writer.release()
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    for start in starts[::3]:
        data[start : start + 400] = rng.integers(0, 255, 400, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_corrupt_and_vanished_inputs_keep_the_agent_running(
    broker: MosquittoBroker, zoo_store: ModelStore, tmp_path: Path
) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "a-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    from skimage import data

    cv2.imwrite(str(folder / "b-astronaut.png"), cv2.cvtColor(data.astronaut(),
                                                              cv2.COLOR_RGB2BGR))
    video = tmp_path / "corrupt.avi"
    _corrupt_video(video)
    raw = agent_config(tmp_path, broker.port, zoo_store.root)
    raw["sources"] = [
        {"name": "gone", "kind": "video", "url": str(tmp_path / "vanished.mp4"),
         "model": "blazeface-short"},
        {"name": "inbox", "kind": "folder", "url": str(folder), "model": "blazeface-short"},
        {"name": "tape", "kind": "video", "url": str(video), "model": "blazeface-short",
         "loop": True},
    ]
    run = AgentThread(raw).start()
    try:
        snapshot = run.wait_until(
            lambda s: s["sources"]["inbox"]["frames"] >= 1
            and s["sources"]["inbox"]["corrupt"] >= 1
            and s["sources"]["tape"]["frames"] >= 10
            and not s["sources"]["gone"]["healthy"]
        )
        assert "does not exist" in snapshot["sources"]["gone"]["last_error"]
        (tmp_path / "vanished.mp4").write_bytes(video.read_bytes())  # it comes back
        run.wait_until(lambda s: s["sources"]["gone"]["frames"] > 0, timeout_s=30)
    finally:
        assert run.finish() == 0


def test_local_actions_fire_on_confident_decisions(
    broker: MosquittoBroker, zoo_store: ModelStore, tmp_path: Path
) -> None:
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received: list[dict[str, object]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    log_file = tmp_path / "actions.log"
    alarms = Collector(broker.port, "home/alarm")
    hub = Collector(broker.port, LAYOUT.all_devices("events"))  # confirms the escalations
    raw = agent_config(tmp_path, broker.port, zoo_store.root,
                       policy={"confident_score": 0.8})
    raw["actions"] = [
        {"kind": "command", "on": ["decision"],
         "command": ["sh", "-c", f'printf "%s\\n" "$EDGE_EVENT" >> {log_file}']},
        {"kind": "webhook", "on": ["decision"],
         "url": f"http://127.0.0.1:{server.server_port}/hook"},
        {"kind": "mqtt", "on": ["decision"], "topic": "home/alarm"},
    ]
    run = AgentThread(raw).start(exit_when_done=True)
    try:
        run.thread.join(120)
        assert run.exit_code == 0
        assert alarms.wait_for(lambda m: len(m) >= 3, 10)
    finally:
        run.finish()
        server.shutdown()
        alarms.close()
        hub.close()
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert len(lines) >= 3 and len(received) == len(lines)
    for event in (lines[0], received[0], json.loads(alarms.messages[0][1])):
        assert event["kind"] == "decision" and event["positive"] is True
        assert event["labels"] == ["face"] and event["device_id"] == "cam-test"


@pytest.fixture(scope="module")
def anomaly_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    from edge_agent.sensors import train_anomaly_bundle

    store = ModelStore(tmp_path_factory.mktemp("anomaly-store"))
    store.add(*train_anomaly_bundle())
    return store


def test_sensor_anomalies_are_escalated(broker: MosquittoBroker, anomaly_store: ModelStore,
                                        tmp_path: Path) -> None:
    from edge_agent.sensors import inject, sample_readings

    collector = Collector(broker.port, LAYOUT.all_devices("events"))
    raw = agent_config(tmp_path, broker.port, anomaly_store.root,
                       policy={"max_escalations_per_minute": 6000.0})
    raw["sources"] = [{"name": "boiler", "kind": "sensor", "model": "sensor-anomaly",
                       "topic": "site/boiler/temperature", "window": 32}]
    run = AgentThread(raw).start()
    readings = sample_readings(1200, seed=11, start=300)
    for fault, at in (("spike", 300), ("stuck", 600), ("step", 900)):
        readings = inject(readings, fault, at)  # type: ignore[arg-type]
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    try:
        run.wait_until(lambda s: s["connected"])
        time.sleep(0.5)  # let the sensor source subscribe
        publisher.publish("site/boiler/temperature", b"not a number", qos=1)
        sent = [round(float(value), 3) for value in readings]
        for value in sent:
            publisher.publish("site/boiler/temperature", json.dumps({"value": value}), qos=1)
        # 1200 readings make 74 windows of 32, one every 16 readings.
        run.wait_until(lambda s: s["sources"]["boiler"]["processed"] >= 74, timeout_s=30)
        snapshot = run.wait_until(lambda s: s["outbox"]["events"] == 0)
        assert snapshot["sources"]["boiler"]["corrupt"] == 1
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        assert run.finish() == 0
    anomalies = [e for e in _events(collector).values() if e.reason == "anomaly"]
    assert len(anomalies) >= 3
    # The anomaly model's health counters feed an update's health window like a detector's.
    health = run.agent.model_health("sensor-anomaly").stats()
    assert health.inferences >= 74 and health.errors == 0
    assert health.escalations == len(anomalies) and health.median_latency_s > 0
    flagged: list[range] = []
    for event in anomalies:
        assert event.anomaly_score is not None and event.anomaly_score < 0
        assert len(event.readings) == 32
        start = next(i for i in range(len(sent)) if sent[i : i + 32] == list(event.readings))
        flagged.append(range(start, start + 32))
    for fault_at in (300, 600, 900):  # each injected fault lies in a flagged window
        assert any(fault_at in window or fault_at + 8 in window for window in flagged)
    collector.close()


def test_two_faces_in_view_are_two_tracks_with_two_decisions_in_the_journal(
    broker: MosquittoBroker, zoo_store: ModelStore, tmp_path: Path
) -> None:
    # The sample footage's hard segments as a clip, read by a video source: the real
    # agent process, its decision journal read back against the clip's truth.
    write_clip(SampleFootage(static_frames=2, distant_pass=True, hard=True),
               tmp_path / "clip")
    truth = load_truth(tmp_path / "clip.json")
    both = {f.frame for f in truth.frames if f.segment == "two-faces"
            and sum(o.label == "face" for o in f.objects) == 2}
    responder = Responder(broker.port)
    collector = Collector(broker.port, LAYOUT.all_devices("events"), on_message=responder)
    raw = agent_config(tmp_path, broker.port, zoo_store.root)
    raw["sources"] = [{"name": "yard", "kind": "video", "url": str(tmp_path / "clip.avi"),
                       "model": "blazeface-short", "motion": {"enabled": False}}]
    process = agent_process(write_config(tmp_path / "agent.toml", raw), "--exit-when-done")
    try:
        _, errors = process.communicate(timeout=180)
    finally:
        process.kill()
        responder.close()
        collector.close()
    assert process.returncode == 0, errors.decode()[-2000:]
    journal = [decode(line, TrackEventMessage) for line in
               (tmp_path / "state" / "journal.jsonl").read_bytes().splitlines()]
    tracks_on: dict[int, set[int]] = {}
    for message in journal:
        for sighting in message.sightings:
            tracks_on.setdefault(sighting.frame, set()).add(message.track_id)
    two = [frame for frame in both if len(tracks_on.get(frame, ())) >= 2]
    assert two, "no frame with both faces showed two tracks"
    first = min(two)
    decided = {m.track_id: m for m in journal if m.step == "new"}
    assert tracks_on[first] <= set(decided)  # each of them decided on its own
    # No object is escalated again before its verdict (or its fallback) came: the file
    # holds each track's steps in the order the pipeline took them.
    escalated = answered = 0
    waiting: dict[int, bool] = {}
    counts: dict[int, int] = {}
    for message in journal:
        if message.escalations > counts.get(message.track_id, 0):
            assert not waiting.get(message.track_id), (
                f"track {message.track_id} escalated again on frame {message.last_frame} "
                "before its verdict")
            waiting[message.track_id] = True
            counts[message.track_id] = message.escalations
            escalated += 1
        elif waiting.get(message.track_id) and (message.verdict or message.fell_back):
            waiting[message.track_id] = False
            answered += 1
    assert escalated >= answered > 0
