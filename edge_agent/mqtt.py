"""Every MQTT client of the agent, built from one frozen :class:`MqttConfig`.

The uplink and the sensor sources connect with the same code, so credentials and TLS
(the broker's certificate and host name verified against ``ca_file``, and a client
certificate for mutual TLS) are applied the same way on every connection. A broker whose
TLS does not verify is refused at start (:func:`check_broker`), loudly, rather than
retried in silence.
"""

from __future__ import annotations

import logging
import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config import MqttConfig
from edge_agent.errors import ConfigError
from sync import BrokerTlsError, TlsFiles, check_broker_tls, client_context

log = logging.getLogger(__name__)


def _context(config: MqttConfig) -> ssl.SSLContext:
    try:
        return client_context(TlsFiles(config.ca_file, config.cert_file, config.key_file))
    except BrokerTlsError as exc:
        raise ConfigError(f"mqtt: {exc}", key="mqtt.ca_file") from exc


def new_client(config: MqttConfig, client_id: str) -> mqtt.Client:
    """A paho MQTT 5 client with ``config``'s credentials and TLS (not connected).

    Raises:
        ConfigError: A TLS file is missing or unusable.
    """
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    if config.username:
        client.username_pw_set(config.username, config.password)
    if config.tls:
        client.tls_set_context(_context(config))
    return client


def check_broker(config: MqttConfig) -> None:
    """Fail now if the broker's TLS cannot be trusted; pass when it is not reachable yet
    (the client retries) or TLS is off.

    Raises:
        ConfigError: The broker answered but its certificate does not verify (a wrong CA
            or host name), it refused the client certificate, or it speaks no TLS.
    """
    if not config.tls:
        return
    context = _context(config)
    try:
        reachable = check_broker_tls(config.host, config.port, context)
    except BrokerTlsError as exc:
        log.error("mqtt: %s", exc)
        raise ConfigError(f"mqtt: {exc}", key="mqtt.ca_file") from exc
    if not reachable:
        log.warning("mqtt: the broker at %s:%d is not reachable yet; retrying in the "
                    "background", config.host, config.port)
