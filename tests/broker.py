"""Test helpers for MQTT: the private broker, and a durable subscriber standing in for the hub."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_hub.mosquitto import MosquittoBroker, free_port

__all__ = ["Collector", "MosquittoBroker", "free_port"]


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
        """Wait until ``predicate(messages)`` holds.

        The predicate runs on a copy, outside the lock: run under it, an O(n) predicate
        re-evaluated on every arrival would hold up paho's thread and, with thousands of
        redelivered messages, starve the very delivery it waits for.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            with self.lock:
                snapshot = list(self.messages)
            if predicate(snapshot):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self.arrived:
                if len(self.messages) == len(snapshot):
                    self.arrived.wait(min(remaining, 0.5))
            time.sleep(0.02)  # check a burst once, not once per message

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()
