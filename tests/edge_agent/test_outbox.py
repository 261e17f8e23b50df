"""The durable outbox: bounds, priorities, TTL, and restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import OutboxConfig
from edge_agent.errors import OutboxError
from edge_agent.outbox import Outbox
from sync import TopicLayout
from tests.edge_agent.helpers import event_id, event_item

pytestmark = pytest.mark.unit

LAYOUT = TopicLayout()


def _outbox(tmp_path: Path, clock: list[float] | None = None, **limits: object) -> Outbox:
    now = clock if clock is not None else [1000.0]
    box = Outbox(tmp_path / "outbox.sqlite3", OutboxConfig.model_validate(limits),
                 clock=lambda: now[0])
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


def test_ttl_expiry(tmp_path: Path) -> None:
    clock = [1000.0]
    box = _outbox(tmp_path, clock, ttl_s=60)
    box.commit([event_item(LAYOUT, "cam", 1, created_at=950.0),
                event_item(LAYOUT, "cam", 2, created_at=990.0)])
    clock[0] = 1045.0
    assert box.commit().dropped == [(event_id(1), "expired")]
    assert box.count == 1 and box.drops() == {"expired": 1}


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


def test_not_an_outbox(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match="cannot open the outbox"):
        Outbox(path, OutboxConfig()).open()


def test_disk_cost_estimates_pages_never_low() -> None:
    from edge_agent.outbox import disk_cost

    assert disk_cost(100, 4096) == 4096 // ((4096 - 35) // 300)  # rows share a page
    assert disk_cost(3000, 4096) == 4096  # one per page
    assert disk_cost(4000, 4096) == 2 * 4096  # spills into one overflow page
    assert disk_cost(3000, 16384) == 16384 // 5
    assert disk_cost(100_000, 16384) == 16384 * 7  # a leaf part and six overflow pages
    for size in (10, 1000, 5000, 50_000):
        assert disk_cost(size, 4096) >= size
