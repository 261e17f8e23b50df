"""The hub's broker connection: one frozen settings object, and every client built from it.

:class:`BrokerSettings` is made once from :class:`~cloud_hub.settings.HubSettings`; the
ingest session (which also carries announcements), :func:`publish_once` and the broker
control of provisioning all build their paho clients with :meth:`BrokerSettings.client`,
so credentials and TLS (server verification, and a client certificate for mutual TLS)
are the same on every connection the hub opens.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.errors import HubError, SettingsError
from cloud_hub.settings import HubSettings
from sync import BrokerTlsError, TlsFiles, check_broker_tls, client_context


def default_client_id() -> str:
    """``hub-<hostname>``: stable across restarts, distinct per host."""
    return f"hub-{socket.gethostname()}"


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Where the hub's broker is and how the hub proves itself to it.

    Attributes:
        host: Broker host name (checked against its certificate under TLS).
        port: Broker port.
        username: The hub's username (``None``: anonymous, a test broker only).
        password: Its password.
        client_id: The ingest session's client id; other connections derive theirs.
        tls: TLS files, or ``None`` for plain TCP.
    """

    host: str
    port: int
    username: str | None
    password: str | None
    client_id: str
    tls: TlsFiles | None = None

    @classmethod
    def from_settings(cls, settings: HubSettings) -> BrokerSettings:
        """The broker settings of ``settings`` (``CLOUD_HUB_MQTT_*``)."""
        tls = TlsFiles(settings.mqtt_ca_file, settings.mqtt_cert_file,
                       settings.mqtt_key_file) if settings.mqtt_tls else None
        return cls(host=settings.mqtt_host, port=settings.mqtt_port,
                   username=settings.mqtt_username, password=settings.mqtt_password,
                   client_id=settings.mqtt_client_id or default_client_id(), tls=tls)

    def describe(self) -> str:
        """Which broker and user, for messages: ``mqtts://host:port as user 'hub'``."""
        scheme = "mqtts" if self.tls is not None else "mqtt"
        user = f"as user {self.username!r}" if self.username else "anonymously"
        return f"{scheme}://{self.host}:{self.port} {user}"

    def context(self) -> ssl.SSLContext | None:
        """The TLS client context, or ``None`` without TLS.

        Raises:
            SettingsError: A TLS file is missing or unusable.
        """
        if self.tls is None:
            return None
        try:
            return client_context(self.tls)
        except BrokerTlsError as exc:
            raise SettingsError(f"CLOUD_HUB_MQTT_CA_FILE/CERT_FILE/KEY_FILE: {exc}") from exc

    def client(self, client_id: str, *, manual_ack: bool = False) -> mqtt.Client:
        """A paho MQTT 5 client with the hub's credentials and TLS (not connected)."""
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5, manual_ack=manual_ack)
        if self.username:
            client.username_pw_set(self.username, self.password)
        context = self.context()
        if context is not None:
            client.tls_set_context(context)
        return client

    def check(self) -> None:
        """Fail now if the broker's TLS cannot be trusted (a wrong CA or host name).

        A broker that is not reachable yet passes: the clients retry.

        Raises:
            SettingsError: The broker answered but TLS failed; the message says why.
        """
        context = self.context()
        if context is None:
            return
        try:
            check_broker_tls(self.host, self.port, context)
        except BrokerTlsError as exc:
            raise SettingsError(f"CLOUD_HUB_MQTT_TLS: {exc}") from exc


def publish_once(broker: BrokerSettings, topic: str, payload: bytes, *, retain: bool) -> None:
    """Connect, publish one QoS 1 message, wait for its PUBACK, disconnect.

    Raises:
        HubError: The broker could not be reached or refused the message.
    """
    client = broker.client(f"{broker.client_id}-publish")
    try:
        client.connect(broker.host, broker.port)
        client.loop_start()
        info = client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=10)
        if not info.is_published():
            raise HubError(f"the broker did not acknowledge {topic}")
    except ssl.SSLError as exc:
        raise SettingsError(f"CLOUD_HUB_MQTT_TLS: TLS with the broker at {broker.host}:"
                            f"{broker.port} failed: {exc}") from exc
    except (OSError, RuntimeError, ValueError) as exc:
        raise HubError(f"cannot publish to {broker.host}:{broker.port}: {exc}") from exc
    finally:
        client.disconnect()
        client.loop_stop()
