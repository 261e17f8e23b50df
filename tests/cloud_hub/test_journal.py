"""The hub's decision journal: kept on SQLite and PostgreSQL, cut into lifecycles, and
served as an event's timeline (``GET /v1/events/{id}/timeline``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from cloud_hub.api import create_app
from cloud_hub.api.auth import hash_token
from cloud_hub.service import HubService
from cloud_hub.store import Store, TrackKey, events, journal_steps, migrations_table
from models import ModelStore
from sync import EventIdFactory, SightingPayload, TrackEventMessage
from tests.cloud_hub.hub_helpers import SECRET, hub_settings

pytestmark = pytest.mark.integration

ids = EventIdFactory()


def _step(step: str, at: float, *, track_id: int = 3, first_frame: int = 10,
          frames: tuple[int, ...] = (), device: str = "cam-1", **fields: Any
          ) -> TrackEventMessage:
    last = max(frames, default=first_frame)
    values: dict[str, Any] = {
        "device_id": device, "step": step, "source": "door", "track_id": track_id,
        "at": at, "first_frame": first_frame, "last_frame": last, "label": "face",
        "action": "escalate", "reason": "uncertain", "positive": False,
        "sightings": tuple(SightingPayload(frame=f, box=(f, 2.0, f + 40.0, 50.0), score=0.6)
                           for f in frames)}
    values.update(fields)
    return TrackEventMessage(**values)


def _event_row(event_id: str, device: str = "cam-1", **extra: object) -> dict[str, object]:
    values: dict[str, object] = {
        "id": event_id, "device_id": device, "source": "door", "reason": "uncertain",
        "priority": 5, "captured_at": 1000.0, "received_at": time.time(),
        "edge_model": "blazeface-short", "edge_version": "1.0.0",
        "edge_detections": json.dumps([{"box": [10, 2, 50, 50], "score": 0.6,
                                        "label": "face"}]),
    }
    values.update(extra)
    return values


def _lifecycle(event_id: str, start: float, **key: Any) -> list[TrackEventMessage]:
    """A track seen on frames 10-13, escalated on 10, confirmed, ended."""
    return [
        _step("new", start, frames=(10,), **key),
        _step("update", start + 0.01, event_id=event_id, escalations=1, **key),
        _step("update", start + 0.02, frames=(11, 12), action="local",
              reason="awaiting-verdict", event_id=event_id, escalations=1, **key),
        _step("update", start + 0.03, action="local", reason="awaiting-verdict",
              event_id=event_id, escalations=1, verdict="confirmed",
              verdict_timing="on-time", **key),
        _step("end", start + 0.5, frames=(13,), action="local", reason="verdict-reused",
              positive=True, event_id=event_id, escalations=1, verdict="confirmed",
              verdict_timing="on-time", **key),
    ]


def _keep(store: Store, messages: list[TrackEventMessage]) -> None:
    for message in reversed(messages):  # arrival order is not the device's order
        store.add_journal_step(message=message, received_at=time.time())


def test_a_lifecycle_is_kept_and_cut_out_in_the_devices_order(store: Store) -> None:
    first, second = ids(), ids()
    # The same key twice: the agent restarted and numbered a track 3 from frame 10 again.
    _keep(store, _lifecycle(first, 1000.0))
    _keep(store, _lifecycle(second, 2000.0))
    _keep(store, _lifecycle(ids(), 1500.0, track_id=4))
    records, truncated = store.journal_of_event(event_id=first, device_id="cam-1", limit=100)
    assert not truncated
    assert [(r.step, r.at) for r in records] == [
        ("new", 1000.0), ("update", 1000.01), ("update", 1000.02), ("update", 1000.03),
        ("end", 1000.5)]
    assert records[0].track == TrackKey("cam-1", "door", 3, 10)
    assert [s.frame for r in records for s in r.sightings] == [10, 11, 12, 13]
    assert records[0].sightings[0].box == (10.0, 2.0, 50.0, 50.0)
    assert records[3].verdict == "confirmed" and records[3].verdict_timing == "on-time"
    assert records[4].positive is True and records[4].agrees is None
    later, _ = store.journal_of_event(event_id=second, device_id="cam-1", limit=100)
    assert [r.at for r in later] == [2000.0, 2000.01, 2000.02, 2000.03, 2000.5]
    # Only the device that escalated it reads an event's lifecycle; a limit truncates.
    assert store.journal_of_event(event_id=first, device_id="cam-2", limit=100) == ([], False)
    head, truncated = store.journal_of_event(event_id=first, device_id="cam-1", limit=2)
    assert [r.step for r in head] == ["new", "update"] and truncated


def test_an_unescalated_track_is_forgotten_and_retention_drops_what_is_left(
    store: Store,
) -> None:
    escalated = _lifecycle(ids(), 1000.0)
    _keep(store, escalated)
    quiet = TrackKey("cam-1", "door", 3, 10)
    # The same key, later: a track that was never escalated, its end step lost or not.
    store.add_journal_step(message=_step("new", 3000.0, frames=(10,), action="local",
                                         reason="confident", positive=True),
                           received_at=time.time())
    assert store.lifecycle_start(track=quiet, before=3001.0) == 3000.0
    assert store.forget_track(track=quiet, since=3000.0) == 1
    records, _ = store.journal_of_event(event_id=escalated[1].event_id or "",
                                        device_id="cam-1", limit=100)
    assert len(records) == 5  # the escalated lifecycle of the same key is untouched
    now = time.time()
    store.add_journal_step(message=_step("new", 4000.0, track_id=9, frames=(10,)),
                           received_at=now - 7200)
    store.add_event(**_event_row("0190a000-0000-7000-8000-0000000000aa"))
    store.prune(images_before=now - 86400, events_before=now - 86400,
                images_idle_before=now, unescalated_before=now - 3600)
    with store.engine.connect() as conn:
        left = conn.execute(sa.select(journal_steps.c.track_id).distinct()).scalars().all()
    assert left == [3]  # the stale unescalated track 9 is gone, the escalated one stays
    store.prune(images_before=now + 1, events_before=now + 1, images_idle_before=now)
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(journal_steps)).scalar() == 0


def test_a_database_from_before_the_journal_gets_it_and_frame_sizes(store: Store) -> None:
    store.add_event(**_event_row("0190a000-0000-7000-8000-0000000000bb"))
    with store.engine.begin() as conn:  # back to before migration 6
        conn.execute(sa.text("DROP TABLE journal_steps"))
        conn.execute(sa.text("ALTER TABLE events DROP COLUMN frame_width"))
        conn.execute(sa.text("ALTER TABLE events DROP COLUMN frame_height"))
        conn.execute(migrations_table.delete().where(migrations_table.c.version == 6))
    upgraded = Store(store.url, connect_args=store._connect_args)
    upgraded.open()
    try:
        event = upgraded.get_event(event_id="0190a000-0000-7000-8000-0000000000bb")
        assert event["frame_size"] is None
        upgraded.add_event(**_event_row("0190a000-0000-7000-8000-0000000000bc",
                                        frame_width=640, frame_height=360))
        assert upgraded.get_event(
            event_id="0190a000-0000-7000-8000-0000000000bc")["frame_size"] == (640, 360)
        _keep(upgraded, _lifecycle(ids(), 1000.0))
        with upgraded.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(events)).scalar() == 2
    finally:
        upgraded.close()


VIEWER = "timeline-viewer-token"


@pytest.fixture
def api(tmp_path: Path, zoo_store: ModelStore) -> Iterator[tuple[TestClient, Store]]:
    service = HubService(hub_settings(tmp_path, zoo_store.root), ingest=False)
    service.open_store()
    service.store.add_token(name="viewer", role="viewer", token_hash=hash_token(SECRET, VIEWER))
    try:
        with TestClient(create_app(service, manage=False)) as client:
            yield client, service.store
    finally:
        service.store.close()


def test_the_timeline_is_the_event_and_its_tracks_lifecycle(
    api: tuple[TestClient, Store],
) -> None:
    client, store = api
    auth = {"Authorization": f"Bearer {VIEWER}"}
    event_id, bare_id = ids(), ids()
    store.add_event(**_event_row(event_id, frame_width=640, frame_height=360))
    store.set_verdict(event_id=event_id, outcome="confirmed", detections=[
        {"box": [11, 3, 49, 51], "score": 0.9, "label": "face"}], model="judge",
        version="1", inference_ms=2.0, decided_at=1001.0, handled_by="hub-a")
    _keep(store, _lifecycle(event_id, 1000.0))
    store.add_event(**_event_row(bare_id, reason="unexplained"))

    assert client.get(f"/v1/events/{event_id}/timeline").status_code == 401
    timeline = client.get(f"/v1/events/{event_id}/timeline", headers=auth)
    assert timeline.status_code == 200, timeline.text
    body = timeline.json()
    assert set(body) == {"event", "track", "steps", "truncated"}
    assert body["event"]["id"] == event_id and body["event"]["outcome"] == "confirmed"
    assert body["event"]["reason"] == "uncertain" and body["event"]["frame_size"] == [640, 360]
    assert body["event"]["edge_detections"][0]["box"] == [10, 2, 50, 50]
    assert body["event"]["hub_detections"][0]["box"] == [11, 3, 49, 51]
    assert body["track"] == {"device_id": "cam-1", "source": "door", "track_id": 3,
                             "first_frame": 10}
    assert [(s["step"], s["reason"]) for s in body["steps"]] == [
        ("new", "uncertain"), ("update", "uncertain"), ("update", "awaiting-verdict"),
        ("update", "awaiting-verdict"), ("end", "verdict-reused")]
    assert body["steps"][0]["sightings"] == [
        {"frame": 10, "box": [10.0, 2.0, 50.0, 50.0], "score": 0.6}]
    assert body["steps"][3]["verdict"] == "confirmed" and body["truncated"] is False
    assert set(body["steps"][0]) == {
        "step", "at", "received_at", "last_frame", "label", "action", "reason", "positive",
        "sightings", "event_id", "escalations", "verdict", "verdict_timing", "fell_back",
        "agrees"}
    # An event no journal step names: the event alone.
    bare = client.get(f"/v1/events/{bare_id}/timeline", headers=auth).json()
    assert bare["track"] is None and bare["steps"] == [] and bare["event"]["id"] == bare_id
    missing = client.get(f"/v1/events/{ids()}/timeline", headers=auth)
    assert missing.status_code == 404 and "no event" in missing.json()["detail"]
    assert "/v1/events/{event_id}/timeline" in client.get("/openapi.json").json()["paths"]
