"""The dashboard in a real headless Chromium (Debian's), driven by Playwright.

One hub and one browser for every check: signing in, fleet health, live updates over
server-sent events, filters and paging, an event's boxes drawn where they belong (read
back from a screenshot's pixels), rollouts, and Swagger UI and ReDoc with every request
that does not go to the hub refused.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
import uvicorn
from paho.mqtt.enums import CallbackAPIVersion
from playwright.sync_api import Browser, Page, Route, sync_playwright
from skimage import data

from cloud_hub.api import create_app
from cloud_hub.api.auth import hash_token
from cloud_hub.service import HubService
from cloud_hub.store import Store
from models import ModelStore
from sync import (
    InputHealth,
    SightingPayload,
    StatusMessage,
    TelemetryMessage,
    TopicLayout,
    TrackEventMessage,
    encode,
)
from sync.rollout import start
from tests.broker import MosquittoBroker, free_port
from tests.cloud_hub.hub_helpers import SECRET, face_event, hub_settings, jpeg
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

LAYOUT = TopicLayout()
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
EDGE_BOX = (178, 82, 271, 174)  # the astronaut's face, in the 512 x 512 frame
MAGENTA = (255, 0, 255)  # the edge's boxes (pages.py's CSS)
STORED_EVENTS = 30  # more than a page (25)
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
WAIT_MS = 20_000  # a hang guard, never what decides


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


def _stored_event(index: int, *, device: str, reason: str, at: float) -> dict[str, object]:
    """An escalation as the store keeps it, without images (filters and paging)."""
    return {"id": f"0190f000-0000-7000-8000-{index:012d}", "device_id": device,
            "source": "door", "reason": reason, "priority": 5, "captured_at": at,
            "received_at": at + 0.1, "edge_model": "blazeface-short", "edge_version": "1.0.0",
            "edge_detections": json.dumps([{"box": [1, 2, 30, 40], "score": 0.6,
                                            "label": "face"}])}


def _magenta_bounds(png: bytes) -> tuple[int, int, int, int]:
    """The bounding box of the magenta pixels (the edge's box) in a screenshot."""
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    bgr = np.array(MAGENTA[::-1], dtype=np.int16)
    close = np.all(np.abs(image.astype(np.int16) - bgr) <= 40, axis=2)
    ys, xs = np.nonzero(close)
    assert xs.size, "no box was drawn"
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _not_blank(png: bytes) -> bool:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert image is not None
    return float(image.std()) > 10 and float((image < 128).mean()) > 0.005


def _sign_in(page: Page, base: str) -> None:
    page.goto(f"{base}/dashboard")
    assert "/dashboard/login" in page.url  # a login page, not a JSON refusal
    assert page.locator("form.login input[name=token]").is_visible()
    page.fill("input[name=token]", "not-a-token")
    page.click("button[type=submit]")
    assert "not valid" in page.locator("p.error").inner_text()
    page.fill("input[name=token]", "dash-token")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/dashboard")
    cookie = next(c for c in page.context.cookies() if c["name"] == "hub_token")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"


def test_dashboard_for_a_fleet(served_hub: tuple[HubService, int, MosquittoBroker]) -> None:
    service, port, broker = served_hub
    base = f"http://127.0.0.1:{port}"
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: `make test` installs it"
    store = service.store
    service.provision_device("cam-dash", "lobby")
    service.provision_device("cam-two", "lobby")
    store.add_token(name="viewer", role="viewer", token_hash=hash_token(SECRET, "dash-token"))
    now = time.time()
    for i in range(STORED_EVENTS):
        store.add_event(**_stored_event(i, device="cam-two" if i % 3 else "cam-dash",
                                        reason="audit" if i % 2 else "uncertain",
                                        at=now - 3000 + i))
    store.add_rollout(rollout=start(rollout_id="r-dash", model="blazeface-short",
                                    version="2.0.0", group="lobby",
                                    devices=["cam-dash", "cam-two"], canary_percent=50))
    store.add_update_report(device_id="cam-two", rollout_id="r-dash", model="blazeface-short",
                            version="2.0.0", step="refused", reason="hash mismatch", at=now)

    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cam-dash",
                         protocol=mqtt.MQTTv5)
    device.connect("127.0.0.1", broker.port)
    device.loop_start()
    status = StatusMessage(device_id="cam-dash", state="online", at=now,
                           models={"blazeface-short": "1.0.0"}, backend="litert:xnnpack",
                           agent_version="9.8.7", updates_enabled=False)
    telemetry = TelemetryMessage(device_id="cam-dash", at=now, values={
        "outbox_events": 7.0, "outbox_bytes": 4096.0, "healthy.door": 1.0,
        "frames.door": 120.0, "healthy.yard": 1.0}, inputs={
        "door": InputHealth(brightness=140.0, contrast=60.0, sharpness=3.0, frozen_frames=0),
        "yard": InputHealth(brightness=14.0, contrast=4.0, sharpness=0.2, frozen_frames=0,
                            problems=("dark",))})
    # The thumbnail is half the frame's size: boxes (in frame pixels) must still land on
    # the face.
    frame = data.astronaut()
    event = face_event("cam-dash", frame, thumbnail_jpeg=jpeg(frame[::2, ::2].copy()))
    device.publish(LAYOUT.status("cam-dash"), encode(status), qos=1,
                   retain=True).wait_for_publish(5)
    device.publish(LAYOUT.telemetry("cam-dash"), encode(telemetry), qos=1).wait_for_publish(5)
    device.publish(LAYOUT.events("cam-dash"), encode(event), qos=1).wait_for_publish(5)
    assert wait_until(lambda: bool(store.list_events(device_id="cam-dash",
                                                     outcome="confirmed").items),
                      timeout_s=30), "the escalation was not judged"
    assert wait_until(lambda: bool(store.fleet_health()[0].telemetry),
                      timeout_s=30), "the telemetry was not stored"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(WAIT_MS)
            _sign_in(page, base)
            _check_fleet(page)
            _check_live_update(page, store)
            _check_filters_and_paging(page, base)
            _check_event_detail(page, store, base, event.event_id)
            _check_rollouts(page, base)
            _check_docs_offline(browser, base)
            page.click("nav button[type=submit]")  # log out
            page.wait_for_url("**/dashboard/login")
            page.goto(f"{base}/dashboard")
            assert "/dashboard/login" in page.url
        finally:
            browser.close()
    device.disconnect()
    device.loop_stop()
    with urllib.request.urlopen(f"{base}/dashboard", timeout=30) as response:
        assert response.url.startswith(f"{base}/dashboard/login")
        assert response.headers["content-type"].startswith("text/html")


def _check_fleet(page: Page) -> None:
    row = page.locator("tr.device[data-device='cam-dash']")
    assert row.locator("td.online").inner_text() == "online"
    assert row.locator("td.agent").inner_text() == "9.8.7"
    assert "blazeface-short 1.0.0" in row.locator("td.models").inner_text()
    assert row.locator(".backlog").inner_text() == "7"
    door = row.locator(".input[data-source='door']").inner_text()
    assert door.startswith("door ok") and "brightness 140" in door
    yard = row.locator(".input[data-source='yard']")
    assert yard.locator(".problem").all_inner_texts() == ["dark"]
    other = page.locator("tr.device[data-device='cam-two']")
    assert other.locator("td.offline").inner_text() == "offline"
    assert "refused" in other.locator("td.last-error").inner_text()
    assert "hash mismatch" in other.locator("td.last-error").inner_text()
    assert "1 / 2" in page.locator("#devices-online").inner_text()
    card = page.locator("a.event").first
    width = card.locator("img").evaluate("img => img.complete && img.naturalWidth")
    assert width and width > 0


def _check_live_update(page: Page, store: Store) -> None:
    """A new event appears on the open page through the stream, without a reload."""
    page.wait_for_function("document.body.classList.contains('live')")
    page.evaluate("window.__notReloaded = true")
    before = page.locator("#escalations-hour b").inner_text()
    new = _stored_event(999, device="cam-dash", reason="suspicious", at=time.time())
    store.add_event(**new)
    page.locator(f"a.event[data-event='{new['id']}']").wait_for()
    assert page.evaluate("window.__notReloaded === true")
    assert int(page.locator("#escalations-hour b").inner_text()) == int(before) + 1


def _check_filters_and_paging(page: Page, base: str) -> None:
    page.goto(f"{base}/dashboard/events")
    page.select_option("select[name=device]", "cam-two")
    page.select_option("select[name=reason]", "audit")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**reason=audit**")
    rows = page.locator("tr.event-row")
    cells = rows.evaluate_all(
        "rows => rows.map(r => [r.children[2].innerText, r.children[4].innerText])")
    expected = [i for i in range(STORED_EVENTS) if i % 3 and i % 2]
    assert cells == [["cam-two", "audit"]] * len(expected)
    # Paging: 25 a page, newest first, each event once across pages.
    page.goto(f"{base}/dashboard/events")
    first = rows.evaluate_all("rows => rows.map(r => r.dataset.event)")
    assert len(first) == 25
    page.click("#older")
    page.wait_for_url("**cursor=**")
    second = rows.evaluate_all("rows => rows.map(r => r.dataset.event)")
    assert second and not set(first) & set(second)
    assert len(first) + len(second) == STORED_EVENTS + 2  # the judged one, the live one
    assert page.locator("#older").count() == 0 and page.locator("#newest").count() == 1


def _journal_step(event_id: str | None, step: str, at: float, *,
                  frames: tuple[int, ...] = (), **fields: Any) -> TrackEventMessage:
    return TrackEventMessage(
        device_id="cam-dash", step=step, source="door", track_id=4, at=at, first_frame=10,
        last_frame=max(frames, default=10), label="face",
        action="escalate" if step == "new" else "local", reason="uncertain",
        positive=True, event_id=event_id, escalations=0 if event_id is None else 1,
        sightings=tuple(SightingPayload(frame=f, box=EDGE_BOX, score=0.7) for f in frames),
        **fields)


def _check_event_detail(page: Page, store: Store, base: str, event_id: str) -> None:
    now = time.time()
    for message in (_journal_step(None, "new", now - 3, frames=(10,)),
                    _journal_step(event_id, "update", now - 2, frames=(11, 12)),
                    _journal_step(event_id, "update", now - 1, verdict="confirmed",
                                  verdict_timing="on-time")):
        store.add_journal_step(message=message, received_at=now)
    page.goto(f"{base}/dashboard/events/{event_id}")
    assert page.locator("#verdict").inner_text() == "confirmed"
    figure = page.locator("figure.frame")
    page.wait_for_function(
        "document.querySelector('figure.frame img').naturalWidth > 0")
    assert figure.locator("rect.box.edge").count() == 1
    assert figure.locator("rect.box.hub").count() >= 1
    shown = figure.locator("img").bounding_box()
    assert shown is not None
    scale = shown["width"] / 512  # the frame's width
    x1, y1, x2, y2 = _magenta_bounds(figure.screenshot())
    want = [v * scale for v in EDGE_BOX]
    # The stroke (3 px) straddles the box's edges.
    for got, expected in zip((x1, y1, x2, y2), want, strict=True):
        assert abs(got - expected) <= 4, ((x1, y1, x2, y2), want)
    # The decision timeline: the journal of the event's track, a step arriving live.
    timeline = page.locator("#timeline li.step")
    assert timeline.evaluate_all("items => items.map(i => i.dataset.step)") == [
        "new", "update", "update"]
    assert "verdict confirmed" in timeline.nth(2).inner_text()
    assert timeline.nth(1).get_attribute("class") == "step update this-event"
    store.add_journal_step(message=_journal_step(event_id, "end", time.time() + 1,
                                                 frames=(13,), verdict="confirmed"),
                           received_at=time.time())
    page.locator("#timeline li.step[data-step='end']").wait_for()
    # Where the track was seen, frame by frame, drawn on the frame too (frames 10-13).
    assert figure.locator("rect.box.track").count() == 4


def _check_rollouts(page: Page, base: str) -> None:
    page.goto(f"{base}/dashboard/rollouts")
    section = page.locator("section.rollout[data-rollout='r-dash']")
    assert "running" in section.locator("h2").inner_text()
    state = section.locator("tr.rollout-device[data-device='cam-two'] td.step").inner_text()
    assert state == "refused"
    assert section.locator("tr.rollout-device").count() == 2
    warnings = section.locator("ul.warnings li").all_inner_texts()
    assert any(w.startswith("updates are turned off") and "cam-dash" in w
               for w in warnings), warnings
    summary = page.locator("nav a", has_text="Overview")
    summary.click()
    page.wait_for_url("**/dashboard")
    row = page.locator("#rollouts tr.rollout[data-rollout='r-dash']")
    assert "updates are turned off" in row.inner_text()


def _check_docs_offline(browser: Browser, base: str) -> None:
    """Swagger UI and ReDoc render with every request elsewhere than the hub refused."""
    context = browser.new_context()
    refused: list[str] = []

    def only_the_hub(route: Route) -> None:
        if route.request.url.startswith(base):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_hub)
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(f"{base}/docs")
        page.locator(".swagger-ui .info .title").filter(has_text="Cloud hub").wait_for()
        page.locator(".opblock-tag[data-tag='events']").wait_for()
        assert _not_blank(page.screenshot())
        assert refused == []
        page.goto(f"{base}/redoc")
        page.get_by_role("heading", name="Cloud hub").first.wait_for()
        page.get_by_text("Judges what edge agents escalate").first.wait_for()
        assert _not_blank(page.screenshot())
        # ReDoc's bundle asks for nothing else but its "powered by" logo, an image it
        # hides when it cannot load.
        assert set(refused) <= {REDOC_LOGO}, refused
    finally:
        context.close()
