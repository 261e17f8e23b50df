"""An agent-side producer for fault tests: sensor-window escalations through the agent's
real delivery path (its :class:`~edge_agent.delivery.Outbox` and
:class:`~edge_agent.delivery.Uplink`).

``python -m tests.support.producer PLAN.json`` escalates events ``0 .. total-1`` of one
provisioned device at ``rate_per_s``, each an :class:`~sync.EventMessage` as
``edge_agent.escalation.window_event`` builds them (the cheapest event the hub judges: no
image, so no detector run). Event ``i`` always has the same id (:func:`event_id`), so a
restarted producer continues where its ledger ends and an event committed just before a
``kill -9`` is committed again under the same id (the hub stores each id once).

Three files tell the test what happened, each surviving ``kill -9`` of this process:

- the **ledger**: for each commit of the outbox, a line ``index event_id unix_time`` per
  stored event, appended and flushed from the uplink's ``on_stored`` callback (the same
  thread that committed, before any of them is published);
- the **drops**: ``event_id reason`` for every event the agent gave up on;
- the **status**: a JSON :class:`ProducerStatus`, replaced atomically twice a second.

SIGTERM stops the uplink the way the agent stops it (commit, announce offline, close).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_agent.config import MqttConfig, OutboxConfig
from edge_agent.delivery.outbox import Outbox, OutboxItem
from edge_agent.delivery.uplink import Uplink
from sync import EventMessage, ModelRef, StatusMessage, TopicLayout, encode, uuid7_from

STATUS_INTERVAL_S = 0.5
WINDOW = 60  # readings per sensor window, as the agent's default anomaly model takes
_TAIL_BITS = 2**62 - 1


def event_id(base_ms: int, index: int) -> str:
    """The id of event ``index`` of a run whose ids start at ``base_ms``."""
    return uuid7_from(base_ms + index, index & 0xFFF, index)


def event_index(value: str) -> int:
    """The index :func:`event_id` encoded in ``value``."""
    return int(value.replace("-", ""), 16) & _TAIL_BITS


@dataclass(frozen=True, slots=True)
class ProducerPlan:
    """What one producer process does; written by the test, read by the process."""

    port: int
    username: str
    password: str
    device_id: str
    outbox: str
    ledger: str
    drops: str
    status: str
    total: int
    rate_per_s: float
    id_base_ms: int
    reconnect_max_s: float = 1.0
    # above the agent's default, so that the backlog of the 60 s outage drains in seconds
    # on top of the live stream instead of in minutes
    drain_rate_per_s: float = 400.0

    def write(self, path: Path) -> None:
        """Save as JSON."""
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, path: Path) -> ProducerPlan:
        """Load from JSON."""
        return cls(**json.loads(path.read_text()))


@dataclass(frozen=True, slots=True)
class ProducerStatus:
    """The producer's last published state."""

    pid: int
    next_index: int
    done: bool
    connected: bool
    outbox_depth: int
    inflight: int
    published: int
    acknowledged: int
    dropped: int


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One committed event."""

    index: int
    event_id: str
    committed_at: float


def read_ledger(path: Path) -> list[LedgerEntry]:
    """Every complete line of a ledger (a line cut short by ``kill -9`` is skipped)."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and len(parts[1]) == 36:
            entries.append(LedgerEntry(int(parts[0]), parts[1], float(parts[2])))
    return entries


def read_drops(path: Path) -> list[tuple[str, str]]:
    """``(event_id, reason)`` of every event the agent dropped."""
    if not path.exists():
        return []
    drops = []
    for line in path.read_text().splitlines():
        event, _, reason = line.partition(" ")
        if len(event) == 36:
            drops.append((event, reason))
    return drops


def read_status(path: Path) -> ProducerStatus | None:
    """The last status written, if any."""
    try:
        return ProducerStatus(**json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def window_message(device_id: str, base_ms: int, index: int) -> EventMessage:
    """Sensor window ``index``: a daily-cycle-like curve; every third one anomalous."""
    readings = tuple(20.0 + 5.0 * math.sin((index + k) / 9.0) for k in range(WINDOW))
    return EventMessage(
        event_id=event_id(base_ms, index), device_id=device_id, source="line-1",
        captured_at=time.time(), reason="anomaly", priority=5,
        model=ModelRef(name="sensor-anomaly", version="1.0.0"),
        anomaly_score=-0.05 if index % 3 == 0 else 0.02, readings=readings,
    )


def main() -> int:
    """Run one producer until SIGTERM."""
    plan = ProducerPlan.read(Path(sys.argv[1]))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    layout = TopicLayout()
    committed = read_ledger(Path(plan.ledger))
    start = max((entry.index for entry in committed), default=-1) + 1
    ledger = Path(plan.ledger).open("a")  # noqa: SIM115 - open for the process's life
    drops = Path(plan.drops).open("a")  # noqa: SIM115 - open for the process's life

    def on_stored(items: list[OutboxItem]) -> None:
        now = time.time()
        ledger.write("".join(f"{event_index(item.event_id)} {item.event_id} {now:.3f}\n"
                             for item in items))
        ledger.flush()

    def on_drop(event: str, reason: str) -> None:
        drops.write(f"{event} {reason}\n")
        drops.flush()

    uplink = Uplink(
        device_id=plan.device_id,
        config=MqttConfig(port=plan.port, username=plan.username, password=plan.password,
                          reconnect_min_s=0.1, reconnect_max_s=plan.reconnect_max_s,
                          drain_rate_per_s=plan.drain_rate_per_s),
        outbox=Outbox(Path(plan.outbox), OutboxConfig()), layout=layout,
        status=lambda state: StatusMessage(device_id=plan.device_id, state=state,
                                           at=time.time()),
        on_stored=on_stored, on_drop=on_drop,
    )
    uplink.start()
    began = time.monotonic()
    next_status = 0.0
    index = start
    while not stop.is_set():
        now = time.monotonic()
        if now >= next_status:
            _write_status(plan, uplink, index)
            next_status = now + STATUS_INTERVAL_S
        if index >= plan.total:
            stop.wait(STATUS_INTERVAL_S)
            continue
        due = began + (index - start) / plan.rate_per_s
        if due > now:
            stop.wait(min(due - now, STATUS_INTERVAL_S))
            continue
        message = window_message(plan.device_id, plan.id_base_ms, index)
        uplink.submit(OutboxItem(message.event_id, layout.events(plan.device_id),
                                 encode(message), message.priority, time.time()))
        index += 1
    uplink.stop()
    _write_status(plan, uplink, index)
    return 0


def _write_status(plan: ProducerPlan, uplink: Uplink, next_index: int) -> None:
    counters = uplink.counters()
    status = ProducerStatus(
        pid=os.getpid(), next_index=next_index, done=next_index >= plan.total,
        connected=counters.connected, outbox_depth=counters.outbox_depth,
        inflight=counters.inflight, published=counters.published,
        acknowledged=counters.acknowledged, dropped=counters.dropped,
    )
    partial = Path(plan.status + ".partial")
    partial.write_text(json.dumps(asdict(status)))
    partial.replace(plan.status)


if __name__ == "__main__":
    sys.exit(main())
