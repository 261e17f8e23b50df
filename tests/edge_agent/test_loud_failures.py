"""Failures an operator must see: every failed connection attempt is logged at WARNING
(the default level) with its cause and when the next try comes, and counted; an MQTT
action the broker refuses (MQTT 5 PUBACK reason code) is counted as failed and logged.

Issue 12: with the broker port closed, an unresolvable host or a wrong CA the agent used
to print nothing for 20-40 s with its reconnect counter at 0, and 152 of 152 actions the
broker's ACL denied were counted ``edge_actions_total{result="ok"}``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloud_hub.mosquitto import ListenerTls
from cloud_hub.mqtt import BrokerSettings
from cloud_hub.provisioning import BrokerControl, DeviceCredentials, add_device_commands
from edge_agent.actions import ActionEvent, ActionRunner
from edge_agent.config import ActionConfig, MqttConfig, OutboxConfig
from edge_agent.delivery.outbox import Outbox
from edge_agent.delivery.uplink import Uplink
from edge_agent.metrics import AgentMetrics
from edge_agent.sensors import SensorSource
from sync import StatusMessage, TopicLayout
from tests.broker import MosquittoBroker, free_port, make_pki

pytestmark = pytest.mark.integration

LAYOUT = TopicLayout()
UNRESOLVABLE = "broker.invalid"  # RFC 2606: never resolves


def _uplink(folder: Path, device: str = "cam-loud", **mqtt: object) -> Uplink:
    settings = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.2, **mqtt}
    return Uplink(
        device_id=device, config=MqttConfig.model_validate(settings),
        outbox=Outbox(folder / f"{device}.sqlite3", OutboxConfig()), layout=LAYOUT,
        status=lambda state: StatusMessage(device_id=device, state=state, at=time.time()),
    )


def _wait(predicate: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _resolver_error() -> str:
    try:
        socket.getaddrinfo(UNRESOLVABLE, 1883)
    except OSError as exc:
        return str(exc)
    pytest.skip(f"{UNRESOLVABLE} resolves on this machine")


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "edge_agent.delivery.uplink"]


@pytest.mark.parametrize("case", ["closed-port", "unresolvable-host"])
def test_each_failed_connection_attempt_is_logged_with_cause_and_retry_and_counted(
    case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    port = free_port()  # nothing listens there
    if case == "closed-port":
        host, cause = "127.0.0.1", "Connection refused"
    else:
        host, cause = UNRESOLVABLE, _resolver_error()
    uplink = _uplink(tmp_path, host=host, port=port)
    uplink.start()
    try:
        assert _wait(lambda: uplink.counters().reconnects >= 3), uplink.counters()
        assert not uplink.connected
    finally:
        uplink.stop()
    failures = [m for m in _warnings(caplog) if f"{host}:{port}" in m]
    assert len(failures) >= 3, _warnings(caplog)
    for message in failures[:3]:
        assert cause in message, message
        assert " s (at " in message and "retry " in message, message


def test_a_broker_whose_certificate_does_not_verify_is_logged_on_every_attempt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker is down at start (so the start-up check passes it by), then comes up
    with a certificate from another CA: each attempt says why it failed."""
    caplog.set_level(logging.WARNING)
    pki = make_pki(tmp_path / "pki")
    broker = MosquittoBroker(tmp_path / "broker", tls=ListenerTls(
        pki.ca_file, pki.server_cert, pki.server_key))
    uplink = _uplink(tmp_path, port=broker.port, tls=True,
                     ca_file=make_pki(tmp_path / "other", "other").ca_file)
    uplink.start()
    try:
        broker.start()
        assert _wait(lambda: any("CERTIFICATE_VERIFY_FAILED" in m for m in _warnings(caplog)))
        before = uplink.counters().reconnects
        assert _wait(lambda: uplink.counters().reconnects > before)
        assert not uplink.connected
    finally:
        uplink.stop()
        broker.stop()


def test_a_sensor_source_logs_and_counts_its_failed_connections_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    port = free_port()  # nothing listens there
    source = SensorSource("boiler", broker=MqttConfig.model_validate(
        {"port": port, "reconnect_min_s": 0.1, "reconnect_max_s": 0.2}),
        client_id="cam-loud-boiler", topic="site/boiler/temperature", window=4)
    stop = threading.Event()
    reader = threading.Thread(target=lambda: list(source.windows(stop)),
                              name="test-sensor-reader", daemon=True)
    reader.start()
    try:
        assert _wait(lambda: source.reconnects >= 3)
    finally:
        stop.set()
        reader.join(10)
    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and r.name == "edge_agent.sensors" and f"127.0.0.1:{port}" in r.getMessage()]
    assert len(failures) >= 3 and all("Connection refused" in m and " s (at " in m
                                      for m in failures[:3]), failures


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A broker as production configures it: only provisioned devices, each confined."""
    instance = MosquittoBroker(tmp_path / "acl-broker", anonymous=False)
    instance.start()
    yield instance
    instance.stop()


def test_an_mqtt_action_the_broker_refuses_is_counted_failed_and_logged(
    acl_broker: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    device = "cam-acl"
    credentials = DeviceCredentials(device, "device-password-for-the-test")
    hub = BrokerSettings(host="127.0.0.1", port=acl_broker.port,
                         username=acl_broker.hub_username, password=acl_broker.hub_password,
                         client_id="hub-loud")
    BrokerControl(hub).run(add_device_commands(LAYOUT, credentials, "lobby"))
    uplink = _uplink(tmp_path, device, port=acl_broker.port, username=device,
                     password=credentials.password)
    uplink.start()
    metrics = AgentMetrics()
    denied = ActionConfig.model_validate(
        {"kind": "mqtt", "on": ["decision"], "topic": "homeassistant/binary_sensor/face"})
    # The sentinel: a topic the device may publish to, run after the denied one.
    allowed = ActionConfig.model_validate(
        {"kind": "mqtt", "on": ["decision"], "topic": LAYOUT.telemetry(device)})
    runner = ActionRunner((denied, allowed), publish=uplink.publish_confirmed, metrics=metrics)
    runner.start()

    def count(result: str) -> float:
        value = metrics.registry.get_sample_value(
            "edge_actions_total", {"kind": "mqtt", "result": result})
        return value or 0.0

    try:
        assert _wait(lambda: uplink.connected)
        runner.dispatch(ActionEvent("decision", device, "yard", True, time.time()))
        assert _wait(lambda: count("failed") + count("ok") >= 2)
    finally:
        runner.stop()
        uplink.stop()
    assert count("failed") == 1
    assert count("ok") == 1
    refusals = [r.getMessage() for r in caplog.records if r.name == "edge_agent.actions"]
    assert any("homeassistant/binary_sensor/face" in m and "0x87" in m for m in refusals), \
        refusals
