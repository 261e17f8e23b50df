"""A private Mosquitto for tests that stop, restart or configure their broker."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MosquittoBroker:
    """One ``mosquitto`` process on a free port, with persistence, that can be restarted.

    Args:
        folder: Where its config, persistence file and log go.
        extra_config: Lines appended to the generated config (ACLs, password file, ...).
    """

    def __init__(self, folder: Path, extra_config: str = "", *,
                 anonymous: bool = True) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise RuntimeError("mosquitto is not installed; see the README's set-up")
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.config = folder / "mosquitto.conf"
        folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            # Started as root, mosquitto would switch to its own user and could not
            # write its persistence file into the test folder.
            "user root\n"
            f"allow_anonymous {'true' if anonymous else 'false'}\n"
            "persistence true\n"
            f"persistence_location {folder}/\n"
            "autosave_interval 0\n"
            "max_queued_messages 0\n"
            "max_inflight_messages 0\n"
            f"log_dest file {folder}/mosquitto.log\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            + extra_config
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        self.process = subprocess.Popen([self.binary, "-c", str(self.config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"mosquitto exited: {error}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM): it saves its persistent state."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)
        self.process = None

    def restart(self, down_s: float = 0.3) -> None:
        """Stop, stay down for ``down_s``, start again."""
        self.stop()
        time.sleep(down_s)
        self.start()


class Collector:
    """A durable QoS 1 subscriber standing in for the hub: records every message."""

    def __init__(self, port: int, topic: str, *, client_id: str | None = None,
                 on_message: Callable[[str, bytes], None] | None = None,
                 username: str | None = None, password: str | None = None) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        self._on_message = on_message
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"collector-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        if username:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self.subscribed = threading.Event()
        self.topic = topic

        def on_connect(client: mqtt.Client, *_: object) -> None:
            client.subscribe(topic, qos=1)

        def on_subscribe(*_: object) -> None:
            self.subscribed.set()

        def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
            with self.arrived:
                self.messages.append((msg.topic, bytes(msg.payload)))
                self.arrived.notify_all()
            if self._on_message is not None:
                self._on_message(msg.topic, bytes(msg.payload))

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect_async("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("collector could not subscribe")

    def wait_for(self, predicate: Callable[[list[tuple[str, bytes]]], bool],
                 timeout_s: float) -> bool:
        """Wait until ``predicate(messages)`` holds."""
        with self.arrived:
            return self.arrived.wait_for(lambda: predicate(self.messages), timeout_s)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()
