"""Webhooks from a hub to a real HTTP receiver on this machine (issue 12): the receiver
checks every signature as a third party would (HMAC-SHA256 over ``<t>.<body>``, in
constant time), fails the first attempt, and takes the second, which carries the same
delivery id. The hub sends on a rollout's change of status, and on each verdict of an
escalation that came through its broker."""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from skimage import data

from cloud_hub.service import HubService
from models import ModelStore
from sync import TopicLayout, encode
from sync.rollout import start
from tests.broker import MosquittoBroker
from tests.cloud_hub.hub_helpers import face_event, hub_settings

pytestmark = pytest.mark.integration

SECRET = "webhook-secret-for-the-test-0123"


class _Attempt:
    def __init__(self, headers: dict[str, str], body: bytes, valid: bool) -> None:
        self.headers, self.body, self.valid = headers, body, valid


@pytest.fixture
def receiver() -> Iterator[tuple[str, queue.Queue[_Attempt]]]:
    """A receiver that verifies each request's signature itself and answers 503 to the
    first attempt of every delivery, 204 to the next."""
    attempts: queue.Queue[_Attempt] = queue.Queue()
    seen: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            fields = dict(part.split("=", 1)
                          for part in self.headers["X-Hub-Signature"].split(","))
            expected = hmac.new(SECRET.encode(), f"{fields['t']}.".encode() + body,
                                hashlib.sha256).hexdigest()
            valid = (hmac.compare_digest(expected, fields["v1"])
                     and abs(time.time() - int(fields["t"])) < 300)
            attempts.put(_Attempt(dict(self.headers), body, valid))
            delivery = self.headers["X-Hub-Delivery"]
            first = delivery not in seen
            seen.add(delivery)
            self.send_response(503 if first else 204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver",
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks", attempts
    finally:
        server.shutdown()
        server.server_close()


def test_a_rollout_change_reaches_the_receiver_signed_after_a_failed_attempt(
        tmp_path: Path, receiver: tuple[str, queue.Queue[_Attempt]]) -> None:
    url, attempts = receiver
    # A short backoff: the test waits for the receiver's requests, never for time.
    service = HubService(hub_settings(tmp_path, tmp_path / "models", webhook_url=url,
                                      webhook_secret=SECRET, webhook_backoff_min_s=0.05),
                         ingest=False)
    assert service.webhooks is not None
    service.open_store()
    service.webhooks.start()
    try:
        service.store.add_rollout(rollout=start(
            rollout_id="r-hook", model="m", version="1.0.0", group="lobby",
            devices=["cam-1", "cam-2"], canary_percent=50))
        assert service.distribution is not None
        service.distribution.pause("r-hook")
        first, second = attempts.get(timeout=30), attempts.get(timeout=30)
    finally:
        service.webhooks.stop()
        service.store.close()
    assert first.valid and second.valid
    assert first.headers["X-Hub-Delivery"] == second.headers["X-Hub-Delivery"]
    assert first.headers["X-Hub-Event"] == "rollout"
    sent = json.loads(second.body)
    assert sent["type"] == "rollout" and sent["id"] == second.headers["X-Hub-Delivery"]
    assert sent["data"]["rollout_id"] == "r-hook"
    assert (sent["data"]["previous_status"], sent["data"]["status"]) == ("running", "paused")
    assert service.metrics.webhooks.deliveries.labels("delivered")._value.get() == 1
    assert service.metrics.webhooks.retries._value.get() == 1


def test_a_verdict_reaches_the_receiver(tmp_path: Path, zoo_store: ModelStore,
                                        receiver: tuple[str, queue.Queue[_Attempt]]) -> None:
    url, attempts = receiver
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    service = HubService(hub_settings(
        tmp_path, zoo_store.root, mqtt_port=broker.port, batch_autotune=False,
        webhook_url=url, webhook_secret=SECRET, webhook_events="verdict",
        webhook_backoff_min_s=0.05))
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    try:
        service.start()
        assert service.ingest is not None and service.ingest.connected.wait(30)
        service.provision_device("cam-hook", "yard")
        event = face_event("cam-hook", data.astronaut())
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        publisher.publish(TopicLayout().events("cam-hook"), encode(event),
                          qos=1).wait_for_publish(10)
        first, second = attempts.get(timeout=120), attempts.get(timeout=30)
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        service.stop()
        broker.stop()
    assert first.valid and second.valid and first.headers["X-Hub-Event"] == "verdict"
    sent = json.loads(second.body)["data"]
    assert sent["event_id"] == event.event_id and sent["device_id"] == "cam-hook"
    assert sent["outcome"] == "confirmed" and sent["detections"]
    assert sent["hub_model"] == "blazeface-full-onnx"
