"""Two hub processes on one shared subscription and one PostgreSQL database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from skimage import data

from cloud_hub.store import Store
from models import ModelStore
from sync import TopicLayout, encode
from tests.broker import MosquittoBroker, free_port
from tests.cloud_hub.conftest import postgres_store_url
from tests.cloud_hub.hub_helpers import SECRET, face_event

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parent.parent.parent
LAYOUT = TopicLayout()
BURST = 60


def _hub(name: str, port: int, broker: MosquittoBroker, database_url: str,
         store: ModelStore, folder: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ, "CLOUD_HUB_DATABASE_URL": database_url,
        "CLOUD_HUB_MQTT_PORT": str(broker.port), "CLOUD_HUB_MQTT_CLIENT_ID": name,
        "CLOUD_HUB_HTTP_PORT": str(port), "CLOUD_HUB_MODEL_STORE": str(store.root),
        "CLOUD_HUB_DATA_DIR": str(folder / name), "CLOUD_HUB_SECRET_KEY": SECRET,
        "CLOUD_HUB_LANDMARK_MODEL": "face-landmark", "CLOUD_HUB_INGEST_WORKERS": "2",
    }
    return subprocess.Popen([sys.executable, "-m", "cloud_hub.cli", "serve"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def test_burst_is_split_between_two_hubs_and_stored_exactly_once(
    tmp_path: Path, zoo_store: ModelStore, postgres_schema: str
) -> None:
    url = postgres_store_url(postgres_schema)
    store = Store(url)
    store.open()
    store.add_device(device_id="cam-burst", group="yard")
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    ports = [free_port(), free_port()]
    hubs = [_hub(f"hub-{i}", port, broker, url, zoo_store, tmp_path)
            for i, port in enumerate(ports)]
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    try:
        deadline = time.monotonic() + 120
        while not all(_ready(port) for port in ports):
            assert time.monotonic() < deadline, "hubs did not become ready"
            assert all(h.poll() is None for h in hubs), hubs[0].stderr or hubs[1].stderr
            time.sleep(0.3)
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        images = [data.astronaut(), data.coffee()]
        events = [face_event("cam-burst", images[i % 2]) for i in range(BURST)]
        for event in events:
            publisher.publish(LAYOUT.events("cam-burst"), encode(event), qos=1)
        for event in events[:5]:  # QoS 1 redeliveries and agent retries happen: resend some
            publisher.publish(LAYOUT.events("cam-burst"), encode(event), qos=1)
        deadline = time.monotonic() + 120
        while True:
            page = store.list_events(device_id="cam-burst", limit=500).items
            if len(page) == BURST and all(e["outcome"] for e in page):
                break
            assert time.monotonic() < deadline, f"{len(page)} stored"
            time.sleep(0.3)
        time.sleep(1.0)  # let the resent duplicates land too
        page = store.list_events(device_id="cam-burst", limit=500).items
        assert len(page) == BURST
        assert {e["id"] for e in page} == {e.event_id for e in events}
        by_hub = {name: sum(e["handled_by"] == name for e in page) for name in ("hub-0", "hub-1")}
        assert all(count > 0 for count in by_hub.values()), by_hub
        outcomes = {e["id"]: e["outcome"] for e in page}
        assert outcomes[events[0].event_id] == "confirmed"
        assert outcomes[events[1].event_id] == "rejected"
    finally:
        publisher.disconnect()
        for hub in hubs:
            hub.terminate()
        for hub in hubs:
            hub.wait(30)
        broker.stop()
        store.close()
