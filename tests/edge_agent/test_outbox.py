"""The durable outbox: bounds, priorities, TTL, and restarts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge_agent.config import OutboxConfig
from edge_agent.delivery.outbox import Outbox, OutboxClock, PendingChanges, PendingRecord
from edge_agent.errors import OutboxError
from sync import TopicLayout
from tests.edge_agent.helpers import event_id, event_item

pytestmark = pytest.mark.unit

LAYOUT = TopicLayout()


def _outbox(tmp_path: Path, clock: list[float] | None = None, *, mono: list[float] | None = None,
            boot: str = "boot-1", **limits: object) -> Outbox:
    now = clock if clock is not None else [1000.0]
    ticks = mono if mono is not None else [50.0]
    box = Outbox(tmp_path / "outbox.sqlite3", OutboxConfig.model_validate(limits),
                 clock=OutboxClock(lambda: now[0], lambda: ticks[0], boot))
    box.open()
    return box


def test_survives_reopen_and_deletes_only_acknowledged(tmp_path: Path) -> None:
    box = _outbox(tmp_path)
    result = box.commit([event_item(LAYOUT, "cam", i) for i in range(10)])
    assert len(result.stored) == 10 and [s.seq for s in result.stored] == list(range(1, 11))
    stored = {item.seq: item for item in result.stored}
    box.commit(acked=[(1, stored[1].cost), (2, stored[2].cost), (999, 4096)])  # 999: never stored
    box.close()
    again = _outbox(tmp_path)
    assert again.count == 8
    assert [item.event_id for item in again.after(0, 100)] == [event_id(i) for i in range(2, 10)]
    # Sequence numbers are never reused, so a sender's cursor stays valid.
    again.commit(acked=[(item.seq, item.cost) for item in again.after(0, 100)])
    assert again.commit([event_item(LAYOUT, "cam", 99)]).stored[0].seq == 11


def test_evicts_lowest_priority_oldest_first(tmp_path: Path) -> None:
    box = _outbox(tmp_path, max_events=5)
    box.commit([event_item(LAYOUT, "cam", i, priority=p)
                for i, p in enumerate([5, 1, 8, 1, 5])])
    result = box.commit([event_item(LAYOUT, "cam", 10, priority=5),
                         event_item(LAYOUT, "cam", 11, priority=8)])
    assert [reason for _, reason in result.dropped] == ["evicted", "evicted"]
    assert [eid for eid, _ in result.dropped] == [event_id(1), event_id(3)]
    kept = {item.event_id for item in box.after(0, 10)}
    assert kept == {event_id(i) for i in (0, 2, 4, 10, 11)}
    # A newcomer that ranks below everything kept is the one dropped.
    box.commit([event_item(LAYOUT, "cam", 20, priority=8)])  # evicts 0 (priority 5)
    low = box.commit([event_item(LAYOUT, "cam", 21, priority=0)])
    assert low.dropped == [(event_id(21), "outranked-full")]
    assert box.drops() == {"evicted": 3, "outranked-full": 1}


def test_refuse_policy(tmp_path: Path) -> None:
    box = _outbox(tmp_path, max_events=3, when_full="refuse")
    result = box.commit([event_item(LAYOUT, "cam", i, priority=9) for i in range(5)])
    assert len(result.stored) == 3
    assert result.dropped == [(event_id(3), "refused-full"), (event_id(4), "refused-full")]


def test_ttl_expiry_on_the_monotonic_clock_ignores_wall_clock_steps(tmp_path: Path) -> None:
    clock, mono = [1000.0], [50.0]
    box = _outbox(tmp_path, clock, mono=mono, ttl_s=60)
    box.commit([event_item(LAYOUT, "cam", 1, created_mono=0.0 + 1),
                event_item(LAYOUT, "cam", 2, created_mono=40.0)])
    # NTP steps the wall clock 25 h ahead (a device booted with a stale clock): nothing
    # buffered in this boot has aged by that.
    clock[0] += 25 * 3600
    assert box.commit().dropped == []
    mono[0] = 70.0  # 69 s after event 1 was made, 30 s after event 2
    assert box.commit().dropped == [(event_id(1), "expired")]
    assert box.count == 1 and box.drops() == {"expired": 1}


def test_rows_of_an_earlier_boot_age_by_the_wall_clock(tmp_path: Path) -> None:
    clock = [1000.0]
    box = _outbox(tmp_path, clock, mono=[5000.0], boot="boot-1", ttl_s=60)
    box.commit([event_item(LAYOUT, "cam", 1, created_at=950.0),
                event_item(LAYOUT, "cam", 2, created_at=990.0)])
    box.close()
    clock[0] = 1045.0  # after a reboot the monotonic clock restarts near zero
    again = _outbox(tmp_path, clock, mono=[3.0], boot="boot-2", ttl_s=60)
    assert again.commit().dropped == [(event_id(1), "expired")]


def test_confirmed_by_id_and_pending_waits_survive_reopen(tmp_path: Path) -> None:
    box = _outbox(tmp_path)
    waits = [PendingRecord(event_id(i), "cam", i % 2 == 0, ((1.0, 2.0, 3.0, 4.0),), 60.0 + i,
                           "boot-1") for i in range(3)]
    items = [event_item(LAYOUT, "cam", i) for i in range(3)]
    from dataclasses import replace

    box.commit([replace(item, pending=wait) for item, wait in zip(items, waits, strict=True)])
    result = box.commit(confirmed_ids=[event_id(0), event_id(7)],
                        pending=PendingChanges(resolved=(event_id(0),),
                                               fell_back=(event_id(1),)))
    assert result.confirmed == [(1, event_id(0))] and box.count == 2
    box.close()
    again = _outbox(tmp_path)
    assert [item.event_id for item in again.after(0, 10)] == [event_id(1), event_id(2)]
    assert again.pending() == [replace(waits[1], fell_back=True), waits[2]]


def test_byte_bound_holds_on_disk(tmp_path: Path) -> None:
    limit = 1024 * 1024
    box = _outbox(tmp_path, max_bytes=limit, max_events=100_000)
    for batch in range(40):
        box.commit([event_item(LAYOUT, "cam", batch * 50 + i, padding=4000,
                               priority=batch % 3) for i in range(50)])
        assert box.file_bytes() <= limit, f"after batch {batch}: {box.file_bytes()} bytes"
    assert box.stored_bytes <= box.byte_budget
    drops = box.drops()
    assert drops["evicted"] > 0 and sum(drops.values()) > 1000
    assert box.count + sum(drops.values()) == 2000
    too_big = box.commit([event_item(LAYOUT, "cam", 5000, padding=limit)])
    assert too_big.dropped == [(event_id(5000), "too-large")]


def test_drop_counts_survive_restart(tmp_path: Path) -> None:
    box = _outbox(tmp_path, max_events=1, when_full="refuse")
    box.commit([event_item(LAYOUT, "cam", i) for i in range(3)])
    box.close()
    assert _outbox(tmp_path, max_events=1).drops() == {"refused-full": 2}


def test_a_file_that_is_not_a_database_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    box = Outbox(path, OutboxConfig())
    box.open()
    assert box.count == 0 and box.salvage is not None
    assert box.salvage.recovered == 0 and box.salvage.moved_to.exists()
    assert "not a database" in box.salvage.reason
    box.commit([event_item(LAYOUT, "cam", 1)])  # a working outbox again
    assert box.count == 1


def test_a_damaged_outbox_is_salvaged_into_a_fresh_one(tmp_path: Path) -> None:
    box = _outbox(tmp_path, max_bytes=64 * 1024 * 1024)
    box.commit([event_item(LAYOUT, "cam", i, padding=3000) for i in range(200)])
    page = box.page_size
    box.close()
    path = tmp_path / "outbox.sqlite3"
    data = bytearray(path.read_bytes())
    middle = len(data) // page // 2
    for offset in range(middle * page, (middle + 3) * page):  # garbage over table pages
        data[offset] = 0xA5
    path.write_bytes(bytes(data))
    again = _outbox(tmp_path)
    report = again.salvage
    assert report is not None and report.moved_to.exists()
    # Most events survive; those on the damaged pages are lost, and counted as unreadable.
    assert 100 <= report.recovered < 200 and report.unreadable > 0
    assert again.count == report.recovered
    kept = {item.event_id for item in again.after(0, 1000)}
    assert kept <= {event_id(i) for i in range(200)}


def test_a_full_disk_raises_full_and_keeps_nothing_of_the_commit(tmp_path: Path) -> None:
    box = _outbox(tmp_path, max_bytes=64 * 1024 * 1024)
    box.commit([event_item(LAYOUT, "cam", 0)])
    pages = int(box.conn.execute("PRAGMA page_count").fetchone()[0])
    box.conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLITE_FULL, as on a full disk
    with pytest.raises(OutboxError) as failure:
        box.commit([event_item(LAYOUT, "cam", 1 + i, padding=8000) for i in range(20)])
    assert failure.value.full
    assert box.count == 1
    box.conn.execute("PRAGMA max_page_count = 1000000")  # space returns
    assert len(box.commit([event_item(LAYOUT, "cam", 50)]).stored) == 1
    assert {row[0] for row in sqlite3.connect(tmp_path / "outbox.sqlite3").execute(
        "SELECT event_id FROM outbox")} == {event_id(0), event_id(50)}


def test_disk_cost_estimates_pages_never_low() -> None:
    from edge_agent.delivery.outbox import disk_cost

    assert disk_cost(100, 4096) == 4096 // ((4096 - 35) // 300)  # rows share a page
    assert disk_cost(3000, 4096) == 4096  # one per page
    assert disk_cost(4000, 4096) == 2 * 4096  # spills into one overflow page
    assert disk_cost(3000, 16384) == 16384 // 5
    assert disk_cost(100_000, 16384) == 16384 * 7  # a leaf part and six overflow pages
    for size in (10, 1000, 5000, 50_000):
        assert disk_cost(size, 4096) >= size
