"""The dashboard in a real headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import uvicorn
from paho.mqtt.enums import CallbackAPIVersion
from playwright.sync_api import sync_playwright
from skimage import data

from cloud_hub.api import create_app
from cloud_hub.api.auth import hash_token
from cloud_hub.service import HubService
from models import ModelStore
from sync import StatusMessage, TopicLayout, encode
from tests.broker import MosquittoBroker, free_port
from tests.cloud_hub.hub_helpers import SECRET, face_event, hub_settings

pytestmark = pytest.mark.integration

LAYOUT = TopicLayout()
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
def served_hub(tmp_path: Path, zoo_store: ModelStore) -> Iterator[tuple[HubService, int,
                                                                        MosquittoBroker]]:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    port = free_port()
    service = HubService(hub_settings(tmp_path, zoo_store.root, mqtt_port=broker.port))
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (service.ready and server.started):
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.1)
    yield service, port, broker
    server.should_exit = True
    thread.join(30)
    broker.stop()


def test_dashboard_shows_a_connected_device_and_its_escalation(
    served_hub: tuple[HubService, int, MosquittoBroker]
) -> None:
    service, port, broker = served_hub
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: `make test` installs it"
    service.provision_device("cam-dash", "lobby")
    service.store.add_token(name="viewer", role="viewer",
                            token_hash=hash_token(SECRET, "dash-token"))
    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cam-dash",
                         protocol=mqtt.MQTTv5)
    device.connect("127.0.0.1", broker.port)
    device.loop_start()
    event = face_event("cam-dash", data.astronaut())
    status = StatusMessage(device_id="cam-dash", state="online", at=time.time(),
                           models={"blazeface-short": "1.0.0"}, backend="litert:xnnpack")
    device.publish(LAYOUT.status("cam-dash"), encode(status), qos=1,
                   retain=True).wait_for_publish(5)
    device.publish(LAYOUT.events("cam-dash"), encode(event), qos=1).wait_for_publish(5)
    deadline = time.monotonic() + 30
    while not service.store.list_events(device_id="cam-dash", outcome="confirmed").items:
        assert time.monotonic() < deadline, "the escalation was not judged"
        time.sleep(0.1)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/dashboard/login?token=dash-token")
            assert page.url.endswith("/dashboard")
            row = page.locator("tr.device[data-device='cam-dash']")
            row.wait_for(timeout=10_000)
            assert row.locator("td.online").inner_text() == "online"
            assert "blazeface-short 1.0.0" in row.inner_text()
            card = page.locator(f"div.event[data-event='{event.event_id}']")
            assert "confirmed" in card.inner_text()
            width = card.locator("img").evaluate("img => img.complete && img.naturalWidth")
            assert width and width > 0
            assert "1 / 1" in page.locator("#devices-online").inner_text()
        finally:
            browser.close()
    device.disconnect()
    device.loop_stop()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard", timeout=5)
    assert refused.value.code == 401
