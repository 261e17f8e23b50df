"""Provisioned credentials and the generated ACL on a real Mosquitto: devices stay in their
own topics."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from cloud_hub.provisioning import set_password
from cloud_hub.service import HubService
from models import ModelStore
from sync import TopicLayout
from tests.broker import Collector, MosquittoBroker
from tests.cloud_hub.hub_helpers import hub_settings

pytestmark = pytest.mark.integration

LAYOUT = TopicLayout()
NOT_AUTHORIZED = 0x87


class Client:
    """A device's MQTT 5 client that records PUBACK and SUBACK reason codes."""

    def __init__(self, port: int, username: str, password: str,
                 client_id: str | None = None) -> None:
        self.pubacks: dict[int, int] = {}
        self.subacks: list[int] = []
        self.messages: list[str] = []
        self.done = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=client_id or username, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(username, password)

        def on_publish(client: mqtt.Client, userdata: object, mid: int, reason: ReasonCode,
                       properties: object) -> None:
            with self.done:
                self.pubacks[mid] = reason.value
                self.done.notify_all()

        def on_subscribe(client: mqtt.Client, userdata: object, mid: int,
                         reasons: list[ReasonCode], properties: object) -> None:
            with self.done:
                self.subacks += [r.value for r in reasons]
                self.done.notify_all()

        self.client.on_publish = on_publish
        self.client.on_subscribe = on_subscribe
        def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
            with self.done:
                self.messages.append(message.topic)
                self.done.notify_all()

        self.client.on_message = on_message
        connected = self.client.connect("127.0.0.1", port)
        assert connected == 0
        self.client.loop_start()

    def publish(self, topic: str) -> int:
        info = self.client.publish(topic, b"{}", qos=1)
        with self.done:
            assert self.done.wait_for(lambda: info.mid in self.pubacks, 10)
        return self.pubacks[info.mid]

    def subscribe(self, topic: str) -> int:
        before = len(self.subacks)
        self.client.subscribe(topic, qos=1)
        with self.done:
            assert self.done.wait_for(lambda: len(self.subacks) > before, 10)
        return self.subacks[-1]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def secured(tmp_path: Path, zoo_store: ModelStore) -> Iterator[tuple[MosquittoBroker, dict[
        str, str]]]:
    passwords, acl = tmp_path / "passwords", tmp_path / "acl"
    broker = MosquittoBroker(tmp_path / "broker", f"password_file {passwords}\nacl_file {acl}\n",
                             anonymous=False)
    settings = hub_settings(tmp_path, zoo_store.root, mqtt_port=broker.port,
                            mqtt_username="hub", mosquitto_password_file=passwords,
                            mosquitto_acl_file=acl)
    service = HubService(settings)
    service.open_store()
    secrets = {"hub": "hub-password"}
    set_password(passwords, "hub", secrets["hub"])
    for device in ("cam-a", "cam-b"):
        _, credentials = service.provision_device(device, "lobby")
        secrets[device] = credentials.password
    service.store.close()
    broker.start()
    yield broker, secrets
    broker.stop()


def test_device_cannot_publish_as_another_or_read_its_verdicts(
    secured: tuple[MosquittoBroker, dict[str, str]]
) -> None:
    broker, secrets = secured
    hub_view = Collector(broker.port, LAYOUT.shared("hub", "events"), client_id="hub-in",
                         username="hub", password=secrets["hub"])

    def device_a() -> Client:
        # Mosquitto closes the connection after a refused publish: one client per check.
        return Client(broker.port, "cam-a", secrets["cam-a"])

    checks = [
        (lambda c: c.publish(LAYOUT.events("cam-a")), True),
        (lambda c: c.publish(LAYOUT.events("cam-b")), False),
        (lambda c: c.publish(LAYOUT.status("cam-b")), False),
        (lambda c: c.subscribe(LAYOUT.verdicts("cam-a")), True),
    ]
    try:
        for check, allowed in checks:
            client = device_a()
            try:
                code = check(client)
            finally:
                client.close()
            assert (code < 0x80) is allowed, (code, allowed)
            if not allowed:
                assert code == NOT_AUTHORIZED
        # Mosquitto grants subscriptions to cam-b's verdicts, directly or by wildcard, but
        # delivers only what the ACL lets cam-a read.
        reader = device_a()
        sender = Client(broker.port, "hub", secrets["hub"], client_id="hub-out")
        try:
            reader.subscribe(LAYOUT.verdicts("cam-b"))
            reader.subscribe(LAYOUT.all_devices("verdicts"))
            assert sender.publish(LAYOUT.verdicts("cam-b")) < 0x80
            assert sender.publish(LAYOUT.verdicts("cam-a")) < 0x80
            with reader.done:
                reader.done.wait_for(lambda: LAYOUT.verdicts("cam-a") in reader.messages, 5)
            time.sleep(0.3)  # time for a wrongly routed cam-b verdict to show up
            assert reader.messages == [LAYOUT.verdicts("cam-a")]
        finally:
            sender.close()
            reader.close()
        assert hub_view.wait_for(lambda m: [t for t, _ in m] == [LAYOUT.events("cam-a")], 5)
    finally:
        hub_view.close()


def test_wrong_password_is_refused(secured: tuple[MosquittoBroker, dict[str, str]]) -> None:
    broker, _ = secured
    refused = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cam-a", protocol=mqtt.MQTTv5)
    client.username_pw_set("cam-a", "guessed")
    client.on_connect = lambda c, u, f, reason, p: refused.set() if reason.is_failure else None
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        assert refused.wait(10)
    finally:
        client.loop_stop()
