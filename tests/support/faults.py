"""A fleet of real processes to break: Mosquitto, ``cloud-hub serve`` replicas, one agent.

:class:`FaultRig` sets up what ``cloud-hub demo`` sets up (a private Mosquitto with
production's limits, the dynamic security plugin confining each client to its topics, a
device provisioned through the hub's own code), starts one or more hub processes with the
hub's default settings, and an agent-side :mod:`producer <tests.support.producer>` that
escalates a stream of events through the agent's real outbox and uplink.
:meth:`FaultRig.run_fault_table` then applies the faults of issue 8's table while the
stream flows, and :meth:`FaultRig.finish` compares every event id the agent committed
against the hub's store, in SQL.

A fault is a real signal to a real process: ``kill -9`` (the process loses what it held in
memory), SIGTERM (a clean stop), or a stopped broker. Between two faults the rig waits,
with a deadline, for the agent to commit more events and for its outbox to run low, so
that each fault finds events in flight and a lost event can be put down to the fault
after whose start it was committed.
"""

from __future__ import annotations

import logging
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from cloud_hub.mosquitto import BrokerLimits, MosquittoBroker
from cloud_hub.service import HubService
from cloud_hub.settings import HubSettings
from tests.support.processes import HubProcess, ProducerProcess, kill_broker
from tests.support.producer import (
    LedgerEntry,
    ProducerPlan,
    event_id,
    read_drops,
    read_ledger,
)
from tests.support.waiting import wait_until

log = logging.getLogger(__name__)

DEVICE = "line-sensor-1"
SECRET = "fault-rig-secret-" + "x" * 32
BROKER_DOWN_S = 5.0
OUTAGE_S = 60.0
AGENT_KILLS_IN_OUTAGE = 2
AGENT_KILLS_WHILE_DRAINING = 3
STEP_EVENTS = 40  # committed between two faults, so that each finds events in flight
SETTLED_DEPTH = 25  # outbox depth at which the last fault's backlog counts as drained
SETTLE_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault applied, and when."""

    label: str
    started_at: float
    committed_before: int
    while_producing: bool


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What the hub stored against what the agent committed.

    Attributes:
        committed: Distinct event ids the agent committed to its outbox.
        stored: How many of those the hub stored.
        lost: Committed ids the hub does not have.
        stored_twice: Ids with more than one row at the hub, and their row counts.
        unexpected: Rows at the hub for ids the producer never made.
        lost_by_fault: Lost events by the fault after whose start they were committed.
        agent_drops: Events the agent gave up on, by reason.
        faults: The faults applied, in order.
    """

    committed: int
    stored: int
    lost: tuple[str, ...]
    stored_twice: dict[str, int]
    unexpected: tuple[str, ...]
    lost_by_fault: dict[str, int]
    agent_drops: dict[str, int]
    faults: tuple[Fault, ...] = field(default=())

    def summary(self) -> str:
        """A few lines for an assertion message and the test log."""
        lines = [f"committed {self.committed}, stored at the hub {self.stored}, "
                 f"lost {len(self.lost)}, stored twice {len(self.stored_twice)}, "
                 f"unexpected {len(self.unexpected)}"]
        began = self.faults[0].started_at if self.faults else 0.0
        lines += [f"  +{fault.started_at - began:5.1f} s  {fault.label} (after "
                  f"{fault.committed_before} committed"
                  f"{'' if fault.while_producing else ', the stream had ended'}): lost "
                  f"{self.lost_by_fault.get(fault.label, 0)}" for fault in self.faults]
        if "before any fault" in self.lost_by_fault:
            lines.append(f"  lost before any fault: {self.lost_by_fault['before any fault']}")
        lines += [f"  agent dropped ({reason}): {count}"
                  for reason, count in self.agent_drops.items()]
        lines += [f"  first lost: {', '.join(self.lost[:3])}"] if self.lost else []
        return "\n".join(lines)


class FaultRig:
    """A broker, hub replicas and one agent-side producer, in ``folder``.

    Args:
        folder: Everything goes here (broker state, hub data, outbox, logs).
        model_store: The zoo models the hub loads.
        hubs: How many hub processes share the subscription.
        database_url: The hubs' shared database; ``None`` for the default embedded SQLite
            (one hub only).
        client_ids: Give each hub replica its own ``CLOUD_HUB_MQTT_CLIENT_ID`` (two
            replicas on one host must); otherwise the hub's default.
        total: Events in the stream.
        rate_per_s: Events the agent escalates per second.
    """

    def __init__(self, folder: Path, *, model_store: Path, hubs: int = 1,
                 database_url: str | None = None, client_ids: bool = False,
                 total: int = 5000, rate_per_s: float = 40.0) -> None:
        if database_url is None and hubs != 1:
            raise ValueError("hubs on the embedded SQLite store cannot share it")
        self.folder = folder
        self.total = total
        self.faults: list[Fault] = []
        self.broker = MosquittoBroker(folder / "broker", anonymous=False,
                                      limits=BrokerLimits())
        self.database_url = database_url or f"sqlite:///{folder / 'hub' / 'hub.sqlite3'}"
        self.hubs = [
            HubProcess(f"hub-{index}", self._hub_settings(
                index, model_store, database_url, client_ids), folder)
            for index in range(hubs)
        ]
        self.ledger = folder / "ledger.txt"
        self.drops = folder / "drops.txt"
        self._id_base_ms = int(time.time() * 1000)
        self._rate_per_s = rate_per_s
        self.producer: ProducerProcess | None = None

    def _hub_settings(self, index: int, model_store: Path, database_url: str | None,
                      client_ids: bool) -> dict[str, str]:
        data_dir = self.folder / ("hub" if database_url is None else f"hub-{index}")
        settings = {
            "data_dir": str(data_dir), "mqtt_port": str(self.broker.port),
            "mqtt_username": self.broker.hub_username,
            "mqtt_password": self.broker.hub_password, "secret_key": SECRET,
            "model_store": str(model_store),
        }
        if database_url is not None:
            settings["database_url"] = database_url
        if client_ids:
            settings["mqtt_client_id"] = f"hub-replica-{index}"
        return settings

    # -- set-up and tear-down --------------------------------------------------------

    def start(self) -> None:
        """Start the broker, provision the device through the hub's own code (as
        ``cloud-hub demo`` does), start the hubs and the agent."""
        self.broker.start()
        settings = HubSettings(
            data_dir=self.folder / "hub", database_url=self.database_url,
            mqtt_port=self.broker.port, mqtt_username=self.broker.hub_username,
            mqtt_password=self.broker.hub_password, secret_key=SECRET)
        service = HubService(settings, ingest=False)
        service.open_store()
        try:
            _, credentials = service.provision_device(DEVICE, "line")
        finally:
            service.store.close()
        for hub in self.hubs:
            hub.start()
        for hub in self.hubs:
            hub.wait_ready()
        self.producer = ProducerProcess("producer", ProducerPlan(
            port=self.broker.port, username=DEVICE, password=credentials.password,
            device_id=DEVICE, outbox=str(self.folder / "agent" / "outbox.sqlite3"),
            ledger=str(self.ledger), drops=str(self.drops),
            status=str(self.folder / "producer-status.json"), total=self.total,
            rate_per_s=self._rate_per_s, id_base_ms=self._id_base_ms,
        ), self.folder)
        self.producer.start()
        self.producer.wait_connected()

    def close(self) -> None:
        """Stop every process still running (SIGTERM), the broker last."""
        if self.producer is not None and self.producer.running:
            self.producer.terminate()
        for hub in self.hubs:
            if hub.running:
                hub.terminate()
        self.broker.stop()

    # -- observing -------------------------------------------------------------------

    @property
    def agent(self) -> ProducerProcess:
        """The producer (after :meth:`start`)."""
        if self.producer is None:
            raise RuntimeError("the rig is not started")
        return self.producer

    def committed(self) -> list[LedgerEntry]:
        """Every commit the agent recorded so far."""
        return read_ledger(self.ledger)

    def check_alive(self) -> None:
        """Raise if a process died by itself."""
        self.agent.check_alive()
        for hub in self.hubs:
            hub.check_alive()

    def stored_ids(self) -> set[str]:
        """The ids of this device's events in the hub's store."""
        engine = self._engine()
        try:
            with engine.connect() as conn:
                rows = conn.execute(sa.text("SELECT id FROM events WHERE device_id = :device"),
                                    {"device": DEVICE})
                return {row[0] for row in rows}
        finally:
            engine.dispose()

    def _engine(self) -> sa.Engine:
        if self.database_url.startswith("sqlite"):
            return sa.create_engine(self.database_url, connect_args={"timeout": 30})
        return sa.create_engine(self.database_url)

    def wait_committed(self, more: int, timeout_s: float = 60.0) -> None:
        """Wait until the agent has committed ``more`` events beyond what it has now, or
        all of its stream."""
        wanted = min(len(self.committed()) + more, self.total)

        def enough() -> bool:
            committed = self.committed()
            status = self.agent.status()
            return len(committed) >= wanted or (status is not None and status.done)

        if not wait_until(enough, timeout_s=timeout_s, interval_s=0.3,
                          alive=self.check_alive):
            raise AssertionError(f"the agent did not commit {more} more events in "
                                 f"{timeout_s} s\n{self.agent.log_tail()}")

    def settle(self) -> None:
        """Give the agent's backlog a bounded time to drain before the next fault."""
        def low() -> bool:
            status = self.agent.status()
            return status is not None and status.outbox_depth <= SETTLED_DEPTH

        settled = wait_until(low, timeout_s=SETTLE_TIMEOUT_S, interval_s=0.3,
                             alive=self.check_alive)
        log.info("settled: %s (%s)", settled, self.agent.status())

    def _fault(self, label: str) -> None:
        status = self.agent.status()
        self.faults.append(Fault(f"{len(self.faults) + 1}. {label}", time.time(),
                                 len(self.committed()), status is None or not status.done))
        log.info("fault %s after %d committed", self.faults[-1].label,
                 self.faults[-1].committed_before)

    # -- faults ----------------------------------------------------------------------

    def broker_outage(self) -> None:
        """The broker down for :data:`OUTAGE_S` while the agent produces (and is killed)."""
        self._fault(f"broker down {OUTAGE_S:.0f} s, agent kill -9 x{AGENT_KILLS_IN_OUTAGE}")
        self.broker.stop()
        began = time.monotonic()
        for kill in range(1, AGENT_KILLS_IN_OUTAGE + 1):
            # the outage itself is the fault's duration, not a wait for an outcome
            time.sleep(max(0.0, began + kill * OUTAGE_S / (AGENT_KILLS_IN_OUTAGE + 1)
                           - time.monotonic()))
            self.agent.kill()
            self.agent.start()
        time.sleep(max(0.0, began + OUTAGE_S - time.monotonic()))
        self.broker.start()
        log.info("broker back")
        self.agent.wait_connected()
        log.info("agent connected")
        for hub in self.hubs:
            hub.wait_ready()
        log.info("hubs ready")

    def agent_kills(self, count: int) -> None:
        """``kill -9`` the agent ``count`` times while it has events in flight."""
        self._fault(f"agent kill -9 x{count}")
        for _ in range(count):
            self.wait_committed(STEP_EVENTS // 2)
            self.agent.kill()
            self.agent.start()
            self.agent.wait_connected()

    def broker_kill(self) -> None:
        """``kill -9`` the broker, leave it down :data:`BROKER_DOWN_S`, start it again."""
        self._fault(f"broker kill -9, {BROKER_DOWN_S:.0f} s down")
        kill_broker(self.broker)
        time.sleep(BROKER_DOWN_S)  # the outage's length, not a wait for an outcome
        self.broker.start()
        for hub in self.hubs:
            hub.wait_ready()
        self.agent.wait_connected()

    def hub_kill(self, hub: HubProcess) -> None:
        """``kill -9`` one hub and start it again."""
        self._fault(f"{hub.name} kill -9")
        hub.kill()
        hub.start()
        hub.wait_ready()
        log.info("%s ready", hub.name)

    def hub_restart(self, hub: HubProcess) -> None:
        """Stop one hub cleanly (SIGTERM) and start it again."""
        self._fault(f"{hub.name} SIGTERM restart")
        status = hub.terminate()
        # uvicorn shuts down gracefully, then re-raises the signal it caught
        assert status in (0, -signal.SIGTERM), (
            f"{hub.name} exited with {status} on SIGTERM\n{hub.log_tail()}")
        hub.start()
        hub.wait_ready()
        log.info("%s ready", hub.name)

    def run_fault_table(self) -> None:
        """Issue 8's faults, in turn, on the flowing stream.

        The broker's 60 s outage comes first so that the stream is still flowing when it
        ends; the agent is killed twice during it and three times while the backlog it
        built drains. Then the broker is killed twice, each hub twice, and each hub is
        stopped cleanly twice (alternating between replicas when there are several).
        """
        self.wait_committed(STEP_EVENTS)
        self.broker_outage()
        self.agent_kills(AGENT_KILLS_WHILE_DRAINING)
        self.settle()
        for _ in range(2):
            self.wait_committed(STEP_EVENTS)
            self.broker_kill()
            self.settle()
        for round_ in range(2):
            self.wait_committed(STEP_EVENTS)
            self.hub_kill(self.hubs[round_ % len(self.hubs)])
            self.settle()
        for round_ in range(2):
            self.wait_committed(STEP_EVENTS)
            self.hub_restart(self.hubs[(round_ + 1) % len(self.hubs)])
            self.settle()

    # -- the verdict -----------------------------------------------------------------

    def finish(self, timeout_s: float) -> DeliveryReport:
        """Let the stream end, wait (bounded) until the hub has every committed event,
        and compare.

        Args:
            timeout_s: How long the hub gets, after the agent's last event, to have
                everything.
        """
        def produced_all() -> bool:
            status = self.agent.status()
            return status is not None and status.done

        remaining = self.total - len(self.committed())
        if not wait_until(produced_all, timeout_s=remaining / self._rate_per_s + 60.0,
                          interval_s=0.5, alive=self.check_alive):
            raise AssertionError(f"the agent did not produce all {self.total} events\n"
                                 f"{self.agent.log_tail()}")

        def hub_has_all() -> bool:
            return {entry.event_id for entry in self.committed()} <= self.stored_ids()

        wait_until(hub_has_all, timeout_s=timeout_s, interval_s=1.0, alive=self.check_alive)
        return self.report()

    def report(self) -> DeliveryReport:
        """Compare the agent's ledger with the hub's store now."""
        entries = self.committed()
        committed = {entry.event_id: entry for entry in entries}
        stored = self.stored_ids()
        lost = sorted(set(committed) - stored)
        engine = self._engine()
        try:
            with engine.connect() as conn:
                twice = {row[0]: int(row[1]) for row in conn.execute(sa.text(
                    "SELECT id, COUNT(*) FROM events WHERE device_id = :device "
                    "GROUP BY id HAVING COUNT(*) > 1"), {"device": DEVICE})}
        finally:
            engine.dispose()
        made = {event_id(self._id_base_ms, index) for index in range(self.total)}
        by_fault: Counter[str] = Counter()
        for lost_id in lost:
            by_fault[self._fault_before(committed[lost_id].committed_at)] += 1
        drops = Counter(reason.split(":")[0] for _, reason in read_drops(self.drops))
        return DeliveryReport(
            committed=len(committed), stored=len(stored & set(committed)), lost=tuple(lost),
            stored_twice=twice, unexpected=tuple(sorted(stored - made)),
            lost_by_fault=dict(by_fault), agent_drops=dict(drops), faults=tuple(self.faults),
        )

    def _fault_before(self, committed_at: float) -> str:
        label = "before any fault"
        for fault in self.faults:
            if fault.started_at <= committed_at:
                label = fault.label
        return label
