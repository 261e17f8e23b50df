"""Test helpers for MQTT: the private broker, and a durable subscriber standing in for the hub."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_hub.mosquitto import MosquittoBroker, free_port
from sync import EventMessage, MessageError, ReceiptMessage, decode, encode

__all__ = ["Collector", "MosquittoBroker", "Pki", "free_port", "make_pki"]


def _send_receipt(client: mqtt.Client, topic: str, payload: bytes) -> None:
    """Confirm an escalation as the hub does once it has stored it."""
    try:
        event = decode(payload, EventMessage)  # framed or JSON, as the hub reads it
    except MessageError:
        return
    device, event_id = event.device_id, event.event_id
    prefix = topic.rsplit("/", 2)[0]
    receipt = ReceiptMessage(device_id=device, event_ids=(event_id,), at=time.time())
    client.publish(f"{prefix}/{device}/verdicts", encode(receipt), qos=1)


class Collector:
    """A durable QoS 1 subscriber standing in for the hub: records every message.

    Like the hub, it confirms each escalation it receives with a receipt on the device's
    verdicts topic (``receipts=False`` turns that off, to play a hub that lost them).
    """

    def __init__(self, port: int, topic: str, *, client_id: str | None = None,
                 on_message: Callable[[str, bytes], None] | None = None,
                 username: str | None = None, password: str | None = None,
                 tls: ssl.SSLContext | None = None, receipts: bool = True) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        self._on_message = on_message
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"collector-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        if username:
            self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set_context(tls)
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
            if receipts and msg.topic.endswith("/events"):
                _send_receipt(client, msg.topic, bytes(msg.payload))
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


@dataclass(frozen=True, slots=True)
class Pki:
    """A CA made for one test, a broker certificate for 127.0.0.1, a client certificate."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(folder: Path, name: str = "test") -> Pki:
    """Create a CA and certificates in ``folder`` with ``cryptography``.

    The broker's certificate names only the IP address 127.0.0.1 (so ``localhost`` is a
    host name mismatch); the client's is for mutual TLS.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def subject(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(subject(f"{name} CA"))
               .issuer_name(subject(f"{name} CA")).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=True, key_cert_sign=True, crl_sign=True,
                   content_commitment=False, key_encipherment=False, data_encipherment=False,
                   key_agreement=False, encipher_only=False, decipher_only=False),
                   critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                              critical=False)
               .sign(ca_key, hashes.SHA256()))

    def issue(common_name: str, usage: x509.ObjectIdentifier,
              alt_names: list[x509.GeneralName]) -> tuple[x509.Certificate,
                                                          ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(subject(common_name))
                   .issuer_name(ca_cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       ca_key.public_key()), critical=False))
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names),
                                            critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server, server_key = issue("127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH,
                               [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client, client_key = issue(f"{name} client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (folder / "server.pem").write_bytes(server.public_bytes(pem))
    (folder / "client.pem").write_bytes(client.public_bytes(pem))
    return Pki(ca_file=folder / "ca.pem", server_cert=folder / "server.pem",
               server_key=write_key(server_key, folder / "server.key"),
               client_cert=folder / "client.pem",
               client_key=write_key(client_key, folder / "client.key"))
