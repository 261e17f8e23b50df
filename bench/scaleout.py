"""Hub replicas on one PostgreSQL database behind the shared subscription: events per
second with 1, 2 and 4 replicas, each judging at a fixed cost.

Each round starts a private Mosquitto and ``R`` replicas (:mod:`bench.replica`: the hub
with :class:`~bench.replica.FixedCostJudge`, one judge slot of ``--cost-ms`` per event,
so one replica does at most ``1000 / cost_ms`` events a second whatever the cores), each
with its own stable client id (``hub-r<R>-<i>``), on one database. ``--devices``
simulated devices (each its own MQTT 5 connection, client id = device id) escalate
``--events`` sensor windows between them at once, ``--bursts`` times; a replica count's
events per second are a burst's events divided by the time from its first publish to
the last verdict a device received, in the median burst.

Per round the JSON also has each replica's share of the events (``handled_by`` in the
store) and the round's judge slots: the largest share, the number of judgements one
after another that the round needed. The check is the same as the test's
(``tests/cloud_hub/test_scale_out.py``): nothing lost (every event stored, every device
got its verdicts), nothing stored twice.

The devices declare a long verdict timeout (:data:`VERDICT_TIMEOUT_S`), so that the hub
admits every event instead of answering ``busy`` for those it could not judge within a
device's usual 10 s: this is a measure of judging capacity, not of overload.

Last line: JSON with ``eps`` by replica count, ``ratio`` (eps over the one-replica eps of
the same run; 2 and 4 ideally), ``judge_slots``, ``busy`` (answered busy: 0 expected),
``lost`` and ``stored_twice``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub import Store
from cloud_hub.mosquitto import MosquittoBroker, free_port
from sync import (
    BusyMessage,
    EventIdFactory,
    EventMessage,
    MessageError,
    ModelRef,
    ReceiptMessage,
    TopicLayout,
    VerdictMessage,
    decode,
    encode,
)

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = TopicLayout()
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SECRET = "scale-out-bench-secret-key-0123456789"
READY_TIMEOUT_S = 120.0
# The simulated devices wait this long for a verdict, so that a round measures how fast
# the replicas judge, not how the hub sheds what it cannot judge in time (bench fleet).
VERDICT_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 30.0


class Replica:
    """One :mod:`bench.replica` process; its client id is its name, kept across restarts
    (as a pod's name is, from which the Kubernetes manifests take it).

    Args:
        name: Client id and log name (``hub-...``).
        settings: ``CLOUD_HUB_<NAME>`` values without the prefix (the HTTP port is
            chosen at each start).
        folder: For its log (appended across restarts) and data directory.
        cost_ms: The judge's cost per event.
        command: Python's arguments instead of :mod:`bench.replica`'s (the real hub:
            ``("-m", "cloud_hub", "serve")``; ``cost_ms`` is then unused).
    """

    def __init__(self, name: str, settings: Mapping[str, str], folder: Path,
                 cost_ms: float, *, command: Sequence[str] | None = None) -> None:
        self.name = name
        self.env = {key: value for key, value in os.environ.items()
                    if not key.startswith("CLOUD_HUB_")}
        self.env.update({f"CLOUD_HUB_{key.upper()}": value for key, value in {
            **settings, "mqtt_client_id": name, "data_dir": str(folder / name),
        }.items()})
        self.command = [sys.executable, *(command or (
            "-m", "bench.replica", "--cost-ms", str(cost_ms)))]
        self.log = folder / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.http_port = 0

    def start(self) -> None:
        """Start on a port free right now."""
        self.http_port = free_port()
        self.env["CLOUD_HUB_HTTP_PORT"] = str(self.http_port)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        """Whether ``/readyz`` answers 200.

        Raises:
            RuntimeError: The process exited (the message has its log's end).
        """
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"{self.name} is not running:\n{self.log_tail()}")
        try:
            url = f"http://127.0.0.1:{self.http_port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def kill(self) -> None:
        """``kill -9``: its session stays on the broker with what it had not acknowledged."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM, and wait (``kill -9`` after :data:`STOP_TIMEOUT_S`)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self) -> str:
        """The end of its log."""
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def wait_ready(replicas: Sequence[Replica], timeout_s: float = READY_TIMEOUT_S) -> None:
    """Wait until every replica is ready.

    Raises:
        RuntimeError: One exited or was not ready within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    waiting = list(replicas)
    while waiting:
        waiting = [replica for replica in waiting if not replica.ready()]
        if waiting and time.monotonic() > deadline:
            raise RuntimeError(f"{waiting[0].name} not ready within {timeout_s} s:\n"
                               f"{waiting[0].log_tail()}")
        if waiting:
            time.sleep(0.2)


class Fleet:
    """Simulated devices: each its own MQTT 5 connection (client id = device id) that
    escalates sensor windows and keeps the verdicts and receipts it receives.

    paho's callbacks only record an answer's arrival (under a lock); the caller waits on
    :meth:`wait_answered`, and resends what nobody answered (:meth:`resend_unanswered`)
    as an agent does: a hub acknowledges an escalation once it is stored, so one that a
    replica stored and then died holding is judged when its device sends it again.
    """

    def __init__(self, port: int, device_ids: Sequence[str]) -> None:
        self.port = port
        self.device_ids = tuple(device_ids)
        self._clients: dict[str, mqtt.Client] = {}
        self._make_id = EventIdFactory()
        self._answered = threading.Condition()
        self.first_verdict_at: dict[str, float] = {}
        self.verdicts_received: Counter[str] = Counter()
        self.receipted: set[str] = set()
        self.busy: set[str] = set()
        self.sent_by: dict[str, str] = {}
        self._payloads: dict[str, bytes] = {}

    def connect(self, timeout_s: float = 30.0) -> None:
        """Connect every device and subscribe it to its verdicts.

        Raises:
            RuntimeError: Not all were subscribed within ``timeout_s``.
        """
        subscribed = threading.Semaphore(0)
        for device_id in self.device_ids:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id,
                                 protocol=mqtt.MQTTv5)
            client.on_connect = lambda c, *_, d=device_id: c.subscribe(LAYOUT.verdicts(d), 1)
            client.on_subscribe = lambda *_: subscribed.release()
            client.on_message = self._on_message
            client.connect("127.0.0.1", self.port)
            client.loop_start()
            self._clients[device_id] = client
        for _ in self.device_ids:
            if not subscribed.acquire(timeout=timeout_s):
                raise RuntimeError("the simulated devices did not all subscribe")

    def _on_message(self, client: mqtt.Client, userdata: object,
                    message: mqtt.MQTTMessage) -> None:
        try:
            verdict = decode(bytes(message.payload), VerdictMessage)
        except MessageError:
            self._other_answer(bytes(message.payload))
            return
        with self._answered:
            self.verdicts_received[verdict.event_id] += 1
            self.first_verdict_at.setdefault(verdict.event_id, time.monotonic())
            self._answered.notify_all()

    def _other_answer(self, payload: bytes) -> None:
        """A receipt (stored, not judged yet: the device stops resending it) or busy (the
        hub will not judge it in time: the device decides now)."""
        with self._answered:
            try:
                self.receipted.update(decode(payload, ReceiptMessage).event_ids)
                return
            except MessageError:
                pass
            try:
                self.busy.add(decode(payload, BusyMessage).event_id)
            except MessageError:
                return
            self._answered.notify_all()

    def escalate(self, count: int) -> list[str]:
        """Publish ``count`` sensor windows (QoS 1), the devices taking turns; their ids."""
        ids = []
        for index in range(count):
            device_id = self.device_ids[index % len(self.device_ids)]
            event = EventMessage(
                event_id=self._make_id(), device_id=device_id, source="bench",
                captured_at=time.time(), reason="anomaly", priority=5,
                model=ModelRef(name="sensor-anomaly", version="1.0.0"),
                anomaly_score=-0.05 if index % 3 == 0 else 0.02,
                verdict_timeout_s=VERDICT_TIMEOUT_S,
                readings=tuple(float(k % 7) for k in range(60)))
            self.sent_by[event.event_id] = device_id
            self._payloads[event.event_id] = encode(event)
            self._publish(event.event_id)
            ids.append(event.event_id)
        return ids

    def _publish(self, event_id: str) -> None:
        device_id = self.sent_by[event_id]
        self._clients[device_id].publish(LAYOUT.events(device_id), self._payloads[event_id],
                                         qos=1)

    def resend_unanswered(self, ids: Sequence[str]) -> int:
        """Publish again each event of ``ids`` that has neither a verdict nor a receipt;
        how many."""
        with self._answered:
            again = [i for i in self._unanswered(ids) if i not in self.receipted]
        for event_id in again:
            self._publish(event_id)
        return len(again)

    def wait_answered(self, ids: Sequence[str], timeout_s: float) -> bool:
        """Whether every event of ``ids`` got a verdict, or busy, within ``timeout_s``."""
        with self._answered:
            return self._answered.wait_for(lambda: not self._unanswered(ids), timeout_s)

    def unanswered(self, ids: Sequence[str]) -> list[str]:
        """The events of ``ids`` whose device has neither a verdict nor busy for them."""
        with self._answered:
            return self._unanswered(ids)

    def _unanswered(self, ids: Sequence[str]) -> list[str]:
        return [i for i in ids if i not in self.first_verdict_at and i not in self.busy]

    def close(self) -> None:
        """Disconnect every device."""
        for client in self._clients.values():
            client.disconnect()
            client.loop_stop()


@dataclass(frozen=True, slots=True)
class Shares:
    """How a set of events was handled, from the store.

    Attributes:
        by_replica: Events each replica judged (``handled_by``).
        stored: Events of the set found in the store.
        stored_twice: Event ids with more than one row.
    """

    by_replica: Mapping[str, int]
    stored: int
    stored_twice: int

    @property
    def judge_slots(self) -> int:
        """Judgements one after another that the set needed: the largest share."""
        return max(self.by_replica.values(), default=0)


class ScaleOutRig:
    """A private broker, hub replicas on one database, and simulated devices.

    Args:
        folder: Broker state, replica logs and data.
        database_url: The replicas' shared database (PostgreSQL).
        devices: How many simulated devices.
        cost_ms: The judge's cost per event in every replica.
    """

    def __init__(self, folder: Path, database_url: str, *, devices: int = 20,
                 cost_ms: float = 50.0) -> None:
        self.folder = folder
        self.database_url = database_url
        self.cost_ms = cost_ms
        self.broker = MosquittoBroker(folder / "broker")
        self.fleet = Fleet(self.broker.port, [f"cam-{i:03d}" for i in range(devices)])
        self.replicas: list[Replica] = []
        self._engine = sa.create_engine(database_url)

    def start(self) -> None:
        """Start the broker, register the devices, connect them."""
        self.broker.start()
        store = Store(self.database_url)
        store.open()
        try:
            for device_id in self.fleet.device_ids:
                store.add_device(device_id=device_id, group="bench")
        finally:
            store.close()
        self.fleet.connect()

    def add_replicas(self, count: int, *, prefix: str = "hub-") -> list[Replica]:
        """Start ``count`` more replicas (named ``<prefix><n>``) and wait until ready."""
        settings = {"database_url": self.database_url, "mqtt_port": str(self.broker.port),
                    "secret_key": SECRET, "ingest_workers": "4",
                    # Nothing to provision here: no broker control to check at start.
                    "broker_control": "none"}
        added = [Replica(f"{prefix}{len(self.replicas) + i}", settings, self.folder,
                         self.cost_ms) for i in range(count)]
        for replica in added:
            replica.start()
        self.replicas += added
        wait_ready(added)
        return added

    def warm_up(self, *, rounds: int = 10) -> None:
        """Escalate a few events until every replica has judged one: each has then
        subscribed (``/readyz`` says connected, a moment before the broker has its
        subscription).

        Raises:
            RuntimeError: A replica judged nothing in ``rounds`` rounds.
        """
        names = {replica.name for replica in self.replicas}
        handled: set[str] = set()
        for _ in range(rounds):
            ids = self.fleet.escalate(len(names))
            if not self.fleet.wait_answered(ids, 60):
                raise RuntimeError("warm-up events were not answered")
            handled |= set(self.shares(ids).by_replica)
            if handled >= names:
                return
        raise RuntimeError(f"{sorted(names - handled)} judged nothing in the warm-up")

    def shares(self, ids: Sequence[str]) -> Shares:
        """How the events ``ids`` were handled, from the store."""
        with self._engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT id, handled_by FROM events WHERE id = ANY(:ids)"), {"ids": list(ids)})
            found = [(row[0], row[1]) for row in rows]
        per_id = Counter(event_id for event_id, _ in found)
        by_replica = Counter(handler for _, handler in found if handler is not None)
        return Shares(dict(by_replica), len(per_id),
                      sum(1 for count in per_id.values() if count > 1))

    def close(self) -> None:
        """Stop the devices, the replicas and the broker."""
        self.fleet.close()
        for replica in self.replicas:
            replica.stop()
        self.broker.stop()
        self._engine.dispose()


@contextmanager
def scratch_database(admin_url: str = POSTGRES_ADMIN_URL) -> Iterator[str]:
    """A PostgreSQL database of its own, dropped afterwards; yields its URL."""
    name = f"bench_scaleout_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass(frozen=True, slots=True)
class Round:
    """One replica count's measurement."""

    replicas: int
    events: int
    seconds: float
    bursts_s: tuple[float, ...]
    shares: Shares
    busy: int
    lost: int

    @property
    def eps(self) -> float:
        """Events answered per second."""
        return self.events / self.seconds


def measure(folder: Path, database_url: str, *, replicas: int, events: int, devices: int,
            cost_ms: float, bursts: int) -> Round:
    """One round: a fresh broker and ``replicas`` replicas, then ``bursts`` bursts of
    ``events`` escalated at once; the round's time is the median burst's (a loaded
    machine stalls a burst now and then)."""
    rig = ScaleOutRig(folder, database_url, devices=devices, cost_ms=cost_ms)
    try:
        rig.start()
        rig.add_replicas(replicas, prefix=f"hub-r{replicas}-")
        rig.warm_up()
        seconds, every_id = [], []
        for _ in range(bursts):
            started = time.monotonic()
            ids = rig.fleet.escalate(events)
            rig.fleet.wait_answered(ids, max(120.0, 4 * events * cost_ms / 1e3))
            seconds.append(max((rig.fleet.first_verdict_at.get(i, time.monotonic())
                                for i in ids), default=started) - started)
            every_id += ids
        shares = rig.shares(every_id)
        unanswered = rig.fleet.unanswered(every_id)
        return Round(replicas, events, statistics.median(seconds), tuple(seconds), shares,
                     busy=len(rig.fleet.busy.intersection(every_id)),
                     lost=max(len(unanswered), len(every_id) - shares.stored))
    finally:
        rig.close()


def main(argv: list[str]) -> int:
    """Run the benchmark; print one progress line per round and the JSON last."""
    parser = argparse.ArgumentParser(prog="python -m bench scaleout", description=__doc__)
    parser.add_argument("--replicas", default="1,2,4", help="replica counts, comma-separated")
    parser.add_argument("--events", type=int, default=240, help="events per burst")
    parser.add_argument("--bursts", type=int, default=3, help="bursts per replica count")
    parser.add_argument("--devices", type=int, default=20, help="simulated devices")
    parser.add_argument("--cost-ms", type=float, default=50.0, help="judge cost per event")
    parser.add_argument("--postgres", default=POSTGRES_ADMIN_URL,
                        help="URL of a database to create the scratch database from")
    args = parser.parse_args(argv)
    counts = [int(value) for value in args.replicas.split(",")]
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as scratch, \
            scratch_database(args.postgres) as database_url:
        for count in counts:
            result = measure(Path(scratch) / f"r{count}", database_url, replicas=count,
                             events=args.events, devices=args.devices, cost_ms=args.cost_ms,
                             bursts=args.bursts)
            rounds.append(result)
            print(f"{count} replica(s): {result.eps:.1f} events/s (bursts "
                  f"{', '.join(f'{b:.1f}' for b in result.bursts_s)} s), shares "
                  f"{sorted(result.shares.by_replica.values(), reverse=True)}, "
                  f"busy {result.busy}, lost {result.lost}", flush=True)
    baseline = rounds[0].eps
    print(json.dumps({
        "cost_ms": args.cost_ms, "events": args.events, "bursts": args.bursts,
        "devices": args.devices,
        "ideal_eps_per_replica": round(1000 / args.cost_ms, 1),
        "eps": {str(r.replicas): round(r.eps, 1) for r in rounds},
        "ratio": {str(r.replicas): round(r.eps / baseline, 2) for r in rounds},
        "judge_slots": {str(r.replicas): r.shares.judge_slots for r in rounds},
        "busy": sum(r.busy for r in rounds),
        "lost": sum(r.lost for r in rounds),
        "stored_twice": sum(r.shares.stored_twice for r in rounds),
    }))
    return 0
