"""``cloud-hub broker init`` as an operator runs it (docs/deployment.md): the real command
in a subprocess, with the hub's settings file from ``install-service`` and a TLS CA and
certificates made by the test, given as relative paths from the folder that holds them,
as the guide shows. Then a real Mosquitto runs from exactly the config it wrote (from
another working directory, as systemd starts it) and the test checks what the guide
promises: the hub's user from its settings file gets in over TLS and may make the
subscriptions the hub makes; anonymous clients, a wrong password and plain MQTT are
refused; the broker listens on the one TLS port only; the limits are in effect; and a
second ``broker init`` refuses, leaving the users in place (issue 12: the hub's broker
user was made with ``mosquitto_passwd`` by hand)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cloud_hub.mosquitto import PACKET_HEADROOM_BYTES, free_port
from cloud_hub.system_service import first_settings
from sync import TlsFiles, TopicLayout, client_context
from tests.broker import make_pki

pytestmark = pytest.mark.integration

LAYOUT = TopicLayout()
MAX_MESSAGE_BYTES = 64 * 1024  # CLOUD_HUB_MAX_MESSAGE_BYTES in the hub's settings
HUB_SUBSCRIPTIONS = (f"$share/hub/{LAYOUT.root}/+/events", f"$share/hub/{LAYOUT.root}/+/updates",
                     f"$share/hub/{LAYOUT.root}/+/journal", f"{LAYOUT.root}/+/status",
                     f"{LAYOUT.root}/+/telemetry")
HANG_GUARD_S = 15


@dataclass(frozen=True)
class Deployment:
    folder: Path          # the broker's folder, as broker init wrote it
    settings_file: Path   # the hub's hub.env
    ca_file: Path
    port: int
    password: str         # the hub's, from hub.env
    process: subprocess.Popen[bytes]


def _cloud_hub(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).parent / "cloud-hub"
    return subprocess.run([str(binary), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def _setting(settings_file: Path, name: str) -> str:
    for line in settings_file.read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1]
    raise AssertionError(f"{name} is not in {settings_file}")


def _listening_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on (its socket inodes matched in /proc/net)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = str(fd.readlink())
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    # Not pytest's tmp_path: its parents are root's alone, and Mosquitto started as root
    # runs as the mosquitto user, as in production.
    root = Path(tempfile.mkdtemp(prefix="broker-init-"))
    root.chmod(0o755)
    process: subprocess.Popen[bytes] | None = None
    try:
        pki = make_pki(root / "pki")
        port = free_port()
        settings_file = root / "hub.env"
        settings_file.write_text(
            first_settings(root=root) + "CLOUD_HUB_MQTT_HOST=127.0.0.1\n"
            f"CLOUD_HUB_MQTT_PORT={port}\nCLOUD_HUB_MQTT_TLS=true\n"
            f"CLOUD_HUB_MQTT_CA_FILE={pki.ca_file}\n"
            f"CLOUD_HUB_MAX_MESSAGE_BYTES={MAX_MESSAGE_BYTES}\n")
        folder = root / "fleet"
        done = _cloud_hub("--settings", str(settings_file), "broker", "init", str(folder),
                          "--port", str(port), "--tls-ca", "ca.pem", "--tls-cert",
                          "server.pem", "--tls-key", "server.key",
                          "--persistence", str(root / "state"), cwd=pki.ca_file.parent)
        assert done.returncode == 0, done.stderr
        (root / "state").mkdir()
        if os.geteuid() == 0:  # the guide's chown: the broker's user owns its files
            for path in (folder, folder / "dynamic-security.json", root / "state",
                         pki.server_key):
                shutil.chown(path, "mosquitto", "mosquitto")
        process = subprocess.Popen(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c",
             str(folder / "mosquitto.conf")], cwd="/", stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        deadline = time.monotonic() + HANG_GUARD_S
        while port not in _listening_ports(process.pid):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                error = process.stderr.read().decode() if process.stderr else ""
                raise AssertionError(f"mosquitto did not start from {folder}: {error}")
            time.sleep(0.05)
        yield Deployment(folder, settings_file, pki.ca_file, port,
                         _setting(settings_file, "CLOUD_HUB_MQTT_PASSWORD"), process)
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(HANG_GUARD_S)
        shutil.rmtree(root, ignore_errors=True)


class Session:
    """One MQTT client, connected synchronously; what the broker answered."""

    def __init__(self, deployment: Deployment, *, username: str | None, password: str | None,
                 protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5) -> None:
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.reason: ReasonCode | None = None
        self.connack: Properties | None = None
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.acked = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol,
                                  client_id=f"check-{time.monotonic_ns()}")
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.tls_set_context(client_context(TlsFiles(deployment.ca_file)))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.connect("127.0.0.1", deployment.port)
        self.client.loop_start()
        assert self.connected.wait(HANG_GUARD_S) or self.disconnected.is_set()
        self.connected.wait(1)  # the CONNACK's callback may follow a refusal's disconnect

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object,
                    reason: ReasonCode, properties: Properties | None) -> None:
        self.reason, self.connack = reason, properties
        self.connected.set()

    def _on_disconnect(self, *_: object) -> None:
        self.disconnected.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int,
                      reasons: list[ReasonCode], properties: object) -> None:
        with self.acked:
            self.subacks[mid] = reasons
            self.acked.notify_all()

    def subscribe(self, topic: str) -> ReasonCode:
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        with self.acked:
            assert self.acked.wait_for(lambda: mid in self.subacks, HANG_GUARD_S)
            return self.subacks[mid][0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_the_hub_user_from_its_settings_connects_over_tls_and_subscribes(
    deployment: Deployment,
) -> None:
    hub = Session(deployment, username="hub", password=deployment.password)
    try:
        assert hub.reason is not None and hub.reason.value == 0, hub.reason
        for topic in HUB_SUBSCRIPTIONS:
            granted = hub.subscribe(topic)
            assert granted.value == 1, f"{topic}: {granted}"
        # The written rules are in force, not an open broker: the hub may not read verdicts.
        assert hub.subscribe(f"{LAYOUT.root}/+/verdicts").value == 0x87
    finally:
        hub.close()


@pytest.mark.parametrize(("username", "password"), [(None, None), ("hub", "not-the-password"),
                                               ("nobody", "x")])
def test_anonymous_and_wrong_credentials_are_refused(
    deployment: Deployment, username: str | None, password: str | None,
) -> None:
    session = Session(deployment, username=username, password=password)
    try:
        assert session.reason is not None and session.reason.is_failure, session.reason
        assert session.disconnected.wait(HANG_GUARD_S)
    finally:
        session.close()


def test_only_the_tls_port_listens_and_plain_mqtt_is_refused(deployment: Deployment) -> None:
    assert _listening_ports(deployment.process.pid) == {deployment.port}
    config = (deployment.folder / "mosquitto.conf").read_text()
    assert [line for line in config.splitlines() if line.startswith("listener")] == [
        f"listener {deployment.port}"]
    # A plain MQTT 3.1.1 CONNECT gets no CONNACK (0x20) from the TLS listener.
    connect = bytes([0x10, 14, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 2]) + b"pl"
    with socket.create_connection(("127.0.0.1", deployment.port), timeout=HANG_GUARD_S) as sock:
        sock.sendall(connect)
        try:
            answer = sock.recv(4)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    assert not answer.startswith(b"\x20"), answer


def test_the_limits_are_in_effect(deployment: Deployment) -> None:
    hub = Session(deployment, username="hub", password=deployment.password)
    try:
        assert hub.connack is not None
        announced = vars(hub.connack)
        assert announced["MaximumPacketSize"] == MAX_MESSAGE_BYTES + PACKET_HEADROOM_BYTES
        assert announced["ReceiveMaximum"] == 1000  # max_inflight_messages
    finally:
        hub.close()
    # A client that does not honour the announced size (MQTT 3.1.1 has no such property)
    # is cut off by the broker: what fits is acknowledged, what does not, never is.
    sender = Session(deployment, username="hub", password=deployment.password,
                     protocol=MQTTProtocolVersion.MQTTv311)
    try:
        topic = LAYOUT.verdicts("cam-01")
        sender.client.publish(topic, b"x" * MAX_MESSAGE_BYTES, qos=1).wait_for_publish(
            HANG_GUARD_S)
        assert not sender.disconnected.is_set()
        too_big = sender.client.publish(
            topic, b"x" * (MAX_MESSAGE_BYTES + PACKET_HEADROOM_BYTES), qos=1)
        assert sender.disconnected.wait(HANG_GUARD_S)
        assert not too_big.is_published()
    finally:
        sender.close()


def test_a_second_init_refuses_and_keeps_the_users(deployment: Deployment) -> None:
    state = deployment.folder / "dynamic-security.json"
    config = deployment.folder / "mosquitto.conf"
    before = state.read_bytes(), config.read_bytes()
    again = _cloud_hub("--settings", str(deployment.settings_file), "broker", "init",
                       str(deployment.folder), "--port", str(deployment.port),
                       cwd=deployment.folder)
    assert again.returncode != 0
    assert "dynamic-security.json exists" in again.stderr, again.stderr
    assert (state.read_bytes(), config.read_bytes()) == before
    hub = Session(deployment, username="hub", password=deployment.password)
    try:
        assert hub.reason is not None and hub.reason.value == 0, hub.reason
    finally:
        hub.close()
