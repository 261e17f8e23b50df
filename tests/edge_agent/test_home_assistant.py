"""Home Assistant's MQTT discovery (issue 12): an agent on the sample footage, with
``[home_assistant]`` on a private Mosquitto of its own, announces itself; an independent
paho client (no code of the agent's) checks every discovery payload as Home Assistant's
MQTT integration reads it, then the states, and the availability the last will keeps."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config import HomeAssistantConfig
from edge_agent.home_assistant import discovery_messages
from models import ModelStore
from tests.broker import Collector, MosquittoBroker
from tests.edge_agent.agent_helpers import AgentThread, agent_config

pytestmark = pytest.mark.integration

NODE = "cam-test"
OBJECTS = {("binary_sensor", "face_present"), ("sensor", "escalations"),
           ("sensor", "backlog"), ("image", "latest_crop")}


class _HomeAssistant:
    """What Home Assistant would hold: the latest retained payload of each topic."""

    def __init__(self, port: int) -> None:
        self.retained: dict[str, bytes] = {}
        self.seen: set[tuple[str, bytes]] = set()  # every (topic, state) that came
        self.changed = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="home-assistant",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(
            [("homeassistant/#", 1), ("edge-agent/#", 1)])
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object,
                    message: mqtt.MQTTMessage) -> None:
        with self.changed:
            self.retained[message.topic] = bytes(message.payload)
            if len(message.payload) < 64:
                self.seen.add((message.topic, bytes(message.payload)))
            self.changed.notify_all()

    def wait(self, check: object, timeout_s: float = 120) -> dict[str, bytes]:
        assert callable(check)
        with self.changed:
            assert self.changed.wait_for(lambda: check(self.retained), timeout_s), (
                sorted(self.seen))
            return dict(self.retained)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def home_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(tmp_path / "home-broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _configs(retained: dict[str, bytes]) -> dict[tuple[str, str], dict[str, object]]:
    found = {}
    for topic, payload in retained.items():
        parts = topic.split("/")
        if len(parts) == 5 and parts[0] == "homeassistant" and parts[4] == "config":
            assert parts[2] == NODE
            found[(parts[1], parts[3])] = json.loads(payload)
    return found


def test_the_agent_appears_in_home_assistant_with_its_states(
        broker: MosquittoBroker, home_broker: MosquittoBroker, zoo_store: ModelStore,
        tmp_path: Path) -> None:
    hub = Collector(broker.port, "fleet/v1/+/events")  # receipts, as the hub gives them
    home = _HomeAssistant(home_broker.port)
    agent = AgentThread(agent_config(tmp_path, broker.port, zoo_store.root, home_assistant={
        "enabled": True, "broker": {"port": home_broker.port}}))
    agent.start()
    try:
        retained = home.wait(lambda r: set(_configs(r)) == OBJECTS
                             and (f"edge-agent/{NODE}/face_present", b"ON") in home.seen
                             and f"edge-agent/{NODE}/latest_crop" in r
                             and f"edge-agent/{NODE}/backlog" in r
                             and int(r.get(f"edge-agent/{NODE}/escalations", b"0")) > 0)
        assert retained[f"edge-agent/{NODE}/availability"] == b"online"
    finally:
        agent.finish()
        hub.close()
    try:
        home.wait(lambda r: r.get(f"edge-agent/{NODE}/availability") == b"offline")
    finally:
        home.close()
    configs = _configs(retained)
    devices = {json.dumps(c["device"], sort_keys=True) for c in configs.values()}
    assert len(devices) == 1  # one device in Home Assistant, four entities
    device = json.loads(devices.pop())
    assert device["identifiers"] == [f"edge-agent-{NODE}"] and device["sw_version"]
    for (component, object_id), config in configs.items():
        assert config["unique_id"] == f"{NODE}_{object_id}"
        assert config["availability_topic"] == f"edge-agent/{NODE}/availability"
        assert (config["payload_available"], config["payload_not_available"]) == (
            "online", "offline")
        state_key = "image_topic" if component == "image" else "state_topic"
        assert config[state_key] == f"edge-agent/{NODE}/{object_id}"
    assert configs[("binary_sensor", "face_present")]["device_class"] == "occupancy"
    assert configs[("sensor", "escalations")]["state_class"] == "total_increasing"
    assert configs[("image", "latest_crop")]["content_type"] == "image/jpeg"
    crop = cv2.imdecode(np.frombuffer(retained[f"edge-agent/{NODE}/latest_crop"], np.uint8),
                        cv2.IMREAD_COLOR)
    assert crop is not None and crop.shape[0] > 20
    assert int(retained[f"edge-agent/{NODE}/backlog"]) >= 0


@pytest.mark.parametrize(("device_id", "node"), [("cam.door-1", "cam_door-1")])
def test_discovery_names_a_node_home_assistant_accepts(device_id: str, node: str) -> None:
    messages = discovery_messages(HomeAssistantConfig(enabled=True), device_id, "1.0")
    assert {m.topic for m in messages} == {
        f"homeassistant/{c}/{node}/{o}/config" for c, o in OBJECTS}

