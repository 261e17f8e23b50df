"""The agent's MQTT over TLS and mutual TLS, against a TLS-only Mosquitto listener with a
CA made by the test: the uplink and the sensor sources both use the broker settings'
TLS, and a broker whose certificate does not verify stops them at start (finding 10 of
issue 9: the sensor sources ignored the uplink's TLS and showed healthy with 0 frames)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.mosquitto import ListenerTls
from edge_agent.config import MqttConfig, OutboxConfig
from edge_agent.delivery.outbox import Outbox
from edge_agent.delivery.uplink import Uplink
from edge_agent.errors import ConfigError
from edge_agent.sensors import ReadingWindow, SensorSource
from sync import StatusMessage, TlsFiles, TopicLayout, client_context
from tests.broker import Collector, MosquittoBroker, Pki, make_pki
from tests.edge_agent.helpers import event_id, event_item

pytestmark = pytest.mark.integration

LAYOUT = TopicLayout()
SENSOR_TOPIC = "site/boiler/temperature"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Iterator[MosquittoBroker]:
    """A broker that speaks only TLS and wants a client certificate from the test CA."""
    instance = MosquittoBroker(tmp_path / "broker", tls=ListenerTls(
        pki.ca_file, pki.server_cert, pki.server_key, require_certificate=True))
    instance.start()
    yield instance
    instance.stop()


def _settings(broker: MosquittoBroker, pki: Pki, **changes: object) -> MqttConfig:
    values: dict[str, object] = {
        "port": broker.port, "tls": True, "ca_file": pki.ca_file, "cert_file": pki.client_cert,
        "key_file": pki.client_key, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5}
    values.update(changes)
    return MqttConfig.model_validate(values)


def _uplink(config: MqttConfig, folder: Path) -> Uplink:
    return Uplink(device_id="cam-tls", config=config,
                  outbox=Outbox(folder / "outbox.sqlite3", OutboxConfig()), layout=LAYOUT,
                  status=lambda state: StatusMessage(device_id="cam-tls", state=state,
                                                     at=time.time()))


def _read_windows(source: SensorSource, stop: threading.Event,
                  into: list[ReadingWindow]) -> None:
    for window in source.windows(stop):
        into.append(window)


def test_uplink_and_sensor_source_speak_mutual_tls(tls_broker: MosquittoBroker, pki: Pki,
                                                  tmp_path: Path) -> None:
    config = _settings(tls_broker, pki)
    context = client_context(TlsFiles(pki.ca_file, pki.client_cert, pki.client_key))
    collector = Collector(tls_broker.port, LAYOUT.all_devices("events"), tls=context)
    uplink = _uplink(config, tmp_path)
    source = SensorSource("boiler", broker=config, client_id="cam-tls-boiler",
                          topic=SENSOR_TOPIC, window=4)
    stop = threading.Event()
    windows: list[ReadingWindow] = []
    reader = threading.Thread(target=_read_windows, args=(source, stop, windows),
                              name="test-sensor-reader", daemon=True)
    sensor = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sensor.tls_set_context(context)
    try:
        uplink.start()
        for index in range(5):
            uplink.submit(event_item(LAYOUT, "cam-tls", index))
        assert uplink.wait_idle(30)
        assert collector.wait_for(
            lambda m: {json.loads(p)["event_id"] for _, p in m} >= {event_id(i)
                                                                    for i in range(5)}, 20)
        reader.start()
        sensor.connect("127.0.0.1", tls_broker.port)
        sensor.loop_start()
        # Readings go out until the source has cut a window from them: it subscribes
        # when its own TLS connection is up, which this test does not see directly.
        deadline = time.monotonic() + 30
        value = 0
        while not windows and time.monotonic() < deadline:
            sensor.publish(SENSOR_TOPIC, json.dumps({"value": 20.0 + value % 3}), qos=1)
            value += 1
            time.sleep(0.05)
        assert windows and source.health.frames >= 4 and source.health.healthy
    finally:
        stop.set()
        sensor.disconnect()
        sensor.loop_stop()
        reader.join(10)
        uplink.stop()
        collector.close()


@pytest.mark.parametrize("mistake", ["another CA", "another host name"])
def test_a_broker_that_does_not_verify_stops_uplink_and_sensor_at_start(
    tls_broker: MosquittoBroker, pki: Pki, tmp_path: Path, mistake: str
) -> None:
    if mistake == "another CA":
        config = _settings(tls_broker, pki, ca_file=make_pki(tmp_path / "other").ca_file)
        expected = "failed TLS verification"
    else:  # the broker's certificate names 127.0.0.1, not localhost
        config = _settings(tls_broker, pki, host="localhost")
        expected = "mismatch"
    uplink = _uplink(config, tmp_path)
    with pytest.raises(ConfigError, match=expected):
        uplink.start()
    source = SensorSource("boiler", broker=config, client_id="cam-tls-boiler",
                          topic=SENSOR_TOPIC)
    with pytest.raises(ConfigError, match=expected):
        next(iter(source.windows(threading.Event())))
    assert not source.health.healthy and expected in (source.health.last_error or "")
