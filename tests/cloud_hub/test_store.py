"""The storage layer, against SQLite and the real PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from cloud_hub.errors import NotFoundError, StoreError
from cloud_hub.images import IMAGE_GRACE_S, FileImageStore
from cloud_hub.store import (
    SCHEMA_VERSION,
    NewVerdict,
    Store,
    events,
    migrations_table,
    rollouts,
    totals_query,
)
from sync import InputHealth
from sync.rollout import Rollout, on_report, start

pytestmark = pytest.mark.integration


def _event(event_id: str, device: str = "cam-1", received_at: float | None = None,
           **extra: object) -> dict[str, object]:
    values: dict[str, object] = {
        "id": event_id, "device_id": device, "source": "door", "reason": "uncertain",
        "priority": 5, "captured_at": 1000.0, "received_at": received_at or time.time(),
        "edge_model": "blazeface-short", "edge_version": "1.0.0",
        "edge_detections": json.dumps([{"box": [1, 2, 3, 4], "score": 0.6, "label": "face"}]),
        "crop": b"\xff\xd8crop", "thumbnail": b"\xff\xd8thumb",
    }
    values.update(extra)
    return values


def test_migrations_are_recorded_and_reapplying_is_a_no_op(store: Store) -> None:
    with store.engine.connect() as conn:
        versions = [r[0] for r in conn.execute(sa.select(migrations_table.c.version))]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    again = Store(store.url, connect_args=store._connect_args)
    again.open()
    again.close()


def test_newer_schema_is_refused(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(migrations_table.insert().values(version=SCHEMA_VERSION + 1,
                                                      applied_at=time.time()))
    newer = Store(store.url)
    with pytest.raises(StoreError, match="upgrade the hub"):
        newer.open()


def test_devices_and_status(store: Store) -> None:
    store.add_device(device_id="cam-1", group="lobby", labels={"site": "a"})
    store.add_device(device_id="cam-2", group="yard")
    assert [d["id"] for d in store.list_devices(group="lobby")] == ["cam-1"]
    store.record_status(device_id="cam-1", online=True, at=10.0,
                        models={"blazeface-short": "1.0.0"}, backend="litert:xnnpack")
    store.record_status(device_id="cam-1", online=False, at=5.0, models={}, backend="")
    device = store.get_device(device_id="cam-1")
    assert device["online"] is True and device["models"] == {"blazeface-short": "1.0.0"}
    assert device["labels"] == {"site": "a"} and "credential_hash" not in device
    with pytest.raises(NotFoundError, match="no device 'nope'"):
        store.get_device(device_id="nope")
    store.revoke_device(device_id="cam-2", at=20.0)
    assert store.device_standings(device_ids={"cam-1", "cam-2", "nope"}) == {
        "cam-1": "active", "cam-2": "revoked", "nope": "unknown"}
    assert {d: store.device_standing(device_id=d) for d in ("cam-1", "cam-2", "nope")} == {
        "cam-1": "active", "cam-2": "revoked", "nope": "unknown"}
    assert store.device_standings(device_ids=set()) == {}


def test_input_health_is_stored_per_source_and_an_older_report_loses(store: Store) -> None:
    store.add_device(device_id="cam-1", group="lobby")
    assert store.get_device(device_id="cam-1")["inputs"] == {}
    dark = InputHealth(brightness=12.5, contrast=6.0, sharpness=0.4, frozen_frames=0,
                       problems=("dark", "low-contrast"))
    store.record_telemetry(device_id="cam-1", at=20.0, values={"frames.door": 9.0},
                           inputs={"door": dark})
    stale = InputHealth(brightness=120.0, contrast=60.0, sharpness=0.4, frozen_frames=0)
    store.record_telemetry(device_id="cam-1", at=10.0, values={}, inputs={"door": stale})
    device = store.get_device(device_id="cam-1")
    assert device["inputs"] == {"door": dark}
    assert device["telemetry_at"] == 20.0


def test_events_are_stored_once_and_verdicts_once(store: Store) -> None:
    assert store.add_event(**_event("e1"))
    assert not store.add_event(**_event("e1"))  # a QoS 1 duplicate
    store.set_verdict(event_id="e1", outcome="confirmed", detections=[], model="m",
                      version="1", inference_ms=3.0, decided_at=1001.0, handled_by="hub-a")
    store.set_verdict(event_id="e1", outcome="rejected", detections=[], model="m",
                      version="1", inference_ms=3.0, decided_at=1002.0, handled_by="hub-b")
    event = store.get_event(event_id="e1")
    assert event["outcome"] == "confirmed" and event["handled_by"] == "hub-a"
    assert event["has_crop"] and store.event_image(event_id="e1", kind="crop") == b"\xff\xd8crop"


def test_a_batch_is_stored_once_each_whatever_its_rows_hold(store: Store) -> None:
    store.add_device(device_id="cam-1", group="g")
    store.add_device(device_id="cam-2", group="g")
    assert store.add_events([_event("b0")]) == {"b0"}
    # Rows with different columns (a frame size, an anomaly score), an id twice in the
    # batch, an id stored before: each new id once, the stored one untouched.
    new = store.add_events([
        _event("b2", device="cam-2", frame_width=640, frame_height=480),
        _event("b1", anomaly_score=-0.5, crop=None),
        _event("b0", device="cam-2", source="yard"),
        _event("b1", anomaly_score=-0.5, crop=None),
    ], seen={"cam-1": 1234.0, "cam-2": 1235.0})
    assert new == {"b1", "b2"}
    assert store.get_device(device_id="cam-1")["last_seen"] == 1234.0
    assert store.get_device(device_id="cam-2")["last_seen"] == 1235.0
    first = store.set_verdicts([
        NewVerdict("b2", "confirmed", [{"box": [1, 2, 3, 4]}], "m", "1", 2.0, 1001.0, "hub-a"),
        NewVerdict("b1", "rejected", [], "m", "1", 3.0, 1002.0, "hub-a"),
        NewVerdict("gone", "rejected", [], "m", "1", 3.0, 1002.0, "hub-a"),
    ])
    # The events as stored come back: another replica's verdict where it was first.
    later = store.set_verdicts([NewVerdict("b2", "rejected", [], "m", "1", 4.0, 1003.0,
                                           "hub-b")])
    assert sorted(first) == ["b1", "b2"] and sorted(later) == ["b2"]
    assert later["b2"]["outcome"] == "confirmed" and later["b2"]["handled_by"] == "hub-a"
    assert later["b2"]["hub_detections"] == [{"box": [1, 2, 3, 4]}]
    assert later["b2"]["frame_size"] == (640, 480)
    assert first["b1"]["anomaly_score"] == -0.5 and not first["b1"]["has_crop"]
    assert first["b1"]["outcome"] == "rejected" and first["b1"]["frame_size"] is None
    assert first == {k: store.get_event(event_id=k) for k in ("b1", "b2")}
    stored_first = store.get_event(event_id="b0")
    assert stored_first["device_id"] == "cam-1" and stored_first["source"] == "door"
    assert stored_first["outcome"] is None
    assert store.set_verdicts([]) == {}


def test_ingest_sql_takes_hostile_text_as_values_and_refuses_unknown_columns(
        store: Store) -> None:
    """Ingest's statements are SQL text: values stay parameters (quotes, a percent sign,
    SQL in a device's strings are stored as sent), a column that is not the table's is
    refused before any SQL is built, and a batch beyond one statement's rows is stored
    whole."""
    hostile = "door'); DROP TABLE events; -- 100% \\ \"x\""
    assert store.add_events([_event("h1", source=hostile, edge_model="m%s%(x)s")]) == {"h1"}
    stored = store.set_verdicts([NewVerdict("h1", "rejected", [{"label": hostile}], "m",
                                            "1", 1.0, 1001.0, "hub-a")])["h1"]
    assert stored["source"] == hostile and stored["edge_model"] == "m%s%(x)s"
    assert stored["hub_detections"] == [{"label": hostile}]
    with pytest.raises(StoreError, match="no column"):
        store.add_events([_event("h2", **{"source = 'x'; --": "y"})])
    many = [_event(f"m{k:04d}", crop=None, thumbnail=None) for k in range(1100)]
    assert store.add_events(many) == {f"m{k:04d}" for k in range(1100)}
    assert store.add_events(many) == set()


def test_cursor_pagination_and_filters(store: Store) -> None:
    for i in range(7):
        store.add_event(**_event(f"e{i}", device="cam-1" if i % 2 else "cam-2",
                                 received_at=100.0 + i, captured_at=float(i),
                                 reason="audit" if i in (2, 5) else "uncertain"))
    store.set_verdict(event_id="e3", outcome="rejected", detections=[], model="m",
                      version="1", inference_ms=1, decided_at=1, handled_by="h")
    first = store.list_events(limit=3)
    assert [e["id"] for e in first.items] == ["e6", "e5", "e4"]
    second = store.list_events(limit=3, cursor=first.next_cursor)
    assert [e["id"] for e in second.items] == ["e3", "e2", "e1"]
    last = store.list_events(limit=3, cursor=second.next_cursor)
    assert [e["id"] for e in last.items] == ["e0"] and last.next_cursor is None
    assert [e["id"] for e in store.list_events(device_id="cam-1").items] == ["e5", "e3", "e1"]
    assert [e["id"] for e in store.list_events(outcome="rejected").items] == ["e3"]
    assert len(store.list_events(outcome="pending").items) == 6
    assert [e["id"] for e in store.list_events(since=2.0, until=4.0).items] == ["e3", "e2"]
    assert [e["id"] for e in store.list_events(reason="audit").items] == ["e5", "e2"]
    assert [e["id"] for e in store.list_events(reason="audit", device_id="cam-2").items] == [
        "e2"]
    with pytest.raises(StoreError, match="invalid cursor"):
        store.list_events(cursor="@@@")


def test_retention_prunes_images_before_metadata(store: Store) -> None:
    now = time.time()
    store.add_event(**_event("old", received_at=now - 100 * 86400))
    store.add_event(**_event("middle", received_at=now - 10 * 86400))
    store.add_event(**_event("new", received_at=now))
    pruned, deleted = store.prune(images_before=now - 7 * 86400,
                                  events_before=now - 90 * 86400, images_idle_before=now)
    assert (pruned, deleted) == (2, 1)
    middle = store.get_event(event_id="middle")
    assert not middle["has_crop"] and store.event_image(event_id="middle", kind="crop") is None
    assert store.get_event(event_id="new")["has_crop"]
    with pytest.raises(NotFoundError):
        store.get_event(event_id="old")


def test_models_tokens_and_counts(store: Store) -> None:
    store.add_model(name="m", version="1.0.0", task="detector", runtime="onnx",
                    sha256="a" * 64, size_bytes=10, path="/x")
    store.add_model(name="m", version="1.0.0", task="detector", runtime="onnx",
                    sha256="a" * 64, size_bytes=10, path="/x")
    assert len(store.list_models(name="m")) == 1
    store.add_token(name="ops", role="operator", token_hash="h" * 64)
    assert store.token_role(token_hash="h" * 64) == ("ops", "operator")
    assert store.token_role(token_hash="x" * 64) is None
    store.add_event(**_event("e1", device="cam-9"))
    counts = store.event_counts(since=0)
    assert counts["by_device"] == {"cam-9": 1} and counts["by_outcome"] == {"pending": 1}


def test_event_totals_come_from_the_covering_index(store: Store) -> None:
    store.add_event(**_event("t1", device="cam-1", received_at=50.0))
    store.add_event(**_event("t2", device="cam-1", received_at=150.0, captured_at=149.0))
    store.add_event(**_event("t3", device="cam-2", received_at=160.0))
    store.set_verdict(event_id="t2", outcome="confirmed", detections=[], model="m",
                      version="1", inference_ms=1, decided_at=149.5, handled_by="h")
    totals = store.event_totals(since=100.0)
    assert dict(totals.by_outcome) == {"confirmed": 1, "pending": 1}
    assert dict(totals.by_device) == {"cam-1": 1, "cam-2": 1}
    assert totals.mean_verdict_latency_s == pytest.approx(0.5)
    if store.dialect != "sqlite":
        return  # PostgreSQL's planner picks by table statistics; SQLite's plan is fixed
    with store.engine.connect() as conn:
        compiled = totals_query(100.0).compile(store.engine,
                                               compile_kwargs={"literal_binds": True})
        plan = " ".join(str(row[-1]) for row in conn.execute(
            sa.text(f"EXPLAIN QUERY PLAN {compiled}")))
    # Only the index is read: never the rows, whose pages hold the images.
    assert "SEARCH events USING COVERING INDEX ix_events_totals" in plan, plan


def test_fleet_health_and_rollout_steps(store: Store) -> None:
    store.add_device(device_id="cam-1", group="lobby")
    store.add_device(device_id="cam-2", group="lobby")
    store.record_status(device_id="cam-1", online=True, at=10.0, models={"m": "1"},
                        backend="litert", agent_version="0.3.0")
    store.record_telemetry(device_id="cam-1", at=20.0, values={"outbox_events": 7.0,
                                                               "healthy.door": 1.0})
    store.record_telemetry(device_id="cam-1", at=15.0, values={"outbox_events": 99.0})
    for step, reason, at in (("refused", "bad signature", 1.0), ("committed", "", 2.0)):
        store.add_update_report(device_id="cam-2", rollout_id="r1", model="m", version="2",
                                step=step, reason=reason, at=at)
    store.add_update_report(device_id="cam-1", rollout_id="r1", model="m", version="2",
                            step="staged", reason="", at=3.0)
    first, second = store.fleet_health()
    assert (first.id, first.online, first.agent_version) == ("cam-1", True, "0.3.0")
    assert dict(first.telemetry) == {"outbox_events": 7.0, "healthy.door": 1.0}
    assert first.telemetry_at == 20.0 and first.last_error is None
    assert second.telemetry == () and second.last_error is not None
    assert (second.last_error.step, second.last_error.reason) == ("refused", "bad signature")
    assert [(s.device_id, s.step) for s in store.rollout_steps(rollout_id="r1")] == [
        ("cam-1", "staged"), ("cam-2", "committed")]


def test_hubs_starting_together_migrate_once(store: Store) -> None:
    import threading

    url = store.url.replace("hub.sqlite3", "race.sqlite3")
    if store.dialect == "postgresql":
        # A fresh schema for the race, on the same server.
        schema = f"race_{int(time.time() * 1e6)}"
        with store.engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        url = store.url.rsplit("search_path%3D", 1)[0] + f"search_path%3D{schema}"
    errors: list[BaseException] = []
    stores = [Store(url) for _ in range(4)]

    def open_one(candidate: Store) -> None:
        try:
            candidate.open()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert errors == []
        with stores[0].engine.connect() as conn:
            versions = [r[0] for r in conn.execute(sa.select(migrations_table.c.version))]
        assert versions == list(range(1, SCHEMA_VERSION + 1))
    finally:
        for candidate in stores:
            candidate.close()
        if store.dialect == "postgresql":
            with store.engine.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))


def _rollout(devices: list[str]) -> Rollout:
    return start(rollout_id="r-cas", model="m", version="1.1.0", group="g", devices=devices,
                 canary_percent=100)


def test_a_rollout_change_that_lost_a_race_is_applied_again_to_the_winner(
    store: Store,
) -> None:
    store.add_rollout(rollout=_rollout(["cam-a", "cam-b", "cam-c"]))
    other_hub = Store(store.url, connect_args=store._connect_args)
    other_hub.open()
    seen: list[Rollout] = []

    def report_a(current: Rollout) -> Rollout:
        seen.append(current)
        if len(seen) == 1:  # another hub stores cam-b's report between our read and write
            other_hub.update_rollout(rollout_id="r-cas",
                                     change=lambda r: on_report(r, "cam-b", "committed"))
        return on_report(current, "cam-a", "committed")

    try:
        change = store.update_rollout(rollout_id="r-cas", change=report_a)
    finally:
        other_hub.close()
    assert len(seen) == 2 and seen[1].outcome("cam-b") == "committed"
    assert dict(change.after.results) == {"cam-a": "committed", "cam-b": "committed"}
    assert Rollout.from_dict(store.get_rollout(rollout_id="r-cas")) == change.after
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(rollouts.c.revision)).scalar_one() == 2
    unchanged = store.update_rollout(rollout_id="r-cas",
                                     change=lambda r: on_report(r, "cam-a", "committed"))
    assert unchanged.before == unchanged.after == change.after
    with pytest.raises(NotFoundError):
        store.update_rollout(rollout_id="r-none", change=lambda r: r)
    with pytest.raises(StoreError):
        store.add_rollout(rollout=_rollout(["cam-a"]))  # the id is taken


def test_rollouts_of_a_schema_2_database_get_their_revision(store: Store) -> None:
    store.add_rollout(rollout=_rollout(["cam-a", "cam-b"]))
    with store.engine.begin() as conn:  # back to schema 2: no revision column
        conn.execute(sa.text("ALTER TABLE rollouts DROP COLUMN revision"))
        conn.execute(migrations_table.delete().where(migrations_table.c.version == 3))
    upgraded = Store(store.url, connect_args=store._connect_args)
    upgraded.open()
    try:
        change = upgraded.update_rollout(
            rollout_id="r-cas", change=lambda r: on_report(r, "cam-a", "committed"))
        assert change.after.outcome("cam-a") == "committed"
        with upgraded.engine.connect() as conn:
            assert conn.execute(sa.select(rollouts.c.revision)).scalar_one() == 1
    finally:
        upgraded.close()


def _with_images(store: Store, root: Path) -> Store:
    """The same database, opened as the hub opens it: images in a file image store."""
    upgraded = Store(store.url, connect_args=store._connect_args,
                     images=FileImageStore(root, max_image_bytes=1 << 20))
    upgraded.open()
    return upgraded


def test_images_live_in_the_image_store_and_old_rows_are_still_served(
    store: Store, tmp_path: Path,
) -> None:
    store.add_event(**_event("blob-row"))  # as before schema 7: bytes in the row
    hub = _with_images(store, tmp_path / "images")
    try:
        hub.add_event(**_event("ref-row", crop=b"\xff\xd8new-crop"))
        with hub.engine.connect() as conn:
            row = conn.execute(sa.select(events.c.crop, events.c.crop_ref)
                               .where(events.c.id == "ref-row")).one()
        assert row[0] is None and row[1] == hashlib.sha256(b"\xff\xd8new-crop").hexdigest()
        assert hub.event_image(event_id="ref-row", kind="crop") == b"\xff\xd8new-crop"
        assert hub.event_image(event_id="blob-row", kind="crop") == b"\xff\xd8crop"
        assert hub.get_event(event_id="ref-row")["has_thumbnail"]
        assert "crop_ref" not in hub.get_event(event_id="ref-row")
    finally:
        hub.close()


def test_retention_deletes_only_images_no_event_references(store: Store, tmp_path: Path) -> None:
    hub = _with_images(store, tmp_path / "images")
    images = hub.images
    assert isinstance(images, FileImageStore)
    try:
        now = time.time()
        hub.add_event(**_event("old", received_at=now - 10 * 86400, crop=b"\xff\xd8old"))
        hub.add_event(**_event("new", received_at=now, crop=b"\xff\xd8new"))  # same thumb
        old_crop, shared = (hashlib.sha256(b).hexdigest()
                            for b in (b"\xff\xd8old", b"\xff\xd8thumb"))
        assert hub.prune(images_before=now - 7 * 86400, events_before=now - 90 * 86400,
                         images_idle_before=now + 1) == (1, 0)  # every file idle
        assert not images.path(old_crop).exists()
        assert images.path(shared).exists()  # the newer event's thumbnail still
        assert hub.event_image(event_id="new", kind="thumbnail") == b"\xff\xd8thumb"
        hub.prune(images_before=now + 1, events_before=now - 90 * 86400,
                  images_idle_before=now + 1)
        assert not images.path(shared).exists()
    finally:
        hub.close()


def test_retention_never_deletes_an_image_a_new_event_is_about_to_reference(
        store: Store, tmp_path: Path) -> None:
    """The race, its steps called in the bad order: ingest puts an image already there
    (the same bytes as an old event's), retention finds no committed reference to it and
    deletes, ingest then commits the row naming it. The put's touch keeps it."""
    hub = _with_images(store, tmp_path / "images")
    images = hub.images
    assert isinstance(images, FileImageStore)
    try:
        now = time.time()
        crop = b"\xff\xd8same-bytes"
        hub.add_event(**_event("old", received_at=now - 10 * 86400, crop=crop,
                               thumbnail=None))
        ref = hashlib.sha256(crop).hexdigest()
        os.utime(images.path(ref), (now - 10 * 86400, now - 10 * 86400))  # put back then
        assert images.put(crop) == ref  # ingest's first step: the file is there
        assert hub.prune(images_before=now - 7 * 86400, events_before=now - 90 * 86400,
                         images_idle_before=now - IMAGE_GRACE_S) == (1, 0)
        with hub.engine.begin() as conn:  # ingest's second step: the row commits
            conn.execute(events.insert().values(
                **_event("new", received_at=now, crop=None, thumbnail=None, crop_ref=ref)))
        assert hub.event_image(event_id="new", kind="crop") == crop
        assert [p.name for p in images.path(ref).parent.iterdir()] == [ref]  # no tombstone
        hub.prune(images_before=now + 1, events_before=now - 90 * 86400,
                  images_idle_before=now - IMAGE_GRACE_S)
        assert images.path(ref).exists()  # unreferenced now, but put less than the grace ago
    finally:
        hub.close()


def test_a_schema_8_database_gets_image_references(store: Store, tmp_path: Path) -> None:
    store.add_event(**_event("before"))
    with store.engine.begin() as conn:  # back to schema 8: no reference columns
        for name in ("ix_events_crop_ref", "ix_events_thumbnail_ref"):
            conn.execute(sa.text(f"DROP INDEX {name}"))
        for column in ("crop_ref", "thumbnail_ref"):
            conn.execute(sa.text(f"ALTER TABLE events DROP COLUMN {column}"))
        conn.execute(migrations_table.delete().where(migrations_table.c.version == 9))
    hub = _with_images(store, tmp_path / "images")
    try:
        assert hub.event_image(event_id="before", kind="thumbnail") == b"\xff\xd8thumb"
        hub.add_event(**_event("after"))
        assert hub.event_image(event_id="after", kind="thumbnail") == b"\xff\xd8thumb"
        assert {i["name"] for i in sa.inspect(hub.engine).get_indexes("events")} >= {
            "ix_events_crop_ref", "ix_events_thumbnail_ref"}
    finally:
        hub.close()


def test_retention_waits_for_a_put_of_this_hub_to_commit(store: Store, tmp_path: Path) -> None:
    """The race inside one hub, with no grace period to help (every image idle): ingest
    is held between its put and its commit while retention starts; retention must wait
    at the gate rather than find no reference and delete."""
    put_done, may_commit = threading.Event(), threading.Event()

    class HeldImages(FileImageStore):
        def _write(self, ref: str, data: bytes) -> None:
            super()._write(ref, data)
            if threading.current_thread().name == "ingest":
                put_done.set()
                assert may_commit.wait(30)  # hang guard only

    hub = Store(store.url, connect_args=store._connect_args,
                images=HeldImages(tmp_path / "images", max_image_bytes=1 << 20))
    hub.open()
    try:
        now = time.time()
        crop = b"\xff\xd8same-bytes"
        hub.add_event(**_event("old", received_at=now - 10 * 86400, crop=crop,
                               thumbnail=None))
        ingest = threading.Thread(name="ingest", target=lambda: hub.add_event(
            **_event("new", received_at=now, crop=crop, thumbnail=None)))
        retention = threading.Thread(name="retention", target=lambda: hub.prune(
            images_before=now - 7 * 86400, events_before=now - 90 * 86400,
            images_idle_before=now + 3600))
        ingest.start()
        assert put_done.wait(30)
        retention.start()
        deadline = time.monotonic() + 30  # hang guard only
        while retention.is_alive() and not hub._image_gate._deleting:  # finished or waiting
            assert time.monotonic() < deadline
            time.sleep(0.001)
        may_commit.set()
        ingest.join(30)
        retention.join(30)
        assert not ingest.is_alive() and not retention.is_alive()
        assert hub.event_image(event_id="new", kind="crop") == crop
    finally:
        may_commit.set()
        hub.close()
