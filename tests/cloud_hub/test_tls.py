"""The hub's MQTT over mutual TLS, against a TLS-only Mosquitto listener with a CA made
by the test: ingest, verdicts and broker control (provisioning) all take their TLS from
the one broker-settings object; a broker that does not verify stops ``cloud-hub serve``
at start with a message (finding 10 of issue 9: ``CLOUD_HUB_MQTT_TLS`` was ignored and
the hub never connected, logging nothing)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from skimage import data

from cloud_hub.mosquitto import ListenerTls
from cloud_hub.service import HubService
from models import ModelStore
from sync import TlsFiles, TopicLayout, VerdictMessage, client_context, decode, encode
from tests.broker import Collector, MosquittoBroker, Pki, make_pki
from tests.cloud_hub.hub_helpers import SECRET, face_event, hub_settings

pytestmark = pytest.mark.integration

LAYOUT = TopicLayout()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Iterator[MosquittoBroker]:
    """TLS only, client certificates required, and the dynamic security plugin's rules."""
    instance = MosquittoBroker(tmp_path / "broker", anonymous=False, tls=ListenerTls(
        pki.ca_file, pki.server_cert, pki.server_key, require_certificate=True))
    instance.start()
    yield instance
    instance.stop()


def test_hub_provisions_ingests_and_answers_over_mutual_tls(
    tls_broker: MosquittoBroker, pki: Pki, tmp_path: Path, zoo_store: ModelStore
) -> None:
    settings = hub_settings(
        tmp_path, zoo_store.root, mqtt_port=tls_broker.port,
        mqtt_username=tls_broker.hub_username, mqtt_password=tls_broker.hub_password,
        mqtt_tls=True, mqtt_ca_file=pki.ca_file, mqtt_cert_file=pki.client_cert,
        mqtt_key_file=pki.client_key, broker_control="mosquitto-dynsec")
    hub = HubService(settings)
    hub.start()
    try:
        assert hub.ingest is not None and hub.ingest.connected.wait(15)
        _, credentials = hub.provision_device("cam-tls", "yard")  # control over TLS
        context = client_context(TlsFiles(pki.ca_file, pki.client_cert, pki.client_key))
        verdicts = Collector(tls_broker.port, LAYOUT.verdicts("cam-tls"),
                             client_id="cam-tls", username="cam-tls",
                             password=credentials.password, tls=context)
        try:
            event = face_event("cam-tls", data.astronaut())
            verdicts.client.publish(LAYOUT.events("cam-tls"), encode(event),
                                    qos=1).wait_for_publish(10)
            assert verdicts.wait_for(lambda m: bool(m), 60)
        finally:
            verdicts.close()
        verdict = decode(verdicts.messages[0][1], VerdictMessage)
        assert verdict.event_id == event.event_id and verdict.outcome == "confirmed"
    finally:
        hub.stop()


@pytest.mark.parametrize("mistake", ["another CA", "another host name"])
def test_serve_stops_at_start_when_the_broker_does_not_verify(
    tls_broker: MosquittoBroker, pki: Pki, tmp_path: Path, zoo_store: ModelStore,
    mistake: str,
) -> None:
    ca_file, host = pki.ca_file, "127.0.0.1"
    if mistake == "another CA":
        ca_file = make_pki(tmp_path / "other").ca_file
    else:
        host = "localhost"  # the broker's certificate names 127.0.0.1 only
    env = {**os.environ, "CLOUD_HUB_DATA_DIR": str(tmp_path / "hub"),
           "CLOUD_HUB_SECRET_KEY": SECRET, "CLOUD_HUB_MODEL_STORE": str(zoo_store.root),
           "CLOUD_HUB_HTTP_PORT": "0", "CLOUD_HUB_MQTT_HOST": host,
           "CLOUD_HUB_MQTT_PORT": str(tls_broker.port), "CLOUD_HUB_MQTT_TLS": "true",
           "CLOUD_HUB_MQTT_CA_FILE": str(ca_file),
           "CLOUD_HUB_MQTT_CERT_FILE": str(pki.client_cert),
           "CLOUD_HUB_MQTT_KEY_FILE": str(pki.client_key),
           "CLOUD_HUB_MQTT_USERNAME": tls_broker.hub_username,
           "CLOUD_HUB_MQTT_PASSWORD": tls_broker.hub_password}
    binary = Path(sys.executable).parent / "cloud-hub"
    process = subprocess.run([str(binary), "serve"], env=env, capture_output=True,
                             text=True, timeout=120, check=False)
    assert process.returncode != 0
    assert "CLOUD_HUB_MQTT_TLS" in process.stderr and (
        "failed TLS verification" in process.stderr or "mismatch" in process.stderr
    ), process.stderr[-2000:]
