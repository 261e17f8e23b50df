"""Edge agent and hub together on a real Mosquitto, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion
from skimage import data

from cloud_hub.service import HubService
from cloud_hub.store import events as store_events
from models import ModelStore
from sync import (
    StatusMessage,
    TopicLayout,
    VerdictMessage,
    decode,
    encode,
    encode_event,
    peek_schema,
)
from tests.broker import Collector, MosquittoBroker
from tests.cloud_hub.conftest import postgres_store_url
from tests.cloud_hub.hub_helpers import face_event, hub_settings
from tests.edge_agent.agent_helpers import agent_config, agent_process, read_status, write_config

pytestmark = pytest.mark.integration

LAYOUT = TopicLayout()


@pytest.fixture(params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, tmp_path: Path, broker: MosquittoBroker,
        zoo_store: ModelStore) -> Iterator[HubService]:
    url = None
    if request.param == "postgresql":
        url = postgres_store_url(request.getfixturevalue("postgres_schema"))
    service = HubService(hub_settings(tmp_path, zoo_store.root, mqtt_port=broker.port,
                                      database_url=url, max_message_bytes=200_000))
    service.start()
    assert service.ingest is not None and service.ingest.connected.wait(10)
    yield service
    service.stop()


def _publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def _dropped(hub: HubService, reason: str) -> float:
    value = hub.metrics.registry.get_sample_value("hub_messages_dropped_total",
                                                  {"reason": reason})
    return value or 0.0


def test_agent_and_hub_end_to_end(hub: HubService, broker: MosquittoBroker,
                                  zoo_store: ModelStore, tmp_path: Path) -> None:
    hub.provision_device("cam-e2e", "yard")
    raw = agent_config(tmp_path, broker.port, zoo_store.root,
                       fallback={"verdict_timeout_s": 20.0})
    raw["device"] = {"id": "cam-e2e", "group": "yard"}
    process = agent_process(write_config(tmp_path / "agent.toml", raw), "--exit-when-done")
    _, errors = process.communicate(timeout=180)
    assert process.returncode == 0, errors.decode()[-2000:]
    status = read_status(tmp_path / "state")
    assert status["escalations"] >= 3  # faces and the cat, each tracked object escalated
    # Every escalation was judged and its verdict reached the device before the deadline.
    assert status["verdicts"] == status["escalations"] and status["fallbacks"] == 0
    events = hub.store.list_events(device_id="cam-e2e", limit=200).items
    assert len(events) == status["escalations"]
    outcomes = {e["outcome"] for e in events}
    assert outcomes == {"confirmed", "rejected"}  # faces confirmed, the cat rejected
    confirmed = [e for e in events if e["outcome"] == "confirmed"]
    assert all(e["hub_detections"] and e["hub_model"] == "blazeface-full-onnx"
               for e in confirmed)
    assert all(e["has_crop"] and e["has_thumbnail"] for e in events)
    # The agent sent framed events; their images are files, the rows hold references.
    crop = hub.store.event_image(event_id=events[0]["id"], kind="crop")
    assert crop is not None and crop[:2] == b"\xff\xd8"
    with hub.store.engine.connect() as conn:
        rows = conn.execute(sa.select(store_events.c.crop, store_events.c.crop_ref)).all()
    assert all(blob is None and ref for blob, ref in rows)
    assert len([p for p in hub.settings.images_dir.rglob("*") if p.is_file()]) >= len(events)
    deadline = time.monotonic() + 10
    while hub.store.get_device(device_id="cam-e2e")["online"] and time.monotonic() < deadline:
        time.sleep(0.1)
    device = hub.store.get_device(device_id="cam-e2e")
    assert device["models"] == {"blazeface-short": "1.0.0"} and device["online"] is False
    assert device["backend"] == "litert:xnnpack"


def test_old_json_and_framed_events_are_both_judged_and_their_images_served(
    hub: HubService, broker: MosquittoBroker
) -> None:
    hub.provision_device("cam-mixed", "yard")
    verdicts = Collector(broker.port, LAYOUT.verdicts("cam-mixed"))
    publisher = _publisher(broker.port)
    old, framed = (face_event("cam-mixed", data.astronaut()) for _ in range(2))
    try:
        publisher.publish(LAYOUT.events("cam-mixed"), encode(old), qos=1).wait_for_publish(5)
        publisher.publish(LAYOUT.events("cam-mixed"), encode_event(framed),
                          qos=1).wait_for_publish(5)
        assert verdicts.wait_for(
            lambda m: sum(peek_schema(p) == "verdict/1" for _, p in m) >= 2, 60)
    finally:
        publisher.disconnect()
        verdicts.close()
    for kind in ("frame", "json"):
        assert hub.metrics.registry.get_sample_value("hub_event_formats_total",
                                                     {"format": kind}) == 1.0
    for event in (old, framed):
        assert hub.store.get_event(event_id=event.event_id)["outcome"] == "confirmed"
        assert hub.store.event_image(event_id=event.event_id,
                                     kind="thumbnail") == event.thumbnail_jpeg


def test_duplicates_are_stored_once_and_answered_alike(
    hub: HubService, broker: MosquittoBroker
) -> None:
    hub.provision_device("cam-dup", "yard")
    verdicts = Collector(broker.port, LAYOUT.verdicts("cam-dup"))
    publisher = _publisher(broker.port)
    event = face_event("cam-dup", data.astronaut())
    try:
        for _ in range(2):
            publisher.publish(LAYOUT.events("cam-dup"), encode(event), qos=1).wait_for_publish(5)
        assert verdicts.wait_for(
            lambda m: sum(peek_schema(p) == "verdict/1" for _, p in m) >= 2, 30)
    finally:
        publisher.disconnect()
        verdicts.close()
    # A copy that arrives while the first is being judged also gets a receipt.
    assert {peek_schema(p) for _, p in verdicts.messages} <= {"verdict/1", "receipt/1"}
    answers = [decode(payload, VerdictMessage) for _, payload in verdicts.messages
               if peek_schema(payload) == "verdict/1"]
    assert {a.event_id for a in answers} == {event.event_id}
    assert answers[0] == answers[1] and answers[0].outcome == "confirmed"
    assert len(hub.store.list_events(device_id="cam-dup").items) == 1
    assert hub.metrics.registry.get_sample_value("hub_dedup_hits_total") == 1.0


def test_bad_messages_are_counted_and_dropped(hub: HubService,
                                              broker: MosquittoBroker) -> None:
    hub.provision_device("cam-good", "yard")
    verdicts = Collector(broker.port, LAYOUT.all_devices("verdicts"))
    publisher = _publisher(broker.port)
    topic = LAYOUT.events("cam-good")
    stranger = face_event("cam-stranger", data.astronaut())
    spoofed = face_event("cam-other", data.astronaut())
    broken = face_event("cam-good", data.astronaut(), thumbnail_jpeg=b"\xff\xd8 not a jpeg")
    good = face_event("cam-good", data.astronaut())
    try:
        for target, payload in [
            (topic, b"\x00\x01 not json"),
            (topic, json.dumps({"schema": "event/1"}).encode()),
            (topic, b"x" * 300_000),
            (LAYOUT.events("cam-stranger"), encode(stranger)),
            (topic, encode(spoofed)),
            (topic, encode(broken)),
            (topic, encode(good)),
        ]:
            publisher.publish(target, payload, qos=1).wait_for_publish(5)
        assert verdicts.wait_for(
            lambda m: {decode(p, VerdictMessage).event_id for _, p in m}
            >= {good.event_id, broken.event_id}, 30)
    finally:
        publisher.disconnect()
        verdicts.close()
    assert _dropped(hub, "malformed") == 2
    assert _dropped(hub, "oversized") == 1
    assert _dropped(hub, "unknown-device") == 1
    assert _dropped(hub, "spoofed-device") == 1
    assert _dropped(hub, "bad-image") == 1
    assert hub.store.get_event(event_id=broken.event_id)["outcome"] == "rejected"
    assert hub.store.get_event(event_id=good.event_id)["outcome"] == "confirmed"
    assert len(hub.store.list_events().items) == 2


def test_thumbnail_only_and_sensor_events(hub: HubService, broker: MosquittoBroker) -> None:
    hub.provision_device("cam-misc", "yard")
    verdicts = Collector(broker.port, LAYOUT.verdicts("cam-misc"))
    publisher = _publisher(broker.port)
    coffee = face_event("cam-misc", data.coffee())
    window = face_event("cam-misc", data.coffee(), thumbnail_jpeg=None, detections=(),
                        reason="anomaly", anomaly_score=-0.2, readings=(1.0, 2.0, 9.0))
    try:
        for event in (coffee, window):
            publisher.publish(LAYOUT.events("cam-misc"), encode(event),
                              qos=1).wait_for_publish(5)
        assert verdicts.wait_for(lambda m: len(m) >= 2, 30)
    finally:
        publisher.disconnect()
        verdicts.close()
    outcome = {decode(p, VerdictMessage).event_id: decode(p, VerdictMessage).outcome
               for _, p in verdicts.messages}
    assert outcome == {coffee.event_id: "rejected", window.event_id: "confirmed"}


def test_a_full_database_disk_leaves_escalations_unacknowledged_until_it_recovers(
    tmp_path: Path, broker: MosquittoBroker, zoo_store: ModelStore
) -> None:
    """The hub's disk fills up: escalations are not acknowledged (the device keeps them)
    and are stored once space returns, none dropped as a hub error."""
    disk = tmp_path / "hub-disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(disk)],
                             capture_output=True, text=True, check=False)
    assert mounted.returncode == 0, f"this test needs root to mount a tmpfs: {mounted.stderr}"
    service = None
    try:
        service = HubService(hub_settings(tmp_path, zoo_store.root, mqtt_port=broker.port,
                                          data_dir=disk))
        service.start()
        assert service.ingest is not None and service.ingest.connected.wait(10)
        service.provision_device("cam-full", "yard")
        filler = disk / "filler"
        with filler.open("wb") as handle:  # the disk is full from here on
            try:
                while True:
                    handle.write(b"\0" * (1 << 20))
                    handle.flush()
            except OSError:
                pass
        publisher = _publisher(broker.port)
        events = [face_event("cam-full", data.astronaut()) for _ in range(5)]
        for event in events:
            publisher.publish(LAYOUT.events("cam-full"), encode(event), qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not service.metrics.registry.get_sample_value(
                "hub_message_retries_total", {"reason": "store-unavailable"}):
            time.sleep(0.1)
        assert service.metrics.registry.get_sample_value(
            "hub_message_retries_total", {"reason": "store-unavailable"})
        filler.unlink()  # space returns
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(
                service.store.list_events(device_id="cam-full").items) < len(events):
            time.sleep(0.2)
        stored = {e["id"] for e in service.store.list_events(device_id="cam-full").items}
        assert stored == {e.event_id for e in events}
        assert _dropped(service, "hub-error") == 0
        publisher.disconnect()
    finally:
        if service is not None:
            service.stop()
        subprocess.run(["umount", "-l", str(disk)], check=False)



def test_a_revoked_device_is_refused_and_listed_as_revoked(hub: HubService,
                                                          broker: MosquittoBroker) -> None:
    """Whatever still reaches the hub from a revoked device (in flight, or on a broker the
    hub does not control) is dropped: no event, no verdict, never online again."""
    hub.provision_device("cam-gone", "yard")
    hub.provision_device("cam-kept", "yard")
    hub.revoke_device("cam-gone")
    verdicts = Collector(broker.port, LAYOUT.all_devices("verdicts"))
    publisher = _publisher(broker.port)
    late = face_event("cam-gone", data.astronaut())
    sentinel = face_event("cam-kept", data.astronaut())
    online = StatusMessage(device_id="cam-gone", state="online", at=time.time())
    try:
        for target, payload in [(LAYOUT.status("cam-gone"), encode(online)),
                                (LAYOUT.events("cam-gone"), encode(late)),
                                (LAYOUT.events("cam-kept"), encode(sentinel))]:
            publisher.publish(target, payload, qos=1).wait_for_publish(5)
        assert verdicts.wait_for(lambda m: any(
            peek_schema(p) == "verdict/1"
            and decode(p, VerdictMessage).event_id == sentinel.event_id for _, p in m), 30)
    finally:
        publisher.disconnect()
        verdicts.close()
    assert _dropped(hub, "revoked-device") == 2
    device = hub.store.get_device(device_id="cam-gone")
    assert device["revoked"] and not device["online"]
    assert [e["id"] for e in hub.store.list_events().items] == [sentinel.event_id]
    hub.provision_device("cam-gone", "yard", rotate=True)  # brought back
    assert not hub.store.get_device(device_id="cam-gone")["revoked"]
