"""The uplink against a real Mosquitto: delivery, restarts, kill -9, status and will."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.config import MqttConfig, OutboxConfig
from edge_agent.delivery.outbox import Outbox
from edge_agent.delivery.uplink import Uplink
from sync import BusyMessage, StatusMessage, TopicLayout, decode, encode
from tests.broker import Collector, MosquittoBroker
from tests.edge_agent.helpers import event_id, event_item

pytestmark = pytest.mark.integration

LAYOUT = TopicLayout()
ROOT = Path(__file__).parent.parent.parent


def _ids(messages: list[tuple[str, bytes]]) -> set[str]:
    return {json.loads(payload)["event_id"] for topic, payload in messages
            if topic.endswith("/events")}


def _uplink(broker: MosquittoBroker, folder: Path, device: str = "cam-1",
            **mqtt: object) -> Uplink:
    settings = {"port": broker.port, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5,
                "drain_rate_per_s": 100_000, **mqtt}
    return Uplink(
        device_id=device, config=MqttConfig.model_validate(settings),
        outbox=Outbox(folder / f"{device}.sqlite3", OutboxConfig()), layout=LAYOUT,
        status=lambda state: StatusMessage(device_id=device, state=state, at=time.time()),
    )


@pytest.fixture
def collector(broker: MosquittoBroker) -> Iterator[Collector]:
    instance = Collector(broker.port, LAYOUT.all_devices("events"))
    yield instance
    instance.close()


def test_delivers_everything_and_empties_the_outbox(
    broker: MosquittoBroker, collector: Collector, tmp_path: Path
) -> None:
    uplink = _uplink(broker, tmp_path)
    uplink.start()
    try:
        for i in range(1000):
            uplink.submit(event_item(LAYOUT, "cam-1", i))
        assert uplink.wait_idle(30)
        counters = uplink.counters()
        assert counters.acknowledged == 1000 and counters.outbox_depth == 0
    finally:
        uplink.stop()
    wanted = {event_id(i) for i in range(1000)}
    assert collector.wait_for(lambda m: wanted <= _ids(m), 20)


def test_zero_loss_across_broker_restarts(
    broker: MosquittoBroker, collector: Collector, tmp_path: Path
) -> None:
    uplink = _uplink(broker, tmp_path)
    uplink.start()
    total = 3000

    def produce() -> None:
        for i in range(total):
            uplink.submit(event_item(LAYOUT, "cam-1", i))
            if i % 50 == 0:
                time.sleep(0.01)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        for _ in range(3):
            time.sleep(0.3)
            deadline = time.monotonic() + 10
            while not uplink.connected and time.monotonic() < deadline:
                time.sleep(0.02)
            broker.restart(down_s=0.4)
        producer.join(60)
        assert uplink.wait_idle(60)
        assert uplink.counters().reconnects >= 3
    finally:
        uplink.stop()
    wanted = {event_id(i) for i in range(total)}
    assert collector.wait_for(lambda m: wanted <= _ids(m), 30), len(wanted - _ids(
        collector.messages))


def test_offline_backlog_is_kept_then_drained_oldest_first(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    uplink = _uplink(broker, tmp_path)  # the broker is not running yet
    uplink.start()
    try:
        for i in range(300):
            uplink.submit(event_item(LAYOUT, "cam-1", i))
        deadline = time.monotonic() + 10
        while uplink.counters().outbox_depth < 300 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert uplink.counters().outbox_depth == 300 and not uplink.connected
        broker.start()
        collector = Collector(broker.port, LAYOUT.all_devices("events"))
        assert uplink.wait_idle(30)
        assert collector.wait_for(lambda m: len(_ids(m)) == 300, 10)
        arrival = [json.loads(p)["event_id"] for _, p in collector.messages]
        first_seen = list(dict.fromkeys(arrival))
        assert first_seen == [event_id(i) for i in range(300)]
        collector.close()
    finally:
        uplink.stop()
        broker.stop()


def test_retained_status_and_last_will(broker: MosquittoBroker, tmp_path: Path) -> None:
    status = Collector(broker.port, LAYOUT.status("cam-kill"))
    ledger = tmp_path / "ledger.txt"
    driver = subprocess.Popen(
        [sys.executable, "-m", "tests.edge_agent.uplink_driver", str(broker.port),
         str(tmp_path / "state"), str(ledger), "0", "100000", "50"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        assert status.wait_for(lambda m: any(b'"online"' in p for _, p in m), 20)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(10)
        assert status.wait_for(lambda m: b'"offline"' in m[-1][1], 20)
        offline = decode(status.messages[-1][1], StatusMessage)
        assert offline.device_id == "cam-kill" and offline.state == "offline"
    finally:
        driver.kill()
        status.close()


def test_kill_minus_nine_loses_nothing(broker: MosquittoBroker, collector: Collector,
                                       tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    state = tmp_path / "state"

    def driver(start: int, count: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.edge_agent.uplink_driver", str(broker.port),
             str(state), str(ledger), str(start), str(count), "400"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    first = driver(0, 100_000)
    deadline = time.monotonic() + 30
    while (not ledger.exists() or len(ledger.read_text().split()) < 600) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    broker.restart(down_s=0.3)
    time.sleep(0.5)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    accepted = set(ledger.read_text().split())
    assert len(accepted) >= 600
    second = driver(200_000, 400)
    time.sleep(0.4)
    broker.restart(down_s=0.3)
    _, errors = second.communicate(timeout=90)
    assert second.returncode == 0, errors.decode()
    accepted = set(ledger.read_text().split())
    assert collector.wait_for(lambda m: accepted <= _ids(m), 30), len(
        accepted - _ids(collector.messages))
    box = Outbox(state / "outbox.sqlite3", OutboxConfig())
    box.open()
    assert box.count == 0
    box.close()


def test_an_event_nobody_subscribed_to_stays_until_the_hub_confirms_it(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """PUBACK reason 16 ("no matching subscribers", e.g. the hub's shared subscription is
    not back yet after a restart) is not delivery: the event waits and goes again."""
    uplink = _uplink(broker, tmp_path, receipt_timeout_s=1.0)
    uplink.start()
    try:
        for i in range(50):
            uplink.submit(event_item(LAYOUT, "cam-1", i))
        deadline = time.monotonic() + 20
        while uplink.counters().refused < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
        counters = uplink.counters()
        assert counters.refused >= 50 and counters.outbox_depth == 50
        # A hub that takes the events but has not stored them confirms nothing either.
        silent = Collector(broker.port, LAYOUT.all_devices("events"), receipts=False,
                           client_id="hub-silent")
        wanted = {event_id(i) for i in range(50)}
        assert silent.wait_for(lambda m: wanted <= _ids(m), 30)
        silent.client.unsubscribe(LAYOUT.all_devices("events"))
        silent.close()
        assert uplink.counters().outbox_depth == 50
        hub = Collector(broker.port, LAYOUT.all_devices("events"))
        assert uplink.wait_idle(60), uplink.counters()
        assert hub.wait_for(lambda m: wanted <= _ids(m), 10)
        assert uplink.counters().republished >= 50
        hub.close()
    finally:
        uplink.stop()


def test_busy_answers_confirm_their_events_reach_the_caller_and_slow_the_drain(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """A hub that stored the events but will not judge them answers busy/1: the device
    deletes them from its outbox (as on a receipt), hears each busy answer, and publishes
    more slowly for the time the hub asked."""
    heard: list[BusyMessage] = []
    uplink = Uplink(
        device_id="cam-1", config=MqttConfig.model_validate(
            {"port": broker.port, "drain_rate_per_s": 1000}),
        outbox=Outbox(tmp_path / "cam-1.sqlite3", OutboxConfig()), layout=LAYOUT,
        status=lambda state: StatusMessage(device_id="cam-1", state=state, at=time.time()),
        on_busy=heard.append,
    )

    def answer_busy(topic: str, payload: bytes) -> None:
        if topic.endswith("/events"):
            event = json.loads(payload)
            busy = BusyMessage(event_id=event["event_id"], device_id=event["device_id"],
                               reason="queue-full", retry_after_s=60.0, at=time.time())
            hub.client.publish(LAYOUT.verdicts("cam-1"), encode(busy), qos=1)

    hub = Collector(broker.port, LAYOUT.all_devices("events"), receipts=False,
                    on_message=answer_busy)
    uplink.start()
    try:
        for i in range(20):
            uplink.submit(event_item(LAYOUT, "cam-1", i))
        assert uplink.wait_idle(30), uplink.counters()
        counters = uplink.counters()
        assert counters.outbox_depth == 0 and counters.busy == 20
        assert counters.published == 20  # each once: a backlog read does not repeat live ones
        assert {b.event_id for b in heard} == {event_id(i) for i in range(20)}
        assert uplink.window.rate_per_s < 1000  # still within the 60 s the hub asked
    finally:
        uplink.stop()
        hub.close()
