"""Building hubs for tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.ingest import IngestWorker
from cloud_hub.judge import EventJudge
from cloud_hub.metrics import HubMetrics
from cloud_hub.provisioning import Acl, Command, Role
from cloud_hub.settings import HubSettings
from cloud_hub.store import Store
from sync import DetectionPayload, EventIdFactory, EventMessage, ModelRef, TopicLayout
from tests.broker import Collector, MosquittoBroker

SECRET = "test-secret-" + "x" * 32


def hub_settings(tmp_path: Path, store_root: Path, **overrides: Any) -> HubSettings:
    """Settings for a hub in ``tmp_path`` using the session's model store."""
    values: dict[str, Any] = {
        "data_dir": tmp_path / "hub", "model_store": store_root, "secret_key": SECRET,
        "detector_model": "blazeface-full-onnx", "landmark_model": "face-landmark",
        "batch_max_delay_ms": 2.0,
        # Test brokers let anonymous clients in; tests of the broker's boundary ask for
        # "mosquitto-dynsec" and the hub's credentials.
        "broker_control": "none",
    }
    values.update(overrides)
    return HubSettings(**values)


def old_layout_commands(device_id: str, group: str, password: str) -> list[Command]:
    """What a hub before the group roles made: one role of nine literal rules (the
    group's among them) and a client with a text name (default topic layout)."""
    layout = TopicLayout()
    acls = [Acl("publishClientSend", topic) for topic in (
        layout.events(device_id), layout.status(device_id), layout.telemetry(device_id),
        layout.updates(device_id), layout.journal(device_id))]
    for topic in (layout.verdicts(device_id), layout.models(group)):
        acls += [Acl("subscribeLiteral", topic), Acl("publishClientReceive", topic)]
    role = Role(f"device-{device_id}", tuple(acls))
    return [Command("createRole", role.to_json()),
            Command("createClient", {"username": device_id, "password": password,
                                     "clientid": device_id,
                                     "textname": f"device {device_id} (group {group})",
                                     "roles": [{"rolename": role.name}]})]


def jpeg(image: npt.NDArray[np.uint8], quality: int = 85) -> bytes:
    """RGB image to JPEG bytes."""
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


_ids = EventIdFactory()


def face_event(device_id: str, image: npt.NDArray[np.uint8], **changes: Any) -> EventMessage:
    """An escalation whose thumbnail is ``image`` (the whole frame)."""
    fields: dict[str, Any] = {
        "event_id": _ids(), "device_id": device_id, "source": "door",
        "captured_at": time.time(), "reason": "uncertain", "priority": 5,
        "model": ModelRef(name="blazeface-short", version="1.0.0"),
        "detections": (DetectionPayload(box=(178, 82, 271, 174), score=0.7, label="face"),),
        "frame_size": (image.shape[1], image.shape[0]),
        "thumbnail_jpeg": jpeg(image),
    }
    fields.update(changes)
    return EventMessage.model_validate(fields)


@dataclass
class Rig:
    """A running ingest worker on the test broker, with a device-side sender and a
    collector of every answer on the devices' verdicts topics."""

    worker: IngestWorker
    store: Store
    metrics: HubMetrics
    answers: Collector
    sender: mqtt.Client


@contextmanager
def running_hub(tmp_path: Path, broker: MosquittoBroker, judge: EventJudge,
                devices: Iterable[str], *, clock: Callable[[], float] = time.time,
                make_store: Callable[[str], Store] = Store, **overrides: Any) -> Iterator[Rig]:
    """An ingest worker with ``judge`` and ``devices`` registered, connected (its store
    made by ``make_store`` from the database URL: a test's fake may stand in)."""
    settings = hub_settings(tmp_path, tmp_path / "no-models", mqtt_port=broker.port,
                            ingest_workers=1, **overrides)
    settings.data_dir.mkdir(parents=True)
    store = make_store(settings.effective_database_url)
    store.open()
    for device in devices:
        store.add_device(device_id=device, group="yard", labels=None, credential_hash=None)
    metrics = HubMetrics()
    worker = IngestWorker(settings, store, judge, metrics, clock=clock)
    answers = Collector(broker.port, TopicLayout().all_devices("verdicts"), receipts=False)
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sender.connect("127.0.0.1", broker.port)
    sender.loop_start()
    worker.start()
    try:
        assert worker.connected.wait(10)
        yield Rig(worker, store, metrics, answers, sender)
    finally:
        worker.stop()
        sender.loop_stop()
        sender.disconnect()
        answers.close()
        store.close()
