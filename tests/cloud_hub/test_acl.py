"""The broker is the boundary: on a real Mosquitto with the configuration and dynamic
security state the project writes, and a real hub that provisions through the plugin's
control topic, a device reaches only its own topics.

Each test here is one of issue 9's findings: a device eating the fleet's escalations
through the hub's shared subscription (1), taking over another client's id (2), sending
a packet larger than the hub accepts (4), and provisioning that hands out the hub's name
or silently replaces a device's password (8).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.client import ConnectFlags
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from skimage import data

from cloud_hub.api import create_app
from cloud_hub.api.auth import hash_token, new_token
from cloud_hub.cli import main as cloud_hub_main
from cloud_hub.mosquitto import BrokerLimits
from cloud_hub.provisioning import BrokerControl
from cloud_hub.service import HubService
from models import ModelStore
from sync import EventIdFactory, TopicLayout, TrackEventMessage, VerdictMessage, decode, encode
from tests.broker import MosquittoBroker
from tests.cloud_hub.hub_helpers import face_event, hub_settings, old_layout_commands
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

LAYOUT = TopicLayout()
NOT_AUTHORIZED = 0x87
LIMITS = BrokerLimits()  # production's limits


class Device:
    """An MQTT 5 client that records CONNACK, SUBACK, PUBACK, messages and disconnects."""

    def __init__(self, port: int, username: str, password: str, *,
                 client_id: str | None = None, persistent: bool = False) -> None:
        self.connack: int | None = None
        self.session_present = False
        self.pubacks: dict[int, int] = {}
        self.subacks: list[int] = []
        self.messages: list[tuple[str, bytes]] = []
        self.disconnects: list[int] = []
        self.changed = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=client_id or username, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(username, password)

        def on_connect(client: mqtt.Client, userdata: object, flags: ConnectFlags,
                       reason: ReasonCode, properties: object) -> None:
            self.session_present = flags.session_present
            self._record(lambda: setattr(self, "connack", reason.value))

        def on_disconnect(client: mqtt.Client, userdata: object, flags: object,
                          reason: ReasonCode, properties: object) -> None:
            self._record(lambda: self.disconnects.append(reason.value))

        def on_publish(client: mqtt.Client, userdata: object, mid: int, reason: ReasonCode,
                       properties: object) -> None:
            self._record(lambda: self.pubacks.__setitem__(mid, reason.value))

        def on_subscribe(client: mqtt.Client, userdata: object, mid: int,
                         reasons: list[ReasonCode], properties: object) -> None:
            self._record(lambda: self.subacks.extend(r.value for r in reasons))

        def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
            self._record(lambda: self.messages.append((message.topic, bytes(message.payload))))

        self.client.on_connect = on_connect
        self.client.on_disconnect = on_disconnect
        self.client.on_publish = on_publish
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600 if persistent else 0
        self.client.reconnect_delay_set(30, 60)  # a refused client stays refused here
        self.client.connect_async("127.0.0.1", port, clean_start=not persistent,
                                  properties=properties)
        self.client.loop_start()
        assert self.wait(lambda: self.connack is not None or bool(self.disconnects))

    def _record(self, change: object) -> None:
        with self.changed:
            change()  # type: ignore[operator]
            self.changed.notify_all()

    def wait(self, predicate: object, timeout_s: float = 15.0) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout_s)  # type: ignore[arg-type]

    @property
    def refused(self) -> bool:
        return self.connack is None or self.connack >= 0x80

    def publish(self, topic: str, payload: bytes = b"{}", *, retain: bool = False) -> int:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        assert self.wait(lambda: info.mid in self.pubacks)
        return self.pubacks[info.mid]

    def subscribe(self, topic: str) -> int:
        before = len(self.subacks)
        self.client.subscribe(topic, qos=1)
        assert self.wait(lambda: len(self.subacks) > before)
        return self.subacks[-1]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Fleet:
    """A broker as the project configures it, and a hub that provisions through it."""

    broker: MosquittoBroker
    hub: HubService
    env: dict[str, str]

    def provision(self, device_id: str, group: str = "lobby", *, rotate: bool = False) -> str:
        _, credentials = self.hub.provision_device(device_id, group, rotate=rotate)
        return credentials.password

    def hub_publishes(self, *messages: tuple[str, bytes]) -> None:
        """Publish ``messages`` in order, each acknowledged, with the hub's credentials
        (it may publish verdicts and announcements)."""
        hub = Device(self.broker.port, self.broker.hub_username, self.broker.hub_password,
                     client_id="hub-publisher")
        try:
            for topic, payload in messages:
                assert hub.publish(topic, payload) < 0x80, topic
        finally:
            hub.close()

    def state(self) -> dict[str, Any]:
        """The plugin's state as it last saved it (it saves after every command)."""
        return dict(json.loads(self.broker.dynsec_file.read_text()))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, zoo_store: ModelStore) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp("fleet")
    broker = MosquittoBroker(folder / "broker", anonymous=False, limits=LIMITS)
    broker.start()
    settings = hub_settings(folder, zoo_store.root, mqtt_port=broker.port,
                            mqtt_username=broker.hub_username,
                            mqtt_password=broker.hub_password,
                            mqtt_client_id="hub-boundary", broker_control="mosquitto-dynsec")
    hub = HubService(settings)
    hub.start()
    assert hub.ingest is not None and hub.ingest.connected.wait(10)
    env = {f"CLOUD_HUB_{name.upper()}": str(value) for name, value in {
        "data_dir": settings.data_dir, "secret_key": settings.secret_key,
        "mqtt_port": broker.port, "mqtt_username": broker.hub_username,
        "mqtt_password": broker.hub_password, "mqtt_client_id": "hub-cli"}.items()}
    yield Fleet(broker, hub, env)
    hub.stop()
    broker.stop()


def _cli(fleet: Fleet, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    saved = {k: os.environ.get(k) for k in fleet.env}
    os.environ.update(fleet.env)
    try:
        code = cloud_hub_main(list(args))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _the_hub_answers_an_event(fleet: Fleet, device_id: str, password: str) -> str:
    """Send one event as ``device_id`` and wait for the hub's answer on its verdicts
    topic (nothing else arrives there); return the event's id."""
    device = Device(fleet.broker.port, device_id, password)
    try:
        event = face_event(device_id, data.astronaut())
        assert device.subscribe(LAYOUT.verdicts(device_id)) < 0x80
        assert device.publish(LAYOUT.events(device_id), encode(event)) < 0x80
        assert device.wait(lambda: bool(device.messages), 60)
        assert {topic for topic, _ in device.messages} == {LAYOUT.verdicts(device_id)}
    finally:
        device.close()
    return event.event_id


def test_a_device_reaches_only_its_own_topics_by_literal_topic(fleet: Fleet) -> None:
    password = fleet.provision("acl-a")
    fleet.provision("acl-b")

    def device() -> Device:
        # Mosquitto closes the connection after a refused publish: one client per check.
        return Device(fleet.broker.port, "acl-a", password)

    publishes = {LAYOUT.events("acl-a"): True, LAYOUT.status("acl-a"): True,
                 LAYOUT.updates("acl-a"): True, LAYOUT.journal("acl-a"): True,
                 LAYOUT.journal("acl-b"): False, LAYOUT.events("acl-b"): False,
                 LAYOUT.status("acl-b"): False, LAYOUT.verdicts("acl-a"): False,
                 LAYOUT.models("lobby"): False}
    for topic, allowed in publishes.items():
        client = device()
        try:
            code = client.publish(topic)
        finally:
            client.close()
        assert (code < 0x80) is allowed, (topic, hex(code))
    subscriptions = {
        LAYOUT.verdicts("acl-a"): True, LAYOUT.models("lobby"): True,
        LAYOUT.verdicts("acl-b"): False, LAYOUT.all_devices("verdicts"): False,
        LAYOUT.models("other-group"): False, "#": False, f"{LAYOUT.root}/#": False,
        LAYOUT.shared("hub", "events"): False, LAYOUT.shared("hub", "updates"): False,
        LAYOUT.shared("mine", "verdicts").replace("+", "acl-a"): False,
        "$CONTROL/dynamic-security/v1/response": False, "$SYS/#": False,
    }
    client = device()
    try:
        for topic, allowed in subscriptions.items():
            code = client.subscribe(topic)
            assert (code < 0x80) is allowed, (topic, hex(code))
            if not allowed:
                assert code == NOT_AUTHORIZED
    finally:
        client.close()


def test_a_device_publishes_nothing_beside_or_below_its_own_five_topics(fleet: Fleet) -> None:
    """Why a device's role names its five topics rather than ``{root}/{device}/#`` (two
    rules instead of six, 0.64 KB of plugin state instead of 1.16): the wildcard would let a stolen
    device password publish, retained, to any number of topics under its own id (each a
    retained message the broker keeps, and saves with persistence, without bound, where
    the five literal topics hold at most five), and forge receipts and verdicts on its
    own verdicts topic (retained, one outlives a rotation). Each of those is refused here,
    retained and QoS 1, one client per try (Mosquitto closes the connection after a
    refused publish); the sentinel sent afterwards on its own events topic is stored by
    the hub, which answers on its verdicts topic."""
    password = fleet.provision("deep-a")
    fleet.provision("deep-b")
    own = f"{LAYOUT.root}/deep-a"
    refused = (LAYOUT.verdicts("deep-a"), own, f"{own}/config", f"{own}/events/extra",
               f"{own}/status/x/y", f"{own}/verdicts/x", LAYOUT.events("deep-b"),
               LAYOUT.models("lobby"), f"{LAYOUT.root}/groups/lobby/models/x")
    for topic in refused:
        client = Device(fleet.broker.port, "deep-a", password)
        try:
            assert client.publish(topic, retain=True) == NOT_AUTHORIZED, topic
        finally:
            client.close()
    event_id = _the_hub_answers_an_event(fleet, "deep-a", password)
    assert fleet.hub.store.get_event(event_id=event_id)["device_id"] == "deep-a"


def test_shared_subscription_and_takeover_are_refused_and_the_hub_stores_every_event(
    fleet: Fleet,
) -> None:
    """Findings 1 and 2: device A, with its own credentials, tries the hub's shared
    subscriptions, ``#``, and B's and the hub's client ids; B's 20 events all reach the
    hub and all 20 verdicts reach B, whose session was never taken over."""
    password_a = fleet.provision("share-a")
    password_b = fleet.provision("share-b")
    b = Device(fleet.broker.port, "share-b", password_b, persistent=True)
    a = Device(fleet.broker.port, "share-a", password_a, persistent=True)
    attackers: list[Device] = []
    try:
        assert not b.refused and not a.refused
        assert b.subscribe(LAYOUT.verdicts("share-b")) < 0x80
        for topic in (LAYOUT.shared(fleet.hub.settings.share_group, "events"),
                      LAYOUT.shared(fleet.hub.settings.share_group, "updates"), "#"):
            assert a.subscribe(topic) == NOT_AUTHORIZED, topic
        for stolen in ("share-b", "hub-boundary"):
            attackers.append(Device(fleet.broker.port, "share-a", password_a,
                                    client_id=stolen))
            assert attackers[-1].refused, stolen
        events = [face_event("share-b", data.astronaut()) for _ in range(20)]
        for event in events:
            assert b.publish(LAYOUT.events("share-b"), encode(event)) < 0x80
        assert b.wait(lambda: len(b.messages) >= 20, 120), len(b.messages)
        verdicts = {decode(payload, VerdictMessage).event_id for _, payload in b.messages}
        assert verdicts == {e.event_id for e in events}
        stored = fleet.hub.store.list_events(device_id="share-b", limit=100).items
        assert len(stored) == 20
        assert b.disconnects == [] and fleet.hub.ingest is not None
        assert fleet.hub.ingest.connected.is_set()
    finally:
        for client in (a, b, *attackers):
            client.close()


def test_a_verdict_queued_for_an_offline_device_survives_a_takeover_attempt(
    fleet: Fleet,
) -> None:
    """Finding 2: A connecting under B's client id (a clean start) used to discard B's
    persistent session and the verdict queued in it."""
    password_a = fleet.provision("queue-a")
    password_b = fleet.provision("queue-b")
    b = Device(fleet.broker.port, "queue-b", password_b, persistent=True)
    assert b.subscribe(LAYOUT.verdicts("queue-b")) < 0x80
    b.close()  # offline; the broker keeps its session and queues for it
    hub = Device(fleet.broker.port, "hub", fleet.broker.hub_password, client_id="hub-queue")
    try:
        assert hub.publish(LAYOUT.verdicts("queue-b"), b"queued verdict") < 0x80
    finally:
        hub.close()
    thief = Device(fleet.broker.port, "queue-a", password_a, client_id="queue-b")
    thief.close()
    assert thief.refused
    back = Device(fleet.broker.port, "queue-b", password_b, persistent=True)
    try:
        assert back.wait(lambda: bool(back.messages))
        assert back.messages == [(LAYOUT.verdicts("queue-b"), b"queued verdict")]
    finally:
        back.close()


def test_a_packet_over_the_limit_is_refused_by_the_broker(fleet: Fleet) -> None:
    """Finding 4: the broker disconnects the sender of a packet larger than its limit;
    the hub never receives a byte of it (it would count it as oversized)."""
    password = fleet.provision("big-a")
    sender = Device(fleet.broker.port, "big-a", password)
    try:
        sender.client.publish(LAYOUT.events("big-a"),
                              b"x" * (LIMITS.max_packet_size_bytes + 1), qos=1)
        assert sender.wait(lambda: bool(sender.disconnects))
        # 0x95 (packet too large), or, when the broker's close with the payload still
        # unread resets the connection before the client reads that DISCONNECT (a race a
        # loaded machine wins), a lost connection; either way the broker says why.
        assert sender.disconnects[0] in (0x95, 0x80), sender.disconnects
        assert wait_until(lambda: "Client big-a disconnected due to oversize packet."
                          in fleet.broker.log_file.read_text(), timeout_s=10)
    finally:
        sender.close()
    # The sentinel, sent afterwards on the same topic, arrives; the big one never did.
    event_id = _the_hub_answers_an_event(fleet, "big-a", password)
    assert fleet.hub.store.get_event(event_id=event_id)["outcome"] is not None
    oversized = fleet.hub.metrics.registry.get_sample_value(
        "hub_messages_dropped_total", {"reason": "oversized"})
    assert not oversized
    assert "oversize packet" in fleet.broker.log_file.read_text()


def test_the_hubs_names_are_refused_and_a_new_password_needs_rotate(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 8: ``devices add hub`` (CLI and API) is refused and the hub keeps its
    password; adding an existing device is refused unless asked to rotate, and a
    rotation disconnects the device and retires its old password at once."""
    for reserved in ("hub", "hub-boundary", "hub-other"):
        code, output = _cli(fleet, "devices", "add", reserved, capsys=capsys)
        assert code == 1 and "reserved" in output, output
    token = new_token()
    fleet.hub.store.add_token(name=f"admin-{token[:6]}", role="admin",
                              token_hash=hash_token(fleet.hub.settings.secret_key, token))
    with TestClient(create_app(fleet.hub, manage=False)) as api:
        headers = {"Authorization": f"Bearer {token}"}
        refused = api.post("/v1/devices", json={"id": "hub"}, headers=headers)
        assert refused.status_code == 422, refused.text
        first = api.post("/v1/devices", json={"id": "rot-a", "group": "lobby"},
                         headers=headers)
        assert first.status_code == 201, first.text
        again = api.post("/v1/devices", json={"id": "rot-a"}, headers=headers)
        assert again.status_code == 409, again.text
    hub_itself = Device(fleet.broker.port, "hub", fleet.broker.hub_password,
                        client_id="hub-probe")
    hub_itself.close()
    assert not hub_itself.refused  # the hub's password was not replaced

    old_password = first.json()["mqtt"]["password"]
    code, output = _cli(fleet, "devices", "add", "rot-a", "--group", "lobby", capsys=capsys)
    assert code == 1 and "--rotate" in output, output
    running = Device(fleet.broker.port, "rot-a", old_password)
    try:
        assert not running.refused  # the refused re-add left the device working
        code, output = _cli(fleet, "devices", "add", "rot-a", "--group", "lobby", "--rotate",
                            "--json", capsys=capsys)
        assert code == 0, output
        assert running.wait(lambda: bool(running.disconnects))
    finally:
        running.close()
    new_password = decode_password(output)
    stale = Device(fleet.broker.port, "rot-a", old_password)
    stale.close()
    assert stale.refused
    fresh = Device(fleet.broker.port, "rot-a", new_password)
    fresh.close()
    assert not fresh.refused


def decode_password(output: str) -> str:
    """The password from ``devices add --json``'s one line of JSON."""
    import json

    line = next(line for line in output.splitlines() if line.startswith("{"))
    return str(json.loads(line)["password"])


def test_a_revoked_device_is_disconnected_and_cannot_reconnect(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    password = fleet.provision("gone-a")
    connected = Device(fleet.broker.port, "gone-a", password)
    try:
        assert not connected.refused
        code, output = _cli(fleet, "devices", "revoke", "gone-a", capsys=capsys)
        assert code == 0, output
        assert connected.wait(lambda: bool(connected.disconnects))
    finally:
        connected.close()
    again = Device(fleet.broker.port, "gone-a", password)
    again.close()
    assert again.refused
    code, output = _cli(fleet, "devices", "add", "gone-a", capsys=capsys)
    assert code == 1 and "--rotate" in output


def test_the_broker_config_sets_the_plugin_and_limits(fleet: Fleet) -> None:
    config = fleet.broker.config.read_text()
    assert "mosquitto_dynamic_security.so" in config
    assert "allow_anonymous false" in config
    for line in LIMITS.lines():
        assert line in config
    assert Path(fleet.broker.dynsec_file).stat().st_mode & 0o077 == 0


def test_the_hub_keeps_a_devices_own_journal_and_nothing_it_claims_of_another(
    fleet: Fleet,
) -> None:
    """Issue 10: the hub's role takes the fleet's journals through its shared
    subscription; a device publishes only its own journal, and what it publishes there
    under another's name, about another's event, or incoherent, is counted and dropped."""
    password = fleet.provision("jr-a")
    fleet.provision("jr-b")
    others = EventIdFactory()()
    fleet.hub.store.add_event(
        id=others, device_id="jr-b", source="door", reason="uncertain", priority=5,
        captured_at=1.0, received_at=1.0, edge_model="m", edge_version="1",
        edge_detections="[]")
    mine = EventIdFactory()()

    def step(**fields: object) -> bytes:
        values: dict[str, object] = {
            "device_id": "jr-a", "step": "update", "source": "door", "track_id": 1,
            "at": 5.0, "first_frame": 1, "last_frame": 2, "label": "face",
            "action": "local", "reason": "awaiting-verdict", "positive": False,
            "event_id": mine, "escalations": 1}
        values.update(fields)
        return encode(TrackEventMessage.model_validate(values))

    def dropped(reason: str) -> float:
        return fleet.hub.metrics.registry.get_sample_value(
            "hub_messages_dropped_total", {"reason": reason}) or 0.0

    before = {r: dropped(r) for r in ("spoofed-device", "replayed-event-id", "malformed")}
    thief = Device(fleet.broker.port, "jr-a", password)
    try:  # the broker refuses it outright (and closes the connection)
        assert thief.publish(LAYOUT.journal("jr-b"), step(device_id="jr-b")) == NOT_AUTHORIZED
    finally:
        thief.close()
    device = Device(fleet.broker.port, "jr-a", password)
    try:
        for payload in (step(device_id="jr-b"), step(event_id=others),
                        step(first_frame=3)):
            assert device.publish(LAYOUT.journal("jr-a"), payload) < 0x80
        assert device.publish(LAYOUT.journal("jr-a"), step()) < 0x80
    finally:
        device.close()
    assert wait_until(lambda: all(dropped(r) == before[r] + 1 for r in before)
                      and bool(fleet.hub.store.journal_of_event(
                          event_id=mine, device_id="jr-a", limit=10)[0]), timeout_s=60)
    kept, _ = fleet.hub.store.journal_of_event(event_id=mine, device_id="jr-a", limit=10)
    assert [(r.track.device_id, r.last_frame) for r in kept] == [("jr-a", 2)]
    assert fleet.hub.store.journal_of_event(event_id=others, device_id="jr-b",
                                            limit=10) == ([], False)


def test_a_broker_set_up_before_the_journal_gets_the_hubs_rule_for_it(
    tmp_path: Path, zoo_store: ModelStore,
) -> None:
    """A broker initialised by an older hub has no journal rule in the hub's role: the
    hub adds the rules it lacks at start, so the journal is kept without a manual step."""
    broker = MosquittoBroker(tmp_path / "broker", anonymous=False, limits=LIMITS)
    document = json.loads(broker.dynsec_file.read_text())
    for role in document["roles"]:
        role["acls"] = [a for a in role["acls"] if "journal" not in a["topic"]]
    broker.dynsec_file.write_text(json.dumps(document))
    broker.start()
    hub = HubService(hub_settings(tmp_path, zoo_store.root, mqtt_port=broker.port,
                                  mqtt_username=broker.hub_username,
                                  mqtt_password=broker.hub_password,
                                  mqtt_client_id="hub-upgraded",
                                  broker_control="mosquitto-dynsec", batch_autotune=False))
    try:
        hub.start()
        assert hub.ingest is not None and hub.ingest.connected.wait(10)
        _, credentials = hub.provision_device("old-a", "lobby")
        event_id = EventIdFactory()()
        step = TrackEventMessage(
            device_id="old-a", step="update", source="door", track_id=1, at=5.0,
            first_frame=1, last_frame=1, label="face", action="escalate",
            reason="uncertain", positive=False, event_id=event_id, escalations=1)
        device = Device(broker.port, "old-a", credentials.password)
        try:
            assert device.publish(LAYOUT.journal("old-a"), encode(step)) < 0x80
        finally:
            device.close()
        assert wait_until(lambda: bool(hub.store.journal_of_event(
            event_id=event_id, device_id="old-a", limit=10)[0]), timeout_s=60)
    finally:
        hub.stop()
        broker.stop()


def test_no_device_reaches_another_devices_verdicts_through_its_group_role(
    fleet: Fleet,
) -> None:
    """Receiving verdicts is in the group's role, shared by the group: A, in B's group,
    tries every way to B's verdicts (B's client id, an empty one, wildcards, a shared
    subscription of its own, the hub's); the hub then publishes B's verdict and, after
    it, A's own: A gets its own and nothing of B's."""
    password_a = fleet.provision("vx-a", "shared-floor")
    password_b = fleet.provision("vx-b", "shared-floor")
    for client_id in ("vx-b", "hub-vx"):
        thief = Device(fleet.broker.port, "vx-a", password_a, client_id=client_id)
        thief.close()
        assert thief.refused, client_id
    empty = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv5)
    empty.username_pw_set("vx-a", password_a)
    refused = threading.Event()
    empty.on_connect = lambda c, u, f, reason, p: refused.set() if reason.is_failure else None
    empty.connect("127.0.0.1", fleet.broker.port)
    empty.loop_start()
    try:  # a client id the broker assigns is not the pinned one
        assert refused.wait(15)
    finally:
        empty.loop_stop()
    a = Device(fleet.broker.port, "vx-a", password_a)
    try:
        for topic in (LAYOUT.verdicts("vx-b"), LAYOUT.all_devices("verdicts"), "#",
                      f"{LAYOUT.root}/#", f"{LAYOUT.root}/+/#", "+/v1/vx-b/verdicts",
                      f"$share/vx/{LAYOUT.verdicts('vx-b')}",
                      f"$share/vx/{LAYOUT.all_devices('verdicts')}",
                      f"$share/vx/{LAYOUT.verdicts('vx-a')}",
                      LAYOUT.shared(fleet.hub.settings.share_group, "events")):
            assert a.subscribe(topic) == NOT_AUTHORIZED, topic
        assert a.subscribe(LAYOUT.verdicts("vx-a")) < 0x80
        assert a.subscribe(LAYOUT.models("shared-floor")) < 0x80
        fleet.hub_publishes((LAYOUT.verdicts("vx-b"), b"for b"),
                            (LAYOUT.verdicts("vx-a"), b"for a"))
        assert a.wait(lambda: (LAYOUT.verdicts("vx-a"), b"for a") in a.messages)
        assert a.messages == [(LAYOUT.verdicts("vx-a"), b"for a")]
    finally:
        a.close()
    b = Device(fleet.broker.port, "vx-b", password_b)
    b.close()
    assert not b.refused  # none of A's tries took B's place


def test_a_device_moved_to_another_group_stops_receiving_the_old_groups_announcements(
    fleet: Fleet,
) -> None:
    """A persistent session keeps the old group's subscription across a rotation into
    another group; the old group's role is no longer the device's, so nothing published
    there reaches it, while its new group's announcements do."""
    password = fleet.provision("mv-a", "old-floor")
    first = Device(fleet.broker.port, "mv-a", password, persistent=True)
    try:
        assert first.subscribe(LAYOUT.models("old-floor")) < 0x80
    finally:
        first.close()
    password = fleet.provision("mv-a", "new-floor", rotate=True)
    moved = Device(fleet.broker.port, "mv-a", password, persistent=True)
    try:
        assert moved.session_present  # the old subscription is still in the session
        assert moved.subscribe(LAYOUT.models("old-floor")) == NOT_AUTHORIZED
        assert moved.subscribe(LAYOUT.models("new-floor")) < 0x80
        fleet.hub_publishes((LAYOUT.models("old-floor"), b"old"),
                            (LAYOUT.models("new-floor"), b"new"))
        assert moved.wait(lambda: bool(moved.messages))
        assert moved.messages == [(LAYOUT.models("new-floor"), b"new")]
    finally:
        moved.close()


def test_a_device_of_the_old_layout_keeps_working_and_rotation_gives_it_the_new_one(
    fleet: Fleet,
) -> None:
    """Devices are not migrated in place: one provisioned with its own nine-rule role
    works on as it was, confined as before, and ``--rotate`` replaces its role with the
    present layout (its own role of six rules and its group's)."""
    BrokerControl(fleet.hub.broker).run(old_layout_commands("old-b", "old-group", "pw-b"))
    fleet.hub.store.add_device(device_id="old-b", group="old-group")
    fleet.provision("new-c", "old-group")  # the group's role is made beside the old one
    thief = Device(fleet.broker.port, "old-b", "pw-b")
    try:  # a refused publish closes the connection: first, on a client of its own
        assert not thief.refused
        assert thief.publish(LAYOUT.events("new-c")) == NOT_AUTHORIZED
    finally:
        thief.close()
    device = Device(fleet.broker.port, "old-b", "pw-b")
    try:
        assert device.publish(LAYOUT.events("old-b")) < 0x80
        for topic in (LAYOUT.verdicts("old-b"), LAYOUT.models("old-group")):
            assert device.subscribe(topic) < 0x80
        for topic in (LAYOUT.verdicts("new-c"), LAYOUT.all_devices("verdicts"),
                      LAYOUT.models("lobby")):
            assert device.subscribe(topic) == NOT_AUTHORIZED
    finally:
        device.close()
    password = fleet.provision("old-b", "old-group", rotate=True)
    state = fleet.state()
    client = next(c for c in state["clients"] if c["username"] == "old-b")
    assert [r["rolename"] for r in client["roles"]] == ["device-old-b", "group-old-group"]
    assert "textname" not in client
    role = next(r for r in state["roles"] if r["rolename"] == "device-old-b")
    assert len(role["acls"]) == 6
    rotated = Device(fleet.broker.port, "old-b", password)
    try:
        assert rotated.subscribe(LAYOUT.models("old-group")) < 0x80
        assert rotated.subscribe(LAYOUT.verdicts("new-c")) == NOT_AUTHORIZED
        assert rotated.publish(LAYOUT.events("old-b")) < 0x80
    finally:
        rotated.close()
